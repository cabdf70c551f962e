"""The merge form's state and its conversion to and from a recipe (mergekit's schema).

    form = new_form("ties", models=["org/base", "org/tuned"])    # starting values filled in
    form = set_param(form, form.rows[1].key, "density", 0.5)     # what a slider does
    form_to_yaml(form)                                           # the YAML box's text
    yaml_to_form(pasted_text)                                    # a pasted recipe, validated

Which controls exist comes from the method declarations in core.merge.methods (per-model params
on each model row, the others as global controls): nothing here is written per method.
A setting a slider cannot show — a per-layer gradient, a filter list — is kept as it is,
so pasting a recipe and exporting it again loses nothing. So is a `slices:` list (frankenmerges):
it is edited in the YAML box, and the rows list the models its slices read.

Pure functions on plain data: no gradio, no tensors. Every function returns a new FormState.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace

import yaml

from core.errors import RecipeError
from core.io.safe_yaml import load_yaml
from core.merge.methods import METHODS, Method
from core.merge.params import Param, Setting
from core.merge.recipe import MergeRecipe, ModelEntry, parse_recipe, recipe_from_dict, to_yaml
from core.merge.slice_spec import OutputSlice
from core.merge.tokenizer_spec import TokenizerSpec

_keys = itertools.count(1)
FIELDS = ("base_model", "dtype", "out_dtype", "tokenizer_source")  # text settings outside the rows


def _new_key() -> int:
    return next(_keys)


@dataclass
class ModelRow:
    """One input model. `params` holds only the settings given (weight, density…), not defaults."""

    model: str = ""  # folder or Hub id; "" until one is picked
    params: dict[str, Setting] = field(default_factory=dict)
    key: int = field(default_factory=_new_key, compare=False)  # stable identity for the UI's row


@dataclass
class FormState:
    """Everything the merge form shows; "" means "not set" for the text settings."""

    method: str = "linear"
    base_model: str = ""
    rows: list[ModelRow] = field(default_factory=list)
    globals: dict[str, Setting] = field(default_factory=dict)  # top-level `parameters`
    dtype: str = ""  # working dtype; "" = each tensor's own
    out_dtype: str = ""  # dtype written; "" = dtype, else the base's
    tokenizer_source: str = ""  # "": the base's tokenizer, rows as they are; base | union | a model: realigned
    slices: tuple[OutputSlice, ...] | None = None  # a pasted `slices:` recipe's, kept as pasted (edited in YAML)
    tokenizer: TokenizerSpec | None = None  # a pasted `tokenizer:` block, kept as pasted (edited in YAML)
    chat_template: str = ""  # a pasted chat_template (auto or Jinja), kept as pasted
    key: int = field(default_factory=_new_key, compare=False)  # a pasted recipe is a new form


# ---- form <-> recipe ------------------------------------------------------------------------

def form_to_yaml(state: FormState) -> str:
    """The form as recipe YAML, written by core.merge.recipe.to_yaml (not validated: see check_form)."""
    recipe = MergeRecipe(state.method, [ModelEntry(r.model, dict(r.params)) for r in state.rows],
                         base_model=state.base_model or None, parameters=dict(state.globals),
                         dtype=state.dtype or None, out_dtype=state.out_dtype or None,
                         tokenizer_source=state.tokenizer_source or None, slices=state.slices,
                         tokenizer=state.tokenizer, chat_template=state.chat_template or None)
    return to_yaml(recipe)


def form_to_recipe(state: FormState) -> dict:
    """The form as a recipe mapping, exactly what form_to_yaml writes."""
    return load_yaml(form_to_yaml(state), source="the form")


def recipe_to_form(data: object) -> FormState:
    """A validated form for a recipe mapping; a RecipeError (one line) names what is wrong."""
    return _from_recipe(recipe_from_dict(data))


def yaml_to_form(text: str) -> FormState:
    """A validated form for recipe YAML text (syntax and schema errors: one-line RecipeError)."""
    return _from_recipe(parse_recipe(text, source="the recipe"))


def check_form(state: FormState) -> MergeRecipe:
    """The form's recipe, validated; raises RecipeError with the first problem."""
    return recipe_from_dict(form_to_recipe(state))


