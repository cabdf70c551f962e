"""SCE (select, calculate, erase; FuseChat 2.0): a task-vector merge whose weights come from the changes themselves.

    d_i   = x_i − base                                             (n, *shape)
    1. select:    keep the entries where the models disagree most: the top `select_topk` fraction,
                  by Var_i(d_i), of the entries whose variance is not 0 (the same entries for every model);
    2. calculate: w_i = mean(d_i²) / Σ_j mean(d_j²) over the whole tensor (1/n each where Σ < 1e-6);
    3. erase:     TIES sign election on the selected d_i (core.merge.methods.task_vectors.elect_signs);
    merged = base + Σ w_i·d_i / max(Σ w_i over the kept, 1e-6).

Steps 1 and 2 need the whole tensor, so `sce_blocks` reads a tensor given in blocks of rows several
times: once to count the nonzero variances, twice to find the top-k cut exactly (core.merge.methods.topk,
the radix select TIES uses), once to sum the squares, once to merge. Each pass computes per entry, or
per row (squares summed in float64, then all rows' sums added with `math.fsum`), so any split into
blocks of rows gives the same tensor as one block.

Follows mergekit 0.1.5 (`sce.py`): its k = int(nonzero · select_topk) counted in float32, select_topk = 1
selects nothing away, 0 keeps only the base. Differs where mergekit's `torch.topk` chooses among equal
variances at the cutoff (here the first in flat order), and in that the means are summed exactly
where mergekit sums in float32 (a rounding-level difference).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from core.merge.methods.registry import register
from core.merge.methods.task_arithmetic import INT8_MASK
from core.merge.methods.task_vectors import Read, column, elect_signs
from core.merge.methods.topk import Cut, TopK, top_k_cuts
from core.merge.params import Param

SELECT_TOPK = Param(name="select_topk", kind=float, default=1.0, per_model=False, low=0, high=1,
                    help="fraction of entries kept, those where the models' changes vary most (1 = all)")


def sce_blocks(read: Read, shape: tuple[int, ...], *, select_topk: float, int8_mask: bool = False,
               generator=None) -> Iterator[torch.Tensor]:
    """Merge a tensor of `shape` read as blocks of rows; yields (*block) float32 merged blocks.

    `read()` is called up to five times and must give fresh blocks each time (they are
    overwritten in place). `int8_mask` is accepted for mergekit recipes and changes nothing.
    """
    cut = _variance_cut(read, select_topk)
    weights = _weights(read, cut, math.prod(shape))
    for deltas, base in _selected(read, cut):
        kept_weight = elect_signs(deltas, weights).clamp_(min=1e-6)  # (*block)
        yield deltas.mul_(column(weights, deltas)).sum(dim=0).div_(kept_weight).add_(base)


def _variance_cut(read: Read, select_topk: float) -> Cut | None:
    """Step 1: the cut of the k largest variances across models (None: every entry is kept)."""
    if select_topk >= 1:
        return None
    variances = lambda: (variance(tensors.sub_(base)).unsqueeze_(0) for tensors, base in read())  # noqa: E731
    nonzero = sum(int(torch.count_nonzero(block)) for block in variances()) if select_topk > 0 else 0
    k = int(torch.tensor(nonzero) * select_topk)  # float32, as mergekit counts it: the same k
    if k == 0:
        return Cut(torch.tensor(float("inf")), 0)
    [[cut]] = top_k_cuts(variances, [[k]])
    return cut


def variance(deltas: torch.Tensor) -> torch.Tensor:
    """(*block) float32 variance across the models of (n, *block) changes, the population one (divided by n).

    torch.var(deltas, dim=0, unbiased=False)'s value (it accumulates in float64 too, by Welford's
    recurrence; the tests compare the two bit for bit) at a fortieth of its CPU time, since its
    reduction across the leading axis runs entry by entry; scratch: three float64 blocks, whatever n.
    """
    count = deltas.shape[0]
    mean = deltas.sum(dim=0, dtype=torch.float64).div_(count)  # (*block) float64
    spread, scratch = torch.zeros_like(mean), torch.empty_like(mean)
    for row in deltas:
        spread.add_(torch.sub(row, mean, out=scratch).square_())
    return spread.div_(count).float()


def _selected(read: Read, cut: Cut | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each block's (n, *block) changes, zeroed in place outside the selection, with its (*block) base."""
    top = None if cut is None else TopK(cut)  # one pass over the blocks in order
    for tensors, base in read():
        deltas = tensors.sub_(base)
        if top is not None:
            deltas.mul_(top.mask(variance(deltas)))
        yield deltas, base


def _weights(read: Read, cut: Cut | None, count: int) -> list[float]:
    """Step 2: w_i = mean(d_i²) / Σ_j mean(d_j²) of the selected changes; 1/n each where that sum is < 1e-6."""
    row_sums = []  # per block: (n, rows) float64 sums of squares, each row's the same whatever the split
    for deltas, _ in _selected(read, cut):
        squares = deltas.square()  # (n, rows, *rest); a 0-dim or 1-D tensor's entries are its rows
        by_row = squares.flatten(2) if squares.dim() > 2 else squares.reshape(squares.shape[0], -1, 1)
        row_sums.append(by_row.sum(dim=-1, dtype=torch.float64))
    per_model = torch.cat(row_sums, dim=1)  # (n, all rows)
    means = [math.fsum(model.tolist()) / max(count, 1) for model in per_model]
    total = sum(means)
    if abs(total) < 1e-6:
        return [1 / len(means)] * len(means)
    return [mean / total for mean in means]


@register("sce", label="SCE (select, calculate, erase)", paper="https://arxiv.org/abs/2408.07990",
          params=(SELECT_TOPK, INT8_MASK), base="required", stream=sce_blocks, blockwise=lambda params: True)
def sce(tensors, base, *, select_topk, int8_mask=False, generator=None):
    """Merge one whole tensor: (n, *shape) models and (*shape) base → (*shape)."""
    read = lambda: [(tensors.clone(), base)]  # noqa: E731 - sce_blocks reads the tensor more than once
    return next(sce_blocks(read, base.shape, select_topk=select_topk, int8_mask=int8_mask))
