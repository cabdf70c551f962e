"""The Merge tab's handlers, called as plain functions: plan, merge, stop, zip, push, hosted rules."""
import shutil
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.app.workspace import Workspace
from core.io.checkpoint import Checkpoint
from ui import jobs
from ui.merge.form import on_example, on_yaml, refresh_models
from ui.merge.panel import card_markdown, merge, plan, stop
from ui.merge.recipe_form import new_form
from ui.merge.result_export import make_zip, push

WEIGHTS = (0.2, 0.3, 0.5)


def _workspace(root: Path, *, hosted: bool = False, cap: int | None = None) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=hosted, max_output_bytes=cap)


def linear_yaml(models) -> str:
    rows = "".join(f"  - model: {m}\n    parameters: {{weight: {w}}}\n" for m, w in zip(models, WEIGHTS))
    return f"merge_method: linear\nmodels:\n{rows}"


def run(generator) -> list[tuple]:
    return list(generator)


def test_plan_reports_tensors_bytes_and_memory(tmp_path, llama_family):
    text = plan(linear_yaml(llama_family), "m", "cpu", _workspace(tmp_path))
    count = len(Checkpoint.open(str(llama_family[0])).tensors)
    assert text.startswith("**✓ Ready to merge.**")
    assert f"| Tensors | {count} ({count} merged, 0 copied) |" in text
    assert "RAM" in text and "Free disk" in text and "→ `m`" in text
    assert "Vocabulary" not in text
    realigned = plan(linear_yaml(llama_family) + "tokenizer_source: union\n", "m", "cpu", _workspace(tmp_path))
    assert "| Vocabulary | union: 108 tokens (embedding rows realigned) |" in realigned


@pytest.mark.parametrize("yaml_text, name, problem", [
    ("merge_method: [", "m", "not valid YAML"),
    (None, "../../app.py", "output name"),
    ("merge_method: linear\nmodels:\n  - model: /no/such/folder\n    parameters: {weight: 1}\n", "m", "not found"),
])
def test_plan_says_why_it_is_not_ready(tmp_path, llama_family, yaml_text, name, problem):
    text = plan(yaml_text or linear_yaml(llama_family), name, "cpu", _workspace(tmp_path))
    assert text.startswith("**✗ Not ready:**") and problem in text and "\n" not in text


def test_plan_refuses_mismatched_architectures_and_bad_devices(tmp_path, llama_family, bert_st_family):
    mixed = plan(linear_yaml([llama_family[0], bert_st_family[1]]), "m", "cpu", _workspace(tmp_path))
    assert "not the same architecture" in mixed
    assert "unknown device" in plan(linear_yaml(llama_family), "m", "tpu", _workspace(tmp_path))


def test_merge_streams_progress_and_writes_the_linear_merge(tmp_path, llama_family):
    ws = _workspace(tmp_path)
    updates = run(merge(linear_yaml(llama_family), "mix", "cpu", False, 0, ws))
    status, log, folder, card, state = updates[-1]
    out = ws.outputs_dir / "mix"
    assert status.startswith("**✓ Merged**") and folder == str(out) and state == str(out)
    assert any("tensor 1/" in update[0] for update in updates[:-1])
    assert log.endswith("done") and "(cpu)" in log
    inputs = [load_file(next(Path(m).glob("*.safetensors"))) for m in llama_family]
    merged = load_file(out / "model.safetensors")
    assert merged.keys() == inputs[0].keys()
    for name, tensor in merged.items():
        expected = sum(w * model[name] for w, model in zip(WEIGHTS, inputs)) / sum(WEIGHTS)
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-6)
    assert card.startswith("# mix") and "---" not in card.splitlines()[0]
    assert "Linear" in card_markdown(out)


def test_nan_in_an_input_is_shown_in_the_log_and_the_status(tmp_path, llama_family):
    ws = _workspace(tmp_path)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(llama_family[2], poisoned)
    file = next(poisoned.glob("*.safetensors"))
    tensors = load_file(file)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.dim() == 2)
    tensors[name][0, :3] = float("nan")
    save_file(tensors, file, metadata={"format": "pt"})
    status, log, *_ = run(merge(linear_yaml([*llama_family[:2], poisoned]), "nan", "cpu", False, 0, ws))[-1]
    assert status.startswith("**✓ Merged**") and "**⚠ 1 input tensor(s) hold NaN/Inf**" in status
    assert f"⚠ {poisoned}: tensor {name!r} holds 3 NaN/Inf value(s)" in log.splitlines() and log.endswith("done")


