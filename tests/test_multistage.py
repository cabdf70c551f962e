"""Multi-stage recipes (mergekit-multi's format): the same tensors as running the stages by hand, and as mergekit."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
import torch
import yaml

from core.cli.main import main
from core.devices import devices_for
from core.errors import MergeCancelled, RecipeError
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from core.merge.stages import merge_stages, parse_stages, preview_stages
from tests.model_factory import read_tensors

MERGEKIT = os.environ.get("MERGEKIT_YAML", "")


def documents(base, a, b) -> list[dict]:
    """Two named stages and an unnamed final that reads both (one of them also as the base)."""
    return [
        {"name": "first", "merge_method": "slerp", "base_model": str(base),
         "models": [{"model": str(base)}, {"model": str(a)}], "parameters": {"t": 0.3}, "dtype": "float32"},
        {"name": "second", "merge_method": "linear", "dtype": "float32",
         "models": [{"model": str(a), "parameters": {"weight": 0.4}},
                    {"model": str(b), "parameters": {"weight": 0.6}}]},
        {"merge_method": "task_arithmetic", "base_model": "first", "dtype": "float32",
         "models": [{"model": "second", "parameters": {"weight": 0.8}},
                    {"model": str(b), "parameters": {"weight": 0.3}}]},
    ]


def write(path: Path, docs: list[dict]) -> str:
    text = yaml.safe_dump_all(docs, sort_keys=False)
    path.write_text(text)
    return text


def by_hand(docs: list[dict], root: Path) -> Path:
    """Each stage merged on its own, names replaced by hand."""
    first = merge(recipe_from_dict({k: v for k, v in docs[0].items() if k != "name"}), root / "h1")
    second = merge(recipe_from_dict({k: v for k, v in docs[1].items() if k != "name"}), root / "h2")
    final = dict(docs[2], base_model=str(first))
    final["models"] = [dict(final["models"][0], model=str(second)), final["models"][1]]
    return merge(recipe_from_dict(final), root / "h3")


def assert_same(mine: Path, theirs: Path, **tolerance) -> None:
    a, b = read_tensors(mine), read_tensors(theirs)
    assert set(a) == set(b)
    for name, tensor in b.items():
        torch.testing.assert_close(a[name], tensor, msg=name, **(tolerance or {"atol": 0, "rtol": 0}))


def test_cli_merge_equals_the_stages_run_by_hand(llama_family, tmp_path, capsys):
    docs = documents(*llama_family)
    write(tmp_path / "multi.yml", docs)
    assert main(["merge", str(tmp_path / "multi.yml"), str(tmp_path / "out"), "--quiet"]) == 0
    assert_same(tmp_path / "out", by_hand(docs, tmp_path))
    assert sorted(p.name for p in (tmp_path / "out-stages").iterdir()) == ["first", "second"]  # intermediates kept
    assert_same(tmp_path / "out-stages" / "first", tmp_path / "h1")
    base = read_tensors(llama_family[0])
    assert any(not torch.equal(t, base[n]) for n, t in read_tensors(tmp_path / "out").items())


def test_stages_run_in_dependency_order_and_existing_intermediates_are_reused(llama_family, tmp_path):
    docs = documents(*llama_family)
    final, rest = docs[2], docs[:2]
    stages = parse_stages(write(tmp_path / "m.yml", [final, *rest]), tmp_path / "out")
    assert [s.label for s in stages] == ["first", "second", "final"]
    assert stages[0].out == tmp_path / "out-stages" / "first" and stages[2].out == tmp_path / "out"
    list(merge_stages(stages))
    again = parse_stages(write(tmp_path / "m.yml", [final, *rest]), tmp_path / "again",
                         intermediate_dir=tmp_path / "out-stages")
    events = list(merge_stages(again))
    assert [e.stage.label for e in events if e.progress is None] == ["first", "second"]  # mergekit's --lazy
    assert_same(tmp_path / "again", tmp_path / "out")


def test_plan_shows_every_stage_before_any_exists(llama_family, tmp_path, capsys):
    write(tmp_path / "multi.yml", documents(*llama_family))
    assert main(["plan", str(tmp_path / "multi.yml"), "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "stage 1/3 first" in shown and "stage 3/3 final" in shown and shown.count("tensors ") == 3
    assert not (tmp_path / "out-stages").exists()
    planned = preview_stages(parse_stages((tmp_path / "multi.yml").read_text(), tmp_path / "out"), devices_for("cpu"))
    real = merge(recipe_from_dict({k: v for k, v in documents(*llama_family)[0].items() if k != "name"}),
                 tmp_path / "real")
    assert planned[2][1].plan.bytes_written == sum(f.stat().st_size for f in real.glob("*.safetensors")) - sum(
        _header_bytes(f) for f in real.glob("*.safetensors"))


def _header_bytes(file: Path) -> int:
    with open(file, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def test_a_bad_last_stage_stops_before_the_first_runs(llama_family, tmp_path):
    docs = documents(*llama_family)
    docs[2]["parameters"] = {"t": 0.5}  # not a task_arithmetic parameter
    with pytest.raises(RecipeError, match="stage final: unknown parameter 't'"):
        parse_stages(write(tmp_path / "m.yml", docs), tmp_path / "out")
    docs = documents(*llama_family)
    docs[2]["models"][1]["model"] = str(tmp_path / "missing")
    with pytest.raises(Exception, match="not found"):
        list(merge_stages(parse_stages(write(tmp_path / "m.yml", docs), tmp_path / "out")))
    assert not (tmp_path / "out-stages").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("docs, message", [
    ([{"merge_method": "linear", "models": ["a"]}] * 2, "documents without a name"),
    ([{"name": "x", "merge_method": "nearswap", "base_model": "y", "models": ["y", "a"], "parameters": {"t": 0.1}},
      {"name": "y", "merge_method": "nearswap", "base_model": "x", "models": ["x", "a"], "parameters": {"t": 0.1}},
      {"merge_method": "nearswap", "base_model": "x", "models": ["x", "a"], "parameters": {"t": 0.1}}], "cycle"),
    ([{"name": "x", "merge_method": "linear", "models": ["a"]}] * 2, "two stages 'x'"),
    ([{"name": "../up", "merge_method": "linear", "models": ["a"]}], "not allowed"),
])
def test_malformed_stage_sets_are_refused_in_one_line(tmp_path, docs, message):
    with pytest.raises(RecipeError, match=message) as error:
        parse_stages(yaml.safe_dump_all(docs), tmp_path / "out")
    assert "\n" not in str(error.value)


def test_a_stop_in_the_last_stage_leaves_no_final_model(llama_family, tmp_path):
    cancel = threading.Event()
    stages = parse_stages(write(tmp_path / "m.yml", documents(*llama_family)), tmp_path / "out")
    with pytest.raises(MergeCancelled):
        for event in merge_stages(stages, cancel=cancel):
            if event.stage.final and event.progress.step == 2:
                cancel.set()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert (tmp_path / "out-stages" / "second").is_dir()  # finished stages are kept, as mergekit-multi keeps them


@pytest.mark.skipif(not Path(MERGEKIT).is_file(), reason="MERGEKIT_YAML not set")
def test_same_tensors_as_mergekit_multi(llama_family, tmp_path):
    multi = Path(MERGEKIT).with_name("mergekit-multi")
    docs = documents(*llama_family)
    write(tmp_path / "multi.yml", docs)
    done = subprocess.run([str(multi), str(tmp_path / "multi.yml"), "--out-path", str(tmp_path / "theirs"),
                           "--intermediate-dir", str(tmp_path / "theirs-stages")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["merge", str(tmp_path / "multi.yml"), str(tmp_path / "ours"), "--quiet"]) == 0
    assert_same(tmp_path / "ours", tmp_path / "theirs", atol=2e-6, rtol=1e-5)
    assert_same(tmp_path / "ours-stages" / "first", tmp_path / "theirs-stages" / "first", atol=2e-6, rtol=1e-5)


def _workspace(root: Path, *, hosted: bool = False):
    from core.app.workspace import Workspace

    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=hosted)


def test_the_app_checks_every_stage_and_merges_them_with_progress_per_stage(llama_family, tmp_path):
    from ui.merge.form import on_yaml
    from ui.merge.panel import merge as merge_handler
    from ui.merge.panel import plan as plan_handler
    from ui.merge.recipe_form import new_form

    ws, docs = _workspace(tmp_path), documents(*llama_family)
    text = yaml.safe_dump_all(docs, sort_keys=False)
    assert on_yaml(text, new_form(), 0).recipe_status.startswith("✓ A multi-stage recipe")
    checked = plan_handler(text, "mix", "cpu", ws)
    assert [checked.count(f"**Stage {i}/3") for i in (1, 2, 3)] == [1, 1, 1] and checked.count("✓ Ready") == 3
    updates = list(merge_handler(text, "mix", "cpu", False, 0, ws))
    statuses = [u[0] for u in updates]
    assert any(s.startswith("stage 1/3 first · ") for s in statuses)
    assert any(s.startswith("stage 3/3 final · ") for s in statuses) and statuses[-1].startswith("**✓ Merged**")
    assert updates[-1][4] == str(ws.outputs_dir / "mix")
    assert_same(ws.outputs_dir / "mix", by_hand(docs, tmp_path))
    assert (ws.outputs_dir / "mix-stages" / "second").is_dir()


def test_the_app_stop_between_tensors_leaves_no_final_model(llama_family, tmp_path):
    from ui import jobs
    from ui.merge.panel import merge as merge_handler
    from ui.merge.panel import stop

    ws = _workspace(tmp_path)
    text = yaml.safe_dump_all(documents(*llama_family), sort_keys=False)
    for status, *_ in merge_handler(text, "mix", "cpu", False, 0, ws):
        if status.startswith("stage 3/3"):
            stop()
    assert status.startswith("**■ Stopped.**")
    assert not (ws.outputs_dir / "mix").exists() and not list(ws.outputs_dir.glob("*.partial"))
    assert not jobs.is_running("local", "merge")


def test_hosted_refs_of_every_stage_pass_the_path_policy(llama_family, tmp_path):
    from ui.merge.panel import plan as plan_handler

    docs = documents(*llama_family)
    docs[1]["models"][0]["model"] = "/etc"
    shown = plan_handler(yaml.safe_dump_all(docs), "mix", "cpu", _workspace(tmp_path, hosted=True))
    assert shown.startswith("**✗ Not ready:**") and "absolute paths are refused" in shown
