"""Merge methods: small pure functions over tensors, and the one registry that declares them.

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
TIES family, core/merge/methods/task_vectors.py) reads the blocks as often as it needs, e.g. once to
rank magnitudes and once to merge. `Method.in_blocks(params)` says whether a tensor with
those parameters may be split; otherwise it arrives as one block.

`register` records each method's name, label, paper, parameters (core.merge.params.Param), base
policy and input count once; recipe validation, the CLI's method list and the UI form read
`METHODS`. Registration refuses a declaration it could not honour (see `register`).

Semantics and defaults follow mergekit 0.1.5 so ported recipes give the same tensors;
`linear` with weights summing to 1 is LM-Cocktail's `mix_models`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator

import torch

from core.merge.methods import sparsify
from core.merge.methods.task_vectors import blockwise, column, task_vector_blocks, task_vectors
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
    count, or a parameter the function cannot receive as a keyword.
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
        signature = inspect.signature(merge)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        unreachable = [n for n in names if not takes_any and n not in signature.parameters]
        if unreachable:
            raise TypeError(f"method {name!r}: function cannot receive parameter(s) {unreachable}")
        METHODS[name] = Method(name, label, paper, merge, tuple(params), base, min_inputs,
                               max_inputs, random, elementwise, check, stream, blockwise, coefficients)
        return merge

    return add


# ---- parameter declarations shared by several methods -----------------------------------

WEIGHT = Param("weight", float, None, True, "how much of this model goes into the merge",
               low=-10, high=10, ui_low=-1, ui_high=2)
DENSITY = Param("density", float, 1.0, True, "fraction of this model's changes kept (1 = all)", low=0, high=1)
GAMMA = Param("gamma", float, 0.01, True, "fraction of the largest changes dropped as outliers", low=0, high=1)
EPSILON = Param("epsilon", float, 0.15, True,
                "spread of keep-probabilities around density, by magnitude rank", low=0, high=0.5)
LAMBDA = Param("lambda", float, 1.0, False, "scale of the merged change added to the base",
               low=-10, high=10, ui_low=0, ui_high=2)
INT8_MASK = Param("int8_mask", bool, False, False,
                  "accepted for mergekit recipes; MergeDesk's masks are always compact")


def _normalize(default: bool) -> Param:
    return Param("normalize", bool, default, False, "divide by the sum of the weights")


def _rescale(default: bool) -> Param:
    return Param("rescale", bool, default, False, "restore each sparsified change's L1 norm")


def _weights_not_zero(params: dict) -> str | None:
    """Under normalize the weights are a divisor: their sum must not vanish."""
    if params.get("normalize") and abs(sum(params["weight"])) < 1e-8:
        return f"weights {params['weight']} sum to 0 but normalize is on: change a weight or set normalize: false"
    return None


def _della_band(params: dict) -> str | None:
    """DELLA draws keep-probabilities in density ± epsilon; that band must lie inside (0, 1)."""
    for density, epsilon in zip(params["density"], params["epsilon"]):
        if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            return f"density {density} ± epsilon {epsilon} must stay inside (0, 1): lower epsilon"
    return None


# ---- linear ------------------------------------------------------------------------------

def _linear_coefficients(params: dict) -> tuple[list[float], None]:
    """linear as a weighted sum: c_i = w_i, or w_i / Σ w under normalize."""
    weight = params["weight"]
    total = sum(weight) if params["normalize"] else 1.0
    return [w / total for w in weight], None


@register("linear", label="Linear (weighted average)", paper="https://arxiv.org/abs/2203.05482",
          params=(WEIGHT, _normalize(True)), base="unused", elementwise=True, check=_weights_not_zero,
          coefficients=_linear_coefficients)
def linear(tensors, base, *, weight, normalize, generator=None):
    """Σ w_i·x_i, divided by Σ w_i when normalize (model soups; LM-Cocktail mix_models)."""
    merged = (tensors.mul_(column(weight, tensors))).sum(dim=0)
    return merged / sum(weight) if normalize else merged


# ---- task arithmetic family (core/merge/methods/task_vectors.py) ---------------------------------------

_FAMILY = (
    # name, label, paper, sparsifier, consensus, normalize default, rescale default
    ("task_arithmetic", "Task Arithmetic", "https://arxiv.org/abs/2212.04089", None, False, False, False),
    ("ties", "TIES", "https://arxiv.org/abs/2306.01708", sparsify.magnitude, True, True, False),
    ("dare_ties", "DARE + TIES", "https://arxiv.org/abs/2311.03099", sparsify.bernoulli, True, False, True),
    ("dare_linear", "DARE (linear)", "https://arxiv.org/abs/2311.03099", sparsify.bernoulli, False, False, True),
    ("breadcrumbs", "Model Breadcrumbs", "https://arxiv.org/abs/2312.06795",
     sparsify.magnitude_outliers, False, False, False),
    ("breadcrumbs_ties", "Model Breadcrumbs + TIES", "https://arxiv.org/abs/2312.06795",
     sparsify.magnitude_outliers, True, False, False),
    ("della", "DELLA", "https://arxiv.org/abs/2406.11617", sparsify.della_magprune, True, True, True),
    ("della_linear", "DELLA (linear)", "https://arxiv.org/abs/2406.11617",
     sparsify.della_magprune, False, False, True),
)

def _first_problem(*checks: Callable[[dict], str | None]) -> Callable[[dict], str | None] | None:
    """Combine rule checks into one that reports the first problem found."""
    if not checks:
        return None
    return lambda params: next((problem for check in checks if (problem := check(params))), None)


def _task_arithmetic_coefficients(params: dict) -> tuple[list[float], float]:
    """base + λ·Σ w_i(x_i − base)/d as a weighted sum: c_i = λ·w_i/d, c_base = 1 − Σ c_i.

    d is Σ w under normalize (1 where that sum vanishes, as in task_vector_blocks), else 1."""
    weight, lam = params["weight"], params["lambda"]
    total = sum(weight)
    divisor = total if params["normalize"] and abs(total) >= 1e-8 else 1.0
    models = [lam * w / divisor for w in weight]
    return models, 1.0 - sum(models)


def _register_task_vector_family() -> None:
    """One registration per row of _FAMILY, with the parameters its sparsifier needs."""
    for name, label, paper, sparsifier, consensus, normalize, rescale in _FAMILY:
        params = [WEIGHT, LAMBDA, _normalize(normalize), INT8_MASK]
        if sparsifier is not None:
            params += [DENSITY, _rescale(rescale)]
        if sparsifier is sparsify.magnitude_outliers:
            params.append(GAMMA)
        if sparsifier is sparsify.della_magprune:
            params.append(EPSILON)
        checks = [] if consensus else [_weights_not_zero]
        if sparsifier is sparsify.della_magprune:
            checks.append(_della_band)
        register(name, label=label, paper=paper, params=tuple(params), base="required",
                 random=sparsifier in (sparsify.bernoulli, sparsify.della_magprune),
                 elementwise=sparsifier is None and not consensus, check=_first_problem(*checks),
                 stream=partial(task_vector_blocks, sparsifier=sparsifier, consensus=consensus),
                 blockwise=blockwise(sparsifier),
                 coefficients=_task_arithmetic_coefficients if sparsifier is None and not consensus else None)(
            partial(task_vectors, sparsifier=sparsifier, consensus=consensus))


_register_task_vector_family()


# ---- spherical interpolation -------------------------------------------------------------

def spherical(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int | None,
              colinear: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sin((1−t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1, θ the angle between v0 and v1.

    `dim=None` takes one angle over the whole tensor, else one per vector along `dim`.
    Where `colinear(cos θ)` holds it falls back to lerp (1−t)·v0 + t·v1. Norms below 1e-8
    count as 1 (a zero vector stays zero instead of dividing by zero), as mergekit does.
    """
    reduce = {} if dim is None else {"dim": dim, "keepdim": True}
    n0 = torch.linalg.vector_norm(v0, **reduce)
    n1 = torch.linalg.vector_norm(v1, **reduce)
    n0 = torch.where(n0 > 1e-8, n0, torch.ones_like(n0))
    n1 = torch.where(n1 > 1e-8, n1, torch.ones_like(n1))
    cos = ((v0 / n0) * (v1 / n1)).sum(**reduce).clamp(-1, 1)
    lerp = colinear(cos)
    theta = torch.acos(torch.where(lerp, torch.zeros_like(cos), cos))
    sin_theta = torch.where(lerp, torch.ones_like(theta), torch.sin(theta))
    c0 = torch.where(lerp, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    c1 = torch.where(lerp, torch.full_like(theta, t), torch.sin(t * theta) / sin_theta)
    return c0 * v0 + c1 * v1


@register("slerp", label="SLERP (spherical interpolation)", paper="https://en.wikipedia.org/wiki/Slerp",
          params=(Param("t", float, None, False, "0 = the base model, 1 = the other model", low=0, high=1),),
          base="required", min_inputs=1, max_inputs=1)
def slerp(tensors, base, *, t, generator=None):
    """Whole-tensor SLERP from the base (t=0) to the other model (t=1); lerp when |cos θ| > 0.9995."""
    return spherical(t, base, tensors[0], dim=None, colinear=lambda cos: cos.abs() > 0.9995)


@register("nuslerp", label="NuSLERP (weighted SLERP)", paper="https://github.com/arcee-ai/mergekit",
          params=(WEIGHT,
                  Param("nuslerp_flatten", bool, True, False, "one angle for the whole tensor"),
                  Param("nuslerp_row_wise", bool, False, False,
                        "without flatten: interpolate columns (true) or rows (false)")),
          base="optional", min_inputs=2, max_inputs=2)
def nuslerp(tensors, base, *, weight, nuslerp_flatten, nuslerp_row_wise, generator=None):
    """SLERP between two models at t = w₂/(w₁+w₂); with a base, between their task vectors.

    Falls back to lerp where 1 − cos²θ ≤ 1e-16.
    """
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    v0, v1 = (tensors[0], tensors[1]) if base is None else (tensors[0] - base, tensors[1] - base)
    if nuslerp_flatten or v0.dim() < 2:
        dim = None
    else:
        dim = 0 if nuslerp_row_wise else -1
    merged = spherical(t, v0, v1, dim=dim, colinear=lambda cos: (1 - cos.square()) <= 1e-16)
    return merged if base is None else merged.add_(base)


# ---- model stock ---------------------------------------------------------------------------

@register("model_stock", label="Model Stock", paper="https://arxiv.org/abs/2403.19522",
          params=(Param("filter_wise", bool, False, False, "one interpolation ratio per row instead of per tensor"),),
          base="required", min_inputs=2)
def model_stock(tensors, base, *, filter_wise, generator=None):
    """base + t·(mean(x_i) − base), t = N·cos θ / (1 + (N−1)·cos θ) (Jang et al., eq. 2).

    cos θ is the mean pairwise cosine between the deltas x_i − base, per tensor or, with
    filter_wise, per row. Where 1 + (N−1)·cos θ vanishes there is no finite estimate and
    the base is kept (t = 0), as mergekit does.
    """
    count = tensors.shape[0]
    rows = (lambda x: x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)) if filter_wise \
        else (lambda x: x.reshape(1, -1))
    flat_base = rows(base)
    deltas = [rows(tensors[i]) - flat_base for i in range(count)]
    cosines = []
    for i in range(count):
        for j in range(i + 1, count):
            norms = torch.linalg.vector_norm(deltas[i], dim=-1) * torch.linalg.vector_norm(deltas[j], dim=-1)
            cosines.append(((deltas[i] * deltas[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # (rows, 1)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    ratio = torch.where(singular, torch.zeros_like(cos),
                        count * cos / torch.where(singular, torch.ones_like(denominator), denominator))
    average = tensors.mean(dim=0)
    return (ratio * rows(average) + (1 - ratio) * flat_base).reshape(base.shape)
