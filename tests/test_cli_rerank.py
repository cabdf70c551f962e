"""python -m core rerank / evaluate, driven through main([...]) and as a real subprocess."""
import json
import subprocess
import sys

import pytest

from core.__main__ import main
from core.rerank.model import load_reranker


def test_rerank_json_has_the_documented_shape_and_the_engines_scores(bert_cls_family, capsys):
    base, tuned = str(bert_cls_family[0]), str(bert_cls_family[1])
    code = main(["rerank", "--model", base, "--model", tuned, "--query", "the model", "--doc", "hello world",
                 "--doc", "the model said", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in out["models"]] == [base, tuned]
    assert [m["kind"] for m in out["models"]] == ["cross-encoder", "cross-encoder"]
    expected = load_reranker(tuned).score("the model", ["hello world", "the model said"])
    assert out["models"][1]["scores"] == [pytest.approx(expected, abs=1e-6)]
    assert "metrics" not in out


def test_rerank_input_file_with_labels_reports_metrics(bert_cls_family, tmp_path, capsys):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"query": "the model", "pos": ["the model said hello"], "neg": ["world", "hello"]}))
    code = main(["rerank", "--model", str(bert_cls_family[0]), "--input", str(data), "--json", "--normalize"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    scores = out["models"][0]["scores"][0]
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    assert set(out["metrics"]) >= {"MRR@10", "nDCG@10", "recall@1"}


def test_rerank_table_and_evaluate_table(bert_cls_family, tmp_path, capsys):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[2])
    assert main(["rerank", "--model", a, "--model", b, "--query", "the model", "--doc", "hello", "--doc", "world"]) == 0
    table = capsys.readouterr().out
    assert "A logit" in table and "B rank" in table and "Kendall tau" in table
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"query": "the model", "docs": ["the model", "world"], "labels": [1, 0]}) + "\n")
    assert main(["evaluate", "--model", a, "--model", b, "--input", str(data)]) == 0
    report = capsys.readouterr().out
    assert "1 labelled queries, 2 passages" in report
    assert "nDCG@10" in report and "B − A" in report
    second = {"query": "hello", "docs": ["hello there", "goodbye"], "labels": [1, 0]}
    data.write_text(data.read_text() + json.dumps(second) + "\n")
    assert main(["evaluate", "--model", a, "--input", str(data), "--pool"]) == 0
    assert "2 labelled queries, 8 passages" in capsys.readouterr().out  # each query against all 4 passages


@pytest.mark.parametrize("args, message", [
    (["rerank", "--model", "{model}", "--query", "q"], "give --query with at least one --doc"),
    (["rerank", "--model", "{model}", "--input", "{missing}"], "cannot read"),
    (["rerank", "--model", "{model}", "--query", "q", "--doc", "d", "--device", "cuda:9"], "device 'cuda:9' does not exist"),
    (["rerank", "--model", "{tmp}", "--query", "q", "--doc", "d"], "is not a model folder"),
    (["evaluate", "--model", "{model}"], "evaluate needs --input"),
])
def test_cli_errors_are_one_line(bert_cls_family, tmp_path, capsys, args, message):
    args = [a.format(model=bert_cls_family[0], missing=tmp_path / "none.jsonl", tmp=tmp_path) for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_runs_as_a_module(bert_cls_family):
    done = subprocess.run([sys.executable, "-m", "core", "rerank", "--model", str(bert_cls_family[0]),
                           "--query", "hello", "--doc", "world", "--json"], capture_output=True, text=True,
                          timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["models"][0]["scores"][0]) == 1


def test_a_mixed_pair_names_each_models_score_kind(bert_cls_family, bert_st_family, capsys):
    a, b = str(bert_cls_family[0]), str(bert_st_family[0])
    assert main(["rerank", "--model", a, "--model", b, "--query", "the model", "--doc", "hello", "--doc", "world"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("#"))
    assert header.split()[:5] == ["#", "A", "logit", "B", "cosine"]  # not "A logit / cosine"
