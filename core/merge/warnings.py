"""Warnings about a valid recipe: what it will do that a person most likely did not mean.

    for line in recipe_warnings(recipe):   # Check, the merge log, `python -m core plan/merge` (stderr)
        print(f"warning: {line}")

Unlike a RecipeError these never stop a merge. `recipe_warnings` reads the recipe and the method's
declared parameters alone, before any model is opened; `copy_differs` reads the inputs of a tensor
the engine copies unmerged, during the merge (its line goes on that tensor's Progress).
Known limit: a weight given per layer or by filter counts as zero only when every
number written for it is 0.
"""
from __future__ import annotations

from typing import Iterator

import torch

from core.io.checkpoint import Checkpoint
from core.merge.params import Setting
from core.merge.recipe import MergeRecipe


def recipe_warnings(recipe: MergeRecipe) -> list[str]:
    """One line per likely mistake in `recipe`; [] when there is none.

    Example (linear, both weights 0, normalize: false):
        ['every weight is 0 and normalize is off: the merged model will be all zeros; give a model a weight']
    """
    if recipe.slices:  # each slice is a recipe of its own
        return list(dict.fromkeys(line for part in recipe.slice_recipes() for line in recipe_warnings(part)))
    method = recipe.method
    if method.param("weight") is None or method.param("normalize") is None or not _all_zero(recipe):
        return []
    if recipe.uses_base:
        return ["every weight is 0: the merge will be a copy of the base model; give a model a weight"]
    if not _setting_on(recipe.parameters.get("normalize", method.param("normalize").default)):
        return ["every weight is 0 and normalize is off: the merged model will be all zeros; give a model a weight"]
    return []  # normalize on: the recipe's own check refuses a zero sum per tensor


def copy_differs(name: str, checkpoints: list[Checkpoint]) -> tuple[str, ...]:
    """A non-float tensor (position_ids, an int buffer) is copied from the first input, not merged: one
    line where another input holds a different value for it (mergekit refuses such inputs), else ()."""
    first = checkpoints[0].read(name)
    for other in checkpoints[1:]:
        if name in other.tensors:
            value = other.read(name)
            if value.shape != first.shape or value.dtype != first.dtype or not torch.equal(value, first):
                return (f"tensor {name!r} is not floating point and differs in {other.ref}: copied from "
                        f"{checkpoints[0].ref} unmerged (mergekit refuses such inputs)",)
    return ()


def _all_zero(recipe: MergeRecipe) -> bool:
    """Whether every number written for `weight`, per model and global, is 0."""
    settings = [e.parameters["weight"] for e in recipe.rows() if "weight" in e.parameters]
    settings += [recipe.parameters["weight"]] if "weight" in recipe.parameters else []
    numbers = [value for setting in settings for value in _values(setting)]
    return bool(numbers) and all(value == 0 for value in numbers)


def _setting_on(setting: Setting) -> bool:
    """A bool setting is on where any of its values is true (a filter list may switch it on for some tensors)."""
    return any(value is True for value in _values(setting))


def _values(setting: Setting) -> Iterator[object]:
    """Every value a setting can take: a scalar, a gradient's points, a filter list's values."""
    if isinstance(setting, list):
        for item in setting:
            yield from _values(item["value"] if isinstance(item, dict) and "value" in item else item)
    elif not isinstance(setting, dict):
        yield setting
