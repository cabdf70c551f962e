"""Sparsifiers for task vectors (deltas): which entries of a delta survive before mixing.

Each function takes one float32 delta and returns a tensor of the same shape with the dropped
entries zeroed. Semantics follow mergekit 0.1.5 (`sparsify.py`), so ported recipes behave the
same; where mergekit is slow or crashes we differ in *how*, not in *what*:
  - top-k uses `kthvalue` (O(n)) instead of a full argsort (O(n log n));
  - a 1-element tensor (a reranker's classifier bias) is handled, not an assertion or NaN;
  - random masks draw from an explicit `torch.Generator`, so a seed reproduces a merge.

`rescale=True` matches the L1 norm of the kept entries to the original delta's (mergekit's
RescaleNorm.l1), which is how DARE/DELLA compensate for dropped mass.
"""
from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of a flat tensor (ties: lowest index first).

    Example:
        >>> top_k_mask(torch.tensor([3., 1., 2., 2.]), 2)
        tensor([ True, False,  True, False])
    """
    count = scores.numel()
    if k >= count:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    # kthvalue(j) is the j-th smallest, so the k-th largest is j = count - k + 1.
    threshold = scores.kthvalue(count - k + 1).values
    mask = scores > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        tied = torch.nonzero(scores == threshold).flatten()[:missing]
        mask[tied] = True
    return mask


def magnitude(delta: torch.Tensor, density: float, *, rescale: bool = False) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest |value| (TIES step 1).

    A positive density keeps at least one entry, so tiny tensors are never wiped out.
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = top_k_mask(delta.abs().reshape(-1), k).reshape(delta.shape)
    return _masked(delta, mask, rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, *, gamma: float = 0.01,
                       rescale: bool = False) -> torch.Tensor:
    """Model Breadcrumbs: drop the `gamma` largest outliers and the smallest, keep `density`.

    When density + gamma > 1 fewer outliers are dropped so that `density` is still kept.
    """
    if density >= 1:
        return delta
    count = delta.numel()
    keep = int(density * count)
    n_top = int(gamma * count)
    n_bottom = max(0, count - keep - n_top)
    magnitudes = delta.abs().reshape(-1)
    # Kept = ranks [n_bottom, n_bottom + keep) in ascending order
    #      = top (count - n_bottom) minus top (count - n_bottom - keep).
    mask = top_k_mask(magnitudes, count - n_bottom) & ~top_k_mask(magnitudes, count - n_bottom - keep)
    return _masked(delta, mask.reshape(delta.shape), rescale)


def bernoulli(delta: torch.Tensor, density: float, *, rescale: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE: keep each entry independently with probability `density`."""
    if density >= 1:
        return delta
    mask = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    return _masked(delta, mask, rescale)


def della_magprune(delta: torch.Tensor, density: float, *, epsilon: float, rescale: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DELLA MagPrune: keep-probability grows with |value|'s rank within each row.

    Probabilities span [density - epsilon, density + epsilon] from the smallest to the largest
    entry of a row (a 1-D tensor is one row). A row of one entry gets probability `density`
    (mergekit divides 0/0 there and fails).
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(torch.float32)  # 0 … width-1
    rank_norm = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    mask = torch.rand(probs.shape, generator=generator, device=probs.device) < probs
    return _masked(delta, mask.reshape(delta.shape), rescale)


def _masked(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """Zero the dropped entries; with `rescale`, restore the delta's L1 norm."""
    kept = delta * mask
    if not rescale:
        return kept
    before = delta.abs().sum()
    after = kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)
