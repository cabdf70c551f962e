"""The registry of merge methods: what a method declares (`Method`), `register`, and `METHODS`.

Every method is `merge(tensors, base, *, generator, **params) -> Tensor`:
  tensors   (n, *shape) float32, one row per input model the method combines. For methods
            that use a base these are the models *other than* the base. The engine hands the
            stack over: a method may overwrite it in place to save memory.
  base      (*shape) float32, or None for methods that do not use one.
  generator torch.Generator for random methods (seeded per tensor by the engine), else unused.
  params    per-model parameters arrive as lists of n floats, global ones as scalars.
It returns the merged tensor, float32, shape `shape`.

A large tensor is streamed to a method in blocks of rows (`Method.merge_blocks`): an
elementwise method merges each block on its own; a method with a `stream` function (the
TIES family, core/merge/methods/task_vectors.py; SCE; RAM+) reads the blocks as often as it needs,
e.g. twice to rank magnitudes and once to merge. `Method.in_blocks(params)` says whether a tensor
with those parameters may be split; otherwise it arrives as one block.

`register` records each method's name, label, paper, parameters (core.merge.params.Param), base
policy and input count once; recipe validation, the CLI's method list and the UI form read
`METHODS`. Registration refuses a declaration it could not honour (see `register`). The methods
themselves live one family per file (linear, task_arithmetic, sce, ram, spherical, sphere_means,
model_stock, selective, passthrough), which core/merge/methods/__init__.py imports in the order the UI lists them.

Semantics and defaults follow mergekit 0.1.5 so ported recipes give the same tensors;
`linear` with weights summing to 1 is LM-Cocktail's `mix_models`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from core.merge.params import Param

BASE_POLICIES = ("required", "optional", "unused")


@dataclass(frozen=True)
class Method:
    """A registered merge method and everything the recipe, CLI and UI need to know about it."""

    name: str  # the recipe's merge_method
    label: str  # what a person reads
    paper: str  # link to the method's paper or description
    merge: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    base: str  # "required" | "optional" | "unused"
    min_inputs: int  # rows of `tensors` (models besides the base, where a base is used)
    max_inputs: int | None
    random: bool  # draws from the generator: results depend on the seed
    elementwise: bool  # output[i] depends only on inputs[i]: the engine may merge in row chunks
    check: Callable[[dict], str | None] | None  # extra rule on resolved params → problem text
    stream: Callable[..., Iterator[torch.Tensor]] | None = None  # (read, shape, **params) → merged blocks
    blockwise: Callable[[dict], bool] | None = None  # may `stream` get a tensor with these params in blocks?
    # A method that is a fixed weighted sum Σ c_i·x_i of its inputs says so here: params →
    # (one coefficient per model row, the base's coefficient or None). The engine then sums the
    # stored tensors directly instead of building a float32 stack (see core.merge.engine).
    coefficients: Callable[[dict], tuple[list[float], float | None]] | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def needs(self) -> str:
        """The models this method takes, as recipe errors, the CLI, the form and the Methods panel say it.

        Example:
            >>> METHODS["ties"].needs(), METHODS["nuslerp"].needs(), METHODS["linear"].needs()
            ('a base model + at least 1 other model', 'exactly 2 models (+ an optional base)', 'at least 1 model')
        """
        low, high = self.min_inputs, self.max_inputs
        count = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        noun = "model" if low == 1 else "models"
        if self.base == "required":
            return f"a base model + {count} other {noun}"
        return f"{count} {noun}" + (" (+ an optional base)" if self.base == "optional" else "")

    def in_blocks(self, params: dict) -> bool:
        """Whether a tensor with these resolved params may be merged block by block."""
        return self.elementwise or (self.blockwise is not None and self.blockwise(params))

    def merge_blocks(self, read: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]],
                     shape: tuple[int, ...], *, generator=None, **params) -> Iterator[torch.Tensor]:
        """Merge a tensor of `shape` given as consecutive blocks of rows; yield the merged blocks.

        `read()` yields ((n, *block) float32 models, (*block) float32 base or None), fresh each
        call; more than one block only where in_blocks(params).
        """
        if self.stream is not None:
            return self.stream(read, shape, generator=generator, **params)
        return (self.merge(tensors, base, generator=generator, **params) for tensors, base in read())


METHODS: dict[str, Method] = {}


def register(name: str, *, label: str, paper: str, params: tuple[Param, ...], base: str,
             min_inputs: int = 1, max_inputs: int | None = None, random: bool = False,
             elementwise: bool = False, check: Callable[[dict], str | None] | None = None,
             stream: Callable[..., Iterator[torch.Tensor]] | None = None,
             blockwise: Callable[[dict], bool] | None = None,
             coefficients: Callable[[dict], tuple[list[float], float | None]] | None = None):
    """Decorator: add a merge function to METHODS, refusing declarations it cannot honour.

    Refused (TypeError/ValueError at import time, so a bad method never ships): a duplicate
    name, a non-Param or duplicated parameter, an unknown base policy, an impossible input
    count, or a parameter the function cannot receive (see `receivable`).
    """

    def add(merge: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        if base not in BASE_POLICIES:
            raise ValueError(f"method {name!r}: base must be one of {BASE_POLICIES}, not {base!r}")
        if min_inputs < 1 or (max_inputs is not None and max_inputs < min_inputs):
            raise ValueError(f"method {name!r}: impossible input count {min_inputs}..{max_inputs}")
        names = [p.name for p in params]
        if not all(isinstance(p, Param) for p in params) or len(set(names)) != len(names):
            raise TypeError(f"method {name!r}: params must be distinct Param declarations")
        unreachable = [n for n in names if n not in receivable(name, merge)]
        if unreachable:
            raise TypeError(f"method {name!r}: function cannot receive parameter(s) {unreachable}")
        METHODS[name] = Method(name, label, paper, merge, tuple(params), base, min_inputs,
                               max_inputs, random, elementwise, check, stream, blockwise, coefficients)
        return merge

    return add


def receivable(name: str, merge: Callable[..., torch.Tensor]) -> frozenset[str]:
    """The parameter names `merge` can take as keywords.

    Its signature's names; a function that takes `**params` must also say which names it reads
    with an `accepts` attribute (as the task-vector family's functions do), since a bare `**params`
    would let any declaration through (a name such as "lambda" cannot be a Python keyword argument).
    """
    signature = inspect.signature(merge).parameters.values()
    named = {p.name for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in signature):
        return frozenset(named)
    accepts = getattr(merge, "accepts", None)
    if accepts is None:
        raise TypeError(f"method {name!r}: a function taking **params must name what it reads in `accepts`")
    return frozenset(named | set(accepts))
