"""Recipes: parsing, every validation error (by its message), round-trip, parameter resolution."""
import pytest

from core.errors import RecipeError
from core.merge.params import resolve_setting
from core.merge.recipe import parse_recipe, recipe_from_dict, resolve_params, to_yaml

TIES = """
merge_method: ties
base_model: org/base
models:
  - model: org/a
    parameters: {weight: 0.5, density: [0.2, 0.8]}
  - model: org/b
    parameters:
      weight: [{filter: mlp, value: 1.0}, {value: 0.3}]
parameters: {lambda: 1.2, density: 0.9}
dtype: bfloat16
out_dtype: float16
tokenizer_source: base
"""


def test_round_trip_keeps_everything():
    recipe = parse_recipe(TIES)
    assert parse_recipe(to_yaml(recipe)) == recipe
    assert recipe.inputs() == ["org/base", "org/a", "org/b"]
    assert [e.model for e in recipe.rows()] == ["org/a", "org/b"]


def test_resolution_precedence_gradient_and_filters():
    recipe = parse_recipe(TIES)
    mlp = resolve_params(recipe, "model.layers.1.mlp.up_proj.weight", t=0.5)
    assert mlp["weight"] == [0.5, 1.0]
    assert mlp["density"] == pytest.approx([0.5, 0.9])  # gradient midpoint; global for org/b
    assert mlp["lambda"] == 1.2 and mlp["normalize"] is True  # method default
    attn = resolve_params(recipe, "model.layers.0.self_attn.q_proj.weight", t=0.0)
    assert attn["weight"] == [0.5, 0.3] and attn["density"] == pytest.approx([0.2, 0.9])


@pytest.mark.parametrize("setting,t,expected", [
    ([0.0, 1.0], 0.25, 0.25),
    ([0.0, 1.0, 0.0], 0.5, 1.0),
    ([0.0, 1.0, 0.0], 0.75, 0.5),
    ([{"filter": "attn", "value": 7}, {"value": [0, 2]}], 1.0, 2.0),
    ([{"filter": "nothing", "value": 7}], 0.0, None),
])
def test_settings_follow_mergekit_rules(setting, t, expected):
    assert resolve_setting(setting, "model.layers.3.mlp.down_proj.weight", t) == expected


BAD = [
    ("[1, 2]", "a recipe must be a mapping"),
    ("merge_method: ties\nmodels: [a]\nmodules: {}", "recipe key 'modules' is not supported yet"),
    ("merge_method: ties\nmodels: [a]\nbase: x", "unknown recipe key 'base'"),
    ("merge_method: soup\nmodels: [a]", "unknown merge_method 'soup': choose one of linear"),
    ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]", "ties needs a base_model"),
    ("merge_method: linear\nmodels: []", "'models' must be a non-empty list"),
    ("merge_method: linear\nmodels: [{model: a, weight: 1}]", "unknown key(s) ['weight'] in models[0]"),
    ("merge_method: linear\nmodels: [a]", "linear needs 'weight' for model 'a'"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: a, parameters: {weight: 1}}]",
     "model 'a' is listed twice"),
    ("merge_method: slerp\nbase_model: a\nmodels: [a, b, c]\nparameters: {t: 0.5}",
     "slerp takes a base model + exactly 1 other model; "
     "the recipe lists 2 models besides the base_model"),
    ("merge_method: model_stock\nbase_model: a\nmodels: [a, b]",
     "model_stock takes a base model + at least 2 other models; the recipe lists 1 model besides the base_model"),
    ("merge_method: nuslerp\nmodels: [{model: a, parameters: {weight: 1}}]",
     "nuslerp takes exactly 2 models (+ an optional base); the recipe lists 1 model"),
    ("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, density: 1.5}}]",
     "'density' = 1.5 is outside its range [0, 1]"),
    ("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, lambda: 2}}]",
     "'lambda' is a global parameter of ties"),
    ("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, t: 2}}]",
     "unknown parameter 't' in parameters of model 'b' for ties: valid are weight"),
    ("merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters: {t: [0, yes]}", "'t' must be a number, got True"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ndtype: float8", "'dtype' must be one of"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: .nan}}]", "'weight' must be finite"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: [{filter: 3, value: 1}]}}]",
     "filter of 'weight' must be a string"),
    ("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1}}]\nparameters: {normalize: 2}",
     "'normalize' must be true or false"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}\n", "is not valid YAML at line"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: '', parameters: {weight: 1}}]",
     "model 2 has no model chosen: pick one or remove that row"),
    ("merge_method: linear\nmodels: [{model: null, parameters: {weight: 1}}]", "model 1 has no model chosen"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_recipes_give_one_clear_line(text, message):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_rules_on_resolved_values_name_the_tensor():
    linear = recipe_from_dict({"merge_method": "linear", "models": [
        {"model": "a", "parameters": {"weight": [1.0, -1.0]}}, {"model": "b", "parameters": {"weight": -1.0}}]})
    resolve_params(linear, "x.layers.1.w", t=0.5)  # 0 + -1: fine
    with pytest.raises(RecipeError, match=r"linear at tensor x.layers.0.w: weights \[1.0, -1.0\] sum to 0"):
        resolve_params(linear, "x.layers.0.w", t=0.0)
    della = recipe_from_dict({"merge_method": "della", "base_model": "a", "models": [
        {"model": "b", "parameters": {"weight": 1, "density": 0.9, "epsilon": 0.2}}]})
    with pytest.raises(RecipeError, match=r"density 0.9 ± epsilon 0.2 must stay inside \(0, 1\)"):
        resolve_params(della, "w", t=0.0)
    filtered = recipe_from_dict({"merge_method": "slerp", "base_model": "a", "models": ["a", "b"],
                                 "parameters": {"t": [{"filter": "mlp", "value": 0.5}]}})
    with pytest.raises(RecipeError, match="no value for 't' at tensor model.norm.weight"):
        resolve_params(filtered, "model.norm.weight", t=0.0)


def test_base_listed_among_models_is_not_merged_with_itself():
    recipe = parse_recipe("merge_method: slerp\nbase_model: a\nmodels: [a, b]\nparameters: {t: 0.5}")
    assert [e.model for e in recipe.rows()] == ["b"]
    linear = parse_recipe("merge_method: linear\nbase_model: a\nmodels: [{model: a, parameters: {weight: 1}}, "
                          "{model: b, parameters: {weight: 1}}]")
    assert [e.model for e in linear.rows()] == ["a", "b"]  # linear averages every listed model
