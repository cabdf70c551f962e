"""mergekit's parameter syntax: number-like text, bool words and bool gradients, ranges mergekit has not.

Each accepted recipe is written once as YAML text (so `weight: 5e-1` reaches both tools as YAML 1.1's
string) and merged by MergeDesk and by mergekit-yaml ($MERGEKIT_YAML, as tests/test_mergekit_parity.py):
the tensors must agree. The refusals kept on purpose (README, "Methods") are checked for their line.
"""
import subprocess
from pathlib import Path

import pytest
import torch

import tests.test_mergekit_parity as parity
from core.errors import RecipeError
from core.merge.engine import merge
from core.merge.recipe import parse_recipe, resolve_params, to_yaml

SYNTAX = {  # {base}, {a}, {b}: the llama family's folders
    "sci_weights": "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 5e-1}}}}\n"
                   "  - {{model: {b}, parameters: {{weight: 2.5E-1}}}}\ndtype: float32\n",
    "sci_lambda_text_weight": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                              "  - {{model: {a}, parameters: {{weight: '0.7'}}}}\n"
                              "  - {{model: {b}, parameters: {{weight: [1e-1, 9e-1]}}}}\n"
                              "parameters: {{lambda: 8e-1}}\ndtype: float32\n",
    "bool_gradient": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                     "  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
                     "  - {{model: {b}, parameters: {{weight: 0.4}}}}\n"
                     "parameters: {{normalize: [true, false]}}\ndtype: float32\n",
    "bool_number": "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
                   "  - {{model: {b}, parameters: {{weight: 0.5}}}}\nparameters: {{normalize: 0}}\ndtype: float32\n",
    "weight_and_lambda_12": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                            "  - {{model: {a}, parameters: {{weight: 12}}}}\n"
                            "  - {{model: {b}, parameters: {{weight: -11}}}}\n"
                            "parameters: {{lambda: 12}}\ndtype: float32\n",
    "float64": "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.6}}}}\n"
               "  - {{model: {b}, parameters: {{weight: 0.4}}}}\ndtype: float64\n",
}


def mergekit_outputs(root: Path, texts: dict[str, str]) -> dict[str, Path]:
    """{case: mergekit's output folder} for recipe texts, all merged by one mergekit process."""
    if not Path(parity.MERGEKIT).is_file():
        pytest.skip(f"mergekit not found at MERGEKIT_YAML={parity.MERGEKIT!r}")
    args = []
    for case, text in texts.items():
        (root / f"{case}.yml").write_text(text)
        args += [str(root / f"{case}.yml"), str(root / case)]
    python = Path(parity.MERGEKIT).read_text().splitlines()[0].removeprefix("#!").strip()
    done = subprocess.run([python, "-c", parity.MERGEKIT_ALL, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {case: root / case for case in texts}


def assert_same_as_mergekit(text: str, theirs: Path, out: Path, atol: float = 2e-6) -> dict[str, torch.Tensor]:
    """MergeDesk's merge of `text` has mergekit's tensor names, dtypes and values; returns ours."""
    mine, theirs = parity.tensors(merge(parse_recipe(text), out)), parity.tensors(theirs)
    assert set(mine) == set(theirs)
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype, name
        torch.testing.assert_close(mine[name], tensor, atol=atol, rtol=1e-5, msg=name)
    return mine


@pytest.fixture(scope="module")
def filled(llama_family):
    base, a, b = llama_family
    return {case: text.format(base=base, a=a, b=b) for case, text in SYNTAX.items()}


@pytest.fixture(scope="module")
def theirs(tmp_path_factory, filled):
    return mergekit_outputs(tmp_path_factory.mktemp("mergekit_syntax"), filled)


@pytest.mark.parametrize("case", list(SYNTAX))
def test_accepted_syntax_merges_as_mergekit(case, filled, theirs, tmp_path):
    """float64: MergeDesk computes in float32 and writes float64 (mergekit computes in float64): within 1e-6."""
    mine = assert_same_as_mergekit(filled[case], theirs[case], tmp_path / "ours", atol=1e-6)
    if case == "float64":
        assert all(t.dtype == torch.float64 for t in mine.values())


def test_text_numbers_are_stored_as_floats_and_round_trip():
    recipe = parse_recipe("merge_method: linear\nmodels: [{model: a, parameters: {weight: 5e-1}}]\n"
                          "parameters: {normalize: 'no'}")
    assert recipe.models[0].parameters["weight"] == 0.5 and recipe.parameters["normalize"] is False
    assert parse_recipe(to_yaml(recipe)) == recipe


def test_bool_gradient_steps_over_the_layers():
    """mergekit: the value at index int(t·(n−1)), no interpolation."""
    recipe = parse_recipe("merge_method: task_arithmetic\nbase_model: z\n"
                          "models: [{model: a, parameters: {weight: 1}}]\n"
                          "parameters: {normalize: [true, false, true]}")
    got = [resolve_params(recipe, "w", t)["normalize"] for t in (0.0, 0.49, 0.5, 0.99, 1.0)]
    assert got == [True, True, False, False, True]


KEPT_REFUSALS = [
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: abc}}]", "'weight' must be a number, got 'abc'"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: '1e400'}}]", "'weight' must be finite"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nparameters: {normalize: 2}",
     "'normalize' must be true or false, got 2"),
    ("merge_method: ties\nbase_model: z\nmodels: [{model: a, parameters: {weight: 1, density: '1.5'}}]",
     "'density' = 1.5 is outside its range [0, 1]"),
    ("merge_method: ties\nbase_model: z\nmodels: [{model: a, parameters: {weight: 1, epsilon: 0.1}}]",
     "unknown parameter 'epsilon' in parameters of model 'a' for ties"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: [1, [2]]}}]",
     "'weight' list must be all values (a gradient) or all {filter, value} entries"),
]


@pytest.mark.parametrize("text,message", KEPT_REFUSALS)
def test_kept_refusals_say_one_line(text, message):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)