def test_stop_mid_merge_leaves_no_folder(tmp_path, llama_family):
    ws = _workspace(tmp_path)
    updates = merge(linear_yaml(llama_family), "stopped", "cpu", False, 0, ws)
    assert stop() == "Nothing is running."
    for status, *_ in updates:
        if "tensor 1/" in status:
            assert stop() == "Stopping after the current tensor…"
    assert status.startswith("**■ Stopped.**")
    assert not (ws.outputs_dir / "stopped").exists() and not list(ws.outputs_dir.glob("*.partial"))
    assert not jobs.is_running("local", "merge")


def test_a_failing_merge_raises_one_line_and_keeps_the_old_folder(tmp_path, llama_family):
    ws = _workspace(tmp_path)
    (ws.outputs_dir / "taken").mkdir(parents=True)
    updates = []
    with pytest.raises(gr.Error, match="already exists"):
        for update in merge(linear_yaml(llama_family), "taken", "cpu", False, 0, ws):
            updates.append(update)
    assert updates[-1][0].startswith("**✗ Merge failed:**")
    assert list((ws.outputs_dir / "taken").iterdir()) == []
    run(merge(linear_yaml(llama_family), "taken", "cpu", True, 0, ws))  # Replace ticked
    assert (ws.outputs_dir / "taken" / "model.safetensors").exists()


def test_hosted_merges_stay_in_the_session_and_obey_the_cap(tmp_path, llama_family):
    ws = _workspace(tmp_path, hosted=True, cap=10**9)
    for i, folder in enumerate(llama_family):
        shutil.copytree(folder, ws.models_dir / f"m{i}")
    outside = plan(linear_yaml(llama_family), "x", "cpu", ws)
    assert "absolute paths are refused" in outside
    inside = linear_yaml([f"models/m{i}" for i in range(3)])
    assert plan(inside, "x", "cpu", ws).startswith("**✓ Ready")
    status, _, folder, _, state = run(merge(inside, "x", "cpu", False, 0, ws))[-1]
    assert folder == "outputs/sessions/local/x" and Path(state) == ws.outputs_dir / "sessions" / "local" / "x"
    tiny_cap = _workspace(tmp_path, hosted=True, cap=1000)
    with pytest.raises(gr.Error, match="not enough room"):
        run(merge(inside, "y", "cpu", False, 0, tiny_cap))
    assert "not enough room" in plan(inside, "y", "cpu", tiny_cap)


def test_zip_and_push_use_the_latest_output(tmp_path, llama_family, monkeypatch):
    archive = make_zip(str(llama_family[0]), _workspace(tmp_path))
    names = zipfile.ZipFile(archive.value["path"]).namelist()
    assert archive.visible and f"{llama_family[0].name}/model.safetensors" in names
    assert make_zip(None, _workspace(tmp_path)).visible is False
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert push("me/x", True, "hf_fake", str(llama_family[0]), _workspace(tmp_path)).startswith(
        "**✗** cannot push to the Hugging Face Hub")
    assert "no Hugging Face token found" in push("me/x", True, "", str(llama_family[0]), _workspace(tmp_path, hosted=True))
    assert push("me/x", True, "", None, _workspace(tmp_path)) == "**✗** Merge a model first."


def test_pasted_yaml_and_examples_drive_the_form(tmp_path):
    form = new_form("linear", models=("org/a", "org/b"))
    shown = on_yaml("merge_method: ties\nbase_model: org/base\nmodels: [org/a]\nparameters: {weight: 1}\n", form, 3)
    assert shown.layout == 4 and shown.state.method == "ties" and shown.state.base_model == "org/base"
    assert shown.recipe_status.startswith("✓")
    error = on_yaml("merge_method: [", form, 3).recipe_status
    assert error.startswith("✗") and "YAML" in error
    example = on_example("ties.yml", 0)
    assert example.recipe_yaml.startswith("# TIES") and example.state.method == "ties" and example.layout == 1
    choices, layout, _ = refresh_models(_workspace(tmp_path), 5)
    assert layout == 6 and choices[0][0] == "all-MiniLM-L6-v2 (packaged)"
