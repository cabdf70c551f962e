"""The merge form's state ⇄ recipe conversion, generated for every registered method."""
from pathlib import Path

import pytest
import yaml

from core.errors import RecipeError
from core.merge.methods import METHODS
from core.merge.recipe import parse_recipe, recipe_from_dict
from ui.merge.recipe_form import (FormState, add_row, change_method, check_form, form_to_recipe, form_to_yaml,
                                  global_params, needs_text, new_form, recipe_to_form, remove_row, row_params,
                                  set_field, set_param, set_row_model, shown_value, shows_base, slider_range,
                                  starting_value, yaml_to_form)

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "assets" / "recipes").glob("*.yml"))


def _value(param, offset=0.0):
    """An in-range value unlike the default, so a lost setting shows."""
    if param.kind is bool:
        return not param.default
    low, high = slider_range(param)
    return round(low + (high - low) * (0.3 + offset), 4)


def full_recipe(name: str) -> dict:
    """A recipe for `name` that sets every declared parameter, built from the declaration alone."""
    method = METHODS[name]
    count = method.max_inputs or method.min_inputs + 1
    data = {"merge_method": name}
    if method.base != "unused":
        data["base_model"] = "org/base"
    data["models"] = [{"model": f"org/model-{i}",
                       **({"parameters": {p.name: _value(p, i / 10) for p in method.params if p.per_model}}
                          if any(p.per_model for p in method.params) else {})} for i in range(count)]
    if any(not p.per_model for p in method.params):
        data["parameters"] = {p.name: _value(p) for p in method.params if not p.per_model}
    data.update(dtype="bfloat16", out_dtype="float16", tokenizer_source="org/model-0")
    return data


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_round_trips_through_the_form(name):
    data = full_recipe(name)
    recipe_from_dict(data)  # the generated recipe is valid
    form = recipe_to_form(data)
    assert form.method == name and len(form.rows) == len(data["models"])
    assert form_to_recipe(form) == data
    assert yaml_to_form(form_to_yaml(form)) == form
    assert check_form(form) == recipe_from_dict(data)
    shown = {p.name for p in row_params(name)} | {p.name for p in global_params(form)}
    assert shown == {p.name for p in METHODS[name].params}


@pytest.mark.parametrize("name", list(METHODS))
def test_a_new_form_for_every_method_becomes_valid_once_models_are_picked(name):
    method = METHODS[name]
    count = method.max_inputs or method.min_inputs
    form = new_form(name, models=tuple(f"org/m{i}" for i in range(count)))
    if method.base == "required":
        form = set_field(form, "base_model", "org/base")
    check_form(form)
    required = [p.name for p in method.params if p.default is None]
    recipe = form_to_recipe(form)
    for param in required:
        where = [m["parameters"] for m in recipe["models"]] if method.param(param).per_model else [recipe["parameters"]]
        assert all(param in settings for settings in where)


@pytest.mark.parametrize("source", list(METHODS))
def test_switching_method_keeps_shared_settings_and_drops_the_others(source):
    form = recipe_to_form(full_recipe(source))
    for target in METHODS:
        switched = change_method(form, target)
        declared = {p.name for p in METHODS[target].params}
        assert all(set(row.params) <= declared for row in switched.rows) and set(switched.globals) <= declared
        for old, new in zip(form.rows, switched.rows):
            assert {k: v for k, v in old.params.items() if k in new.params} == {
                k: v for k, v in new.params.items() if k in old.params}
            assert new.key == old.key  # rows keep their identity: the UI keeps their controls
        assert switched.base_model == form.base_model


def test_gradients_and_filter_lists_survive_the_round_trip():
    text = """merge_method: ties
base_model: org/base
models:
  - model: org/a
    parameters:
      weight: [0.2, 0.8]
      density: [{filter: mlp, value: 0.7}, {value: 0.5}]
  - model: org/b
    parameters: {weight: 0.5}
parameters: {lambda: [1, 0.5], normalize: false}
"""
    form = yaml_to_form(text)
    assert form.rows[0].params["density"] == [{"filter": "mlp", "value": 0.7}, {"value": 0.5}]
    assert form_to_recipe(form) == yaml.safe_load(text)
    edited = set_param(form, form.rows[1].key, "density", 0.3)
    assert form_to_recipe(edited)["models"][0] == yaml.safe_load(text)["models"][0]
    assert form_to_recipe(set_param(form, None, "lambda", "[0, 1, 2]"))["parameters"]["lambda"] == [0, 1, 2]


