"""Method parameters: declared once, validated from that declaration, resolved per tensor.

A `Param` is plain data (name, type, default, range, UI slider range, per-model or global, help). Recipe
validation, the CLI's `methods` listing and the UI form all read these declarations; nothing
else describes a parameter.

A recipe *setting* for a parameter is, as in mergekit:
  - a scalar:                       weight: 0.5
  - a per-layer gradient (numbers): t: [0, 0.5, 1]   piecewise-linear over the layer index
    (of booleans: normalize: [true, false]   stepwise: point int(t·(n−1)) holds)
  - a filter list, first match wins: t: [{filter: self_attn, value: 0.2}, {value: 0.7}]
    (`filter` is a substring of the tensor name; no filter or "*" matches everything;
    `value` may itself be a gradient).
Scalars are read as mergekit's pydantic fields read them: a number may be written as text
(`weight: 5e-1`, which YAML 1.1 loads as a string), a bool as 0/1 or yes/no/true/false text.
`check_setting` returns the setting with every scalar in its declared kind.

Example:
    >>> resolve_setting([0, 1], "model.layers.1.mlp.up_proj.weight", t=0.5)
    0.5
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import RecipeError

Setting = Any  # float | bool | list[float] | list[dict]  (the YAML value as written)


@dataclass(frozen=True, kw_only=True)
class Param:
    """Declaration of one method parameter, written by keyword so each field reads as what it is.

    Example:
        >>> Param(name="weight", kind=float, default=None, per_model=True, help="how much of this model",
        ...       low=-10, high=10, ui_low=-1, ui_high=2).ui_range()
        (-1.0, 2.0)
    """

    name: str
    kind: type  # float or bool
    default: float | bool | None  # None: the recipe must give it
    per_model: bool  # True: one value per input model (weight, density); False: global (lambda, t)
    help: str
    low: float | None = None  # inclusive bounds checked on every resolved value (None: unbounded)
    high: float | None = None
    ui_low: float | None = None  # slider range when it is narrower than the valid range (inside it)
    ui_high: float | None = None

    def __post_init__(self):
        if self.kind not in (float, bool):
            raise TypeError(f"parameter {self.name!r}: kind must be float or bool, not {self.kind!r}")
        if self.kind is bool and (self.low is not None or self.high is not None):
            raise TypeError(f"parameter {self.name!r}: a bool parameter cannot have a range")
        if self.kind is float and self.default is not None and not self._in_range(self.default):
            raise TypeError(f"parameter {self.name!r}: default {self.default} is outside its range")
        if self.kind is bool and self.default is not None and not isinstance(self.default, bool):
            raise TypeError(f"parameter {self.name!r}: default of a bool parameter must be a bool")
        if any(end is not None and not self._in_range(end) for end in (self.ui_low, self.ui_high)):
            raise TypeError(f"parameter {self.name!r}: its UI range lies outside its valid range")

    def ui_range(self) -> tuple[float, float]:
        """A slider's ends: the declared UI range, else the valid range, else ±10 where that is unbounded."""
        low = self.ui_low if self.ui_low is not None else (self.low if self.low is not None else -10.0)
        high = self.ui_high if self.ui_high is not None else (self.high if self.high is not None else 10.0)
        return float(low), float(high)

    def _in_range(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def range_text(self) -> str:
        """The valid range as a person writes it, e.g. "[0, 1]" or "[-10, inf)"."""
        low = "(-inf" if self.low is None else f"[{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{low}, {high}"

    def check_value(self, value: Any, where: str) -> float | bool:
        """Check one scalar against this declaration and return it as its kind; `where` names its place."""
        if self.kind is bool:
            flag = _as_bool(value)
            if flag is None:
                raise RecipeError(f"{where}: '{self.name}' must be true or false, got {value!r}")
            return flag
        if isinstance(value, str):
            value = _as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: '{self.name}' must be a number, got {value!r}")
        if isinstance(value, int) and abs(value) > 2**1023:  # beyond any float: math.isfinite would overflow
            raise RecipeError(f"{where}: '{self.name}' is too large, got an integer of {value.bit_length()} bits")
        if not math.isfinite(value):
            raise RecipeError(f"{where}: '{self.name}' must be finite, got {value!r}")
        if not self._in_range(value):
            raise RecipeError(
                f"{where}: '{self.name}' = {value} is outside its range {self.range_text()}"
            )
        return float(value)

    def check_setting(self, setting: Setting, where: str) -> Setting:
        """Check a whole setting (scalar, gradient or filter list) before any tensor is read.

        Returns the same setting with each scalar as check_value gives it ("5e-1" → 0.5).
        """
        if isinstance(setting, list):
            if not setting:
                raise RecipeError(f"{where}: '{self.name}' is an empty list")
            if all(isinstance(item, dict) for item in setting):
                return [self._filter_entry(item, where) for item in setting]
            if any(isinstance(item, (list, dict)) for item in setting):
                raise RecipeError(
                    f"{where}: '{self.name}' list must be all values (a gradient) or all "
                    "{filter, value} entries"
                )
            return [self.check_value(value, where) for value in setting]
        if isinstance(setting, dict):
            raise RecipeError(f"{where}: '{self.name}' must be a value or a list, got a mapping")
        return self.check_value(setting, where)

    def _filter_entry(self, item: dict, where: str) -> dict:
        unknown = set(item) - {"filter", "value"}
        if unknown or "value" not in item:
            raise RecipeError(
                f"{where}: each filter entry of '{self.name}' needs 'value' (and optional "
                f"'filter'), got keys {sorted(item)}"
            )
        if item.get("filter") is not None and not isinstance(item["filter"], str):
            raise RecipeError(f"{where}: filter of '{self.name}' must be a string")
        value = item["value"]
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value)):
            raise RecipeError(f"{where}: a filter value of '{self.name}' must be a value or a list of values")
        return {**item, "value": self.check_setting(value, where)}


def resolve_setting(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value a setting takes for one tensor; `t` is the layer position in [0, 1].

    Returns None when a filter list has no entry matching the tensor (the caller then falls
    back to the next source of the parameter, as mergekit does).
    """
    if isinstance(setting, list):
        if all(isinstance(item, dict) for item in setting):
            for item in setting:
                pattern = item.get("filter")
                if pattern in (None, "*") or pattern in tensor_name:
                    return resolve_setting(item["value"], tensor_name, t)
            return None
        if all(isinstance(value, bool) for value in setting):  # booleans step, as in mergekit
            return setting[int(t * (len(setting) - 1))]
        # Piecewise-linear over evenly spaced anchors: t=0 → first value, t=1 → last.
        scaled = t * (len(setting) - 1)
        lower = int(scaled)
        upper = min(len(setting) - 1, lower + 1)
        frac = scaled - lower
        return (1 - frac) * setting[lower] + frac * setting[upper]
    return setting


_TRUE, _FALSE = {"1", "on", "t", "true", "y", "yes"}, {"0", "off", "f", "false", "n", "no"}  # pydantic's bool words


def _as_bool(value: Any) -> bool | None:
    """A bool as pydantic reads one: true/false, 0/1 (int or float), or one of its words; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _as_number(text: str) -> float | str:
    """Number-like text as a float ("5e-1", " 0.5", "1_000"), as pydantic reads it; other text unchanged."""
    try:
        return float(text)
    except ValueError:
        return text
