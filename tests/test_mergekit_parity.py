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

from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.model_factory import build_family

MERGEKIT = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml") or ""
pytestmark = pytest.mark.skipif(not Path(MERGEKIT).is_file(),
                                reason=f"mergekit not found at MERGEKIT_YAML={MERGEKIT!r} nor on PATH: "
                                       "export MERGEKIT_YAML=$(bash .ci/mergekit_venv)")
BF16_ULP = 2.0 ** -7  # bfloat16 keeps 8 significant bits: one ulp is 2^-7 of the leading power of two
# Measured on llama_bf16_family (bf16 ulps of the largest input; mergekit rounds each step):
# linear 1.0, slerp 0.1, model_stock 2.0, task_arithmetic 4.0, nuslerp 4.0.
ROUNDING_ULPS = {"linear": 1, "slerp": 1, "model_stock": 2, "task_arithmetic": 4, "nuslerp": 4, "ties": 4,
                 "breadcrumbs_ties": 4}
# Top-k ties at the cutoff: measured 86 (ties) and 72 (breadcrumbs_ties) of 26272 elements, 0.33%.
CUTOFF_SHARE = {"ties": 0.005, "breadcrumbs_ties": 0.005}  # of elements past the rounding bound


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


# One mergekit process runs every recipe of this module: importing torch and mergekit costs
# far more than these tiny merges, so a process per recipe would take minutes.
MERGEKIT_ALL = """
import sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
for recipe, out in zip(sys.argv[1::2], sys.argv[2::2]):
    with open(recipe) as f:
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(f)), out, options=MergeOptions(quiet=True))
"""
METHODS = list(recipes("b", "x", "y"))
GRADIENT_CASES = list(gradient_recipes("b", "x", "y"))
ARCH_METHODS = ["linear", "ties", "slerp"]
BF16_METHODS = ["linear", "task_arithmetic", "slerp", "nuslerp", "model_stock", "ties", "breadcrumbs_ties"]


def all_cases(llama, llama5, bert_cls, qwen2, llama_bf16) -> dict[str, dict]:
    """Every recipe this module compares, by case id."""
    cases = {f"llama-{m}": {**spec, "dtype": "float32"} for m, spec in recipes(*llama).items()}
    cases |= {f"llama5-{c}": {**spec, "dtype": "float32"} for c, spec in gradient_recipes(*llama5).items()}
    for family, folders in (("bert_cls", bert_cls), ("qwen2", qwen2)):
        cases |= {f"{family}-{m}": {**recipes(*folders)[m], "dtype": "float32"} for m in ARCH_METHODS}
    cases |= {f"bf16-{m}": {**recipes(*llama_bf16)[m], "dtype": "bfloat16"} for m in BF16_METHODS}
    return cases


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in folder.glob("*.safetensors"):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def llama5_family(tmp_path_factory):
    """Llama with 5 layers, so a gradient's interior values reach a layer."""
    return build_family(tmp_path_factory.mktemp("llama5"), "llama", layers=5)


@pytest.fixture(scope="module")
def mergekit_results(tmp_path_factory, llama_family, llama5_family, bert_cls_family, qwen2_family,
                     llama_bf16_family):
    """{case id: (recipe, mergekit's output folder)}, all merged by one mergekit process."""
    cases = all_cases(llama_family, llama5_family, bert_cls_family, qwen2_family, llama_bf16_family)
    return run_mergekit(tmp_path_factory.mktemp("mergekit"), cases)


def run_mergekit(root: Path, cases: dict[str, dict]) -> dict[str, tuple[dict, Path]]:
    """{case id: (recipe, mergekit's output folder under root)}, every recipe run by one mergekit process."""
    args = []
    for case, spec in cases.items():
        (root / f"{case}.yml").write_text(yaml.safe_dump(spec))
        args += [str(root / f"{case}.yml"), str(root / case)]
    python = Path(MERGEKIT).read_text().splitlines()[0].removeprefix("#!").strip()
    run = subprocess.run([python, "-c", MERGEKIT_ALL, *args], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return {case: (spec, root / case) for case, spec in cases.items()}


def run_both(case: str, results: dict, tmp_path: Path) -> tuple[dict, dict]:
    """(MergeDesk's tensors, mergekit's tensors) for one case."""
    spec, theirs = results[case]
    mine, theirs = tensors(merge(recipe_from_dict(spec), tmp_path / "ours")), tensors(theirs)
    assert set(mine) == set(theirs)
    return mine, theirs


def assert_same(case: str, results: dict, tmp_path: Path) -> None:
    mine, theirs = run_both(case, results, tmp_path)
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype, name
        torch.testing.assert_close(mine[name], tensor, atol=2e-6, rtol=1e-5, msg=f"{case}: {name}")


@pytest.mark.parametrize("method", METHODS)
def test_same_tensors_as_mergekit(method, mergekit_results, tmp_path):
    assert_same(f"llama-{method}", mergekit_results, tmp_path)


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_gradients_and_filters_match_mergekit(case, mergekit_results, tmp_path):
    assert_same(f"llama5-{case}", mergekit_results, tmp_path)


@pytest.mark.parametrize("method", ARCH_METHODS)
@pytest.mark.parametrize("family", ["bert_cls", "qwen2"])
def test_encoder_and_tied_decoder_match_mergekit(method, family, mergekit_results, tmp_path):
    """A cross-encoder's classifier head and a decoder whose checkpoints hold no lm_head."""
    assert_same(f"{family}-{method}", mergekit_results, tmp_path)


def bf16_ulps(mine: dict, theirs: dict, inputs: list[dict], name: str) -> torch.Tensor:
    """|ours − mergekit's| per element, in bf16 ulps of the largest input magnitude there."""
    scale = torch.stack([x[name].double().abs() for x in inputs]).amax(dim=0).clamp(min=2.0 ** -126)
    ulp = torch.exp2(torch.floor(torch.log2(scale))) * BF16_ULP
    return (mine[name].double() - theirs[name].double()).abs() / ulp


@pytest.mark.parametrize("method", BF16_METHODS)
def test_bf16_merges_differ_from_mergekit_by_bounded_rounding(method, mergekit_results, llama_bf16_family, tmp_path):
    """Deliberate: float32 arithmetic, rounded once, against mergekit's bf16 arithmetic.

    Bound per element: ROUNDING_ULPS[method] bf16 ulps of the largest input there. Top-k
    methods also differ where equal magnitudes sit at the density cutoff: at most
    CUTOFF_SHARE of the elements go past the rounding bound.
    """
    mine, theirs = run_both(f"bf16-{method}", mergekit_results, tmp_path)
    inputs = [tensors(folder) for folder in llama_bf16_family]
    worst, equal, beyond, total = 0.0, 0, 0, 0
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype == torch.bfloat16, name
        ulps = bf16_ulps(mine, theirs, inputs, name)
        beyond += int((ulps > ROUNDING_ULPS[method]).sum())
        worst = max(worst, float(ulps.max()))
        equal += int((mine[name] == tensor).sum())
        total += tensor.numel()
    print(f"{method} bf16 vs mergekit: {equal / total:.1%} of {total} equal, worst {worst:.1f} ulps, "
          f"{beyond} past {ROUNDING_ULPS[method]} ulps")
    assert beyond <= CUTOFF_SHARE.get(method, 0) * total
