"""Promise 5: a bad recipe fails with one clear line, never a traceback.

Recipes are fuzzed with hypothesis at three depths: random text, random YAML documents (types,
nesting, unicode, huge and non-finite numbers) under the recipe's keys, and recipes that are
nearly right (a real method and models, random parameter values) carried on through planning
against a small tensor listing. Every outcome is a recipe that plans, or a MergeDeskError whose
message is one line; the CLI is checked to print exactly that line and exit 1.
"""
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core.__main__ import main
from core.errors import MergeDeskError
from core.io.header import TensorInfo
from core.merge.methods import METHODS
from core.merge.plan import plan_merge
from core.merge.recipe import KEYS, parse_recipe
from tests.reliability.merge_helpers import figures, one_line

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True)
MODELS = ("org/base", "org/a", "org/b")
PARAMS = sorted({p.name for m in METHODS.values() for p in m.params}) + ["weigth", ""]


def listing() -> dict[str, TensorInfo]:
    """Three layers and an embedding of float32 (4, 3), and one int64 buffer: plain numbers, no files."""
    names = [f"model.layers.{i}.mlp.weight" for i in range(3)] + ["model.embed.weight"]
    found = {n: TensorInfo(n, (4, 3), torch.float32, Path("x.safetensors"), 48 * i, 48) for i, n in enumerate(names)}
    found["model.ids"] = TensorInfo("model.ids", (4,), torch.int64, Path("x.safetensors"), 48 * 4, 32)
    return found


def outcome(text: str) -> str:
    """Parse and, when valid, plan: "planned" or "rejected" with a one-line message; anything else fails."""
    try:
        recipe = parse_recipe(text)
        plan_merge(recipe, {ref: listing() for ref in recipe.inputs()})
    except MergeDeskError as error:
        assert one_line(str(error)), repr(str(error))
        return "rejected"
    return "planned"


def run_fuzz(strategy, name: str) -> Counter:
    counts = Counter()

    @FUZZ
    @given(strategy)
    def one(text):
        counts[outcome(text)] += 1

    one()
    figures(f"5 fuzzed recipes ({name})", inputs_tried=sum(counts.values()), rejected_cleanly=counts["rejected"],
            planned=counts["planned"], tracebacks=0)
    return counts


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)  # YAML cannot hold surrogates
huge = st.integers(min_value=-10**400, max_value=10**400)
scalar = st.none() | st.booleans() | st.integers(-3, 3) | huge | st.floats() | text
values = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text | st.integers(), inner,
                                                                                         max_size=4), max_leaves=12)


def test_fuzz_random_text():
    run_fuzz(st.text(max_size=200), "random text")


@pytest.mark.slow
def test_fuzz_random_yaml_under_the_recipe_keys():
    documents = st.dictionaries(st.sampled_from(KEYS) | text, values, max_size=6)
    run_fuzz(documents.map(lambda data: yaml.safe_dump(data, allow_unicode=True)), "random YAML documents")


parameter_value = st.recursive(
    scalar, lambda inner: st.lists(inner, min_size=1, max_size=4)
    | st.lists(st.fixed_dictionaries({"value": inner}, optional={"filter": st.sampled_from(["mlp", "embed", "*"]) | text}),
               min_size=1, max_size=3), max_leaves=8)
parameters = st.dictionaries(st.sampled_from(PARAMS), parameter_value, max_size=3)


@st.composite
def nearly_right(draw) -> str:
    """A real method over distinct models, its own parameters (required ones always) mostly valid, now and then a stray key."""
    method = METHODS[draw(st.sampled_from(sorted(METHODS)))]
    value = st.one_of(st.floats(0.1, 1), st.floats(0.1, 1), st.floats(0.1, 1), parameter_value)

    def settings_for(per_model: bool) -> dict:
        names = [p.name for p in method.params if p.per_model == per_model and p.kind is float]
        required = {p.name for p in method.params if p.per_model == per_model and p.default is None}
        chosen = (draw(st.sets(st.sampled_from(names))) if names else set()) | required
        stray = draw(st.sampled_from([{}, {}, {}, draw(parameters)]))
        return {name: draw(value) for name in chosen} | stray

    models = draw(st.lists(st.sampled_from(MODELS[1:]), min_size=1, max_size=2, unique=True))
    data = {"merge_method": method.name, "models": [{"model": m, "parameters": settings_for(True)} for m in models],
            "parameters": settings_for(False)}
    if method.base != "unused" and draw(st.integers(0, 3)):
        data["base_model"] = MODELS[0]
    for key, strategy in (("dtype", st.sampled_from(["float16", "bfloat16", "float32", "int8"]) | text),
                          ("out_dtype", st.sampled_from(["float16", "float32"]))):
        if draw(st.booleans()):
            data[key] = draw(strategy)
    return yaml.safe_dump(data, allow_unicode=True)


@pytest.mark.slow
def test_fuzz_nearly_right_recipes_through_planning():
    counts = run_fuzz(nearly_right(), "nearly right recipes, planned")
    assert counts["planned"] and counts["rejected"]  # the fuzzer reaches both sides


LAUGHS = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
NAMED = {
    "an integer of 5,000 digits": "merge_method: linear\nmodels: [{model: a, parameters: {weight: " + "9" * 5000 + "}}]",
    "an integer beyond any float": "merge_method: linear\nmodels: [{model: a, parameters: {weight: " + "9" * 400 + "}}]",
    "lists nested 5,000 deep": "merge_method: " + "[" * 5000 + "]" * 5000,
    "a billion laughs of aliases": LAUGHS + "merge_method: linear\nmodels: [{model: a, parameters: {weight: *i}}]",
    "a tab for indentation": "merge_method: linear\nmodels:\n\t- model: a",
    "unicode and control characters": "merge_method: lineär\u202e\x07\nmodels: [{model: 模型}]",
    "a Python object tag": "merge_method: !!python/object/apply:os.system ['echo hi']",
    "binary junk": "\x00\x01\xfe merge_method",
    "an empty file": "",
    "a list, not a mapping": "- merge_method: linear",
    "weight: .nan": "merge_method: linear\nmodels: [{model: a, parameters: {weight: .nan}}, {model: b}]",
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if "5,000 deep" in case else case
                                  for case in NAMED])  # parsing the 5,000-deep nesting takes seconds
def test_each_named_bad_recipe_is_one_line_from_the_cli(case, tmp_path, capsys):
    recipe_file = tmp_path / "recipe.yml"
    recipe_file.write_text(NAMED[case], encoding="utf-8")
    assert main(["plan", str(recipe_file), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert one_line(error) and error.startswith("error: ") and "internal error" not in error, error
    assert outcome(NAMED[case]) == "rejected"
