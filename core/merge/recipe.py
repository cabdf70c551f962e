"""MergeRecipe: parse, validate and emit merge recipes in mergekit's YAML schema.

A recipe says which models to merge, how, and with which parameters:

    merge_method: ties
    base_model: ./models/base
    models:
      - model: ./models/medical
        parameters: {weight: 0.6, density: 0.5}
      - model: ./models/legal
        parameters: {weight: [0.2, 0.8], density: 0.5}   # gradient over the layers
    parameters: {lambda: 1.0}
    dtype: bfloat16          # working dtype: inputs are rounded to it (math runs in float32)
    out_dtype: bfloat16      # dtype written; default: dtype, else the base's
    tokenizer_source: base   # base, union or a model reference: realign embedding rows to that vocabulary
    chat_template: auto      # or a Jinja string (also the `tokenizer:` block: core.merge.tokenizer_spec)

`load_recipe` / `parse_recipe` check everything that can be checked without reading a tensor
and raise RecipeError with one line naming the problem; `to_yaml` writes the recipe back so
the UI form and the YAML editor can round-trip. `resolve_params` gives a method the values
for one tensor. mergekit's `slices` (frankenmerges, core.merge.slice_spec / core.merge.slices) are
read; its `modules` are not supported yet and are refused. Vocabulary settings: core.merge.tokenizer_spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import RecipeError
from core.io.safe_yaml import load_yaml
from core.merge.methods import METHODS, Method
from core.merge.params import Setting, resolve_setting
from core.merge.slice_spec import OutputSlice, parameter_mapping, parse_slices, slice_models, slices_data
from core.merge.tokenizer_spec import (TokenizerSpec, check_vocabulary, parse_chat_template, parse_tokenizer,
                                       tokenizer_data)
from core.units import DTYPES

KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source",
        "tokenizer", "chat_template")
NOT_YET = {"modules": "list the models under 'models:' instead"}


@dataclass
class ModelEntry:
    """One input model and its per-model parameter settings."""

    model: str  # local folder or Hugging Face Hub id
    parameters: dict[str, Setting] = field(default_factory=dict)


@dataclass
class MergeRecipe:
    """A validated merge recipe (build it with `recipe_from_dict` / `load_recipe`)."""

    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Setting] = field(default_factory=dict)  # global settings
    dtype: str | None = None  # working dtype, one of DTYPES; None: each tensor's own
    out_dtype: str | None = None  # output dtype; None: dtype, else the base's
    tokenizer_source: str | None = None  # None: the base's files, rows as they are; base | union | a reference: realigned
    tokenizer: TokenizerSpec | None = None  # mergekit's `tokenizer:` block (instead of tokenizer_source)
    chat_template: str | None = None  # auto or a Jinja string, written into the output tokenizer
    slices: tuple[OutputSlice, ...] | None = None  # given instead of models (which then lists their models)

    @property
    def method(self) -> Method:
        return METHODS[self.merge_method]

    @property
    def uses_base(self) -> bool:
        return self.base_model is not None and self.method.base != "unused"

    @property
    def vocabulary_source(self) -> str | None:
        """base | union | a model reference when embedding rows are realigned to a vocabulary; None: not."""
        return self.tokenizer.source if self.tokenizer else self.tokenizer_source

    def inputs(self) -> list[str]:
        """Every model the merge reads, base first, each once."""
        refs = [self.base_model] if self.base_model else []
        return refs + [e.model for e in self.models if e.model not in refs]

    def counted(self) -> str:
        """The models the method combines, counted as Method.needs() counts them (the base apart).

        Example: slerp with a base and one other model: '1 model besides the base_model'.
        """
        count = len(self.rows())
        return f"{count} {'model' if count == 1 else 'models'}" + (" besides the base_model" if self.uses_base else "")

    def rows(self) -> list[ModelEntry]:
        """The models the method combines, in order: all but the base, or all of them.

        A method that has no base role (linear, karcher) still combines a base_model missing from
        `models`, last and with the top-level parameters only, as mergekit adds it as an input.
        """
        if self.uses_base:
            return [e for e in self.models if e.model != self.base_model]
        unlisted = self.base_model and self.base_model not in [e.model for e in self.models]
        return self.models + ([ModelEntry(self.base_model)] if unlisted else [])

    def slice_recipes(self) -> list[MergeRecipe]:
        """One plain recipe per output slice: its sources as the models, its base and parameters over the recipe's."""
        return [recipe_from_dict(_slice_data(self, out)) for out in self.slices or ()]


