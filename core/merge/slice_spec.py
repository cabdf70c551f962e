"""The `slices:` part of a recipe as plain data: output slices, each stacking a layer range of its sources.

mergekit's frankenmerge syntax (0.1.5 config.py), which a recipe gives instead of `models:`:

    merge_method: passthrough
    slices:
      - sources: [{model: ./a, layer_range: [0, 2]}]     # output layers 0, 1 = layers 0, 1 of a
      - sources: [{model: ./b, layer_range: [1, 3]}]     # output layers 2, 3 = layers 1, 2 of b
        parameters: {scale: [{filter: o_proj, value: 0.5}, {value: 1}]}

`layer_range` is [start, end), end exclusive; every source of a slice spans the same number of
layers, and its sources are merged with the recipe's method, layer by layer (core.merge.slices).
This module only parses and writes that data back; what it means for tensors is core.merge.slices'.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.errors import RecipeError


@dataclass(frozen=True)
class SliceSource:
    """Layers [start, end) of one model, with that model's own parameter settings for this slice."""

    model: str
    layer_range: tuple[int, int]
    parameters: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


@dataclass(frozen=True)
class OutputSlice:
    """One run of output layers: its sources' layers merged one by one."""

    sources: tuple[SliceSource, ...]
    base_model: str | None = None  # overrides the recipe's base_model for this slice
    parameters: dict = field(default_factory=dict)  # over the recipe's global parameters

    @property
    def length(self) -> int:
        return self.sources[0].length


def parse_slices(value: object) -> tuple[OutputSlice, ...]:
    """Validate the `slices:` list (shape only; methods and models are checked by the recipe and the planner)."""
    if not isinstance(value, list) or not value:
        raise RecipeError("'slices' must be a non-empty list of entries like {sources: [{model: PATH, layer_range: [0, 4]}]}")
    return tuple(_output_slice(item, f"slices[{index}]") for index, item in enumerate(value))


def slices_data(slices: tuple[OutputSlice, ...]) -> list[dict]:
    """The slices as YAML-ready data; parse_slices(slices_data(s)) == s."""
    data = []
    for out in slices:
        sources = [{"model": s.model, "layer_range": list(s.layer_range), **({"parameters": s.parameters} if s.parameters else {})}
                   for s in out.sources]
        extra = {key: getattr(out, key) for key in ("base_model", "parameters") if getattr(out, key)}
        data.append({"sources": sources, **extra})
    return data


def slice_models(slices: tuple[OutputSlice, ...]) -> list[str]:
    """Every model a slice reads, in first-use order, each once."""
    return list(dict.fromkeys(s.model for out in slices for s in out.sources))


def renamed_models(slices: tuple[OutputSlice, ...] | None, rename) -> tuple[OutputSlice, ...] | None:
    """The slices with every model reference (and slice base) passed through `rename` (the app's path checks)."""
    if slices is None:
        return None
    return tuple(replace(out, base_model=rename(out.base_model) if out.base_model else None,
                         sources=tuple(replace(s, model=rename(s.model)) for s in out.sources)) for out in slices)


def _output_slice(item: object, where: str) -> OutputSlice:
    if not isinstance(item, dict) or not isinstance(item.get("sources"), list) or not item["sources"]:
        raise RecipeError(f"{where} must be a mapping with a non-empty 'sources' list")
    unknown = set(item) - {"sources", "base_model", "parameters"}
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown, key=str)} in {where}: valid are sources, base_model, parameters")
    sources = tuple(_source(source, f"{where}.sources[{index}]") for index, source in enumerate(item["sources"]))
    lengths = sorted({s.length for s in sources})
    if len(lengths) > 1:
        raise RecipeError(f"{where}: its sources span different numbers of layers ({', '.join(map(str, lengths))}); "
                          "every source of a slice must give as many layers")
    base = item.get("base_model")
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise RecipeError(f"{where}.base_model must be a model path or Hub id, got {base!r}")
    return OutputSlice(sources, base.strip() if base else None, parameter_mapping(item.get("parameters"), f"{where}.parameters"))


def _source(item: object, where: str) -> SliceSource:
    if not isinstance(item, dict) or not isinstance(item.get("model"), str) or not item["model"].strip():
        raise RecipeError(f"{where} must be a mapping with a 'model' path or Hub id and a layer_range")
    unknown = set(item) - {"model", "layer_range", "parameters"}
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown, key=str)} in {where}: valid are model, layer_range, parameters")
    span = item.get("layer_range")
    whole = isinstance(span, list) and len(span) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in span)
    if not whole or not 0 <= span[0] < span[1]:
        raise RecipeError(f"{where}.layer_range must be [start, end) with 0 <= start < end, got {span!r}")
    return SliceSource(item["model"].strip(), (span[0], span[1]), parameter_mapping(item.get("parameters"), f"{where}.parameters"))


def parameter_mapping(value: object, where: str) -> dict:
    """A `parameters:` block as a dict (None: empty), or a RecipeError naming `where`."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RecipeError(f"'{where}' must be a mapping of parameter names to values")
    return dict(value)
