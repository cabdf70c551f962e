"""Edge cases where mergekit merges and MergeDesk used to refuse or drop an input: zero weight sums under
normalize, DELLA at density 0 or 1, a base_model not listed under linear/karcher; and the warning for a
non-float tensor that differs between inputs.

Each accepted case runs through MergeDesk and mergekit-yaml (helpers of tests/test_param_syntax.py);
a few are also checked against the formula written here. Kept refusals are checked for their line.
"""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tests.test_mergekit_parity as parity
from core.errors import RecipeError
from core.merge.engine import merge_events
from core.merge.recipe import parse_recipe, resolve_params
from tests.test_param_syntax import assert_same_as_mergekit, mergekit_outputs

EDGES = {  # {base}, {a}, {b}: the llama family's folders
    "task_arithmetic_zero_sum": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                                "  - {{model: {a}, parameters: {{weight: 0.5}}}}\n"
                                "  - {{model: {b}, parameters: {{weight: -0.5}}}}\nparameters: {{normalize: true}}\n",
    "dare_linear_zero_sum": "merge_method: dare_linear\nbase_model: {base}\nmodels:\n"
                            "  - {{model: {a}, parameters: {{weight: 0.4, density: 1}}}}\n"
                            "  - {{model: {b}, parameters: {{weight: -0.4, density: 1}}}}\n"
                            "parameters: {{normalize: true}}\n",
    "breadcrumbs_zero_sum": "merge_method: breadcrumbs\nbase_model: {base}\nmodels:\n"
                            "  - {{model: {a}, parameters: {{weight: 1, density: 0.8, gamma: 0.05}}}}\n"
                            "  - {{model: {b}, parameters: {{weight: -1, density: 0.8, gamma: 0.05}}}}\n"
                            "parameters: {{normalize: true}}\n",
    "della_linear_zero_sum_epsilon_unused": "merge_method: della_linear\nbase_model: {base}\nmodels:\n"
                                            "  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
                                            "  - {{model: {b}, parameters: {{weight: -0.3}}}}\n"
                                            "parameters: {{normalize: true, density: 1, epsilon: 0.9}}\n",
    "della_density_0": "merge_method: della\nbase_model: {base}\nmodels:\n"
                       "  - {{model: {a}, parameters: {{weight: 1}}}}\n"
                       "  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"
                       "parameters: {{density: 0, epsilon: 0.3}}\n",
    "linear_base_unlisted": "merge_method: linear\nbase_model: {base}\nmodels:\n"
                            "  - {{model: {a}, parameters: {{weight: 0.5}}}}\n"
                            "  - {{model: {b}, parameters: {{weight: 0.3}}}}\n"
                            "parameters: {{weight: 0.2}}\n",
    "karcher_base_unlisted": "merge_method: karcher\nbase_model: {base}\nmodels: [{{model: {a}}}, {{model: {b}}}]\n",
}


@pytest.fixture(scope="module")
def filled(llama_family):
    base, a, b = llama_family
    return {case: text.format(base=base, a=a, b=b) + "dtype: float32\n" for case, text in EDGES.items()}


@pytest.fixture(scope="module")
def theirs(tmp_path_factory, filled):
    return mergekit_outputs(tmp_path_factory.mktemp("mergekit_edges"), filled)


@pytest.mark.parametrize("case", list(EDGES))
def test_edge_cases_merge_as_mergekit(case, filled, theirs, tmp_path, llama_family):
    mine = assert_same_as_mergekit(filled[case], theirs[case], tmp_path / "ours")
    base, a, b = (parity.tensors(folder) for folder in llama_family)
    for name, tensor in mine.items():
        if case.endswith("zero_sum") and case.startswith("task"):  # divided by 1: base + (a − b)/2
            torch.testing.assert_close(tensor, base[name] + 0.5 * (a[name] - b[name]), atol=1e-6, rtol=0)
        if case == "della_density_0":  # nothing kept: the base
            assert torch.equal(tensor, base[name]), name
        if case == "linear_base_unlisted":  # the base averaged in with the top-level weight
            want = (0.5 * a[name] + 0.3 * b[name] + 0.2 * base[name]) / 1.0
            torch.testing.assert_close(tensor, want, atol=1e-6, rtol=0)


KEPT_REFUSALS = [  # (recipe, tensor, line): rules that apply to resolved values name the tensor
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 0.5}}, {model: b, parameters: {weight: -0.5}}]",
     "w", "linear at tensor w: weights [0.5, -0.5] sum to 0 but normalize is on"),
    ("merge_method: della\nbase_model: z\nmodels: [{model: a, parameters: {weight: 1, density: 0.5, epsilon: 0.5}}]",
     "w", "della at tensor w: density 0.5 ± epsilon 0.5 must stay inside (0, 1): lower epsilon"),
]


@pytest.mark.parametrize("text,tensor,message", KEPT_REFUSALS)
def test_kept_refusals_say_one_line(text, tensor, message):
    with pytest.raises(RecipeError) as caught:
        resolve_params(parse_recipe(text), tensor, t=0.0)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unlisted_base_needs_a_weight_under_linear():
    """mergekit fails at the first tensor ("Missing required parameter weight"); here before any is read."""
    with pytest.raises(RecipeError, match=r"linear needs 'weight' for model 'z' \(the base_model, mixed in"):
        parse_recipe("merge_method: linear\nbase_model: z\nmodels: [{model: a, parameters: {weight: 1}}]")


def with_ids(source, target, ids):
    """A copy of the model at `source` with an int64 tensor `model.extra_ids` added."""
    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    save_file({**weights, "model.extra_ids": torch.tensor(ids)}, target / "model.safetensors")
    return target


@pytest.mark.parametrize("same", [True, False])
def test_differing_non_float_tensor_is_copied_with_a_warning(same, llama_family, tmp_path):
    base = with_ids(llama_family[0], tmp_path / "base", [0, 1, 2])
    other = with_ids(llama_family[1], tmp_path / "other", [0, 1, 2] if same else [0, 1, 3])
    recipe = parse_recipe(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                          f"  - {{model: {other}, parameters: {{weight: 0.5}}}}\n")
    notes = [note for event in merge_events(recipe, tmp_path / "out") for note in event.notes]
    assert load_file(tmp_path / "out" / "model.safetensors")["model.extra_ids"].tolist() == [0, 1, 2]
    assert notes == ([] if same else [f"tensor 'model.extra_ids' is not floating point and differs in {other}: "
                                      f"copied from {base} unmerged (mergekit refuses such inputs)"])
