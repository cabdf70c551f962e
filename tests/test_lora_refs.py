"""`model+lora` references: a PEFT adapter applied as the model is read, against W + scale·B@A and mergekit."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from core.errors import CheckpointError, OutputError
from core.merge.engine import merge
from core.merge.preview import plan_inputs
from core.merge.recipe import recipe_from_dict
from tests.model_factory import read_tensors
from tests import test_offline

MERGEKIT = os.environ.get("MERGEKIT_YAML", "")
no_hub = test_offline.no_hub  # the fixture: Hub unreachable, probes counted
TARGETS = {"model.layers.0.self_attn.q_proj": (32, 32), "model.layers.1.mlp.down_proj": (32, 64)}  # (out, in)


def make_adapter(folder: Path, *, r: int = 4, alpha: float = 8, seed: int = 0, **config) -> dict[str, tuple]:
    """A PEFT LoRA adapter written by hand (PEFT's key names); returns module → (A, B)."""
    generator = torch.Generator().manual_seed(seed)
    tensors, pairs = {}, {}
    for module, (out, inp) in TARGETS.items():
        a, b = torch.randn(r, inp, generator=generator), torch.randn(out, r, generator=generator) * 0.1
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        pairs[module] = (a, b)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "down_proj"],
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "task_type": "CAUSAL_LM", **config}))
    return pairs


def passthrough(ref: str) -> dict:
    """A linear 'merge' of one model: the output is that model as read."""
    return {"merge_method": "linear", "models": [{"model": ref, "parameters": {"weight": 1.0}}], "dtype": "float32"}


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_is_applied_as_w_plus_scale_b_a(llama_family, tmp_path, rslora):
    base = llama_family[0]
    pairs = make_adapter(tmp_path / "lora", use_rslora=rslora)
    out = merge(recipe_from_dict(passthrough(f"{base}+{tmp_path / 'lora'}")), tmp_path / "out")
    scale = 8 / 2 if rslora else 8 / 4  # alpha / sqrt(r) or alpha / r
    mine, original = read_tensors(out), read_tensors(base)
    for name, tensor in original.items():
        module = name.removesuffix(".weight")
        expected = tensor + scale * pairs[module][1] @ pairs[module][0] if module in pairs else tensor
        torch.testing.assert_close(mine[name], expected, atol=1e-6, rtol=1e-6, msg=name)
    assert not torch.equal(mine["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])


def test_fan_in_fan_out_transposes_the_delta(llama_family, tmp_path):
    """An adapter saved for (in, out) weights: A (r, in') with in' = the weight's rows."""
    base = llama_family[0]
    folder = tmp_path / "lora"
    folder.mkdir()
    a, b = torch.randn(2, 64), torch.randn(32, 2)  # up_proj is (64, 32): read as (in, out), (B@A)ᵀ is (64, 32)
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": a,
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": b}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                                            "fan_in_fan_out": True}))
    out = merge(recipe_from_dict(passthrough(f"{base}+{folder}")), tmp_path / "out")
    name = "model.layers.0.mlp.up_proj.weight"  # (64, 32)
    torch.testing.assert_close(read_tensors(out)[name], read_tensors(base)[name] + (b @ a).T, atol=1e-6, rtol=1e-6)


def test_plan_counts_the_adapter(llama_family, tmp_path):
    make_adapter(tmp_path / "lora")
    base = str(llama_family[0])
    plain = plan_inputs(recipe_from_dict(passthrough(base)))
    adapted = plan_inputs(recipe_from_dict(passthrough(f"{base}+{tmp_path / 'lora'}")))
    adapter_bytes = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    assert 0 < adapted.bytes_read - plain.bytes_read <= adapter_bytes
    assert adapted.bytes_read - plain.bytes_read == sum(t.numel() * 4 for t in read_tensors(tmp_path / "lora").values())


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "uses DoRA"),
    ({"rank_pattern": {"q_proj": 8}}, "uses rank_pattern"),
    ({"peft_type": "IA3"}, "only LoRA adapters"),
])
def test_options_not_implemented_are_refused_in_one_line(llama_family, tmp_path, change, message):
    make_adapter(tmp_path / "lora", **change)
    with pytest.raises(CheckpointError, match=message) as error:
        merge(recipe_from_dict(passthrough(f"{llama_family[0]}+{tmp_path / 'lora'}")), tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_output_may_not_overlap_the_adapter(llama_family, tmp_path):
    make_adapter(tmp_path / "lora")
    with pytest.raises(OutputError, match="overlaps input model folder"):
        merge(recipe_from_dict(passthrough(f"{llama_family[0]}+{tmp_path / 'lora'}")), tmp_path / "lora" / "out")


def test_a_pickled_adapter_is_refused(llama_family, tmp_path):
    folder = tmp_path / "lora"
    make_adapter(folder)
    torch.save(read_tensors(folder), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.bin, a pickle"):
        merge(recipe_from_dict(passthrough(f"{llama_family[0]}+{folder}")), tmp_path / "out")


def test_an_adapter_for_another_shape_is_refused(llama_family, tmp_path):
    make_adapter(tmp_path / "lora", r=4)
    file = tmp_path / "lora" / "adapter_model.safetensors"
    tensors = read_tensors(tmp_path / "lora")
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 48)
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match="do not make"):
        merge(recipe_from_dict(passthrough(f"{llama_family[0]}+{tmp_path / 'lora'}")), tmp_path / "out")


