"""Edge cases where mergekit merges and MergeDesk used to refuse: same tensors as mergekit.

- task_arithmetic / dare_linear / breadcrumbs / della_linear under normalize with weights
  summing to 0: mergekit divides by 1 (linear still refuses: mergekit writes an all-Inf model);
- DELLA at density 0 gives the base whatever epsilon is; at density 1 epsilon is unused, so any
  epsilon passes (mergekit checks density ± epsilon in (0, 1) only for 0 < density < 1);
- linear with a base_model not listed under models averages the base in with the global weight.
DARE and DELLA are random, but at density 0 and 1 they are not, so mergekit parity holds there.
"""
from pathlib import Path

import pytest
import torch
import yaml

from core.errors import RecipeError
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.test_mergekit_parity import tensors
from tests.test_param_syntax import assert_same_as_mergekit, mergekit_outputs_of, needs_mergekit


def cases(base, a, b) -> dict[str, dict]:
    def pair(wa, wb, **extra):
        return [{"model": str(a), "parameters": {"weight": wa, **extra}},
                {"model": str(b), "parameters": {"weight": wb, **extra}}]
    zero_sum = {"normalize": True}
    return {
        "task_arithmetic_zero_sum": {"merge_method": "task_arithmetic", "base_model": str(base),
                                     "models": pair(0.5, -0.5), "parameters": zero_sum},
        "breadcrumbs_zero_sum": {"merge_method": "breadcrumbs", "base_model": str(base),
                                 "models": pair(0.8, -0.8, density=0.6, gamma=0.05), "parameters": zero_sum},
        "dare_linear_zero_sum_density_1": {"merge_method": "dare_linear", "base_model": str(base),
                                           "models": pair(0.3, -0.3, density=1.0), "parameters": zero_sum},
        "della_density_0": {"merge_method": "della_linear", "base_model": str(base),
                            "models": pair(0.6, 0.4, density=0.0, epsilon=0.4)},
        "della_density_1_any_epsilon": {"merge_method": "della_linear", "base_model": str(base),
                                        "models": pair(0.6, 0.4, density=1.0, epsilon=0.9)},
        "linear_unlisted_base": {"merge_method": "linear", "base_model": str(base),
                                 "models": pair(0.6, 0.3), "parameters": {"weight": 0.1}},
    }


CASES = list(cases("b", "x", "y"))


@pytest.fixture(scope="module")
def mergekit_outputs(tmp_path_factory, llama_family):
    texts = {case: yaml.safe_dump(spec) for case, spec in cases(*llama_family).items()}
    return mergekit_outputs_of(tmp_path_factory.mktemp("mergekit_edges"), texts)


@needs_mergekit
@pytest.mark.parametrize("case", CASES)
def test_edges_match_mergekit(case, mergekit_outputs, tmp_path):
    assert_same_as_mergekit(case, mergekit_outputs, tmp_path)


def test_zero_sum_divides_by_one(llama_family, tmp_path):
    base, a, b = llama_family
    spec = cases(base, a, b)["task_arithmetic_zero_sum"]
    merged = tensors(merge(recipe_from_dict(spec), tmp_path / "out"))
    x0, xa, xb = (tensors(Path(m)) for m in (base, a, b))
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, x0[name] + 0.5 * (xa[name] - x0[name]) - 0.5 * (xb[name] - x0[name]))


def test_della_density_0_gives_the_base(llama_family, tmp_path):
    base, a, b = llama_family
    merged = tensors(merge(recipe_from_dict(cases(base, a, b)["della_density_0"]), tmp_path / "out"))
    x0 = tensors(Path(base))
    assert all(torch.equal(tensor, x0[name]) for name, tensor in merged.items())


def test_linear_averages_an_unlisted_base_in(llama_family, tmp_path):
    base, a, b = llama_family
    merged = tensors(merge(recipe_from_dict(cases(base, a, b)["linear_unlisted_base"]), tmp_path / "out"))
    x0, xa, xb = (tensors(Path(m)) for m in (base, a, b))
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, (0.1 * x0[name] + 0.6 * xa[name] + 0.3 * xb[name]) / 1.0)


@pytest.mark.parametrize("spec, message", [
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}},
                                           {"model": "b", "parameters": {"weight": -1}}]}, "sum to 0"),
    ({"merge_method": "della_linear", "base_model": "b",
      "models": [{"model": "a", "parameters": {"weight": 1, "density": 0.5, "epsilon": 0.6}}]}, "inside \\(0, 1\\)"),
])
def test_still_refused(spec, message):
    from core.merge.recipe import resolve_params
    with pytest.raises(RecipeError, match=message):
        resolve_params(recipe_from_dict(spec), "model.layers.0.mlp.up_proj.weight", 0.0)
