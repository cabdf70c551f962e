"""The α-sweep (core.cocktail.sweep): its ends are the input models, and both ways of merging agree.

Reference metrics come from core.rerank.model on the input models themselves; the merged weights
of the in-memory path are checked against the engine's merged folder and a hand average.
"""
import json
import threading

import pytest
import torch

from core.__main__ import main
from core.cocktail.sweep import read_sets, sweep, sweep_recipe
from core.cocktail.sweep_merges import Scoring, merged_in_memory, merged_on_disk, weights_line_up
from core.errors import MergeCancelled, RerankError
from core.merge.engine import merge, open_inputs, plan_for
from core.rerank.compare import QueryItem, compare
from core.rerank.model import load_reranker
from tests.model_factory import read_tensors

SETS = {
    "in-domain": [QueryItem("the model", ["hello world", "the model said", "good day", "time way"], [0, 1, 0, 1]),
                  QueryItem("merge", ["merge model", "the way", "her", "new year"], [1, 0, 0, 0])],
    "general": [QueryItem("what is it", ["it is a model", "no", "hello", "they were all"], [0, 0, 1, 0]),
                QueryItem("call me", ["she will call", "the world", "so good"], [1, 0, 0])],
}
SCORING = Scoring(batch_size=8)


def direct_metrics(ref, items):
    return compare([load_reranker(ref)], items).metrics


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_the_ends_of_the_sweep_are_the_two_input_models(bert_cls_family, mode):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    result = sweep(a, b, SETS, alphas=[0, 0.5, 1], mode=mode)
    assert result.mode == mode and result.alphas == [0.0, 0.5, 1.0]
    for name, items in SETS.items():
        for alpha, ref in ((0.0, a), (1.0, b)):
            point = next(p for p in result.points if p.alpha == alpha and p.set_name == name)
            assert point.metrics == {k: v[0] for k, v in direct_metrics(ref, items).items()}  # exactly
    ends = [result.values(s, "nDCG@10") for s in SETS]
    assert any(values[0] != values[-1] for values in ends)  # A and B differ here, so the check has teeth


@pytest.mark.parametrize("family", ["bert_cls_family", "bert_st_family", "llama_family"])
def test_memory_and_disk_merges_score_the_same(family, request):
    a, b = (str(f) for f in request.getfixturevalue(family)[:2])
    recipes = [(sweep_recipe("linear", a, b, alpha), 0) for alpha in (0.3, 0.8)]
    pairs = [(item.query, doc) for items in SETS.values() for item in items for doc in item.docs]
    in_memory = [(used, r.score_pairs(pairs)) for r, used in merged_in_memory(recipes, SCORING, None)]
    on_disk = [(used, r.score_pairs(pairs)) for r, used in merged_on_disk(recipes, SCORING, None)]
    assert [used for used, _ in in_memory] == ["memory"] * 2 and [used for used, _ in on_disk] == ["disk"] * 2
    for (_, memory_scores), (_, disk_scores) in zip(in_memory, on_disk):
        assert memory_scores == pytest.approx(disk_scores, abs=1e-6)
    assert in_memory[0][1] != pytest.approx(in_memory[1][1], abs=1e-6)  # α matters: not the same model twice


def test_in_memory_weights_are_the_weighted_average(bert_cls_family, tmp_path):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[2])
    recipe = sweep_recipe("linear", a, b, 0.25)
    reranker, _ = next(merged_in_memory([(recipe, 0)], SCORING, None))
    state = reranker.model.state_dict()
    tensors_a, tensors_b = read_tensors(bert_cls_family[0]), read_tensors(bert_cls_family[2])
    for name, tensor in tensors_a.items():
        if tensor.is_floating_point():
            assert torch.allclose(state[name], 0.75 * tensor + 0.25 * tensors_b[name], atol=1e-7), name
    written = read_tensors(merge(recipe, tmp_path / "merged"))
    assert all(torch.equal(state[name], tensor) for name, tensor in written.items())


def test_task_arithmetic_starts_at_the_base(bert_cls_family):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    result = sweep(a, b, SETS, alphas=[0, 1.5], method="task_arithmetic", mode="memory")
    for name, items in SETS.items():
        assert result.points[list(SETS).index(name)].metrics["MRR@10"] == direct_metrics(a, items)["MRR@10"][0]
    assert result.alphas == [0.0, 1.5]  # task arithmetic may extrapolate


