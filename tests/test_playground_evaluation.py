"""The Playground's "Significance, score shift, cost" section (ui.evaluation_view through ui.playground):
graded "+N " passages, the numbers shown against core.rerank.evaluation and against a hand computation of
precision / recall at the threshold, the export, hosted confinement, and the /rerank_evaluate API."""
import json
import shutil
import statistics
from pathlib import Path

import gradio as gr
import pytest

from core.app.sessions import session_workspace
from core.app.workspace import Workspace
from core.errors import RerankError
from core.rerank.compare import QueryItem
from core.rerank.evaluation import evaluate
from core.rerank.model import load_reranker, unload
from tests.app_server import launched, local_workspace
from ui.evaluation_view import parse_threshold
from ui.passage_box import parse_passages
from ui.playground import evaluate_pasted

QUERY = "the model"
PASSAGES = "+2 the model said\nhello world\n+ time way\ngood day\n+0 her\n+3 it is a model\nno"
GRADES = [2, 0, 1, 0, 0, 3, 0]
DOCS = ["the model said", "hello world", "time way", "good day", "her", "it is a model", "no"]


def test_graded_and_plain_plus_lines_both_read():
    [item] = parse_passages(QUERY, PASSAGES)
    assert item.docs == DOCS and item.labels == GRADES
    [item] = parse_passages("q", "+1 3 eggs, beaten\n+ 2\nplain")  # "+ 2": a relevant passage whose text is "2"
    assert item.docs == ["3 eggs, beaten", "2", "plain"] and item.labels == [1, 1, 0]
    assert parse_passages("q", "a\nb")[0].labels is None  # no "+": unlabelled, as before


@pytest.mark.parametrize("line", ["+3", "+0", " +2 "])
def test_a_grade_with_no_passage_is_refused_not_read_as_the_passage_3(line):
    with pytest.raises(RerankError, match=rf"passage line 2 is only '\{line.strip()}': write the passage after it"):
        parse_passages("q", f"first\n{line}\nthird")


def expected_at(scores, labels, threshold):
    kept = [label for score, label in zip(scores, labels) if score >= threshold]
    relevant = sum(1 for label in labels if label > 0)
    return len(kept), sum(1 for label in kept if label > 0) / len(kept), sum(1 for label in kept if label > 0) / relevant


def test_the_section_shows_cores_numbers_and_exports_them(bert_cls_family, tmp_path):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    ws = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")
    unload()  # so this run loads both models and times the loads
    summary, metrics, per_query, histogram, at_threshold, cost, files = evaluate_pasted(
        a, b, QUERY, PASSAGES, None, "cpu", False, None, ws)
    models = [load_reranker(ref) for ref in (a, b)]
    expected = evaluate(models, [QueryItem(QUERY, DOCS, GRADES)])
    for text in expected.verdicts.values():
        assert text in summary
    assert "Scores are **raw logit**" in summary
    row = metrics.set_index("metric").loc["nDCG@10"]
    assert row["first stage"] == round(expected.baseline["nDCG@10"], 4)
    assert (row["A"], row["B"]) == tuple(round(v, 4) for v in expected.metrics["nDCG@10"])
    delta = expected.queries[0].delta["nDCG@10"]
    assert per_query["B"][0] == ("tie" if abs(delta) <= 1e-12 else "win" if delta > 0 else "loss")
    scores = [[model.score_pairs([(QUERY, doc) for doc in DOCS])[i] for i in range(len(DOCS))] for model in models]
    threshold = statistics.median(s for s, g in zip(scores[0], GRADES) if g > 0)  # A's median relevant score
    for index, name in enumerate(("A", "B")):
        kept, precision, recall = expected_at(scores[index], GRADES, threshold)
        shown = at_threshold.set_index("model").loc[name]
        assert shown["threshold"] == pytest.approx(threshold, abs=1e-4) and shown["kept"] == kept
        assert (shown["precision"], shown["recall"]) == pytest.approx((precision, recall), abs=1e-4)
    assert at_threshold["model"][2].startswith("B recalibrated")
    assert len(histogram.data) == 4 and sum(histogram.data[0].y) == sum(1 for g in GRADES if g > 0)
    assert all(isinstance(seconds, float) and seconds > 0 for seconds in cost["load s"])
    assert list(evaluate_pasted(a, b, QUERY, PASSAGES, None, "cpu", False, None, ws)[5]["load s"]) == ["cached"] * 2
    assert list(cost["parameters"]) == [sum(p.numel() for p in m.model.parameters()) for m in models]
    paths = sorted(files)
    assert [p.rsplit(".", 1)[1] for p in paths] == ["html", "json"]
    assert json.loads(open(paths[1]).read())["metrics"]["nDCG@10"] == pytest.approx(expected.metrics["nDCG@10"])
    with pytest.raises(gr.Error, match="labelled"):
        evaluate_pasted(a, b, QUERY, "x\ny", None, "cpu", False, None, ws)


