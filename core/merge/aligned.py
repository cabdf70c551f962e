"""Token-indexed tensors read through the output vocabulary (core.merge.vocabulary): the engine's side of alignment.

    plan = align_plan(plan, vocabulary, recipe)           # token-indexed jobs take the vocabulary's row count
    rows, base = align_inputs(vocabulary, recipe, job, rows, names, base, base_name)   # in tensor_chunks

An AlignedInput stands in for a Checkpoint: `read(name, rows=slice)` gives that block of the input's
tensor as the output vocabulary orders it, made from the rows its Rule names (its own, or another
input's where it lacks a token), so the engine's loop, its row blocks and its buffers stay as they
are. Memory: each block gathers its rows in runs of consecutive source rows (one read per run), so a
block costs its own size plus one gathered block, never a whole input tensor; padding rows (the mean of
the input's other rows) take one extra pass over the tensor, once per job.
"""
from __future__ import annotations

import dataclasses

import torch

from core.errors import CheckpointError
from core.io.checkpoint import Checkpoint
from core.io.header import TensorInfo
from core.merge.plan import CHUNK_ELEMENTS, MergePlan, TensorJob, plan_shards, rows_per_chunk, working_bytes
from core.merge.recipe import MergeRecipe
from core.merge.slices import paired
from core.merge.vocabulary import Rule, Vocabulary, is_token_indexed