def test_weights_line_up_only_when_every_tensor_has_its_place(bert_cls_family):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    recipe = sweep_recipe("linear", a, b, 0.5)
    reranker, used = next(merged_in_memory([(recipe, 0)], SCORING, None))
    weights = dict(reranker.model.named_parameters())
    checkpoints = open_inputs(recipe)
    try:
        plan = plan_for(recipe, checkpoints)
    finally:
        for checkpoint in checkpoints.values():
            checkpoint.close()
    assert used == "memory" and weights_line_up(plan, weights)
    assert not weights_line_up(plan, {f"renamed.{name}": tensor for name, tensor in weights.items()})
    first = plan.jobs[0].name
    assert not weights_line_up(plan, {**weights, first: weights[first].unsqueeze(0)})  # same name, other shape


def test_a_model_whose_names_do_not_line_up_is_merged_on_disk(bert_cls_family, monkeypatch):
    import core.cocktail.sweep_merges

    monkeypatch.setattr(core.cocktail.sweep_merges, "weights_line_up", lambda plan, weights: False)
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    result = sweep(a, b, SETS, alphas=[0, 1], mode="memory")
    assert result.mode == "disk"
    assert result.values("general", "nDCG@10")[0] == direct_metrics(a, SETS["general"])["nDCG@10"][0]


def test_the_table_and_the_cli_show_the_same_numbers(bert_cls_family, tmp_path, capsys):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[2])
    files = []
    for name, items in SETS.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "eval.jsonl").write_text("\n".join(json.dumps({"query": i.query, "docs": i.docs, "labels": i.labels})
                                                     for i in items), encoding="utf-8")
        files.append(str(folder / "eval.jsonl"))
    result = sweep(a, b, read_sets([(None, f) for f in files]), alphas=[0, 0.5, 1])
    set_args = [arg for f in files for arg in ("--set", f)]
    assert main(["sweep", "--model-a", a, "--model-b", b, "--alphas", "0,0.5,1", *set_args]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("alpha  in-domain nDCG@10  in-domain MRR@10  general nDCG@10  general MRR@10")
    rows = [[float(cell) for cell in line.split()] for line in lines[header + 1:]]
    assert [row[0] for row in rows] == [0.0, 0.5, 1.0]
    for column, (name, metric) in enumerate([(s, m) for s in SETS for m in ("nDCG@10", "MRR@10")], 1):
        assert [row[column] for row in rows] == pytest.approx(result.values(name, metric), abs=5e-5)
    assert main(["sweep", "--model-a", a, "--model-b", b, "--alphas", "0,1", "--json", "--set", files[0]]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sets"] == ["in-domain"] and len(data["points"]) == 2 and "nDCG@10" in data["points"][0]


def test_read_sets_names_sets_by_folder_or_by_name(tmp_path):
    line = json.dumps({"query": "q", "pos": ["p"], "neg": ["n"]})
    for name in ("cooking", "general"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.jsonl").write_text(line, encoding="utf-8")
    (tmp_path / "mine.jsonl").write_text(line, encoding="utf-8")
    sets = read_sets([(None, tmp_path / "cooking" / "eval.jsonl"), ("gen", tmp_path / "general" / "eval.jsonl"),
                      (None, str(tmp_path / "mine.jsonl"))])
    assert list(sets) == ["cooking", "gen", "mine"] and sets["mine"][0].labels == [1, 0]
    with pytest.raises(RerankError, match="two sets are called 'mine'"):
        read_sets([(None, tmp_path / "mine.jsonl")] * 2)
    second = json.dumps({"query": "r", "pos": ["p2"], "neg": ["n2", "n"]})
    (tmp_path / "two.jsonl").write_text(line + "\n" + second, encoding="utf-8")
    pooled_set = read_sets([(None, tmp_path / "two.jsonl")], pool=True)["two"]
    assert [item.docs for item in pooled_set] == [["p", "n", "p2", "n2"]] * 2
    assert [item.labels for item in pooled_set] == [[1, 0, 0, 0], [0, 0, 1, 0]]


def test_bad_sweeps_fail_before_loading_anything(bert_cls_family):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    with pytest.raises(RerankError, match=r"linear needs every α in \[0, 1\]"):
        sweep(a, b, SETS, alphas=[0, 1.5])
    with pytest.raises(RerankError, match="every query needs labels"):
        sweep(a, b, {"plain": [QueryItem("q", ["d"])]})
    with pytest.raises(RerankError, match="unknown sweep method 'ties'"):
        sweep(a, b, SETS, method="ties")
    with pytest.raises(RerankError, match="give at least one labelled set"):
        sweep(a, b, {})
    stop = threading.Event()
    stop.set()
    with pytest.raises(MergeCancelled):
        sweep(a, b, SETS, cancel=stop)
