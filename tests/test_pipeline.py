"""One merge pipeline (core.merge.preview, core.merge.engine, core.merge.sinks): both sinks give the same
tensors, opened inputs are always closed, Check / `plan` / Merge reach one verdict, a hosted merge plans once."""
import shutil
import threading
from collections import namedtuple

import gradio as gr
import psutil
import pytest
import torch

import core.cocktail.sweep
import core.merge.preview
from core.__main__ import main
from core.app.workspace import Workspace
from core.errors import CheckpointError, MergeCancelled
from core.io.checkpoint import Checkpoint
from core.merge import plan as planner
from core.merge.engine import merge, merge_events, merge_into
from core.merge.preview import open_inputs, plan_inputs
from core.merge.recipe import recipe_from_dict, to_yaml
from tests.model_factory import read_tensors
from ui.merge.panel import merge as merge_handler
from ui.merge.panel import plan as check_handler

Usage = namedtuple("Usage", "total used free")
Memory = namedtuple("Memory", "total available")


def recipe_for(method: str, family, **parameters):
    base, *others = (str(f) for f in family)
    if method == "linear":
        models = [{"model": m, "parameters": {"weight": w}} for m, w in zip((base, *others), (0.2, 0.3, 0.5))]
        return recipe_from_dict({"merge_method": "linear", "models": models})
    if method == "slerp":
        return recipe_from_dict({"merge_method": "slerp", "base_model": base, "models": [{"model": others[0]}],
                                 "parameters": {"t": 0.3}})
    models = [{"model": m, "parameters": {"weight": w, **parameters}} for m, w in zip(others, (0.6, 0.4))]
    return recipe_from_dict({"merge_method": method, "base_model": base, "models": models})


def empty_weights(recipe) -> dict[str, torch.Tensor]:
    """A stand-in for a loaded model: one zeroed tensor per planned output, in the output dtype."""
    return {job.name: torch.zeros(job.shape, dtype=job.out_dtype) for job in plan_inputs(recipe).jobs}


@pytest.mark.parametrize("method, parameters, chunk", [
    ("linear", {}, None),
    ("task_arithmetic", {}, 1000),  # tensors merged in blocks of rows: the sink must place each block
    ("ties", {"density": 0.5}, None),
    ("dare_ties", {"density": 0.6}, None),  # random: the same seed must give the same drops in both sinks
    ("slerp", {}, None),
])
def test_the_weights_sink_gets_bitwise_the_shard_files_tensors(llama_family, tmp_path, monkeypatch,
                                                               method, parameters, chunk):
    if chunk is not None:
        monkeypatch.setattr(planner, "CHUNK_ELEMENTS", chunk)
    recipe = recipe_for(method, llama_family, **parameters)
    written = read_tensors(merge(recipe, tmp_path / "out", seed=1234))
    weights = empty_weights(recipe)
    events = list(merge_into(recipe, weights, seed=1234))
    assert [e.step for e in events] == list(range(1, len(written) + 1))
    assert events[-1].bytes_done == events[-1].bytes_total
    assert set(weights) == set(written)
    for name, tensor in written.items():
        assert weights[name].dtype == tensor.dtype and torch.equal(weights[name], tensor), name
    if method == "dare_ties":  # the seed matters, so equality above is not a coincidence of zero drops
        other = empty_weights(recipe)
        list(merge_into(recipe, other, seed=99))
        assert any(not torch.equal(other[name], weights[name]) for name in weights)


def test_the_sweep_uses_the_engines_loop_not_its_internals():
    for internal in ("tensor_chunks", "open_inputs", "plan_for"):
        assert not hasattr(core.cocktail.sweep, internal), internal


@pytest.fixture
def opened_and_closed(monkeypatch):
    """Every Checkpoint opened and every one closed (with its memory maps at the time) during the test."""
    opened, closed = [], []
    real_open, real_close = Checkpoint.open.__func__, Checkpoint.close

    def record_open(cls, ref, **kwargs):
        opened.append(real_open(cls, ref, **kwargs))
        return opened[-1]

    def record_close(self):
        real_close(self)
        closed.append(self)

    monkeypatch.setattr(Checkpoint, "open", classmethod(record_open))
    monkeypatch.setattr(Checkpoint, "close", record_close)
    return opened, closed


def test_inputs_are_closed_after_a_failed_plan(llama_family, bert_st_family, tmp_path, opened_and_closed):
    opened, closed = opened_and_closed
    recipe = recipe_for("linear", [llama_family[0], bert_st_family[1], llama_family[2]])
    with pytest.raises(CheckpointError, match="not the same architecture"):
        merge(recipe, tmp_path / "out")
    assert len(opened) == 3 and {id(c) for c in closed} == {id(c) for c in opened}
    assert list(tmp_path.iterdir()) == []