def test_hosted_checks_the_adapter_path_too(tmp_path):
    from core.app.paths import check_model_ref
    from core.app.workspace import Workspace

    ws = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs", hosted=True)
    (ws.models_dir / "base").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="absolute paths are refused"):
        check_model_ref("models/base+/etc/lora", ws)


def test_an_adapter_on_the_hub_fails_at_once_offline(no_hub, llama_family, tmp_path):
    probes, _ = no_hub
    with pytest.raises(CheckpointError, match="cannot get 'org/adapter': the Hugging Face Hub cannot be reached"):
        merge(recipe_from_dict(passthrough(f"{llama_family[0]}+org/adapter")), tmp_path / "out")
    assert probes == [("huggingface.co", 443)] and not (tmp_path / "out").exists()


def test_tokenizer_source_of_a_lora_ref_is_the_models(llama_family, tmp_path):
    make_adapter(tmp_path / "lora")
    ref = f"{llama_family[1]}+{tmp_path / 'lora'}"
    spec = dict(passthrough(ref), tokenizer_source=ref)
    out = merge(recipe_from_dict(spec), tmp_path / "out")
    assert (out / "tokenizer.json").read_bytes() == (llama_family[1] / "tokenizer.json").read_bytes()


@pytest.mark.skipif(not Path(MERGEKIT).is_file(), reason="MERGEKIT_YAML not set")
def test_same_tensors_as_mergekit(llama_family, tmp_path):
    """A ties merge of base+lora with a fine-tune, through mergekit-yaml (peft's merge_and_unload) and here."""
    base, tuned = llama_family[0], llama_family[1]
    make_adapter(tmp_path / "lora")
    spec = {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
            "models": [{"model": f"{tuned}+{tmp_path / 'lora'}", "parameters": {"weight": 0.7, "density": 0.6}},
                       {"model": str(llama_family[2]), "parameters": {"weight": 0.5, "density": 0.6}}]}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([MERGEKIT, str(tmp_path / "r.yml"), str(tmp_path / "theirs"), "--lora-merge-cache",
                           str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    mine, theirs = read_tensors(merge(recipe_from_dict(spec), tmp_path / "ours")), read_tensors(tmp_path / "theirs")
    assert set(mine) == set(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, atol=2e-6, rtol=1e-5, msg=name)