def _from_recipe(recipe: MergeRecipe) -> FormState:
    return FormState(recipe.merge_method, recipe.base_model or "",
                     [ModelRow(e.model, copy.deepcopy(e.parameters)) for e in recipe.models],
                     copy.deepcopy(recipe.parameters), recipe.dtype or "", recipe.out_dtype or "",
                     recipe.tokenizer_source or "", recipe.slices, recipe.tokenizer, recipe.chat_template or "")


# ---- edits ----------------------------------------------------------------------------------

def new_form(method: str = "linear", *, models: tuple[str, ...] = ("", "")) -> FormState:
    """A form for `method` with one row per model and every required value at its starting value."""
    return change_method(FormState(method, rows=[ModelRow(ref) for ref in models]), method)


def change_method(state: FormState, method: str) -> FormState:
    """Switch method: keep the settings it also declares, drop the rest, fill in required ones."""
    if method not in METHODS:
        raise RecipeError(f"unknown merge method {method!r}: choose one of {', '.join(METHODS)}")
    declared = {p.name: p for p in METHODS[method].params}
    new = copy.deepcopy(state)
    new.method = method
    new.globals = {k: v for k, v in new.globals.items() if k in declared}
    for param in declared.values():
        if param.default is None and not param.per_model and param.name not in new.globals:
            new.globals[param.name] = starting_value(param)
    for row in new.rows:
        row.params = _row_settings(row.params, METHODS[method], new.globals)
    new.rows = _at_most(new.rows, METHODS[method], new.base_model)
    return new


def trimmed_note(old: FormState, new: FormState) -> str:
    """What change_method removed, in a line ("" when nothing): the rows past the method's maximum.

    Example (linear a, b → slerp, no base): 'slerp takes a base model + exactly 1 other model: kept the first,
    removed model 2 (b)'.
    """
    kept = {row.key for row in new.rows}
    gone = [f"model {index} ({row.model or 'not picked'})" for index, row in enumerate(old.rows, 1)
            if row.key not in kept]
    if not gone:
        return ""
    count = METHODS[new.method].max_inputs
    return (f"{new.method} takes {needs_text(new.method)}: kept the first{'' if count == 1 else f' {count}'}, "
            f"removed {', '.join(gone)}")


def add_row(state: FormState, model: str = "") -> FormState:
    """A new model row with the method's required per-model values at their starting values."""
    new = copy.deepcopy(state)
    new.rows.append(ModelRow(model, _row_settings({}, METHODS[state.method], state.globals)))
    return new


def remove_row(state: FormState, key: int) -> FormState:
    new = copy.deepcopy(state)
    new.rows = [row for row in new.rows if row.key != key]
    return new


def set_row_model(state: FormState, key: int, model: str) -> FormState:
    new = copy.deepcopy(state)
    for row in new.rows:
        if row.key == key:
            row.model = str(model or "").strip()
    return new


def set_param(state: FormState, key: int | None, name: str, value: object) -> FormState:
    """Set a parameter on the row with `key`, or globally when key is None.

    Numbers and booleans come from sliders and checkboxes; text comes from the box that shows
    a gradient or filter list and is read as YAML ("[0, 0.5, 1]"). Setting the value a control
    already shows changes nothing, so a slider released without a move writes no default.
    """
    param = METHODS[state.method].param(name)
    if param is None:
        raise RecipeError(f"{state.method} has no parameter {name!r}")
    setting = parse_setting(value) if isinstance(value, str) else value
    if is_number(setting):
        setting = round(float(setting), 6)
    if setting == shown_value(state, key, param):
        return state
    new = copy.deepcopy(state)
    targets = [new.globals] if key is None else [row.params for row in new.rows if row.key == key]
    for settings in targets:
        if setting is None:  # an emptied text box: back to the default
            settings.pop(name, None)
        else:
            settings[name] = setting
    return new


