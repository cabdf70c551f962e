"""The playground's handlers, called without a browser."""
import os

import gradio as gr
import pytest

from core.app.workspace import Workspace
from core.rerank.model import load_reranker, loaded_rerankers
from ui.common import default_pair
from ui.passage_box import parse_passages
from ui.playground import rerank_compare, unload_all


@pytest.fixture
def workspace(tmp_path):
    return Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")


def test_compare_table_holds_both_models_scores_and_rank_changes(bert_cls_family, workspace):
    base, tuned = str(bert_cls_family[0]), str(bert_cls_family[2])
    docs = ["the model said hello", "world", "hello to the world", "merge"]
    status, styled, chart, metrics, loaded = rerank_compare(base, tuned, "the model", "\n".join(docs), None, "cpu",
                                                           False, workspace)
    table = styled.data
    expected_a = dict(zip(docs, load_reranker(base).score("the model", docs)))
    expected_b = dict(zip(docs, load_reranker(tuned).score("the model", docs)))
    assert sorted(table["passage"]) == sorted(docs)
    for _, row in table.iterrows():
        assert row["A score"] == pytest.approx(expected_a[row["passage"]], abs=1e-4)
        assert row["B score"] == pytest.approx(expected_b[row["passage"]], abs=1e-4)
        assert row["rank change"] == row["A rank"] - row["B rank"]
    assert list(table["B rank"]) == sorted(table["B rank"])  # listed in B's order
    assert "Scores are **logit**" in status and "cross-encoder on cpu" in status
    assert len(chart.data) == len(docs) and tuple(chart.data[0].x) == ("A", "B")
    assert list(metrics["metric"]) == ["Kendall tau (A vs B)", "top-10 overlap"]  # no labels, no MRR
    assert "bert-cls-0" in loaded and "bert-cls-2" in loaded


def test_plus_marks_relevant_passages_and_turns_on_metrics(bert_cls_family, workspace):
    _, styled, _, metrics, _ = rerank_compare(str(bert_cls_family[0]), str(bert_cls_family[1]), "the model",
                                              "+ the model said\nworld\n+hello", None, "cpu", True, workspace)
    assert set(styled.data["relevant"]) == {"✓", ""}
    assert {"MRR@10", "nDCG@10"} <= set(metrics["metric"])
    assert all(0 < s < 1 for s in styled.data["A score"])  # sigmoid


def test_jsonl_upload_compares_several_queries(bert_cls_family, workspace, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"query": "the model", "pos": ["the model said"], "neg": ["world"]}\n'
                    '{"query": "hello", "docs": ["hello world", "merge", "the"]}\n')
    _, styled, _, metrics, _ = rerank_compare(str(bert_cls_family[0]), str(bert_cls_family[1]), "", "", str(data),
                                              "cpu", False, workspace)
    assert list(styled.data["query"]).count("the model") == 2 and list(styled.data["query"]).count("hello") == 3
    assert "MRR@10" in set(metrics["metric"])


@pytest.mark.parametrize("a, query, passages, device, message", [
    ("{tmp}/nothing", "q", "d", "cpu", "not found"),
    ("{model}", "", "d", "cpu", "a query is empty"),
    ("{model}", "q", "  \n ", "cpu", "has no passages to rank"),
    ("{model}", "q", "d", "cuda:4", "device 'cuda:4' does not exist"),
])
def test_bad_input_is_one_message_in_the_page(bert_cls_family, workspace, tmp_path, a, query, passages, device,
                                              message):
    with pytest.raises(gr.Error, match=message):
        rerank_compare(a.format(tmp=tmp_path, model=bert_cls_family[0]), str(bert_cls_family[1]), query, passages,
                       None, device, False, workspace)


def test_hosted_playground_refuses_server_paths(bert_cls_family, tmp_path):
    hosted = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs", hosted=True)
    with pytest.raises(gr.Error, match="absolute paths are refused"):
        rerank_compare("/etc", str(bert_cls_family[0]), "q", "d", None, "cpu", False, hosted)


def test_parse_passages_reads_plus_marks():
    [item] = parse_passages("q", "+ first\n\nsecond\n+third ")
    assert item.docs == ["first", "second", "third"] and item.labels == [1, 0, 1]
    assert parse_passages("q", "a\nb")[0].labels is None


def test_default_pair_is_the_latest_merge_and_its_base(workspace):
    assert default_pair(workspace)[0] == default_pair(workspace)[1]  # no merge yet: the packaged model twice
    older, newer = workspace.outputs_dir / "older", workspace.outputs_dir / "newer"
    for folder, base in ((older, "org/old-base"), (newer, "org/new-base")):
        folder.mkdir(parents=True)
        (folder / "mergekit_config.yml").write_text(f"merge_method: linear\nbase_model: {base}\n"
                                                    "models:\n  - model: x\n")
    os.utime(older / "mergekit_config.yml", (1, 1))
    os.utime(newer / "mergekit_config.yml", (2, 2))
    assert default_pair(workspace) == ("org/new-base", str(newer))


def test_unload_all_empties_the_cache(bert_cls_family, workspace):
    load_reranker(str(bert_cls_family[0]))
    assert "No models loaded." == unload_all(workspace)
    assert loaded_rerankers() == []
