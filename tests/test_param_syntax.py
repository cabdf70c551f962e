"""Parameter syntax mergekit accepts is accepted here, with mergekit's tensors.

mergekit reads each parameter value with pydantic's lax rules: a float parameter takes a
number-like string (PyYAML, a YAML 1.1 loader, reads `5e-1` as the string "5e-1"), a boolean
parameter takes a per-layer list of booleans (a step function over the layers, no
interpolation), and weight / lambda have no range. Each recipe here is parsed from YAML text by
both tools and compared tensor by tensor; mergekit is $MERGEKIT_YAML (tests/test_mergekit_parity.py).
"""
import re
import subprocess
from pathlib import Path

import pytest
import torch

from core.errors import RecipeError
from core.merge.engine import merge
from core.merge.params import resolve_setting
from core.merge.recipe import parse_recipe
from tests.test_mergekit_parity import MERGEKIT, MERGEKIT_ALL, tensors

needs_mergekit = pytest.mark.skipif(not Path(MERGEKIT).is_file(), reason="mergekit-yaml not found ($MERGEKIT_YAML)")


def cases(base, a, b) -> dict[str, str]:
    """YAML texts, written as people write them (exponent strings, boolean lists, big weights)."""
    return {
        "exponent_strings": f"""
merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 5e-1, density: 7e-1}}
  - model: {b}
    parameters: {{weight: [2e-1, 0.9], density: 6e-1}}
parameters: {{lambda: 8e-1}}
""",
        "boolean_gradient": f"""
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.7}}
  - model: {b}
    parameters: {{weight: 0.6}}
parameters: {{normalize: [true, false, true]}}
""",
        "large_weight_and_lambda": f"""
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 12}}
  - model: {b}
    parameters: {{weight: -11}}
parameters: {{lambda: 12}}
""",
        "linear_large_weights": f"""
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 12}}
  - model: {b}
    parameters: {{weight: 1e-1}}
parameters: {{normalize: false}}
""",
    }


CASES = list(cases("b", "x", "y"))


@pytest.fixture(scope="module")
def llama5(tmp_path_factory):
    from tests.model_factory import build_family
    return build_family(tmp_path_factory.mktemp("llama5s"), "llama", layers=5)


def mergekit_outputs_of(root: Path, texts: dict[str, str]) -> dict[str, tuple[str, Path]]:
    """{case: (YAML text, mergekit's output folder)}, every case merged by one mergekit process."""
    args = []
    for case, text in texts.items():
        (root / f"{case}.yml").write_text(text)
        args += [str(root / f"{case}.yml"), str(root / case)]
    python = Path(MERGEKIT).read_text().splitlines()[0].removeprefix("#!").strip()
    run = subprocess.run([python, "-c", MERGEKIT_ALL, *args], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return {case: (text, root / case) for case, text in texts.items()}


def assert_same_as_mergekit(case: str, outputs: dict, tmp_path: Path) -> None:
    """MergeDesk merges the case's YAML text; every tensor equals mergekit's."""
    text, theirs = outputs[case]
    mine, theirs = tensors(merge(parse_recipe(text), tmp_path / "ours")), tensors(theirs)
    assert set(mine) == set(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, atol=2e-5, rtol=1e-5, msg=f"{case}: {name}")


@pytest.fixture(scope="module")
def mergekit_outputs(tmp_path_factory, llama5):
    return mergekit_outputs_of(tmp_path_factory.mktemp("mergekit_syntax"), cases(*llama5))


@needs_mergekit
@pytest.mark.parametrize("case", CASES)
def test_syntax_matches_mergekit(case, mergekit_outputs, tmp_path):
    assert_same_as_mergekit(case, mergekit_outputs, tmp_path)


def test_number_strings_are_read_as_numbers():
    recipe = parse_recipe("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 5e-1}\n"
                          "  - model: b\n    parameters: {weight: ' 1E-2 '}\n")
    assert [e.parameters["weight"] for e in recipe.models] == [0.5, 0.01]


def test_boolean_lists_step_over_the_layers():
    setting = [True, False, True]
    picked = [resolve_setting(setting, "x", t) for t in (0, 0.4, 0.5, 0.9, 1)]
    assert picked == [True, True, False, False, True]  # index int(t * 2), as mergekit picks


def test_boolean_words_as_pydantic_reads_them():
    recipe = parse_recipe("merge_method: linear\nmodels: [a, b]\nparameters: {weight: 1, normalize: 'no'}\n")
    assert recipe.parameters["normalize"] is False


@pytest.mark.parametrize("value, message", [("'half'", "must be a number"), ("2e0", "outside its range [0, 1]"),
                                            ("-1e-1", "outside its range [0, 1]")])
def test_bad_density_strings_still_refused(value, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        parse_recipe(f"merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n"
                     f"    parameters: {{weight: 1, density: {value}}}\n")


def test_a_boolean_is_not_a_weight():
    with pytest.raises(RecipeError, match="'weight' must be a number"):
        parse_recipe("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: true}\n")
