"""Inputs whose tensor sets differ: a tied model merged with an untied one, and a head only one model has.

As mergekit 0.1.5 does: a tied model (tie_word_embeddings, no lm_head stored) gives its embedding
as its lm_head, and the output stores an lm_head when any input does; a tensor some inputs lack is
left out (and the plan says so). Each case is checked against a formula written here, and against
mergekit-yaml on the same recipe where $MERGEKIT_YAML is set (tests/test_mergekit_parity.py).
"""
import json
import subprocess
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

from core.errors import CheckpointError
from core.merge.engine import merge
from core.merge.preview import plan_inputs
from core.merge.recipe import recipe_from_dict
from tests.model_factory import build_family
from tests.test_mergekit_parity import MERGEKIT, tensors

needs_mergekit = pytest.mark.skipif(not Path(MERGEKIT).is_file(), reason="mergekit-yaml not found ($MERGEKIT_YAML)")


def rewrite(folder: Path, change) -> None:
    """Apply `change` (a function of the {name: tensor} dict) to the folder's single safetensors file."""
    file = folder / "model.safetensors"
    weights = load_file(file)
    change(weights)
    save_file(weights, file, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def mixed_tied(tmp_path_factory):
    """A tied Qwen2 base, a tied fine-tune, and a fine-tune untied: it stores its own lm_head (embed + noise)."""
    base, tied, untied = build_family(tmp_path_factory.mktemp("mixed"), "qwen2")
    noise = torch.Generator().manual_seed(7)

    def add_head(weights):
        embed = weights["model.embed_tokens.weight"]
        weights["lm_head.weight"] = embed + 0.05 * torch.randn(embed.shape, generator=noise)

    rewrite(untied, add_head)
    config = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return base, tied, untied


@pytest.fixture(scope="module")
def extra_head(tmp_path_factory):
    """A Llama family where the last fine-tune has a tensor the others lack (`score.weight`, an extra head)."""
    folders = build_family(tmp_path_factory.mktemp("extra"), "llama")
    rewrite(folders[-1], lambda weights: weights.update({"score.weight": torch.ones(1, 64)}))
    return folders


def linear(*rows):
    return {"merge_method": "linear", "dtype": "float32",
            "models": [{"model": str(folder), "parameters": {"weight": w}} for folder, w in rows]}


def mergekit(spec: dict, root: Path) -> dict[str, torch.Tensor]:
    (root / "recipe.yml").write_text(yaml.safe_dump(spec))
    run = subprocess.run([MERGEKIT, str(root / "recipe.yml"), str(root / "theirs")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return tensors(root / "theirs")


def test_tied_and_untied_mixed_give_a_head_from_the_tied_models_embedding(mixed_tied, tmp_path):
    base, tied, untied = mixed_tied
    spec = linear((base, 0.5), (tied, 0.2), (untied, 0.3))
    out = merge(recipe_from_dict(spec), tmp_path / "ours")
    merged = tensors(out)
    w = {base: 0.5, tied: 0.2, untied: 0.3}
    inputs = {folder: load_file(folder / "model.safetensors") for folder in w}
    head = lambda f: inputs[f].get("lm_head.weight", inputs[f]["model.embed_tokens.weight"])
    torch.testing.assert_close(merged["lm_head.weight"], sum(w[f] * head(f) for f in w), rtol=0, atol=1e-6)
    embed = sum(w[f] * inputs[f]["model.embed_tokens.weight"] for f in w)
    torch.testing.assert_close(merged["model.embed_tokens.weight"], embed, rtol=0, atol=1e-6)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)  # the merged head is the one loaded, not tied
    torch.testing.assert_close(model.lm_head.weight.detach(), merged["lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


@needs_mergekit
def test_tied_and_untied_mixed_match_mergekit(mixed_tied, tmp_path):
    base, tied, untied = mixed_tied
    spec = {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(tied), "parameters": {"weight": 0.6}},
                       {"model": str(untied), "parameters": {"weight": 0.9}}]}
    mine, theirs = tensors(merge(recipe_from_dict(spec), tmp_path / "ours")), mergekit(spec, tmp_path)
    assert set(mine) == set(theirs) and "lm_head.weight" in mine
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-6, atol=1e-6, msg=name)


def test_a_tensor_only_one_model_has_is_left_out_and_said(extra_head, tmp_path):
    base, a, b = extra_head
    spec = linear((base, 0.4), (a, 0.3), (b, 0.3))
    plan = plan_inputs(recipe_from_dict(spec))
    assert plan.left_out == (f"'score.weight': only in {b}, not in {base}, {a}: left out "
                             "(mergekit merges the tensors all inputs have)",)
    merged = tensors(merge(recipe_from_dict(spec), tmp_path / "ours"))
    inputs = [load_file(f / "model.safetensors") for f in extra_head]
    assert set(merged) == set(inputs[0])
    expected = 0.4 * inputs[0]["lm_head.weight"] + 0.3 * inputs[1]["lm_head.weight"] + 0.3 * inputs[2]["lm_head.weight"]
    torch.testing.assert_close(merged["lm_head.weight"], expected, rtol=0, atol=1e-6)


@needs_mergekit
def test_a_tensor_only_one_model_has_matches_mergekit(extra_head, tmp_path):
    base, a, b = extra_head
    spec = {"merge_method": "ties", "base_model": str(base), "dtype": "float32", "parameters": {"density": 0.6},
            "models": [{"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(b), "parameters": {"weight": 0.5}}]}
    mine, theirs = tensors(merge(recipe_from_dict(spec), tmp_path / "ours")), mergekit(spec, tmp_path)
    assert set(mine) == set(theirs) and "score.weight" not in mine
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-6, atol=1e-6, msg=name)


def test_the_plan_command_warns_of_what_is_left_out(extra_head, tmp_path):
    base, a, b = extra_head
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(linear((base, 0.5), (b, 0.5))))
    run = subprocess.run(["python3", "-m", "core", "plan", str(tmp_path / "recipe.yml"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"warning: 'score.weight': only in {b}, not in {base}: left out" in run.stderr


def test_a_vocabulary_that_differs_is_refused_without_a_tokenizer_source_and_realigned_with_one(tmp_path):
    """As mergekit: row counts that differ need tokenizer_source; with `base`, rows follow the base's 108 tokens."""
    base, a = build_family(tmp_path / "family", "llama", n_models=2)
    rewrite(a, lambda weights: weights.update({name: torch.cat([weights[name], weights[name][:2]])
                                               for name in ("model.embed_tokens.weight", "lm_head.weight")}))
    with pytest.raises(CheckpointError, match=r"shape mismatch at .*: .* has \[\d+, 32\], .* has \[\d+, 32\] "
                                              r"\(their vocabularies differ: set tokenizer_source: base or union"):
        merge(recipe_from_dict(linear((base, 0.5), (a, 0.5))), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = merge(recipe_from_dict({**linear((base, 0.5), (a, 0.5)), "tokenizer_source": "base"}), tmp_path / "out")
    merged, ours, theirs = tensors(out), load_file(base / "model.safetensors"), load_file(a / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        torch.testing.assert_close(merged[name], 0.5 * ours[name][:108] + 0.5 * theirs[name][:108])


def test_tokenizer_source_union_is_a_vocabulary_not_a_folder_named_union(extra_head, tmp_path):
    base, a, _ = extra_head
    recipe = recipe_from_dict({**linear((base, 0.5), (a, 0.5)), "tokenizer_source": "union"})
    out = merge(recipe, tmp_path / "out")
    assert transformers.AutoTokenizer.from_pretrained(out).get_vocab() == \
        transformers.AutoTokenizer.from_pretrained(base).get_vocab()
    assert tensors(out)["model.embed_tokens.weight"].shape == (108, 32)


@pytest.mark.parametrize("method", ["linear", "ties"])  # the summed path and the general (stacked) path
def test_a_tied_models_head_read_in_row_blocks_equals_the_whole_tensor_merge(mixed_tied, tmp_path, monkeypatch, method):
    """A real model's lm_head is read in row blocks; each input's block buffer must have the dtype of the
    tensor read there (the tied model's embedding), not look the job's own name up in that model."""
    import core.merge.plan

    base, tied, untied = mixed_tied
    spec = linear((base, 0.5), (tied, 0.2), (untied, 0.3))
    if method == "ties":
        spec = {**spec, "merge_method": "ties", "base_model": str(base), "parameters": {"density": 0.5},
                "models": [m for m in spec["models"] if m["model"] != str(base)]}
    whole = tensors(merge(recipe_from_dict(spec), tmp_path / "whole"))
    monkeypatch.setattr(core.merge.plan, "CHUNK_ELEMENTS", 100)  # every matrix in several row blocks
    blocks = tensors(merge(recipe_from_dict(spec), tmp_path / "blocks"))
    for name, tensor in whole.items():
        torch.testing.assert_close(blocks[name], tensor, rtol=0, atol=0, msg=name)