def test_edits_change_only_what_they_name():
    form = new_form("linear", models=("org/a", "org/b"))
    assert [row.params for row in form.rows] == [{"weight": 0.5}, {"weight": 0.5}]
    first, second = form.rows[0].key, form.rows[1].key
    form = set_param(form, second, "weight", 0.25000000001)
    form = set_row_model(form, first, "  org/c ")
    form = add_row(form, "org/d")
    assert form_to_recipe(form)["models"] == [{"model": "org/c", "parameters": {"weight": 0.5}},
                                             {"model": "org/b", "parameters": {"weight": 0.25}},
                                             {"model": "org/d", "parameters": {"weight": 0.5}}]
    form = remove_row(form, second)
    assert [row.model for row in form.rows] == ["org/c", "org/d"]
    assert set_field(form, "dtype", "bfloat16").dtype == "bfloat16" and set_field(form, "dtype", None).dtype == ""
    assert form_to_recipe(set_param(form, None, "normalize", False))["parameters"] == {"normalize": False}


def test_setting_the_shown_value_writes_nothing():
    form = new_form("ties", models=("org/a",))
    key = form.rows[0].key
    density = METHODS["ties"].param("density")
    assert shown_value(form, key, density) == 1.0
    assert set_param(form, key, "density", 1.0) is form
    assert "density" not in form_to_recipe(form)["models"][0]["parameters"]
    assert set_param(form, key, "density", "") == form  # an emptied text box: back to the default
    assert form_to_recipe(set_param(form, key, "density", 0.4))["models"][0]["parameters"]["density"] == 0.4


def test_a_per_model_parameter_set_globally_shows_on_every_row():
    form = yaml_to_form("merge_method: linear\nmodels: [org/a, org/b]\nparameters: {weight: 0.3}\n")
    assert [p.name for p in global_params(form)] == ["weight", "normalize"]
    assert shown_value(form, form.rows[0].key, METHODS["linear"].param("weight")) == 0.3
    assert form_to_recipe(add_row(form, "org/c"))["models"][2] == {"model": "org/c"}


def test_bad_yaml_and_bad_recipes_are_one_line_errors():
    for text, problem in [("merge_method: [", "not valid YAML"), ("merge_method: nope\nmodels: [a/b]", "unknown"),
                          ("merge_method: slerp\nmodels: [a/b]", "needs a base_model")]:
        with pytest.raises(RecipeError, match=problem) as caught:
            yaml_to_form(text)
        assert "\n" not in str(caught.value)
    with pytest.raises(RecipeError, match=r"the setting '\[unclosed' is not valid YAML"):
        set_param(new_form(), None, "normalize", "[unclosed")
    with pytest.raises(RecipeError, match="model 2 has no model chosen: pick one or remove that row"):
        check_form(new_form("linear", models=("org/a", "")))


def test_controls_come_from_the_declarations():
    assert [p.name for p in row_params("dare_ties")] == ["weight", "density"]
    assert starting_value(METHODS["slerp"].param("t")) == 0.5
    assert slider_range(METHODS["linear"].param("weight"), 3.5) == (-1.0, 3.5)
    assert shows_base(new_form("ties")) and not shows_base(new_form("linear"))
    assert shows_base(set_field(new_form("linear"), "base_model", "org/x"))
    assert needs_text("ties") == "a base model + at least 1 other model"
    assert needs_text("model_stock") == "a base model + at least 2 other models"
    assert needs_text("nuslerp") == "exactly 2 models (+ an optional base)"
    assert FormState().method == "linear" and FormState().rows == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipes_load_into_the_form(path):
    text = path.read_text()
    form = yaml_to_form(text)
    assert form_to_recipe(form) == form_to_recipe(recipe_to_form(yaml.safe_load(text)))
    assert check_form(form) == parse_recipe(text)
