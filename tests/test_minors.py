"""Issue 17's minor fixes, each with a test that failed before it: wording per front end, warnings, counts,
ticks, the YAML box, the model card, push without a token, inspect, quiet CLI loading."""
from pathlib import Path

import gradio as gr
import pytest

from core.app.workspace import Workspace
from core.cli.main import main
from ui.merge.panel import merge

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