def load_recipe(path: str | Path) -> MergeRecipe:
    """Read and validate a recipe file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error.strerror or error}") from None
    return parse_recipe(text, source=str(path))


def parse_recipe(text: str, *, source: str = "recipe") -> MergeRecipe:
    """Parse YAML text into a validated MergeRecipe (aliases bounded: core.io.safe_yaml)."""
    return recipe_from_dict(load_yaml(text, source=source))


def recipe_from_dict(data: object) -> MergeRecipe:
    """Validate a recipe given as plain data (what YAML or the UI form produce)."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping with at least merge_method and models")
    for key in data:
        if key in NOT_YET:
            raise RecipeError(f"recipe key '{key}' is not supported yet: {NOT_YET[key]}")
        if key not in KEYS:
            raise RecipeError(f"unknown recipe key {key!r}: valid keys are {', '.join(KEYS)}")
    method_name = data.get("merge_method")
    if not isinstance(method_name, str) or method_name not in METHODS:
        raise RecipeError(f"unknown merge_method {method_name!r}: choose one of {', '.join(METHODS)}")
    slices = parse_slices(data["slices"]) if "slices" in data else None
    if slices and "models" in data:
        raise RecipeError("a recipe gives either 'models' or 'slices', not both")
    recipe = MergeRecipe(
        merge_method=method_name,
        models=[ModelEntry(m) for m in slice_models(slices)] if slices else _model_entries(data.get("models")),
        base_model=_optional_text(data, "base_model"),
        parameters=parameter_mapping(data.get("parameters"), "parameters"),
        dtype=_dtype_name(data, "dtype"),
        out_dtype=_dtype_name(data, "out_dtype"),
        tokenizer_source=_optional_text(data, "tokenizer_source"),
        tokenizer=parse_tokenizer(data["tokenizer"]) if data.get("tokenizer") is not None else None,
        chat_template=parse_chat_template(data.get("chat_template")),
        slices=slices,
    )
    check_vocabulary(recipe.tokenizer_source, recipe.tokenizer, recipe.inputs())
    if slices:
        for index, part in enumerate(slices):
            try:
                recipe_from_dict(_slice_data(recipe, part))
            except RecipeError as error:
                raise RecipeError(f"slices[{index}]: {error}") from None
    else:
        _check_against_method(recipe)
    return recipe


def to_yaml(recipe: MergeRecipe) -> str:
    """The recipe as mergekit-style YAML; parse_recipe(to_yaml(r)) == r."""
    data: dict = {"merge_method": recipe.merge_method}
    if recipe.base_model:
        data["base_model"] = recipe.base_model
    if recipe.slices:
        data["slices"] = slices_data(recipe.slices)
    else:
        data["models"] = [{"model": e.model, **({"parameters": e.parameters} if e.parameters else {})}
                          for e in recipe.models]
    for key in ("parameters", "dtype", "out_dtype", "tokenizer_source", "chat_template"):
        if getattr(recipe, key):
            data[key] = getattr(recipe, key)
    if recipe.tokenizer:
        data["tokenizer"] = tokenizer_data(recipe.tokenizer)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def resolve_params(recipe: MergeRecipe, tensor_name: str, t: float) -> dict:
    """Parameter values for one tensor: per-model lists (aligned with rows()) and global scalars.

    Precedence: the model's own setting, then the global one, then the declared default.
    Raises RecipeError when no value applies or a method rule fails for this tensor.
    """
    method = recipe.method
    values: dict = {}
    for param in method.params:
        sources = [e.parameters for e in recipe.rows()] if param.per_model else [None]
        resolved = []
        for own in sources:
            value = None
            for settings in (own, recipe.parameters):
                if settings and param.name in settings:
                    value = resolve_setting(settings[param.name], tensor_name, t)
                    if value is not None:
                        break
            if value is None:
                value = param.default
            if value is None:
                raise RecipeError(f"no value for '{param.name}' at tensor {tensor_name}: no setting or "
                                  f"filter applies; add one under parameters")
            resolved.append(param.check_value(value, f"tensor {tensor_name}"))
        values[param.name] = resolved if param.per_model else resolved[0]
    problem = method.check(values) if method.check else None
    if problem:
        raise RecipeError(f"{recipe.merge_method} at tensor {tensor_name}: {problem}")
    return values