class AlignedInput:
    """One input's token-indexed tensor in the output vocabulary's row order (a read-only Checkpoint stand-in)."""

    def __init__(self, name: str, rule: Rule, sources: list[tuple[Checkpoint, str]], index: int, rows: int,
                 real_rows: int):
        own, own_name = sources[index]
        stored = own.tensors[own_name]
        self.ref, self.folder, self.name = own.ref, own.folder, name
        self.rule, self.sources, self.real_rows = rule, sources, real_rows
        self.tensors = {name: TensorInfo(name, (rows, *stored.shape[1:]), stored.dtype, stored.file, 0,
                                         rows * stored.nbytes // max(1, stored.shape[0]))}
        self._pad_mean: torch.Tensor | None = None

    def read(self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             rows: slice | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows[start:stop] of the realigned tensor (all of it for rows=None), on `device` in `dtype` (else stored)."""
        info = self.tensors[name]
        start, stop, _ = (rows or slice(None)).indices(info.shape[0])
        block = self._real(start, min(stop, self.real_rows))
        if stop > self.real_rows:
            pad = self._padding().expand(stop - max(start, self.real_rows), *info.shape[1:])
            block = torch.cat([block, pad])
        return block.to(device=device, dtype=dtype or info.dtype)

    def release(self, name: str, rows: slice | None = None) -> None:
        """Nothing per block: a realigned block is gathered from rows all over its sources, so their pages are
        released whole once the job is done (core.merge.engine.stream, inputs larger than RAM)."""

    def _real(self, start: int, stop: int) -> torch.Tensor:
        """Output rows [start, stop) below the padding, in float32 on the CPU: Σ weight · source row."""
        shape = self.tensors[self.name].shape[1:]
        block = torch.zeros((max(0, stop - start), *shape), dtype=torch.float32)
        if stop <= start:
            return block
        lo, hi = torch.searchsorted(self.rule.out_rows, torch.tensor([start, stop])).tolist()
        out_rows, sources = self.rule.out_rows[lo:hi] - start, self.rule.sources[lo:hi]
        rows, weights = self.rule.rows[lo:hi], self.rule.weights[lo:hi]
        for source in torch.unique(sources).tolist():
            pick = sources == source
            checkpoint, tensor = self.sources[source]
            gathered = gather_rows(checkpoint, tensor, rows[pick]).to(torch.float32)
            w = weights[pick]
            if not bool((w == 1).all()):
                gathered.mul_(w.reshape(-1, *[1] * len(shape)))
            block.index_add_(0, out_rows[pick], gathered)
        return block

    def _padding(self) -> torch.Tensor:
        """The mean of the real rows (mergekit pads with the mean embedding), computed once in row blocks."""
        if self._pad_mean is None:
            shape = self.tensors[self.name].shape[1:]
            step = max(1, CHUNK_ELEMENTS // max(1, int(torch.Size(shape).numel())))
            total = torch.zeros(shape, dtype=torch.float32)
            for start in range(0, self.real_rows, step):
                total += self._real(start, min(start + step, self.real_rows)).sum(0)
            self._pad_mean = (total / self.real_rows).unsqueeze(0)
        return self._pad_mean


MAX_RUNS = 16  # more runs of rows than this in one block (a shuffled vocabulary): index the memory map instead


def gather_rows(checkpoint: Checkpoint, name: str, rows: torch.Tensor) -> torch.Tensor:
    """checkpoint's tensor `name` at `rows` (any order, repeats allowed), read as runs of consecutive rows.

    Example: rows [5, 6, 7, 2] are two reads, rows 2:3 and 5:8. Past MAX_RUNS runs, a plain checkpoint's
    memory-mapped tensor is indexed instead (one copy of the rows, the file's pages stay page cache);
    one that computes its rows (a LoRA-adapted model) is still read run by run."""
    have = checkpoint.tensors[name].shape[0]
    if rows.numel() and (int(rows.max()) >= have or int(rows.min()) < 0):
        raise CheckpointError(f"{checkpoint.ref}: {name} has {have} rows; the vocabulary needs row {int(rows.max())}")
    unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    breaks = (torch.nonzero(unique[1:] - unique[:-1] != 1).flatten() + 1).tolist()
    if len(breaks) >= MAX_RUNS and type(checkpoint).read is Checkpoint.read:
        return checkpoint.read(name)[rows]
    bounds = [0, *breaks, unique.numel()]
    runs = [checkpoint.read(name, rows=slice(int(unique[a]), int(unique[b - 1]) + 1))
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if not runs:
        info = checkpoint.tensors[name]
        return torch.empty((0, *info.shape[1:]), dtype=info.dtype)
    return torch.cat(runs)[inverse]


def align_inputs(vocabulary: Vocabulary | None, recipe: MergeRecipe, job: TensorJob, rows: list, names: list[str],
                 base: Checkpoint | None, base_name: str) -> tuple[list, Checkpoint | None]:
    """A merged token-indexed job's inputs as AlignedInputs (the job's names read there), else as they are."""
    if vocabulary is None or not job.merged or not is_token_indexed(job.name):
        return rows, base
    sources = paired(rows, names, base, base_name)
    refs = tuple(checkpoint.ref for checkpoint, _ in sources)
    rules = vocabulary.rules(refs, recipe.base_model)
    aligned = [AlignedInput(name, rules[i], sources, i, job.shape[0], len(vocabulary.tokens))
               for i, (_, name) in enumerate(sources)]
    return aligned[:len(rows)], (aligned[-1] if base is not None else None)


def align_plan(plan: MergePlan, vocabulary: Vocabulary | None, recipe: MergeRecipe, *, shard_bytes: int) -> MergePlan:
    """The plan with every merged token-indexed job shaped by the vocabulary, its shards and estimates again.

    Working memory of such a job: the job's own estimate plus a gathered block and the realigned block."""
    if vocabulary is None:
        return plan
    jobs, peak = [], plan.peak_bytes
    for job in plan.jobs:
        if job.merged and is_token_indexed(job.name) and job.shape:
            shape = (vocabulary.rows, *job.shape[1:])
            stand_in = TensorInfo(job.name, shape, job.out_dtype, None, 0, 0)
            job = dataclasses.replace(job, shape=shape, rows_per_chunk=rows_per_chunk(recipe, job.params, stand_in))
            inputs = len(job.rows_from) + bool(job.base_from) if job.rows_from else \
                len(recipe.rows()) + recipe.uses_base
            block = (job.rows_per_chunk or shape[0]) * (job.nbytes // max(1, shape[0]) // job.out_dtype.itemsize)
            peak = max(peak, working_bytes(job, inputs) + 2 * 4 * block)
        jobs.append(job)
    return dataclasses.replace(plan, jobs=jobs, shards=plan_shards([(j.name, j.nbytes) for j in jobs],
                                                                   shard_bytes),
                               bytes_written=sum(j.nbytes for j in jobs), peak_bytes=peak)