def set_field(state: FormState, name: str, value: str | None) -> FormState:
    """Set base_model, dtype, out_dtype or tokenizer_source ("" or None clears it)."""
    if name not in FIELDS:
        raise ValueError(f"unknown form field {name!r}: one of {FIELDS}")
    return replace(copy.deepcopy(state), **{name: str(value or "").strip()})


def _at_most(rows: list[ModelRow], method: Method, base_model: str) -> list[ModelRow]:
    """The first rows up to the method's max_inputs, counted as the recipe counts them: a row that is
    the base model (for a method that uses one) is not an input row, and stays."""
    if method.max_inputs is None:
        return rows
    uses_base = method.base != "unused" and bool(base_model)
    kept, counted = [], 0
    for row in rows:
        if not (uses_base and row.model == base_model):
            counted += 1
            if counted > method.max_inputs:
                continue
        kept.append(row)
    return kept


def _row_settings(params: dict, method: Method, globals_: dict) -> dict:
    kept = {k: v for k, v in params.items() if (p := method.param(k)) is not None and p.per_model}
    for param in method.params:
        if param.per_model and param.default is None and param.name not in kept and param.name not in globals_:
            kept[param.name] = starting_value(param)
    return kept


# ---- what the controls need -----------------------------------------------------------------

def row_params(method: str) -> list[Param]:
    """The parameters each model row shows."""
    return [p for p in METHODS[method].params if p.per_model]


def shown_value(state: FormState, key: int | None, param: Param) -> Setting:
    """What a control shows: the row's setting, else the global one, else the default or starting value."""
    own = next((row.params for row in state.rows if row.key == key), {}) if key is not None else {}
    for settings in (own, state.globals):
        if param.name in settings:
            return settings[param.name]
    return starting_value(param)


def shows_base(state: FormState) -> bool:
    """The base picker shows when the method uses a base, or when the recipe names one anyway."""
    return METHODS[state.method].base != "unused" or bool(state.base_model)


def global_params(state: FormState) -> list[Param]:
    """The global controls: global parameters, plus per-model ones the recipe sets for all models."""
    return [p for p in METHODS[state.method].params if not p.per_model or p.name in state.globals]


def starting_value(param: Param) -> float | bool:
    """What a control starts at: the default, else the middle of the slider's range."""
    if param.default is not None:
        return param.default
    if param.kind is bool:
        return False
    low, high = slider_range(param)
    return round((low + high) / 2, 6)


def slider_range(param: Param, value: object = None) -> tuple[float, float]:
    """The slider's ends: the declared UI range (else the valid one), widened to show `value`."""
    low, high = param.ui_range()
    if is_number(value):
        low, high = min(low, value), max(high, value)
    return float(low), float(high)


def slider_step(low: float, high: float) -> float:
    """0.01, or a hundredth of the span where that is narrower (RAM's epsilon slides over [0, 0.01]).

    Example:
        >>> slider_step(0.0, 2.0), slider_step(0.0, 0.01)
        (0.01, 0.0001)
    """
    return min(0.01, (high - low) / 100) or 0.01


def is_number(value: object) -> bool:
    """True for a value a slider can show (not a bool, not a gradient or filter list)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def setting_text(setting: Setting) -> str:
    """A gradient or filter list as one line of YAML, e.g. "[0, 0.5, 1]"."""
    return yaml.safe_dump(setting, default_flow_style=True, width=10_000).strip()


def parse_setting(text: str) -> Setting:
    """Read what a person typed for a setting: a number, true/false, or a YAML list."""
    return load_yaml(text, source=f"the setting {text!r}")


def base_help(method: str) -> str:
    """What the base model means for this method, in a few words."""
    return {"required": "needed: the model the others' changes are measured from",
            "optional": "optional: with one, the two models' changes from it are interpolated",
            "unused": "no role here: one not listed under models is merged in as one more (as mergekit)",
            }[METHODS[method].base]


def needs_text(method: str) -> str:
    """How many models the method named `method` takes (Method.needs), e.g. "a base model + at least 1 other model"."""
    return METHODS[method].needs()