def _slice_data(recipe: MergeRecipe, out: OutputSlice) -> dict:
    """A slice as a plain recipe: a base the method uses must be one of its sources (mergekit reads no other)."""
    base = out.base_model or recipe.base_model
    models = [s.model for s in out.sources]
    if base not in models:
        if base is not None and METHODS[recipe.merge_method].base == "required":
            raise RecipeError(f"base_model {base!r} is not among this slice's sources: list it there with the "
                              "same layer_range")
        base = None
    return {"merge_method": recipe.merge_method, **({"base_model": base} if base else {}),
            "models": [{"model": s.model, "parameters": s.parameters} for s in out.sources],
            "parameters": {**recipe.parameters, **out.parameters},
            **{key: getattr(recipe, key) for key in ("dtype", "out_dtype") if getattr(recipe, key)}}


def _check_against_method(recipe: MergeRecipe) -> None:
    """Everything about the recipe that the method's declaration decides."""
    method = recipe.method
    name = recipe.merge_method
    if method.base == "required" and not recipe.base_model:
        raise RecipeError(f"{name} needs a base_model: the model the others' changes are measured from")
    seen = set()
    for entry in recipe.models:
        if entry.model in seen:
            raise RecipeError(f"model {entry.model!r} is listed twice under models")
        seen.add(entry.model)
    _check_count(recipe)
    for param_name, setting in recipe.parameters.items():
        param = method.param(param_name)
        if param is None:
            raise RecipeError(_unknown_param(method, param_name, "parameters"))
        recipe.parameters[param_name] = param.check_setting(setting, "parameters")  # "5e-1" → 0.5
    for entry in recipe.models:
        where = f"parameters of model {entry.model!r}"
        for param_name, setting in entry.parameters.items():
            param = method.param(param_name)
            if param is None:
                raise RecipeError(_unknown_param(method, param_name, where))
            if not param.per_model:
                raise RecipeError(f"'{param_name}' is a global parameter of {name}: put it under the "
                                  f"top-level parameters, not under model {entry.model!r}")
            entry.parameters[param_name] = param.check_setting(setting, where)
    for param in method.params:
        if param.default is not None:
            continue
        if param.name in recipe.parameters:
            continue
        missing = [e.model for e in recipe.rows() if param.name not in e.parameters] if param.per_model else [""]
        if missing:
            owner = f" for model {missing[0]!r}" if param.per_model else ""
            if param.per_model and missing[0] not in [e.model for e in recipe.models]:  # the unlisted base (rows())
                owner += " (the base_model, mixed in as mergekit does: set a top-level weight or drop base_model)"
            raise RecipeError(f"{name} needs '{param.name}'{owner}: {param.help}")


def _check_count(recipe: MergeRecipe) -> None:
    method = recipe.method
    low, high = method.min_inputs, method.max_inputs
    count = len(recipe.rows())
    if low <= count and (high is None or count <= high):
        return
    raise RecipeError(f"{recipe.merge_method} takes {method.needs()}; the recipe lists {recipe.counted()}")


def _unknown_param(method: Method, name: str, where: str) -> str:
    valid = ", ".join(p.name for p in method.params)
    return f"unknown parameter {name!r} in {where} for {method.name}: valid are {valid}"


def _model_entries(value: object) -> list[ModelEntry]:
    if not isinstance(value, list) or not value:
        raise RecipeError("'models' must be a non-empty list of entries like {model: PATH_OR_HUB_ID}")
    entries = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            item = {"model": item}
        if isinstance(item, dict) and (item.get("model") is None or item.get("model") == ""):
            raise RecipeError(f"model {index + 1} has no model chosen: pick one or remove that row")
        if not isinstance(item, dict) or not isinstance(item.get("model"), str) or not item["model"].strip():
            raise RecipeError(f"models[{index}] must be a mapping with a 'model' path or Hub id")
        unknown = set(item) - {"model", "parameters"}
        if unknown:
            raise RecipeError(f"unknown key(s) {sorted(unknown, key=str)} in models[{index}]: valid are model, parameters")
        entries.append(ModelEntry(item["model"].strip(), parameter_mapping(item.get("parameters"), f"models[{index}].parameters")))
    return entries


def _optional_text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"'{key}' must be a model path or Hub id, got {value!r}")
    return value.strip()


def _dtype_name(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or value not in DTYPES):
        raise RecipeError(f"'{key}' must be one of {', '.join(DTYPES)}, got {value!r}")
    return value
