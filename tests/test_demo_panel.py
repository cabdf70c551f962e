"""The app's demo wiring: when the strip shows, and where the Merge form and Playground start once
the demo models exist (fake model folders: only their presence matters here)."""
from pathlib import Path

from core.app.workspace import Workspace
from core.demo.build import DEMO_MODELS, DemoProgress, demo_folder
from ui.common import default_pair
from ui.demo_panel import needs_demo, progress_markdown
from ui.merge.form import start_form


def workspace(root: Path, *, hosted: bool = False) -> Workspace:
    return Workspace(root, root / "models", root / "outputs", hosted=hosted)


def fake_demo_models(models_dir: Path) -> None:
    for spec in DEMO_MODELS:
        demo_folder(models_dir, spec.name).mkdir(parents=True)
        (demo_folder(models_dir, spec.name) / "config.json").write_text("{}")


def test_strip_shows_until_every_demo_model_is_built_and_never_when_hosted(tmp_path):
    ws = workspace(tmp_path)
    assert needs_demo(ws)
    fake_demo_models(ws.models_dir)
    assert not needs_demo(ws)
    assert not needs_demo(workspace(tmp_path / "empty", hosted=True))


def test_merge_form_and_playground_start_from_the_demo_pair(tmp_path):
    ws = workspace(tmp_path)
    assert Path(start_form(ws).rows[0].model).name != "general-ce"
    fake_demo_models(ws.models_dir)
    general, cooking = (str(demo_folder(ws.models_dir, name).resolve()) for name in ("general-ce", "cooking-ce"))
    form = start_form(ws)
    assert (form.method, [row.model for row in form.rows]) == ("linear", [general, cooking])
    assert default_pair(ws) == (general, cooking)


def test_progress_counts_finished_models_and_this_models_share():
    event = DemoProgress("general-ce", 3, 5, step=18, total=36, loss=0.5, elapsed=12.0, state="training")
    text = progress_markdown(event)
    assert "50%" in text and "model 3/5 general-ce: step 18/36, loss 0.5000" in text
    assert "100%" in progress_markdown(DemoProgress("software-ce", 5, 5, 24, 24, 0.1, 99.0, "saved"))
