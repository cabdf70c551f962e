"""Each fact once (issue 12, step 3): byte sizes, dtype names, device help, sweep and reranker choices and the
"needs a base / N models" text are written in one place in core, and the CLI and the UI read them from there."""
import argparse
import re
from pathlib import Path

import gradio as gr
import pytest
import torch

from core.app.workspace import Workspace
from core.cli.main import _parser, main
from core.cocktail.sweep import DEFAULT_ALPHAS, DEFAULT_METHOD, MODES, SWEEP_METHODS
from core.cocktail.weights import DEFAULT_TAU
from core.devices import DEVICE_HELP, list_devices
from core.errors import RecipeError
from core.merge import recipe as recipe_module
from core.merge.methods import METHODS
from core.merge.recipe import parse_recipe
from core.monitor import GpuMemory, JobState, MemorySample
from core.rerank import model as rerank_model
from core.rerank.model import KINDS
from core.units import DTYPES, GB, MB, human
from ui.gauge import gauge_text
from ui.layout import build_app
from ui.merge.form import DTYPE_CHOICES
from ui.merge.recipe_form import needs_text
from ui.methods_panel import methods_markdown
from ui.sweep.panel import METHOD_CHOICES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("core/**/*.py"), *ROOT.glob("ui/**/*.py"), ROOT / "app.py"])


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def option(command: str, flag: str) -> argparse.Action:
    (found,) = [a for a in subcommands()[command]._actions if flag in a.option_strings]
    return found


# ---- sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("nbytes", [0, 999, 1_000, 1_500_000, 150_000_000, 412 * MB, 1_234_567_890, 30 * GB,
                                    -186 * MB, 123_456 * GB])
def test_human_gives_three_significant_digits_in_the_largest_unit_reached(nbytes):
    text = human(nbytes)
    number, unit = text.split(" ")
    factor = {"B": 1, "KB": 10**3, "MB": MB, "GB": GB}[unit]
    assert abs(nbytes) >= factor or unit == "B"
    assert unit == "GB" or abs(nbytes) < 1000 * factor  # the largest unit the size reaches
    assert abs(float(number) * factor - nbytes) <= 0.005 * abs(nbytes) + 0.5  # within rounding
    digits = number.lstrip("-").replace(".", "").lstrip("0")
    assert len(digits) >= 3 or unit == "B" or nbytes == 0


def test_no_module_formats_a_byte_count_itself():
    """Every printed size goes through core.units.human: no f-string divides by a unit and formats the quotient."""
    own = re.compile(r"/\s*(?:1e[369]|1000\s*\*\*\s*[123]|10\s*\*\*\s*[369]|GB|MB|KB)\s*:[,.]?\d*f\}")
    found = [f"{path.relative_to(ROOT)}:{number}" for path in SOURCES
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if own.search(line)]
    assert found == []


def test_the_same_size_reads_the_same_in_the_gauge_and_the_gpu_picker(monkeypatch):
    size = 150_000_000
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (size, 2 * size))
    label = {d.spec: d.label for d in list_devices()}["cuda:0"]
    sample = MemorySample(time=1.0, anon=size, file=size, ram_used=size, ram_limit=2 * size, ram_source="system",
                          gpus=(GpuMemory(index=0, name="Fake GPU", used=size, total=2 * size, allocated=size,
                                         reserved=size),))
    text = gauge_text(sample, JobState("x", started=0.0, finished=None, start_anon=0, peak_anon=size,
                                       peak_gpu_allocated=(size,)))
    assert f"{human(size)} / {human(2 * size)} free" in label
    assert text.count(human(size)) >= 5 and "150 MB" in text


# ---- dtype names ---------------------------------------------------------------------------

def test_one_dtype_table_for_recipes_rerankers_the_cli_and_the_form():
    assert recipe_module.DTYPES is DTYPES and rerank_model.DTYPES is DTYPES
    for command in ("rerank", "evaluate", "sweep"):
        assert list(option(command, "--dtype").choices) == list(DTYPES)
    assert [value for _, value in DTYPE_CHOICES if value] == list(DTYPES)
    listed = re.compile(r"""["']float32["'],\s*["']float16["'],\s*["']bfloat16["']""")  # a re-typed list of names
    assert [path.name for path in SOURCES if listed.search(path.read_text(encoding="utf-8"))] == []


# ---- devices -------------------------------------------------------------------------------

def test_every_device_option_has_the_one_help_text_and_it_offers_auto():
    with_device = {name: option(name, "--device") for name, parser in subcommands().items()
                   if any("--device" in a.option_strings for a in parser._actions)}
    assert set(with_device) == {"merge", "plan", "rerank", "evaluate", "weights", "sweep", "demo"}
    assert {action.help for action in with_device.values()} == {DEVICE_HELP}
    assert "auto" in DEVICE_HELP.split(" | ")


# ---- sweep, weights and reranker choices ---------------------------------------------------

def test_cli_choices_and_defaults_are_the_core_constants():
    assert tuple(option("sweep", "--method").choices) == SWEEP_METHODS
    assert option("sweep", "--method").default == DEFAULT_METHOD
    assert tuple(option("sweep", "--mode").choices) == MODES
    assert tuple(float(a) for a in option("sweep", "--alphas").default.split(",")) == DEFAULT_ALPHAS
    assert option("weights", "--tau").default == DEFAULT_TAU
    assert tuple(option("rerank", "--kind").choices) == KINDS == tuple(option("evaluate", "--kind").choices)


def test_ui_dropdowns_offer_the_core_constants(tmp_path):
    app = build_app(Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs"))
    by_label: dict[str, list] = {}
    for block in app.blocks.values():
        if getattr(block, "label", None):
            by_label.setdefault(block.label, []).append(block)
    (mix,) = by_label["Mix"]
    assert tuple(value for _, value in mix.choices) == SWEEP_METHODS and mix.value == DEFAULT_METHOD
    assert [value for _, value in METHOD_CHOICES] == list(SWEEP_METHODS)
    for label in ("Working dtype", "Output dtype"):
        (dropdown,) = by_label[label]
        assert [value for _, value in dropdown.choices if value] == list(DTYPES)
    (tau,) = [b for b in by_label["τ (temperature)"] if isinstance(b, gr.Number)]
    assert tau.value == DEFAULT_TAU
    (alphas,) = by_label["α values"]
    assert tuple(float(a) for a in alphas.value.split(",")) == DEFAULT_ALPHAS


# ---- "needs a base / N models" -------------------------------------------------------------

def test_needs_text_follows_the_declaration():
    for method in METHODS.values():
        text = method.needs()
        assert ("base model +" in text) == (method.base == "required")
        assert ("optional base" in text) == (method.base == "optional")
        assert str(method.min_inputs) in text
        assert ("at least" in text) == (method.max_inputs is None)


def test_cli_form_panel_and_recipe_errors_all_say_needs(capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    panel = methods_markdown()
    for name, method in METHODS.items():
        assert f"{name}: {method.label} — takes {method.needs()}" in listing
        assert f"takes {method.needs()}" in panel
        assert needs_text(name) == method.needs()
    too_many = {"slerp": "base_model: a\nmodels: [a, b, c]\nparameters: {t: 0.5}",
                "model_stock": "base_model: a\nmodels: [a, b]",
                "nuslerp": "models: [{model: a, parameters: {weight: 1}}]"}
    for name, body in too_many.items():
        with pytest.raises(RecipeError) as caught:
            parse_recipe(f"merge_method: {name}\n{body}")
        assert f"{name} takes {METHODS[name].needs()}; the recipe lists " in str(caught.value)
