"""Spherical interpolation: slerp (from the base to one other model) and nuslerp (between two models,
weighted, optionally of their changes from a base), over one shared `spherical` formula.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.merge.methods.linear import WEIGHT
from core.merge.methods.registry import register
from core.merge.params import Param


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
          params=(Param(name="t", kind=float, default=None, per_model=False,
                        help="0 = the base model, 1 = the other model", low=0, high=1),),
          base="required", min_inputs=1, max_inputs=1)
def slerp(tensors, base, *, t, generator=None):
    """Whole-tensor SLERP from the base (t=0) to the other model (t=1); lerp when |cos θ| > 0.9995."""
    return spherical(t, base, tensors[0], dim=None, colinear=lambda cos: cos.abs() > 0.9995)


@register("nuslerp", label="NuSLERP (weighted SLERP)", paper="https://github.com/arcee-ai/mergekit",
          params=(WEIGHT,
                  Param(name="nuslerp_flatten", kind=bool, default=True, per_model=False,
                        help="one angle for the whole tensor"),
                  Param(name="nuslerp_row_wise", kind=bool, default=False, per_model=False,
                        help="without flatten: interpolate columns (true) or rows (false)")),
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
