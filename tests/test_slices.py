"""passthrough and `slices:` recipes (frankenmerges): values against formulas, tensors against mergekit-yaml,
the output loaded by transformers, and the plan's byte counts against what the engine reads and writes."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.errors import CheckpointError, RecipeError
from core.merge.engine import merge
from core.merge.preview import plan_inputs
from core.merge.recipe import parse_recipe, recipe_from_dict, to_yaml
from tests.model_factory import build_family

MERGEKIT = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml") or ""
needs_mergekit = pytest.mark.skipif(not Path(MERGEKIT).is_file(), reason="mergekit-yaml not found: export MERGEKIT_YAML")


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """Three 3-layer tiny Llamas (a base and two noisy copies), float32."""
    return build_family(tmp_path_factory.mktemp("llama3"), "llama", layers=3)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in folder.glob("*.safetensors"):
        out.update(load_file(file))
    return out


def frankenmerge(a, b, scale=None):
    """Layers [0, 2) of a then [1, 3) of b: a 4-layer model."""
    second = {"model": str(b), "layer_range": [1, 3], **({"parameters": {"scale": scale}} if scale else {})}
    return {"merge_method": "passthrough", "dtype": "float32",
            "slices": [{"sources": [{"model": str(a), "layer_range": [0, 2]}]}, {"sources": [second]}]}


def sliced_slerp(base, a):
    """Two slerp slices over layers of base and a, with a t gradient over each slice."""
    return {"merge_method": "slerp", "base_model": str(base), "dtype": "float32",
            "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.3}]},
            "slices": [{"sources": [{"model": str(base), "layer_range": [0, 3]}, {"model": str(a), "layer_range": [0, 3]}]},
                       {"sources": [{"model": str(base), "layer_range": [1, 3]}, {"model": str(a), "layer_range": [1, 3]}],
                        "parameters": {"t": 0.8}}]}


def run_mergekit(spec: dict, out: Path) -> dict[str, torch.Tensor]:
    config = out.parent / f"{out.name}.yml"
    config.write_text(yaml.safe_dump(spec))
    run = subprocess.run([MERGEKIT, str(config), str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return tensors(out)


def test_passthrough_multiplies_by_scale_per_tensor(llama3, tmp_path):
    base = llama3[0]
    spec = {"merge_method": "passthrough", "models": [{"model": str(base)}], "dtype": "float32",
            "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": [1.0, 3.0]}]}}
    got, given = tensors(merge(recipe_from_dict(spec), tmp_path / "out")), tensors(base)
    assert set(got) == set(given)
    for name, x in given.items():
        layer = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None
        expected = 0.5 if "o_proj" in name else 1.0 if layer is None else 1.0 + 2.0 * layer / 2  # gradient over 3 layers
        torch.testing.assert_close(got[name], x * expected, rtol=0, atol=0)


def test_frankenmerge_renumbers_layers_and_takes_outer_tensors_from_first_and_last_slice(llama3, tmp_path):
    a, b = llama3[1], llama3[2]
    got, ta, tb = tensors(merge(recipe_from_dict(frankenmerge(a, b, scale=0.5)), tmp_path / "out")), tensors(a), tensors(b)
    layer = "model.layers.{}.mlp.up_proj.weight"
    torch.testing.assert_close(got[layer.format(1)], ta[layer.format(1)], rtol=0, atol=0)
    torch.testing.assert_close(got[layer.format(3)], tb[layer.format(2)] * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(got["model.embed_tokens.weight"], ta["model.embed_tokens.weight"], rtol=0, atol=0)
    torch.testing.assert_close(got["lm_head.weight"], tb["lm_head.weight"] * 0.5, rtol=0, atol=0)
    assert not any(".layers.4." in name for name in got)


@needs_mergekit
def test_frankenmerge_matches_mergekit_and_loads_in_transformers(llama3, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = frankenmerge(llama3[1], llama3[2], scale=[{"filter": "down_proj", "value": 0.5}, {"value": 1.0}])
    out = merge(recipe_from_dict(spec), tmp_path / "ours")
    mine, theirs = tensors(out), run_mergekit(spec, tmp_path / "theirs")
    assert set(mine) == set(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=0, msg=name)
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 4 == json.loads((tmp_path / "theirs" / "config.json").read_text())["num_hidden_layers"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 4
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[:2] == (1, 3) and torch.isfinite(logits).all()


@needs_mergekit
def test_sliced_slerp_with_gradients_matches_mergekit(llama3, tmp_path):
    spec = sliced_slerp(llama3[0], llama3[1])
    mine, theirs = tensors(merge(recipe_from_dict(spec), tmp_path / "ours")), run_mergekit(spec, tmp_path / "theirs")
    assert set(mine) == set(theirs) and any(".layers.4." in name for name in mine)
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, atol=2e-6, rtol=1e-5, msg=name)


def test_plan_bytes_are_what_the_engine_reads_and_writes(llama3, tmp_path, monkeypatch):
    from core.io.checkpoint import Checkpoint
    read = []
    original = Checkpoint.read

    def counting(self, name, **options):
        tensor = original(self, name, **options)
        read.append(self.tensors[name].nbytes if options.get("rows") is None else
                    tensor.numel() * self.tensors[name].dtype.itemsize)
        return tensor

    recipe = recipe_from_dict(sliced_slerp(llama3[0], llama3[1]))
    plan = plan_inputs(recipe)
    monkeypatch.setattr(Checkpoint, "read", counting)
    out = merge(recipe, tmp_path / "out")
    assert sum(read) == plan.bytes_read
    assert sum(t.numel() * t.element_size() for t in tensors(out).values()) == plan.bytes_written
    assert len(plan.jobs) == len(tensors(out)) and plan.inputs == 2


def test_a_sliced_recipe_round_trips_through_yaml(llama3):
    recipe = recipe_from_dict(sliced_slerp(llama3[0], llama3[1]))
    assert parse_recipe(to_yaml(recipe)) == recipe
    assert [part.merge_method for part in recipe.slice_recipes()] == ["slerp", "slerp"]


@pytest.mark.parametrize("change, message", [
    (lambda s: s["slices"][1]["sources"][0].update(layer_range=[1, 4]), r"different numbers of layers"),
    (lambda s: s["slices"][0]["sources"][0].update(layer_range=[2, 2]), r"0 <= start < end"),
    (lambda s: s.update(models=[{"model": "x"}]), r"either 'models' or 'slices'"),
    (lambda s: s["slices"][0]["sources"].pop(0), r"slices\[0\]: base_model .* not among this slice's sources"),
])
def test_bad_slices_are_refused_in_one_line(llama3, change, message):
    spec = sliced_slerp(llama3[0], llama3[1])
    change(spec)
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(spec)


def test_a_layer_range_past_the_model_is_refused_before_merging(llama3):
    spec = frankenmerge(llama3[1], llama3[2])
    spec["slices"][1]["sources"][0]["layer_range"] = [2, 4]
    with pytest.raises(CheckpointError, match=r"slices\[1\]: .* has 3 layers; layer_range \[2, 4\] runs past them"):
        plan_inputs(recipe_from_dict(spec))


def test_the_app_keeps_slices_through_the_form_and_check_shows_them(llama3, tmp_path):
    from core.app.workspace import Workspace
    from ui.merge.form import form_status
    from ui.merge.panel import plan
    from ui.merge.recipe_form import form_to_yaml, yaml_to_form
    text = to_yaml(recipe_from_dict(frankenmerge(llama3[1], llama3[2], scale=0.5)))
    form = yaml_to_form(text)
    assert parse_recipe(form_to_yaml(form)) == parse_recipe(text)
    assert [row.model for row in form.rows] == [str(llama3[1]), str(llama3[2])]
    assert "2 slices, 4 output layers (slices are edited in the YAML box" in form_status(form)
    shown = plan(form_to_yaml(form), "franken", "cpu", Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs"))
    assert "Ready to merge" in shown and "4 output layers" in shown
    assert f"layers 2-3 ← layers 1-2 of {llama3[2]}" in shown


def test_a_slice_whose_weights_are_all_zero_is_warned_about(llama3):
    from core.merge.warnings import recipe_warnings
    spec = {"merge_method": "linear", "parameters": {"normalize": False},
            "slices": [{"sources": [{"model": str(m), "layer_range": [0, 3], "parameters": {"weight": 0.0}}
                                    for m in llama3[1:]]}]}
    assert recipe_warnings(recipe_from_dict(spec)) == [
        "every weight is 0 and normalize is off: the merged model will be all zeros; give a model a weight"]


def test_a_last_slice_model_without_the_first_ones_lm_head_is_refused_in_one_line(llama3, qwen2_family):
    spec = frankenmerge(llama3[1], qwen2_family[1])  # Qwen2 ties lm_head to its embeddings: no lm_head tensor
    spec["slices"][1]["sources"][0]["layer_range"] = [0, 2]  # its 2 layers
    with pytest.raises(CheckpointError, match=r"slice source .* cannot give 'lm_head.weight' for lm_head.weight: it lacks it"):
        plan_inputs(recipe_from_dict(spec))


def test_per_layer_config_lists_follow_their_layers(llama3, tmp_path):
    a, b = (shutil.copytree(folder, tmp_path / name) for folder, name in ((llama3[1], "a"), (llama3[2], "b")))
    for folder, tag in ((a, "a"), (b, "b")):
        config = json.loads((folder / "config.json").read_text())
        config["layer_types"] = [f"{tag}{i}" for i in range(3)]
        (folder / "config.json").write_text(json.dumps(config))
    out = merge(recipe_from_dict(frankenmerge(a, b)), tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["layer_types"] == ["a0", "a1", "b1", "b2"]


def test_the_plan_command_lists_the_slices(llama3, tmp_path, capsys):
    from core.__main__ import main

    path = tmp_path / "franken.yml"
    path.write_text(yaml.safe_dump(frankenmerge(llama3[1], llama3[2])))
    assert main(["plan", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "slices      2, 4 output layers" in out and f"layers 2-3 ← layers 1-2 of {llama3[2]}" in out


def test_a_sliced_merge_read_in_row_blocks_equals_the_whole_tensor_merge(llama3, tmp_path, monkeypatch):
    """Output layers past a source's own count (layer 3 of a 3-layer model) are read from other layers there:
    each block buffer follows the tensor read, not the output name."""
    import core.merge.plan

    a, b = llama3[1], llama3[2]
    spec = {"merge_method": "linear", "dtype": "float32", "parameters": {"weight": 0.5},
            "slices": [{"sources": [{"model": str(a), "layer_range": [0, 3]}, {"model": str(b), "layer_range": [0, 3]}]},
                       {"sources": [{"model": str(a), "layer_range": [1, 3]}, {"model": str(b), "layer_range": [1, 3]}]}]}
    whole = tensors(merge(recipe_from_dict(spec), tmp_path / "whole"))
    monkeypatch.setattr(core.merge.plan, "CHUNK_ELEMENTS", 100)
    blocks = tensors(merge(recipe_from_dict(spec), tmp_path / "blocks"))
    assert "model.layers.4.mlp.down_proj.weight" in blocks
    for name, tensor in whole.items():
        torch.testing.assert_close(blocks[name], tensor, rtol=0, atol=0, msg=name)
