"""`python -m core evaluate --json / --report / --card` as a real subprocess on tiny rerankers and the
packaged MiniLM; its numbers recomputed here from the models' own scores."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from core.rerank.metrics import labelled_metrics
from core.rerank.model import load_reranker
from tests.model_factory import build_family, minilm_folder

QUERIES = [
    {"query": "the model", "docs": ["the model said", "hello world", "world hello", "the model said"],
     "labels": [3, 0, 1, 3]},  # a repeated passage: equal scores, a tie in ranking
    {"query": "hello", "docs": ["hello there", "goodbye", "the model"], "labels": [2, 0, 0]},
    {"query": "nothing relevant", "docs": ["a", "b"], "labels": [0, 0]},  # left out of the tests
    {"query": "world", "pos": ["world hello"], "neg": ["said the model", "hello"]},
    {"query": "said", "docs": ["the model said", "there"], "labels": [0, 1]},
]
ENV = {"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "core", "evaluate", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=Path(__file__).resolve().parents[1])


def _write(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _docs_labels(row):
    if "docs" in row:
        return row["docs"], row["labels"]
    return row["pos"] + row["neg"], [1] * len(row["pos"]) + [0] * len(row["neg"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert-cls", "xlmr-cls"])
def test_json_has_every_part_and_its_numbers_are_recomputed_here(kind, tmp_path):
    folders = build_family(tmp_path / "models", kind, noise=0.5)  # enough noise to change the rankings
    base, merged = str(folders[0]), str(folders[2])
    data = _write(tmp_path / "eval.jsonl", QUERIES)
    done = _run("--model", base, "--model", merged, "--input", str(data), "--json", "--resamples", "2000")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"models", "queries", "passages", "metrics", "baseline", "per_query", "tests",
                        "baseline_tests", "verdicts", "score_shift", "cost", "notes"}
    assert [m["score"] for m in out["models"]] == ["logit", "logit"]
    models = [load_reranker(base), load_reranker(merged)]
    per_query = []
    for row, reported in zip(QUERIES, out["per_query"]):
        docs, labels = _docs_labels(row)
        scores = [m.score(row["query"], docs) for m in models]
        assert reported["scores"] == [pytest.approx(s, abs=1e-5) for s in scores]
        values = [labelled_metrics(s, labels) for s in scores]
        assert reported["values"]["nDCG@10"] == pytest.approx([v["nDCG@10"] for v in values])
        assert reported["delta"]["MAP@10"] == pytest.approx(values[1]["MAP@10"] - values[0]["MAP@10"])
        per_query.append((values, any(label > 0 for label in labels)))
    assert any(t["wins"] + t["losses"] for t in out["tests"].values())  # the models do rank differently
    assert out["per_query"][0]["scores"][0][0] == out["per_query"][0]["scores"][0][3]  # the tie
    for name in ("MRR@10", "nDCG@10", "recall@1"):
        assert out["metrics"][name] == pytest.approx([np.mean([v[m][name] for v, _ in per_query]) for m in (0, 1)])
        a, b = (np.array([v[m][name] for v, relevant in per_query if relevant]) for m in (0, 1))
        test = out["tests"][name]
        assert (test["n"], test["skipped"]) == (4, 1)
        assert (test["wins"], test["losses"]) == (int((b - a > 1e-12).sum()), int((a - b > 1e-12).sum()))
        reference = 1.0 if np.all(a == b) else stats.permutation_test(
            (a, b), lambda x, y: np.mean(y - x), permutation_type="samples").pvalue  # 2^4 flips: exact
        assert test["p_value"] == pytest.approx(reference)
        assert name in out["verdicts"][name]
    shift = out["score_shift"]
    positives = [s for q in out["per_query"] for s, label in zip(q["scores"][0], q["labels"]) if label > 0]
    assert shift["threshold"] == pytest.approx(float(np.median(positives)))
    assert sum(shift["counts"]["B"]["positive"]) == len(positives)
    for cost, model in zip(out["cost"], models):
        assert cost["parameters"] == sum(p.numel() for p in model.model.parameters())
        assert cost["dtype"] == "float32" and cost["device"] == "cpu" and cost["load_s"] > 0
        assert cost["score_s_per_100"] > 0 and cost["peak_source"] == "process RssAnon added"


@pytest.mark.slow
def test_plain_text_report_and_card(bert_cls_family, tmp_path):
    merged = tmp_path / "merged"
    subprocess.run(["cp", "-r", str(bert_cls_family[1]), str(merged)], check=True)
    (merged / "README.md").write_text("# merged\n\n## Recipe\n\nrecipe here\n")
    data = _write(tmp_path / "eval.jsonl", QUERIES)
    args = ["--model", str(bert_cls_family[0]), "--model", str(merged), "--input", str(data), "--resamples", "500"]
    done = _run(*args, "--report", str(tmp_path / "eval"), "--card")
    assert done.returncode == 0, done.stderr
    assert "1st stage" in done.stdout and "paired over queries" in done.stdout
    assert "nDCG@10: not significant on 4 queries" in done.stdout or "nDCG@10: B better" in done.stdout \
        or "nDCG@10: A better" in done.stdout
    assert "score shift (logit) at threshold" in done.stdout and "per 100 pairs" in done.stdout
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["tests"]["nDCG@10"]["resamples"] == 500
    html = (tmp_path / "eval.html").read_text()
    assert html.count("<svg") == 4 and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in html and "src=" not in html  # self-contained
    assert _run(*args, "--card").returncode == 0  # a second evaluation replaces the first section
    card = (merged / "README.md").read_text()
    assert card.startswith("# merged\n\n## Recipe\n\nrecipe here\n") and card.count("## Evaluation") == 1
    assert "| nDCG@10 |" in card and "W / T / L" in card


@pytest.mark.slow
def test_report_into_a_missing_folder_is_one_line_and_writes_nothing(bert_cls_family, tmp_path):
    data = _write(tmp_path / "eval.jsonl", QUERIES[:2])
    done = _run("--model", str(bert_cls_family[0]), "--input", str(data), "--report", str(tmp_path / "no" / "eval"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "folder" in done.stderr and "does not exist" in done.stderr and not (tmp_path / "no").exists()


@pytest.mark.slow
def test_packaged_minilm_bi_encoder_against_its_cross_encoder(minilm_cross_encoder, tmp_path):
    rows = [json.loads(line) for line in Path("assets/demo/cooking/eval.jsonl").read_text().splitlines()[:6]]
    data = _write(tmp_path / "eval.jsonl", rows)
    done = _run("--model", str(minilm_folder()), "--model", str(minilm_cross_encoder), "--input", str(data),
                "--json", "--resamples", "1000")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [m["score"] for m in out["models"]] == ["cosine", "logit"]
    bi = load_reranker(str(minilm_folder()))
    docs, _ = _docs_labels(rows[0])
    assert out["per_query"][0]["scores"][0] == pytest.approx(bi.score(rows[0]["query"], docs), abs=1e-5)
    assert out["cost"][0]["parameters"] == 22_713_216  # all-MiniLM-L6-v2's published size
    assert out["baseline"]["MRR@10"] == 1.0  # the pos/neg format lists the positive first
    assert out["tests"]["nDCG@10"]["n"] == 6
