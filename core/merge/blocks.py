"""How the merge engine (core.merge.engine) gets a job's inputs block by block, and the weighted sum over them.

    for stored in input_blocks(job, reads, cancel):       # [(checkpoint, name)] → one block of rows each
        ...                                                # (the whole tensor when the job is not split)
    for block in weighted_sum(job, reads, coefficients, working, device, cancel, findings, release=False):
        ...                                                # Σ c_i·x_i, block by block, in the output dtype

Row blocks are read one block ahead on a thread (core.io.prefetch); cancel is checked before each block.
"""
from __future__ import annotations

import threading
from typing import Iterator

import torch

from core.errors import MergeCancelled
from core.io.checkpoint import Checkpoint
from core.io.prefetch import RowBlocks
from core.merge.nonfinite import NonFinite
from core.merge.plan import TensorJob

# The weighted sum adds a block up in pieces of this many elements: a 512 KB float32 piece stays in the
# core's L2 cache through its copy, adds and cast (a whole 2 MB block did not: bench/README.md, 0.5 s less CPU
# at 3 x 1.46 GB)
SUM_ELEMENTS = 128 * 1024
STOPPED = "merge stopped: no output was written"  # what a Stop between tensors raises


def sum_is_precise_enough(coefficients: list[float], out_dtype: torch.dtype) -> bool:
    """Whether Σ c_i·x_i in float32 is as good as base + Σ w_i(x_i − base) for this output.

    Why: with large coefficients of both signs (c_base = 1 − λΣw, e.g. −3) the sum cancels big
    terms and loses digits the delta form keeps. Below float32 output the loss is far under one
    output ulp; a float32 (or wider) output takes the weighted sum only while Σ|c_i| ≤ 2.
    """
    return out_dtype.itemsize < 4 or sum(abs(c) for c in coefficients) <= 2


def weighted_sum(job: TensorJob, inputs: list[tuple[Checkpoint, str]], coefficients: list[float],
                 working: torch.dtype | None, device: torch.device, cancel: threading.Event | None,
                 findings: NonFinite, release: bool) -> Iterator[torch.Tensor]:
    """Σ c_i·x_i block by block, each input (a checkpoint and the tensor read there) added in its stored dtype
    into one float32 sum.

    Why: it makes one pass per input where the general path copies every input into a
    float32 stack first; at 3 × 1.5 GB that halves the merge's compute. Each block is summed in
    SUM_ELEMENTS pieces, in the order a whole block would be (the same bytes). NaN/Inf in any input
    make the sum non-finite (0·NaN is NaN), so only the sum is checked, and the inputs are
    counted when it fails. Each input comes with the tensor name read there (TensorJob.source).
    """
    total = written = None  # the float32 sum and the block written, each allocated once and reused
    for stored in input_blocks(job, inputs, cancel, release=release):
        blocks = [_summable(prepared(block, device, working)) for block in stored]
        if total is None:
            total = torch.empty(blocks[0].shape, dtype=torch.float32, device=device)
            written = torch.empty(blocks[0].shape, dtype=job.out_dtype, device=device)
        merged, out = _leading(total, blocks[0]), _leading(written, blocks[0])
        flat = [block.reshape(-1) for block in blocks]
        sums, outs = merged.view(-1), out.view(-1)
        for start in range(0, sums.numel(), SUM_ELEMENTS):
            part = sums[start:start + SUM_ELEMENTS].copy_(flat[0][start:start + SUM_ELEMENTS])
            if coefficients[0] != 1:
                part.mul_(coefficients[0])
            for block, coefficient in zip(flat[1:], coefficients[1:]):
                part.add_(block[start:start + SUM_ELEMENTS], alpha=coefficient)
            outs[start:start + SUM_ELEMENTS].copy_(part)
        if not torch.isfinite(merged.sum()):
            for (checkpoint, name), block in zip(inputs, blocks):
                findings.check(job.name, block.unsqueeze(0), [checkpoint])
        yield out  # valid until the next block: the sink writes it at once


def input_blocks(job: TensorJob, reads: list[tuple[Checkpoint, str]], cancel: threading.Event | None, *,
                 release: bool = False) -> Iterator[list[torch.Tensor]]:
    """Each (checkpoint, tensor) in `reads` as stored on the CPU: the whole tensor, or block after block of
    rows, read one block ahead on a thread (core.io.prefetch). A block is valid until the next is asked
    for. Cancel is checked before each block."""
    if job.rows_per_chunk is None:
        MergeCancelled.check(cancel, STOPPED)
        yield [checkpoint.read(name) for checkpoint, name in reads]
        return
    with RowBlocks(reads, job.row_slices(), release=release) as blocks:
        for _, stored in blocks:
            MergeCancelled.check(cancel, STOPPED)
            yield stored


def _leading(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The first rows of a reused buffer, as many as `like` has (the last block of rows may be shorter)."""
    return buffer[:len(like)] if like.dim() else buffer


def prepared(block: torch.Tensor, device: torch.device, working: torch.dtype | None) -> torch.Tensor:
    """A block as read, on the compute device and in the recipe's working dtype (`dtype:`, if it sets one)."""
    return block.to(device=device, dtype=working or block.dtype)


def _summable(block: torch.Tensor) -> torch.Tensor:
    """A block as read, float8 widened to float32: torch cannot add float8."""
    return block.to(torch.float32) if block.dtype.itemsize == 1 else block
