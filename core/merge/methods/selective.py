"""A base and one other model, the other's values taken only where it qualifies: nearswap where the
two are close, arcee_fusion where the change matters most.
"""
from __future__ import annotations

import torch

from core.merge.methods.registry import register
from core.merge.params import Param


@register("nearswap", label="NearSwap (take the other model where it is near)",
          paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
          params=(Param(name="t", kind=float, default=None, per_model=False,
                        help="distance up to which the other model's value is taken whole", low=0,
                        ui_high=0.01),),
          base="required", min_inputs=1, max_inputs=1, elementwise=True)
def nearswap(tensors, base, *, t, generator=None):
    """w·x + (1 − w)·base per element, w = clamp(t / max(|x − base|, 1e-6), 0, 1)."""
    other = tensors[0]
    weight = (t / (other - base).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * other + (1 - weight) * base


@register("arcee_fusion", label="Arcee Fusion (keep the important changes)", paper="https://arcee.ai",
          params=(), base="required", min_inputs=1, max_inputs=1)
def arcee_fusion(tensors, base, *, generator=None):
    """base + (x − base)·[importance ≥ median + 1.5·(q₃ − q₁)], importance = |x − base|·KL(row).

    KL(row) = Σ p·log(p/q) over the last dimension, p = softmax(x) + 1e-8, q = softmax(base) + 1e-8.
    The quartiles are order statistics of the whole tensor's importance (the element at index
    ⌊q·(N−1)⌋ in sorted order), so the tensor cannot be split into blocks. mergekit estimates
    them from a random sample of 10⁶ elements above that size; MergeDesk always uses every element.
    """
    other = tensors[0]
    if other.numel() == 0:
        return base.clone()
    p = torch.softmax(other, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    divergence = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)  # (*rows, 1): one per row
    importance = (other - base).abs() * divergence  # (*shape)
    flat, last = importance.reshape(-1), importance.numel() - 1
    q1, median, q3 = (torch.kthvalue(flat, k + 1).values for k in (last // 4, last // 2, 3 * last // 4))
    keep = importance >= median + 1.5 * (q3 - q1)
    return base + (other - base) * keep
