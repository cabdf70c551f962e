"""Issue 17's minor fixes, each with a test that failed before it: wording per front end, warnings, counts,
ticks, the YAML box, the model card, push without a token, inspect, quiet CLI loading."""
import json
import math
import shutil
from pathlib import Path

import gradio as gr
import pytest
import yaml

from core.app.export import push_folder
from core.app.workspace import Workspace
from core.cli.main import main
from core.cocktail.sweep import SweepPoint, SweepResult
from core.errors import OutputError
from core.io.card import model_card
from core.merge.methods import METHODS
from core.merge.recipe import recipe_from_dict
from core.merge.warnings import recipe_warnings
from ui.merge.form import build_merge_form, form_status, on_method
from ui.merge.panel import merge, plan, push
from ui.merge.recipe_form import add_row, change_method, form_to_yaml, new_form, set_field, trimmed_note
from ui.sweep.plot import sweep_figure

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
    ({"merge_method": "linear", "models": ["a", "b"],
      "parameters": {"normalize": False, "weight": [{"filter": "mlp", "value": 0}, {"value": 0}]}}, [ZERO]),
    ({"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a", "parameters": {"weight": 0}}]},
     ["every weight is 0: the merge will be a copy of the base"]),
    ({"merge_method": "nuslerp", "models": [{"model": "a", "parameters": {"weight": 0}},
                                            {"model": "b", "parameters": {"weight": 0}}]}, []),  # t = 0.5 then
])
def test_recipe_warnings_read_every_value_written_for_the_weights(recipe, expected):
    found = recipe_warnings(recipe_from_dict(recipe))
    assert len(found) == len(expected) and all(line.startswith(start) for line, start in zip(found, expected))


# ---- 3. switching to a method that takes fewer models trims the rows, and says so -------------

def test_switching_to_slerp_keeps_the_first_rows_and_says_which_went():
    form = new_form("linear", models=("a", "b", "c"))
    view = on_method(form, 0, "slerp")
    assert [row.model for row in view.state.rows] == ["a"]
    assert view.recipe_status.startswith("⚠ slerp takes a base model + exactly 1 other model: kept the first, "
                                         "removed model 2 (b), model 3 (c).")
    assert "- model: b" not in view.recipe_yaml
    based = set_field(form, "base_model", "a")  # a row that is the base is not counted, and stays
    assert [row.model for row in change_method(based, "slerp").rows] == ["a", "b"]
    assert trimmed_note(form, change_method(form, "ties")) == ""  # no maximum: nothing goes


def test_the_form_the_recipe_error_and_check_count_the_models_alike(tmp_path, llama_family):
    base, *others = [str(path) for path in llama_family]
    form = set_field(new_form("slerp", models=tuple(others[:1])), "base_model", base)
    form = add_row(form, others[1])  # one model too many, besides the base
    status = form_status(form)
    assert status.endswith("the recipe lists 2 models besides the base_model") and METHODS["slerp"].needs() in status
    checked = plan(form_to_yaml(set_field(change_method(form, "slerp"), "base_model", base)), "m", "cpu",
                   _workspace(tmp_path))
    assert "| Method | SLERP (spherical interpolation) over 1 model besides the base_model |" in checked


# ---- 4. the Sweep's y axis: no two ticks with the same text ----------------------------------

def _tick_labels(axis) -> list[str]:
    """The labels plotly draws: multiples of dtick (from tick0) inside the range, in the axis's d3 ".Nf" format."""
    low, high = axis.range
    decimals = int(axis.tickformat.removeprefix(".").removesuffix("f"))
    first = math.ceil((low - axis.tick0) / axis.dtick - 1e-9)
    ticks = [axis.tick0 + k * axis.dtick for k in range(first, first + 1000) if axis.tick0 + k * axis.dtick <= high]
    return [f"{tick:.{decimals}f}" for tick in ticks]


@pytest.mark.parametrize("low, high", [(0.501, 0.503), (0.0, 1.0), (0.7, 0.7), (0.12, 0.98)])
def test_sweep_ticks_never_repeat_a_label(low, high):
    values = {0.0: low, 0.5: (low + high) / 2, 1.0: high}
    points = [SweepPoint(alpha, "cooking", {"nDCG@10": value, "MRR@10": value}) for alpha, value in values.items()]
    figure = sweep_figure(SweepResult("a", "b", "linear", "memory", list(values), ["cooking"], points))
    for axis in (figure.layout.yaxis, figure.layout.yaxis2):
        labels = _tick_labels(axis)
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
        assert axis.range[0] <= low and high <= axis.range[1]


# ---- 5. the YAML box wraps long lines ---------------------------------------------------------

def test_the_recipe_yaml_box_wraps_its_lines(tmp_path):
    workspace = _workspace(tmp_path)
    with gr.Blocks() as app:
        form = build_merge_form(app, workspace, gr.State(workspace))
    assert form.recipe_yaml.wrap_lines is True


