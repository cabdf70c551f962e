"""Sparsifiers for task vectors (deltas): which entries of a delta survive before mixing.

Two kinds, because they stream differently:
  - ranked (`magnitude`, `magnitude_outliers`): keep the entries whose |value| ranks in a band
    [lo, hi) of the whole tensor (descending; ties: lowest flat index first). A band function
    turns (entries, density, …) into that band; `rank_pruners` finds the band's edges exactly
    with two histogram passes over the blocks (core.merge.methods.topk) and then zeroes the rest of each
    block in order, so a tensor of any size is pruned block by block.
  - random (`bernoulli`, `della_magprune`): take one whole float32 delta and zero its dropped
    entries; the mask draws from an explicit `torch.Generator`, so a seed reproduces a merge.

Pruning happens in place (the delta is the engine's scratch copy) and returns the delta.

Semantics follow mergekit 0.1.5 (`sparsify.py`), so ported recipes behave the same; where
mergekit is slow or crashes we differ in *how*, not in *what*: top-k is a radix select (two
counting passes) instead of a full argsort, and a 1-element tensor (a reranker's classifier
bias) is handled, not an assertion or NaN.

`rescale=True` matches the L1 norm of the kept entries to the original delta's (mergekit's
RescaleNorm.l1), which is how DARE/DELLA compensate for dropped mass; it needs the whole
delta at once.

Each sparsifier is also declared as data (`Sparsifier`: its function, the extra per-model
parameters it takes, whether it is random, an extra rule), so the task-arithmetic family
(core/merge/methods/task_arithmetic.py) registers each member by naming its sparsifier.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from core.merge.methods.topk import TopK, top_k_cuts
from core.merge.params import Param

Band = tuple[int, int] | None  # keep ranks [lo, hi) of |delta|, largest first; None: keep all


def magnitude(count: int, density: float) -> Band:
    """TIES step 1: keep the `density` fraction of entries with the largest |value|.

    A positive density keeps at least one entry, so tiny tensors are never wiped out.

    Example:
        >>> magnitude(10, 0.25), magnitude(3, 0.1), magnitude(10, 1.0)
        ((0, 2), (0, 1), None)
    """
    if density >= 1:
        return None
    if density <= 0 or count == 0:
        return 0, 0
    return 0, max(1, int(density * count))


def magnitude_outliers(count: int, density: float, *, gamma: float = 0.01) -> Band:
    """Model Breadcrumbs: drop the `gamma` largest outliers and the smallest, keep `density`.

    When density + gamma > 1 fewer outliers are dropped so that `density` is still kept.

    Example:
        >>> magnitude_outliers(100, 0.5, gamma=0.1)   # ranks 10…59: 10 outliers, 40 smallest dropped
        (10, 60)
    """
    if density >= 1:
        return None
    keep = int(density * count)
    n_top = int(gamma * count)
    n_bottom = max(0, count - keep - n_top)
    return count - n_bottom - keep, count - n_bottom


def rank_pruners(bands: list[Band], magnitudes: Callable[[], Iterable[torch.Tensor]], *,
                 rescale: bool = False) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """For each model's band, a function that zeroes, in place, the entries of a delta block outside it.

    Args:
        bands: one Band per model.
        magnitudes: returns an iterator of (n, *block) float32 |delta| blocks, together the
            whole tensor in flat order; read twice when some band needs edges.
        rescale: restore each delta's L1 norm; only for a tensor given as one block.
    Returns:
        prune[i](delta_block) for model i, called on the blocks in order.
    """
    wanted = [[k for k in band if k > 0] if band else [] for band in bands]
    cuts = top_k_cuts(magnitudes, wanted) if any(wanted) else [[] for _ in bands]
    return [_pruner(band, dict(zip(ks, row)), rescale) for band, ks, row in zip(bands, wanted, cuts)]


def _pruner(band: Band, cuts: dict, rescale: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    if band is None:
        return lambda delta: delta
    lo, hi = band
    if hi <= lo:
        return lambda delta: delta.zero_()
    top_hi = TopK(cuts[hi])
    top_lo = TopK(cuts[lo]) if lo > 0 else None

    def prune(delta: torch.Tensor) -> torch.Tensor:
        magnitudes = delta.abs()
        mask = top_hi.mask(magnitudes)  # 1.0 / 0.0
        if top_lo is not None:  # the top lo lie inside the top hi
            mask -= top_lo.mask(magnitudes)
        return _masked(delta, mask, rescale)

    return prune


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
    (mergekit divides 0/0 there and fails). A zero-size delta stays as it is (it has no rows to rank).
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    if density <= 0:
        return delta.zero_()
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    width = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(torch.float32)  # 0 … width-1
    rank_norm = ranks / (width - 1) if width > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    mask = torch.rand(probs.shape, generator=generator, device=probs.device) < probs
    return _masked(delta, mask.reshape(delta.shape), rescale)


def _masked(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """Zero the dropped entries in place; with `rescale`, restore the delta's L1 norm."""
    before = delta.abs().sum() if rescale else None
    kept = delta.mul_(mask)
    if not rescale:
        return kept
    after = kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept.mul_(before / after)


@dataclass(frozen=True)
class Sparsifier:
    """One way of dropping entries of a task vector, as the family's registrations read it.

    Ranked (random=False): `prune(count, density, **extra) -> Band`, applied through rank_pruners,
    so a tensor can be pruned block by block unless rescale needs its whole L1 norm.
    Random: `prune(delta, density, *, rescale, generator, **extra)` zeroes a whole delta in place.
    `params` are the per-model parameters beyond density and rescale that `prune` takes by name;
    declaring one it cannot take is refused here, at import time.
    """

    name: str
    prune: Callable
    random: bool  # draws from the generator: the whole tensor as one block, results depend on the seed
    params: tuple[Param, ...] = ()
    check: Callable[[dict], str | None] | None = None  # extra rule on resolved params → problem text

    def __post_init__(self):
        keywords = inspect.signature(self.prune).parameters
        missing = [p.name for p in self.params if p.name not in keywords]
        if missing:
            raise TypeError(f"sparsifier {self.name!r}: {self.prune.__name__} cannot receive parameter(s) {missing}")

    def blockwise(self, params: dict) -> bool:
        """Whether a tensor with these resolved params may be pruned block by block."""
        return not self.random and not params["rescale"]


def _della_band(params: dict) -> str | None:
    """DELLA draws keep-probabilities in density ± epsilon where 0 < density < 1; that band must lie
    inside (0, 1) (mergekit's rule). At density 0 or 1 nothing is drawn and epsilon is unused."""
    for density, epsilon in zip(params["density"], params["epsilon"]):
        if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            return f"density {density} ± epsilon {epsilon} must stay inside (0, 1): lower epsilon"
    return None


GAMMA = Param(name="gamma", kind=float, default=0.01, per_model=True,
              help="fraction of the largest changes dropped as outliers", low=0, high=1)
EPSILON = Param(name="epsilon", kind=float, default=0.15, per_model=True,
                help="spread of keep-probabilities around density, by magnitude rank", ui_low=0, ui_high=0.5)

MAGNITUDE = Sparsifier("magnitude", magnitude, random=False)  # TIES
OUTLIERS = Sparsifier("magnitude_outliers", magnitude_outliers, random=False, params=(GAMMA,))  # Breadcrumbs
BERNOULLI = Sparsifier("bernoulli", bernoulli, random=True)  # DARE
MAGPRUNE = Sparsifier("della_magprune", della_magprune, random=True, params=(EPSILON,), check=_della_band)  # DELLA
