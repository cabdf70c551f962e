"""Recipes ported from mergekit give mergekit's tensors: both tools run the same recipe.

mergekit is the `mergekit-yaml` named by $MERGEKIT_YAML (.ci/run builds mergekit 0.1.5 in its
own venv, `bash .ci/mergekit_venv`, since mergekit pins its own dependencies), else one on PATH;
without it these tests skip locally and fail under CI=true (tests/reference_skips.py).

Covered: every deterministic method on float32 Llama; gradients with several values and
filters over a 5-layer stack; an encoder (BertForSequenceClassification) and a decoder with
tied embeddings (Qwen2); bfloat16 checkpoints merged in bfloat16. Random methods (DARE, DELLA)
cannot match draw for draw and are checked against formulas in tests/test_methods.py.

Two differences are deliberate, and the bf16 tests state and bound them (README, "Methods"):
- arithmetic: MergeDesk reads inputs in the working dtype but computes in float32 and rounds
  once; mergekit computes in the working dtype. Under bf16 the two differ by a few bf16 ulps.
- top-k ties: of several deltas with the magnitude at the density cutoff, MergeDesk keeps the
  first in flat order (a stable sort); mergekit keeps whichever `torch.argsort` returns. With
  bf16 deltas such ties are common, so TIES outputs differ at a few elements near the cutoff.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.engine import merge
from core.recipe import recipe_from_dict
from tests.model_factory import build_family

MERGEKIT = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml") or ""
pytestmark = pytest.mark.skipif(not Path(MERGEKIT).is_file(),
                                reason=f"mergekit not found at MERGEKIT_YAML={MERGEKIT!r} nor on PATH: "
                                       "export MERGEKIT_YAML=$(bash .ci/mergekit_venv)")
BF16_ULP = 2.0 ** -7  # bfloat16 keeps 8 significant bits: one ulp is 2^-7 of the leading power of two


def models(*rows):
    """mergekit's `models:` list from (folder, parameters-or-None) pairs."""
    return [{"model": str(m), **({"parameters": p} if p else {})} for m, p in rows]


def recipes(base, a, b):
    """One recipe per deterministic method, on a base and two fine-tunes."""
    w = lambda x, y: models((a, {"weight": x}), (b, {"weight": y}))
    return {
        "linear": {"merge_method": "linear", "models": w(0.7, 0.5)},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base), "models": w(0.7, [0.2, 0.9]),
                            "parameters": {"lambda": 0.8}},
        "ties": {"merge_method": "ties", "base_model": str(base), "models": w(0.6, 0.4),
                 "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]}},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": str(base), "models": w(0.5, 0.5),
                             "parameters": {"density": 0.6, "gamma": 0.05}},
        "slerp": {"merge_method": "slerp", "base_model": str(base),
                  "models": models((base, None), (a, None)), "parameters": {"t": [0.1, 0.9]}},
        "nuslerp": {"merge_method": "nuslerp", "base_model": str(base), "models": w(1.0, 2.0)},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base),
                        "models": models((a, None), (b, None), (base, None))},
    }


def gradient_recipes(base, a, b):
    """What users write for deep models: gradients of several values, per-filter values."""
    return {
        "slerp_filtered_gradients": {  # the classic two-model SLERP recipe
            "merge_method": "slerp", "base_model": str(base), "models": models((base, None), (a, None)),
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                 {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}},
        "task_arithmetic_gradients": {
            "merge_method": "task_arithmetic", "base_model": str(base),
            "models": models((a, {"weight": [0.2, 0.8, 0.4]}),
                             (b, {"weight": [{"filter": "mlp", "value": [1.0, 0.0]}, {"value": 0.5}]}))},
        "ties_density_gradient": {
            "merge_method": "ties", "base_model": str(base),
            "models": models((a, {"weight": 0.6, "density": [0.2, 0.9, 0.5]}),
                             (b, {"weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}],
                                  "density": 0.5}))},
    }


def run_both(spec: dict, tmp_path: Path) -> tuple[dict, dict]:
    """(MergeDesk's tensors, mergekit's tensors) for one recipe."""
    recipe_file = tmp_path / "recipe.yml"
    recipe_file.write_text(yaml.safe_dump(spec))
    run = subprocess.run([MERGEKIT, str(recipe_file), str(tmp_path / "mergekit"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ours = merge(recipe_from_dict(spec), tmp_path / "ours")
    mine, theirs = {}, {}
    for file in ours.glob("*.safetensors"):
        mine.update(load_file(file))
    for file in (tmp_path / "mergekit").glob("*.safetensors"):
        theirs.update(load_file(file))
    assert set(mine) == set(theirs)
    return mine, theirs


def assert_same(spec: dict, tmp_path: Path) -> None:
    mine, theirs = run_both({**spec, "dtype": "float32"}, tmp_path)
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype, name
        torch.testing.assert_close(mine[name], tensor, atol=2e-6, rtol=1e-5, msg=f"{spec['merge_method']}: {name}")


@pytest.fixture(scope="module")
def llama5_family(tmp_path_factory):
    """Llama with 5 layers, so a gradient's interior values reach a layer."""
    return build_family(tmp_path_factory.mktemp("llama5"), "llama", layers=5)


@pytest.mark.parametrize("method", list(recipes("b", "x", "y")))
def test_same_tensors_as_mergekit(method, llama_family, tmp_path):
    assert_same(recipes(*llama_family)[method], tmp_path)


@pytest.mark.parametrize("case", list(gradient_recipes("b", "x", "y")))
def test_gradients_and_filters_match_mergekit(case, llama5_family, tmp_path):
    assert_same(gradient_recipes(*llama5_family)[case], tmp_path)


@pytest.mark.parametrize("method", ["linear", "ties", "slerp"])
@pytest.mark.parametrize("family_name", ["bert_cls_family", "qwen2_family"])
def test_encoder_and_tied_decoder_match_mergekit(method, family_name, request, tmp_path):
    """A cross-encoder's classifier head and a decoder whose checkpoints hold no lm_head."""
    assert_same(recipes(*request.getfixturevalue(family_name))[method], tmp_path)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "slerp", "nuslerp", "model_stock"])
def test_bf16_merges_differ_from_mergekit_only_by_rounding(method, llama_bf16_family, tmp_path):
    """float32 arithmetic against mergekit's bf16 arithmetic: within a few bf16 ulps, mostly equal."""
    mine, theirs = run_both({**recipes(*llama_bf16_family)[method], "dtype": "bfloat16"}, tmp_path)
    equal = total = 0
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype == torch.bfloat16, name
        ours, ref = mine[name].double(), tensor.double()
        ulps = (ours - ref).abs() / (BF16_ULP * ref.abs().clamp(min=1e-30))
        assert ulps.max() <= ULP_BOUND[method], f"{method}: {name} differs by {ulps.max():.1f} bf16 ulps"
        equal += int((ours == ref).sum())
        total += ref.numel()
    print(f"{method} bf16: {equal / total:.1%} of {total} elements equal to mergekit's")
    assert equal / total >= 0.9


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_bf16_top_k_differs_from_mergekit_only_at_the_cutoff(method, llama_bf16_family, tmp_path):
    """Equal bf16 magnitudes at the density cutoff: the tools may keep different ones of them."""
    mine, theirs = run_both({**recipes(*llama_bf16_family)[method], "dtype": "bfloat16"}, tmp_path)
    differ = total = 0
    for name, tensor in theirs.items():
        off = mine[name] != tensor
        differ += int(off.sum())
        total += tensor.numel()
    print(f"{method} bf16: {differ} of {total} elements differ from mergekit's")
    assert differ / total <= 0.01