def test_hosted_reports_stay_in_the_visitors_folder(bert_cls_family, tmp_path):
    root = (tmp_path / "site").resolve()
    ws = Workspace(root, root / "models", root / "outputs", hosted=True)
    for n in (0, 1):
        shutil.copytree(bert_cls_family[n], ws.models_dir / f"ce{n}")
    files = evaluate_pasted("models/ce0", "models/ce1", QUERY, PASSAGES, None, "cpu", False, 0.0, ws,
                            gr.Request(session_hash="v"))[-1]
    mine = session_workspace(ws, "v").downloads_dir.resolve()
    assert files and all(mine in Path(p).resolve().parents for p in files)


def test_the_evaluate_api_answers_through_gradio_client(bert_cls_family, tmp_path):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    with launched(local_workspace(tmp_path)) as (_, client):
        summary, metrics, *_ = client.predict(a, b, QUERY, PASSAGES, None, "cpu", False, None,
                                              api_name="/rerank_evaluate")
    expected = evaluate([load_reranker(a), load_reranker(b)], [QueryItem(QUERY, DOCS, GRADES)])
    assert expected.verdicts["nDCG@10"] in summary
    assert [row[0] for row in metrics["data"]] == list(expected.metrics)


def test_the_threshold_box_reads_empty_as_the_default_and_refuses_words():
    assert parse_threshold("") is None and parse_threshold(None) is None and parse_threshold(" 0.25 ") == 0.25
    for bad in ("high", "nan", "inf"):
        with pytest.raises(RerankError, match="score threshold .*write a number"):
            parse_threshold(bad)


def test_a_hosted_evaluation_counts_the_timing_run_in_the_pairs_cap(bert_cls_family, tmp_path):
    """7 passages × 2 models is 14 pairs, but each model's cost timing scores 7 + 1 more: 30 in all."""
    root = (tmp_path / "site").resolve()
    for n in (0, 1):
        shutil.copytree(bert_cls_family[n], root / "models" / f"ce{n}")
    args = ("models/ce0", "models/ce1", QUERY, PASSAGES, None, "cpu", False, None)
    tight = Workspace(root, root / "models", root / "outputs", hosted=True, max_pairs=29)
    with pytest.raises(gr.Error, match=r"this evaluation \(7 passages × 2 models, and the cost table's timing run\) "
                                       r"scores 30 \(query, passage\) pairs"):
        evaluate_pasted(*args, tight, gr.Request(session_hash="v"))
    enough = Workspace(root, root / "models", root / "outputs", hosted=True, max_pairs=30)
    assert evaluate_pasted(*args, enough, gr.Request(session_hash="v"))[-1]


def test_a_hosted_cost_table_says_cached_only_for_the_visitors_own_models(bert_cls_family, tmp_path):
    """Another session's loaded model must not show as "cached": that would say someone else is using it."""
    root = (tmp_path / "site").resolve()
    for n in (0, 1):
        shutil.copytree(bert_cls_family[n], root / "models" / f"ce{n}")
    ws = Workspace(root, root / "models", root / "outputs", hosted=True)
    args = ("models/ce0", "models/ce1", QUERY, PASSAGES, None, "cpu", False, None, ws)
    unload()
    try:
        assert list(evaluate_pasted(*args, gr.Request(session_hash="alice"))[5]["load s"]) != ["cached"] * 2
        assert list(evaluate_pasted(*args, gr.Request(session_hash="alice"))[5]["load s"]) == ["cached"] * 2
        assert "cached" not in list(evaluate_pasted(*args, gr.Request(session_hash="bob"))[5]["load s"])
    finally:
        unload()
