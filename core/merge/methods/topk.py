"""Exact top-k of magnitudes over a tensor read in blocks: which entries TIES-style pruning keeps.

`torch.kthvalue` needs the whole tensor in memory and runs on one core at ~17 ns per entry;
at 1.5 GB per model TIES spent most of its time there. Here the k-th largest score is found
by radix select on float32 bit patterns (for scores ≥ 0 the int32 bits order like the values):

1. count the top 16 bits of every score (a 32768-bin histogram): the bucket holding the k-th
   largest score, and how many scores lie above that bucket;
2. count the low 16 bits of the scores inside that bucket: the k-th largest score exactly,
   and how many copies of it belong to the top k.

Each step is one pass over the blocks (`blocks()` yields (n, *block) float32 scores ≥ 0, one
row per model, and can be called again), so nothing the size of the tensor is held, and the
passes cost ~2 ns per score. The answer is a `Cut` per requested k, which `TopK` applies to
the same blocks in the same order:

    >>> scores = torch.tensor([[3., 1., 2., 2.]])
    >>> [[cut]] = top_k_cuts(lambda: [scores], [[2]])
    >>> cut.value.item(), cut.ties, TopK(cut).mask(scores[0])
    (2.0, 1, tensor([1., 0., 1., 0.]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

HIGH = 1 << 15  # buckets of the top 16 bits (the sign bit of a score ≥ 0 is 0)
LOW = 1 << 16  # values of the low 16 bits


@dataclass(frozen=True)
class Cut:
    """The k largest scores of a tensor: those above `value`, and the first `ties` equal to it.

    Ties are broken by flat position, lowest first, as a stable descending sort would.
    """

    value: torch.Tensor  # 0-dim float32: the k-th largest score (-inf: keep all, inf: keep none)
    ties: int  # how many scores equal to `value`, counted from the start of the tensor, are kept


class TopK:
    """Hands out the mask of a Cut block by block; blocks must come in order, each exactly once."""

    def __init__(self, cut: Cut):
        self.value = cut.value
        self.ties_left = cut.ties

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """1.0 where an entry of this block of scores is in the top k, else 0.0 (float32, like `scores`).

        Float masks because on CPU a float compare-in-place and multiply cost a fifth of their
        boolean counterparts.
        """
        kept = scores.clone().gt_(self.value)
        if self.ties_left > 0:
            tied = scores.clone().eq_(self.value)
            count = int(torch.count_nonzero(tied))
            if count > self.ties_left:  # the last tied entries kept are in this block
                tied.view(-1)[tied.view(-1).nonzero()[self.ties_left:, 0]] = 0
                count = self.ties_left
            kept += tied
            self.ties_left -= count
        return kept


def top_k_cuts(blocks: Callable[[], Iterable[torch.Tensor]], ks: Sequence[Sequence[int]]) -> list[list[Cut]]:
    """Cuts for the ks[i] largest scores of row i, over all blocks (two passes over them).

    Args:
        blocks: returns an iterator of (n, *block) float32 scores ≥ 0, row i = model i; the
            blocks together are the whole tensor in flat order.
        ks: for each row, the k's wanted (any number, each clipped to [0, entries]).
    Returns:
        cuts[i][j] for ks[i][j].
    """
    high = _histograms(blocks, [[None]] * len(ks))
    count = int(high[0][0].sum())
    buckets = [[_bucket(h[0], k) for k in row] for h, row in zip(high, ks)]
    low = _histograms(blocks, [[b for b, _ in row if b is not None] for row in buckets])
    cuts = []
    for i, row in enumerate(ks):
        low_of = dict(zip([b for b, _ in buckets[i] if b is not None], low[i]))
        cuts.append([_cut(k, count, bucket, above, low_of.get(bucket)) for k, (bucket, above) in zip(row, buckets[i])])
    return cuts


def _histograms(blocks: Callable[[], Iterable[torch.Tensor]], wanted: list[list[int | None]]) -> list[list[torch.Tensor]]:
    """One pass: for row i and each entry of wanted[i], the histogram of the top 16 bits (None)
    or of the low 16 bits within top-16-bit bucket b (bins 1…65536; 0 and 65537 collect the rest)."""
    hists = [[torch.zeros(HIGH if b is None else LOW + 2, dtype=torch.int64) for b in row] for row in wanted]
    if not any(wanted):
        return hists
    for block in blocks():
        bits = block.reshape(len(wanted), -1).view(torch.int32)  # (n, entries of the block)
        for i, row in enumerate(wanted):
            for bucket, hist in zip(row, hists[i]):
                if bucket is None:
                    key = bits[i] >> 16
                else:  # low bits + 1 inside the bucket, 0 below it, LOW + 1 above it
                    key = torch.sub(bits[i], bucket * LOW - 1).clamp_(0, LOW + 1)
                hist += torch.bincount(key, minlength=hist.numel())
    return hists


def _bucket(high: torch.Tensor, k: int) -> tuple[int | None, int]:
    """(top-16-bit bucket of the k-th largest score, scores in higher buckets); (None, 0) when k
    keeps all or none."""
    if k <= 0 or k >= int(high.sum()):
        return None, 0
    from_top = high.flip(0).cumsum(0)  # from_top[j]: scores in buckets ≥ HIGH-1-j
    j = int(torch.searchsorted(from_top, k))
    return HIGH - 1 - j, int(from_top[j] - high[HIGH - 1 - j])


def _cut(k: int, count: int, bucket: int | None, above: int, low: torch.Tensor | None) -> Cut:
    if bucket is None:
        return Cut(torch.tensor(float("-inf") if k >= count else float("inf")), 0)
    inside = low[1:LOW + 1]  # inside[l]: scores with bits bucket·2^16 + l
    from_top = inside.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, k - above))
    bits = bucket * LOW + LOW - 1 - j
    greater = above + int(from_top[j] - inside[LOW - 1 - j])
    return Cut(torch.tensor(bits, dtype=torch.int32).view(torch.float32), k - greater)
