"""The task-arithmetic family (mergekit's generalized task arithmetic): task arithmetic, TIES,
DARE, DELLA, Model Breadcrumbs — one formula with a sparsifier and an optional sign election.

    base + λ · mix(w_i · sparsify(x_i − base))

`TaskVectors(sparsifier, consensus)` is one member of the family as the registered function: called
on one whole tensor it merges it; its `stream(read, shape, …)` (`task_vector_blocks`) merges the
same tensor given as consecutive blocks of rows and yields the merged blocks: the engine streams a
large tensor this way, so memory stays at a few blocks whatever the tensor's size. Everything but
the sparsifier is elementwise; a ranked sparsifier (TIES, Breadcrumbs) needs the whole tensor's
magnitude ranks, which `sparsify.rank_pruners` finds in two counting passes over the blocks before
they are merged.
A random sparsifier (DARE, DELLA) and L1 rescaling need the whole tensor as one block.
A whole tensor is `task_vector_blocks` over a single block, so both give the same numbers.
The sign election (`elect_signs`) is SCE's too (core/merge/methods/sce.py).
The parameters arrive as `**params` ("lambda" cannot be a keyword argument), so a member names
what it reads in `accepts`, which `register` checks every declaration against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from core.merge.methods import sparsify
from core.merge.methods.sparsify import Sparsifier

FORMULA_PARAMS = ("weight", "lambda", "normalize", "int8_mask")  # int8_mask: accepted for mergekit, no effect
SPARSE_PARAMS = ("density", "rescale")  # read by every member with a sparsifier
Read = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # → ((n, *block) models, (*block) base) in order


def column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-model values as a (n, 1, 1, …) tensor that broadcasts against a (n, *shape) stack."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(-1, *[1] * (like.dim() - 1))


@dataclass(frozen=True)
class TaskVectors:
    """One member of the family: base + λ · mix(w_i · sparsify(x_i − base)), as a merge function."""

    sparsifier: Sparsifier | None = None  # None: every change is kept (task arithmetic)
    consensus: bool = False  # TIES sign election

    @property
    def accepts(self) -> frozenset[str]:
        """Every parameter this member reads: what its registration may declare, and no more."""
        extra = (*SPARSE_PARAMS, *(p.name for p in self.sparsifier.params)) if self.sparsifier else ()
        return frozenset((*FORMULA_PARAMS, *extra))

    def __call__(self, tensors, base, *, generator=None, **params) -> torch.Tensor:
        """Merge one whole tensor: (n, *shape) models and (*shape) base → (*shape)."""
        return next(iter(self.stream(lambda: [(tensors, base)], base.shape, generator=generator, **params)))

    def stream(self, read: Read, shape: tuple[int, ...], *, generator=None, **params) -> Iterator[torch.Tensor]:
        """Merge a tensor read as blocks of rows (see task_vector_blocks)."""
        unknown = sorted(set(params) - self.accepts)
        if unknown:
            raise TypeError(f"this task-vector merge reads {sorted(self.accepts)}, not {unknown}")
        return task_vector_blocks(read, shape, sparsifier=self.sparsifier, consensus=self.consensus,
                                  generator=generator, **params)

    def blockwise(self, params: dict) -> bool:
        """Whether a tensor with these resolved params may be merged block by block."""
        return self.sparsifier is None or self.sparsifier.blockwise(params)


def task_vector_blocks(read: Read, shape: tuple[int, ...], *, sparsifier: Sparsifier | None = None,
                       consensus: bool = False, generator=None, **params) -> Iterator[torch.Tensor]:
    """Merge a tensor of `shape` read as blocks of rows; yields (*block) float32 merged blocks.

    1. deltas  d_i = x_i − base, sparsified per model (if the method does);
    2. weight  d_i ← w_i · d_i;
    3. consensus (TIES): per entry keep only the d_i whose sign matches sign(Σ d_i) (ties → +);
    4. mix     Σ kept d_i, divided under normalize by Σ of the kept models' weights
               (entries where nothing is kept divide by 1);
    5. return  base + λ · mix.

    `read()` may be called more than once (ranked sparsifiers read the tensor three times);
    each call must give fresh blocks, which are overwritten in place.
    """
    weight, lam, normalize = params["weight"], params["lambda"], params["normalize"]
    prune = _pruners(read, shape, sparsifier, generator, params)
    for tensors, base in read():
        deltas = tensors.sub_(base)  # (n, *block)
        for i, prune_one in enumerate(prune):
            prune_one(deltas[i])
        deltas.mul_(column(weight, deltas))
        if consensus:
            divisor = elect_signs(deltas, weight)
            divisor.add_(divisor.clone().eq_(0))  # where no model is kept, divide by 1
        else:
            total = sum(weight)
            divisor = total if abs(total) >= 1e-8 else 1.0
        mixed = deltas.sum(dim=0)
        if normalize:
            mixed = mixed.div_(divisor)
        if lam != 1:
            mixed.mul_(lam)
        yield mixed.add_(base)


def elect_signs(deltas: torch.Tensor, weight: list[float]) -> torch.Tensor:
    """TIES sign election, in place: per entry keep only the d_i whose sign matches sign(Σ d_i) (ties → +).

    Args:
        deltas: (n, *block) changes; the disagreeing ones (and zeros) are zeroed in place.
        weight: one weight per model.
    Returns:
        (*block) Σ w_i over the models kept at each entry (0 where none is kept).

    Example:
        >>> deltas = torch.tensor([[1., -2.], [-3., 1.]])
        >>> elect_signs(deltas, [0.5, 2.0]).tolist(), deltas.tolist()
        ([2.0, 0.5], [[0.0, -2.0], [-3.0, 0.0]])
    """
    elected = deltas.sum(dim=0).ge_(0).mul_(2).sub_(1)  # (*block) +1 where Σ d_i ≥ 0, else −1
    kept_weight = torch.zeros_like(elected)
    for i in range(deltas.shape[0]):  # float masks throughout: on CPU 5x cheaper than boolean ones
        agrees = deltas[i].sign().eq_(elected)  # 1.0 where d_i ≠ 0 has the elected sign
        deltas[i].mul_(agrees)
        kept_weight.add_(agrees, alpha=weight[i])
    return kept_weight


def _pruners(read: Read, shape: tuple[int, ...], sparsifier: Sparsifier | None, generator,
             params: dict) -> list[Callable]:
    """One in-place pruning function per model, applied to that model's delta blocks in order."""
    if sparsifier is None:
        return []
    extras = [{p.name: params[p.name][i] for p in sparsifier.params} for i in range(len(params["weight"]))]
    if not sparsifier.random:
        count = math.prod(shape)
        bands = [sparsifier.prune(count, density, **extra) for density, extra in zip(params["density"], extras)]
        magnitudes = lambda: ((tensors - base).abs_() for tensors, base in read())  # noqa: E731 - (n, *block)
        return sparsify.rank_pruners(bands, magnitudes, rescale=params["rescale"])
    return [lambda delta, density=density, extra=extra: sparsifier.prune(delta, density, rescale=params["rescale"],
                                                                         generator=generator, **extra)
            for density, extra in zip(params["density"], extras)]