# ---- 6. the model card: Hub ids only in base_model, and the mergekit-yaml line ----------------

def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_the_card_lists_hub_ids_and_leaves_out_bare_local_paths(tmp_path, llama_family, capsys):
    named, cached = tmp_path / "named", tmp_path / "hub" / "models--org--cached" / "snapshots" / "abc"
    for folder, name_or_path in ((named, "org/parent"), (cached, str(tmp_path / "elsewhere"))):
        shutil.copytree(llama_family[1], folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": name_or_path}))
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(_linear_yaml([llama_family[0], named, cached]))
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert _front_matter(card)["base_model"] == ["org/parent", "org/cached"]  # llama_family[0]: a path alone
    assert str(llama_family[0]) not in card.split("---")[1]
    assert "`python -m core merge mergekit_config.yml OUT`" in card
    assert "`mergekit-yaml mergekit_config.yml OUT`" in card


def test_a_card_whose_inputs_are_all_local_has_no_base_model_and_hub_ids_stay(tmp_path, llama_family):
    local = recipe_from_dict(yaml.safe_load(_linear_yaml(llama_family)))
    assert "base_model" not in _front_matter(model_card(local, name="m", sentence_transformers=False))
    hub = recipe_from_dict({"merge_method": "slerp", "base_model": "org/base", "models": ["org/other"],
                            "parameters": {"t": 0.5}})
    assert _front_matter(model_card(hub, name="m", sentence_transformers=False))["base_model"] == ["org/base",
                                                                                                   "org/other"]


# ---- 7. push with no token: said at once, before any request ----------------------------------

@pytest.fixture
def no_saved_login(tmp_path, monkeypatch):
    """No HF_TOKEN and no token file; any Hub call fails the test."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))

    def no_request(*args, **kwargs):
        raise AssertionError("a request was made without a token")
    monkeypatch.setattr("huggingface_hub.create_repo", no_request)
    monkeypatch.setattr("huggingface_hub.upload_folder", no_request)


@pytest.mark.parametrize("hosted", [False, True])
def test_push_without_a_token_says_none_was_found(tmp_path, llama_family, no_saved_login, hosted):
    root = tmp_path.resolve()
    ws = Workspace(root, root / "models", root / "outputs", hosted=hosted, max_output_bytes=None)
    said = push("me/x", True, "", str(llama_family[0]), ws)
    assert said == "**✗** no Hugging Face token found: sign in with Hugging Face or paste a write token"


def test_push_folder_with_no_token_is_one_line_from_core(llama_family, no_saved_login):
    with pytest.raises(OutputError, match="^no Hugging Face token found: sign in"):
        push_folder(llama_family[0], "me/x", private=True, token=None)


# ---- 8. inspect names a local model once -------------------------------------------------------

def test_inspect_prints_a_local_path_once(llama_family, capsys, monkeypatch):
    monkeypatch.chdir(llama_family[0].parent)
    assert main(["inspect", llama_family[0].name]) == 0  # a relative path: the same folder, once
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"model         {llama_family[0].resolve()}"
    assert out.count(llama_family[0].name) == 1


# ---- 9. the CLI's model-loading commands keep transformers' bars and reports off stderr ---------

@pytest.fixture
def loud_transformers():
    """transformers as a fresh process has it (bars and warnings on), put back quiet after."""
    import transformers

    transformers.logging.enable_progress_bar()
    transformers.logging.set_verbosity_warning()
    yield
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


@pytest.mark.parametrize("command", ["rerank", "evaluate", "weights", "sweep"])
def test_loading_models_prints_no_bars_on_stderr(bert_cls_family, tmp_path, capfd, loud_transformers, command):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"query": "the model", "pos": ["the model said hello"], "neg": ["world", "hello"]}))
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    argv = {"rerank": ["rerank", "--model", a, "--model", b, "--input", str(data)],
            "evaluate": ["evaluate", "--model", a, "--model", b, "--input", str(data)],
            "weights": ["weights", "--model", a, "--model", b, "--examples", str(data)],
            "sweep": ["sweep", "--model-a", a, "--model-b", b, "--set", str(data), "--alphas", "0,1"]}[command]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert captured.out.strip() and captured.err == ""


# ---- 10. README: the first steps in order, the torch CPU index, the Space note in hosting --------

def test_the_readme_quick_start_begins_with_the_demo_and_explains_the_torch_pin():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert quick_start.index("**Build demo models**") < quick_start.index("Run the whole test suite")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in quick_start
    assert "front matter" not in quick_start  # the Space's note stands with hosting
    hosting = readme.split("Hosted mode (", 1)[1]
    assert "keep it equal to the gradio pin" in hosting.split("**What a visitor can reach**")[0]
