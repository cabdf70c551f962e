"""RAM (Reinforced Agent Merging) and RAM+ (tensor-local): keep what only one model changed, average the rest.

    d_i = x_i − base, set to 0 where |d_i| ≤ epsilon          (n, *shape)
    c   = how many models changed each entry (|d_i| > epsilon)
    ram:        merged = base + Σ_i d_i / max(c, 1)
                (an entry one model changed keeps that change whole; one several changed gets their mean)
    ramplus_tl: the entries only model i changed are scaled by λ_i = 1 + r · clip(ρ_i, 0, alpha), where
                ρ_i = (entries model i shares with another) / max(entries only model i changed, epsilon)
                over the whole tensor: a model whose changes mostly overlap others' has its few unique
                ones amplified, so averaging does not wash its contribution out.

`ram` is elementwise. `ramplus_tl` counts ρ over the whole tensor first: `ramplus_blocks` reads a tensor
given in blocks of rows twice (count, then merge); the counts are integers, so any split gives the same
tensor. Follows mergekit 0.1.5 (`ram.py`), λ computed in float32 as it does.
"""
from __future__ import annotations

from typing import Iterator

import torch

from core.merge.methods.registry import register
from core.merge.methods.task_vectors import Read, column
from core.merge.params import Param

EPSILON = Param(name="epsilon", kind=float, default=1e-5, per_model=False, low=0, ui_high=0.01,
                help="a change counts only where |x_i − base| exceeds this")
R = Param(name="r", kind=float, default=0.1, per_model=False, ui_low=0, ui_high=1,
          help="how strongly the overlap ratio amplifies a model's unique changes")
ALPHA = Param(name="alpha", kind=float, default=0.2, per_model=False, low=0, ui_high=1,
              help="cap on the overlap ratio ρ used in the amplification")
PAPER = "https://arxiv.org/abs/2601.13572"


def _mean_of_changes(tensors: torch.Tensor, base: torch.Tensor, epsilon: float,
                     unique_scale: list[float] | None = None) -> torch.Tensor:
    """base + Σ_i d_i / max(c, 1), the d_i that only model i changed times unique_scale[i] when given."""
    deltas = tensors.sub_(base)  # (n, *block)
    changed = deltas.abs().gt_(epsilon)  # (n, *block) 1.0 / 0.0: float masks are cheaper on CPU
    deltas.mul_(changed)
    counts = changed.sum(dim=0)  # (*block) small whole numbers, exact in float32
    deltas.div_(counts.clamp(min=1))
    if unique_scale is not None:  # d / 1 · λ_i where c = 1, as mergekit computes it
        deltas.mul_(torch.where(counts == 1, column(unique_scale, deltas), 1.0))
    return deltas.sum(dim=0).add_(base)


@register("ram", label="RAM (Reinforced Agent Merging)", paper=PAPER, params=(EPSILON,), base="required",
          elementwise=True)
def ram(tensors, base, *, epsilon, generator=None):
    """base + Σ_i d_i / max(c, 1): unique changes kept whole, shared ones averaged."""
    return _mean_of_changes(tensors, base, epsilon)


def ramplus_blocks(read: Read, shape: tuple[int, ...], *, r: float, alpha: float, epsilon: float,
                   generator=None) -> Iterator[torch.Tensor]:
    """Merge a tensor read as blocks of rows (twice: count, then merge); yields (*block) float32 blocks."""
    shared = unique = 0  # becomes (n,) int64: per model, entries it changes along with others / alone
    for tensors, base in read():
        changed = (tensors - base).abs_() > epsilon  # (n, *block) bool; the block is not overwritten
        counts = changed.sum(dim=0)
        flat = changed.reshape(changed.shape[0], -1)
        shared = shared + (flat & (counts > 1).reshape(1, -1)).sum(dim=1)
        unique = unique + (flat & (counts == 1).reshape(1, -1)).sum(dim=1)
    rho = shared / unique.clamp(min=epsilon)  # float32, as in mergekit
    rho.nan_to_num_(nan=0.0)  # 0/0 (epsilon 0, a model that changes nothing): λ unused; mergekit writes NaN
    scale = 1 + r * rho.clamp(min=0, max=alpha)  # λ_i
    for tensors, base in read():
        yield _mean_of_changes(tensors, base, epsilon, scale.tolist())


@register("ramplus_tl", label="RAM+ (tensor-local)", paper=PAPER, params=(R, ALPHA, EPSILON), base="required",
          stream=ramplus_blocks, blockwise=lambda params: True)
def ramplus_tl(tensors, base, *, r, alpha, epsilon, generator=None):
    """Merge one whole tensor: (n, *shape) models and (*shape) base → (*shape)."""
    return next(ramplus_blocks(lambda: [(tensors, base)], base.shape, r=r, alpha=alpha, epsilon=epsilon))