def test_inputs_opened_before_a_missing_one_are_closed(llama_family, tmp_path, opened_and_closed):
    opened, closed = opened_and_closed
    recipe = recipe_for("linear", [llama_family[0], llama_family[1], tmp_path / "missing"])
    with pytest.raises(CheckpointError):
        with open_inputs(recipe):
            pass
    assert len(opened) == 2 and {id(c) for c in closed} == {id(c) for c in opened}


@pytest.mark.parametrize("into", ["folder", "weights"])
def test_inputs_are_closed_after_cancel(llama_family, tmp_path, opened_and_closed, into):
    opened, closed = opened_and_closed
    recipe = recipe_for("task_arithmetic", llama_family)
    weights = empty_weights(recipe)
    del opened[:], closed[:]  # empty_weights planned (and closed) the inputs once already
    cancel = threading.Event()
    events = (merge_events(recipe, tmp_path / "out", cancel=cancel) if into == "folder"
              else merge_into(recipe, weights, cancel=cancel))
    with pytest.raises(MergeCancelled):
        for event in events:
            assert event.step == 1 and all(c._maps for c in opened)  # the first tensor was read from every mmap
            cancel.set()
    assert len(opened) == 3 and {id(c) for c in closed} == {id(c) for c in opened}
    assert all(not c._maps for c in opened) and list(tmp_path.iterdir()) == []


def test_a_checkpoint_in_with_is_closed_at_the_end(llama_family):
    with Checkpoint.open(str(llama_family[0])) as checkpoint:
        checkpoint.read(next(iter(checkpoint.tensors)))
        assert checkpoint._maps
    assert not checkpoint._maps


def _workspace(root, *, hosted=False, cap=None) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=hosted, max_output_bytes=cap)


@pytest.mark.parametrize("short", ["disk", "memory"])
def test_check_plan_and_merge_reach_the_same_verdict(llama_family, tmp_path, monkeypatch, short):
    """Disk free by 1 MB more than the shards need: the old Check (output bytes against free disk) said ready
    while Merge (output + side files) refused. Every path now reads one measurement with one rule."""
    recipe = recipe_for("linear", llama_family)
    ws = _workspace(tmp_path)
    recipe_file = tmp_path / "recipe.yml"
    recipe_file.write_text(to_yaml(recipe), encoding="utf-8")
    with Checkpoint.open(str(llama_family[0])) as first:  # the output: every tensor as stored (float32)
        written = first.total_bytes
    peak = plan_inputs(recipe).peak_bytes
    ram = psutil.virtual_memory().total
    cases = {"disk": ((written + 1_000_000, False), (written + 40_000_000, True)),
             "memory": ((peak - 1, False), (peak, True))}
    for free, fits in cases[short]:
        with monkeypatch.context() as patch:
            if short == "disk":
                patch.setattr(shutil, "disk_usage", lambda path, free=free: Usage(10 * free, 0, free))
            else:
                patch.setattr(psutil, "virtual_memory", lambda free=free: Memory(ram, free))
            checked = check_handler(to_yaml(recipe), f"m-{fits}", "cpu", ws)
            planned = main(["plan", str(recipe_file), "--out", str(ws.outputs_dir / f"m-{fits}")])
            try:
                list(merge_handler(to_yaml(recipe), f"m-{fits}", "cpu", False, 0, ws))
                merged = True
            except gr.Error as error:
                merged = False
                assert f"not enough {short}" in error.message
        assert checked.startswith("**✓ Ready to merge.**") is fits, checked
        assert (planned == 0) is fits and merged is fits
        assert (f"not enough {short}" in checked) is not fits


def test_a_hosted_merge_opens_and_plans_each_input_once(llama_family, tmp_path, monkeypatch, opened_and_closed):
    opened, _ = opened_and_closed
    plans = []
    real_plan = core.merge.preview.plan_merge
    monkeypatch.setattr(core.merge.preview, "plan_merge", lambda *a, **k: plans.append(a[0]) or real_plan(*a, **k))
    ws = _workspace(tmp_path, hosted=True, cap=10**9)
    for i, folder in enumerate(llama_family):
        shutil.copytree(folder, ws.models_dir / f"m{i}")
    recipe = recipe_for("linear", [f"models/m{i}" for i in range(3)])
    status, *_ = list(merge_handler(to_yaml(recipe), "x", "cpu", False, 0, ws))[-1]
    assert status.startswith("**✓ Merged**")
    assert len(plans) == 1
    assert sorted(c.folder.resolve() for c in opened) == [ws.models_dir / f"m{i}" for i in range(3)]
    del opened[:], plans[:]
    with pytest.raises(gr.Error, match="not enough room"):  # the cap still refuses, on that one preview
        list(merge_handler(to_yaml(recipe), "y", "cpu", False, 0, _workspace(tmp_path, hosted=True, cap=1000)))
    assert len(plans) == 1 and len(opened) == 3
    assert not any(p.name.startswith("y") for p in (ws.outputs_dir / "sessions" / "local").iterdir())
