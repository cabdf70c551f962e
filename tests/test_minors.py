"""Issue 17's minor fixes, each with a test that failed before it: wording per front end, warnings, counts,
ticks, the YAML box, the model card, push without a token, inspect, quiet CLI loading."""
from pathlib import Path

import gradio as gr
import pytest

from core.app.workspace import Workspace
from core.cli.main import main
from core.merge.recipe import recipe_from_dict
from core.merge.warnings import recipe_warnings
from ui.merge.panel import merge, plan

WEIGHTS = (0.2, 0.3, 0.5)


def _workspace(root: Path) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=False, max_output_bytes=None)


def _linear_yaml(models, weights=WEIGHTS, normalize: bool | None = None) -> str:
    rows = "".join(f"  - model: {m}\n    parameters: {{weight: {w}}}\n" for m, w in zip(models, weights))
    extra = "" if normalize is None else f"parameters: {{normalize: {str(normalize).lower()}}}\n"
    return f"merge_method: linear\nmodels:\n{rows}{extra}"


# ---- 1. an existing output: each front end names its own way to replace it -------------------

def test_the_cli_says_pass_overwrite_for_an_existing_output(tmp_path, llama_family, capsys):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(_linear_yaml(llama_family))
    (tmp_path / "taken").mkdir()
    assert main(["merge", str(recipe), str(tmp_path / "taken"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output folder") and "already exists" in err and err.endswith("(pass --overwrite)")
    assert "\n" not in err and "Replace" not in err


def test_the_app_says_tick_replace_for_an_existing_output(tmp_path, llama_family):
    ws = _workspace(tmp_path)
    (ws.outputs_dir / "taken").mkdir(parents=True)
    updates = []
    with pytest.raises(gr.Error) as raised:
        for update in merge(_linear_yaml(llama_family), "taken", "cpu", False, 0, ws):
            updates.append(update)
    message = str(raised.value.message if hasattr(raised.value, "message") else raised.value)
    assert "already exists" in message and "tick Replace under More options" in message
    assert "--overwrite" not in message and "--overwrite" not in updates[-1][0]


# ---- 2. all-zero weights with normalize off: a warning everywhere, the merge still runs -----------

ZERO = "every weight is 0 and normalize is off: the merged model will be all zeros"


def test_all_zero_weights_warn_in_check_and_in_the_merge_status(tmp_path, llama_family):
    ws = _workspace(tmp_path)
    text = _linear_yaml(llama_family, weights=(0, 0.0, 0), normalize=False)
    checked = plan(text, "zeros", "cpu", ws)
    assert checked.startswith("**⚠ Check the warnings below.**") and f"- ⚠ {ZERO}" in checked
    status, log, *_ = list(merge(text, "zeros", "cpu", False, 0, ws))[-1]
    assert status.startswith("**✓ Merged**") and ZERO in status and ZERO in log
    assert ZERO not in plan(_linear_yaml(llama_family, weights=(0, 0.1, 0), normalize=False), "other", "cpu", ws)


def test_all_zero_weights_print_one_warning_line_in_cli_plan_and_merge(tmp_path, llama_family, capsys):
    recipe = tmp_path / "zeros.yml"
    recipe.write_text(_linear_yaml(llama_family, weights=(0, 0, [0, 0]), normalize=False))
    assert main(["plan", str(recipe), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err.splitlines() == [f"warning: {ZERO}; give a model a weight"]
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"warning: {ZERO}; give a model a weight"]


@pytest.mark.parametrize("recipe, expected", [
    ({"merge_method": "linear", "parameters": {"normalize": False},
      "models": [{"model": "a", "parameters": {"weight": 0}}, {"model": "b", "parameters": {"weight": 0.5}}]}, []),
    ({"merge_method": "linear", "parameters": {"normalize": False, "weight": [{"filter": "mlp", "value": 0}, {"value": 0}]},
      "models": ["a", "b"]}, [ZERO]),
    ({"merge_method": "task_arithmetic", "base_model": "base",
      "models": [{"model": "a", "parameters": {"weight": 0}}]}, ["every weight is 0: the merge will be a copy of the base"]),
    ({"merge_method": "nuslerp", "models": [{"model": "a", "parameters": {"weight": 0}},
                                            {"model": "b", "parameters": {"weight": 0}}]}, []),  # t = 0.5 then
])
def test_recipe_warnings_read_every_value_written_for_the_weights(recipe, expected):
    found = recipe_warnings(recipe_from_dict(recipe))
    assert len(found) == len(expected) and all(line.startswith(start) for line, start in zip(found, expected))
