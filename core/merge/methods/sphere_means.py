"""Means of several models on the hypersphere: multislerp (one tangent step from the weighted
mean direction) and karcher (the iterated Riemannian mean). Each treats a whole tensor as one
vector, so neither may be streamed in blocks: a block's norm is not the tensor's.
"""
from __future__ import annotations

import torch

from core.errors import RecipeError
from core.merge.methods.linear import WEIGHT
from core.merge.methods.registry import register
from core.merge.params import Param


def _weights_not_zero(params: dict) -> str | None:
    """Under normalize_weights the weights are a divisor: with two or more models their sum must not vanish."""
    weight = params["weight"]
    if params["normalize_weights"] and len(weight) > 1 and abs(sum(weight)) < 1e-8:
        return f"weights {weight} sum to 0 but normalize_weights is on: change a weight or set it to false"
    return None


@register("multislerp", label="Multi-SLERP (SLERP of many models)",
          paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
          params=(WEIGHT,
                  Param(name="normalize_weights", kind=bool, default=True, per_model=False,
                        help="divide the weights by their sum"),
                  Param(name="eps", kind=float, default=1e-8, per_model=False,
                        help="added to norms so a zero tensor does not divide by zero", low=0, high=1,
                        ui_high=0.01)),
          base="optional", min_inputs=1, check=_weights_not_zero)
def multislerp(tensors, base, *, weight, normalize_weights, eps, generator=None):
    """Barycentric SLERP: the weighted mean direction m of the unit vectors uᵢ, moved along the
    weighted tangent step s = Σ wᵢ(uᵢ − (uᵢ·m)m) by the exponential map cos|s|·m + sin|s|/|s|·s,
    scaled to the weighted mean norm Σ wᵢ|xᵢ|; of the task vectors xᵢ − base when a base is given.

    One model is returned as it is. Where the mean direction vanishes (antipodal models of equal
    weight) two models fall back to Σ wᵢxᵢ and more are refused, as mergekit does; where every
    model is zero (no model changed the base, an empty tensor) that sum is the answer too, where
    mergekit stops the merge.
    """
    count, shape = tensors.shape[0], tensors.shape[1:]
    if count == 1:
        return tensors[0]
    vectors = (tensors if base is None else tensors.sub_(base)).reshape(count, shape.numel())  # (n, d)
    w = torch.tensor(weight, dtype=vectors.dtype)  # (n,)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)  # (n, 1)
    units = vectors / (norms + eps)
    mean = (units * w[:, None]).sum(dim=0)  # (d,)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if count != 2 and norms.any():
            raise RecipeError("multislerp: the weighted mean of the models' directions is zero (antipodal "
                              "models whose weights cancel): change the weights")
        merged = (vectors * w[:, None]).sum(dim=0)
    else:
        mean = mean / mean_norm
        tangents = units - (units * mean).sum(dim=-1, keepdim=True) * mean  # (n, d)
        step = (tangents * w[:, None]).sum(dim=0)
        length = torch.linalg.vector_norm(step) + eps
        merged = (mean * torch.cos(length) + step * (torch.sin(length) / length)) * (norms[:, 0] * w).sum()
    merged = merged.reshape(shape)
    return merged if base is None else merged + base


def _whole_iterations(params: dict) -> str | None:
    if params["max_iter"] != int(params["max_iter"]):
        return f"max_iter must be a whole number, got {params['max_iter']}"
    return None


@register("karcher", label="Karcher mean (Riemannian average)", paper="https://arxiv.org/abs/2603.04972",
          params=(Param(name="max_iter", kind=float, default=10, per_model=False,
                        help="at most this many steps towards the mean", low=0, high=1000, ui_high=50),
                  Param(name="tol", kind=float, default=1e-5, per_model=False,
                        help="stop when a step is shorter; norms and angles below it count as zero",
                        low=0, high=1, ui_high=0.01)),
          base="unused", min_inputs=1, check=_whole_iterations)
def karcher(tensors, base, *, max_iter, tol, generator=None):
    """The equal-weight Karcher mean on the unit sphere, scaled to the models' mean norm.

    m starts at the normalized mean of the unit vectors uᵢ (u₁ where that vanishes); each step
    takes the tangent v = Σ aᵢ·θᵢ/sin θᵢ·(uᵢ − cos θᵢ·m), θᵢ = ∠(m, uᵢ) (terms with θᵢ < tol left
    out), and moves m ← cos|v|·m + sin|v|·v/|v|, renormalized; it stops when |v| < tol. Models whose
    norm is at most tol take no part in the direction (aᵢ = 1/their count) but do in the scale
    Σ|xᵢ|/n; if every norm is that small the result is zero.
    """
    count, shape = tensors.shape[0], tensors.shape[1:]
    if count == 1:
        return tensors[0]
    flat = tensors.reshape(count, shape.numel())  # (n, d)
    norms = torch.linalg.vector_norm(flat, dim=-1)  # (n,)
    valid = norms > tol
    if not valid.any():
        return torch.zeros(shape, dtype=tensors.dtype)
    units = flat[valid] / norms[valid, None]  # (k, d)
    share = 1.0 / units.shape[0]
    mean = (units * share).sum(dim=0)
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if mean_norm < tol else mean / mean_norm
    for _ in range(int(max_iter)):
        cos = (units @ mean).clamp(-1.0, 1.0)  # (k,)
        theta = torch.arccos(cos)
        pull = torch.where(theta < tol, torch.zeros_like(theta), share * theta / torch.sin(theta))
        tangent = (pull[:, None] * (units - cos[:, None] * mean)).sum(dim=0)
        length = torch.linalg.vector_norm(tangent)
        if length < tol:
            break
        mean = torch.cos(length) * mean + torch.sin(length) * (tangent / length)
        unit_norm = torch.linalg.vector_norm(mean)
        if unit_norm > tol:
            mean = mean / unit_norm
    return (norms.sum() / count * mean).reshape(shape)
