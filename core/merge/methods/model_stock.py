"""Model Stock (Jang et al. 2024): move from the base towards the models' average by a ratio that
their changes' mutual angle decides; needs a base and at least two other models.
"""
from __future__ import annotations

import torch

from core.merge.methods.registry import register
from core.merge.params import Param


@register("model_stock", label="Model Stock", paper="https://arxiv.org/abs/2403.19522",
          params=(Param(name="filter_wise", kind=bool, default=False, per_model=False,
                        help="one interpolation ratio per row instead of per tensor"),),
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
