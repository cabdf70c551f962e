"""The merge engine: preview → stream → sink. For each planned tensor: read the inputs, run the
method on the chosen device, hand the result to a sink, report progress.

    for event in merge_events(recipe, "out/my-merge", device="cpu"):
        print(event.step, "/", event.total, event.tensor)
    merge(recipe, "out/my-merge", on_progress=print, cancel=threading.Event())  # same, as a call
    for event in merge_into(recipe, dict(model.named_parameters())): ...     # into a loaded model instead

There is one loop (`stream`); the sink decides where tensors go (core.merge.sinks): a new model
folder (ShardSink: merge_events) or a loaded model's weights (WeightsSink: merge_into, the
sweep's in-memory mode). Memory stays bounded by the largest tensor times the number of inputs
(elementwise methods: by a fixed chunk), never by model size: one tensor (or block of rows) is
merged at a time, and shards are streamed to disk. Whole tensors are read from the memory map, blocks
of rows with preadv one block ahead on a thread (core.merge.blocks); a block merge computes on one core
fewer than the machine has (core.devices.block_threads), and inputs larger than the RAM available
are released from the page cache once merged (Checkpoint.release). `cancel` is
checked between tensors and chunks; a cancelled or failed merge leaves no output folder behind.
Before anything is created, the merge's Preview (core.merge.preview: the plan, free disk and
memory) must fit. Every float input block is checked for NaN/Inf, and so is every merged block
after its cast to the output dtype (finite float16 inputs can sum past 65504): each finding is
reported on the Progress event of its tensor (`nonfinite`), or, with refuse_nonfinite=True,
stops the merge with a MergeDeskError. float8 inputs are upcast to float32 for the math (torch
has no float8 arithmetic) and written back in float8 unless the recipe sets another dtype.
"""
from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Callable, Iterator

import psutil
import torch

from core.devices import block_threads, devices_for
from core.errors import MergeCancelled, RecipeError
from core.io.checkpoint import Checkpoint
from core.merge.aligned import align_inputs
from core.merge.blocks import STOPPED, input_blocks, prepared, sum_is_precise_enough, weighted_sum
from core.merge.nonfinite import NonFinite
from core.merge.plan import DEFAULT_SHARD_BYTES, MergePlan, TensorJob
from core.merge.preview import Preview, open_inputs, plan_for, preview_inputs
from core.merge.recipe import DTYPES, MergeRecipe
from core.merge.sinks import ShardSink, WeightsSink
from core.merge.slices import job_inputs, paired
from core.merge.vocabulary import Vocabulary
from core.merge.warnings import copy_differs
from core.progress import eta


@dataclass(frozen=True)
class Progress:
    """One step of a merge, reported after each output tensor is written."""

    step: int  # tensors done
    total: int  # tensors planned
    tensor: str  # the tensor just written
    bytes_done: int  # output bytes written so far
    bytes_total: int
    elapsed: float  # seconds since the merge started
    device: str  # where that tensor was computed
    nonfinite: tuple[str, ...] = ()  # NaN/Inf in this tensor's inputs (one message per input) or in its output
    notes: tuple[str, ...] = ()  # other lines for the log: a copied non-float tensor that differs between inputs

    @property
    def eta(self) -> float:
        """Seconds left, assuming the remaining bytes go as fast as the ones so far (inf before any)."""
        return eta(self.bytes_done, self.bytes_total, self.elapsed)


MAX_SEED = 2**63 - 1  # torch.Generator's range is 64 bits; mergekit's numpy seeding allows far less


def check_seed(seed: int | float) -> int:
    """The seed as an int in [0, 2**63), or a RecipeError (the app's number box hands over floats)."""
    whole = seed.is_integer() if isinstance(seed, float) else isinstance(seed, Integral) and not isinstance(seed, bool)
    if not whole or not 0 <= seed <= MAX_SEED:
        big = isinstance(seed, Integral) and int(seed).bit_length() > 64  # repr of a 5000-digit int would raise
        shown = f"a {int(seed).bit_length()}-bit number" if big else repr(seed)
        raise RecipeError(f"seed {shown} cannot be used: give a whole number from 0 to {MAX_SEED} (2**63 - 1)")
    return int(seed)


def merge(recipe: MergeRecipe, out_dir: str | Path, *, device: str = "cpu", overwrite: bool = False,
          seed: int = 0, shard_bytes: int = DEFAULT_SHARD_BYTES, refuse_nonfinite: bool = False,
          on_progress: Callable[[Progress], None] | None = None,
          cancel: threading.Event | None = None, token: str | bool | None = None) -> Path:
    """Merge into `out_dir` and return its path; see merge_events for the arguments."""
    for event in merge_events(recipe, out_dir, device=device, overwrite=overwrite, seed=seed,
                              shard_bytes=shard_bytes, refuse_nonfinite=refuse_nonfinite, cancel=cancel,
                              token=token):
        if on_progress:
            on_progress(event)
    return Path(out_dir).expanduser().resolve()


def merge_events(recipe: MergeRecipe, out_dir: str | Path, *, device: str = "cpu", overwrite: bool = False,
                 seed: int = 0, shard_bytes: int = DEFAULT_SHARD_BYTES, refuse_nonfinite: bool = False,
                 cancel: threading.Event | None = None, token: str | bool | None = None,
                 admit: Callable[[Preview], None] | None = None) -> Iterator[Progress]:
    """Merge, yielding a Progress after each tensor. Closing the iterator early cancels.

    Args:
        recipe: a validated MergeRecipe.
        out_dir: the model folder to create (written as OUT.partial, renamed at the end).
        device: "cpu", "auto" (GPUs, tensors spread over all of them), "cuda", "cuda:N", "mps".
        overwrite: replace an existing out_dir (only once the new model is complete).
        seed: seeds the random methods (DARE, DELLA); each tensor gets its own stream. A whole
            number in [0, 2**63) (a whole float is accepted); anything else is a RecipeError.
        shard_bytes: maximum size of one output safetensors file.
        refuse_nonfinite: stop with a CheckpointError at the first input holding NaN or Inf, or a
            RecipeError at the first merged block that overflows the output dtype (default: merge
            anyway and report it in Progress.nonfinite).
        cancel: set it to stop between tensors; raises MergeCancelled, nothing is left behind.
        token: Hugging Face access for Hub ids (see checkpoint.resolve_reference); None = this
            machine's own login, a hosted visitor's token or False = only theirs.
        admit: called with the merge's Preview before anything is created; it may raise to refuse
            the merge (the hosted size cap), so the inputs are opened and planned once.
    """
    seed = check_seed(seed)
    devices = devices_for(device)
    with open_inputs(recipe, token=token) as inputs:
        found = preview_inputs(recipe, inputs, out_dir, devices, shard_bytes=shard_bytes, token=token)
        if admit is not None:
            admit(found)
        found.check()
        with ShardSink(recipe, out_dir, inputs, found.plan, overwrite=overwrite) as sink:
            yield from stream(recipe, inputs, found.plan, sink, devices=devices, seed=seed,
                              refuse_nonfinite=refuse_nonfinite, cancel=cancel)
            sink.finish()


def merge_into(recipe: MergeRecipe, weights: dict[str, torch.Tensor], *, seed: int = 0,
               cancel: threading.Event | None = None, token: str | bool | None = None) -> Iterator[Progress]:
    """Merge into a loaded model's weights (name → parameter or buffer), yielding a Progress after each tensor.

    Every planned tensor must have a same-shaped place in `weights` (core.cocktail.sweep checks it
    first); the math runs where the weights are and nothing is written to disk (the sweep's
    in-memory mode). The other arguments are merge_events'.
    """
    with open_inputs(recipe, token=token) as inputs:
        plan = plan_for(recipe, inputs, token=token)
        sink = WeightsSink(weights)
        devices = [weights[plan.jobs[0].name].device] if plan.jobs else [torch.device("cpu")]
        yield from stream(recipe, inputs, plan, sink, devices=devices, seed=check_seed(seed), cancel=cancel)
        sink.finish()


def stream(recipe: MergeRecipe, inputs: dict[str, Checkpoint], plan: MergePlan, sink: ShardSink | WeightsSink, *,
           devices: list[torch.device], seed: int = 0, refuse_nonfinite: bool = False,
           cancel: threading.Event | None = None) -> Iterator[Progress]:
    """The one merge loop: each planned tensor computed (tensors spread over `devices` in turn), checked for
    NaN/Inf and handed to `sink` chunk by chunk (a chunk may be a reused buffer: the sink must write or copy it
    before the next); a Progress after each. Cancel is checked between tensors
    and chunks, and once more after the last (a Stop during the last tensor still means no model)."""
    started = time.perf_counter()
    done = 0
    out_of_core = plan.bytes_read > psutil.virtual_memory().available  # see Checkpoint.release
    for step, job in enumerate(plan.jobs, 1):
        MergeCancelled.check(cancel, STOPPED)
        target = devices[(step - 1) % len(devices)]
        findings = NonFinite(refuse_nonfinite)
        with block_threads(target, job.rows_per_chunk is not None):  # one core left for the block reader
            for chunk in tensor_chunks(recipe, job, inputs, target, seed, cancel, findings,
                                       vocabulary=plan.vocabulary, release=out_of_core):
                if job.merged:
                    findings.check_output(job.name, chunk)
                sink.write(job.name, chunk)
        if out_of_core:
            for checkpoint, name in job_reads(recipe, job, inputs):
                checkpoint.release(name)
        done += job.nbytes
        # a sliced job's copied tensor is one source layer's, renamed: nothing to compare it with under its name
        notes = () if job.merged or job.rows_from else copy_differs(job.name, [inputs[ref] for ref in recipe.inputs()])
        yield Progress(step, len(plan.jobs), job.name, done, plan.bytes_written,
                       time.perf_counter() - started, str(target), findings.messages(), notes)
    MergeCancelled.check(cancel, STOPPED)


def tensor_chunks(recipe: MergeRecipe, job: TensorJob, checkpoints: dict[str, Checkpoint],
                  device: torch.device, seed: int, cancel: threading.Event | None,
                  findings: NonFinite, *, vocabulary: Vocabulary | None = None,
                  release: bool = False) -> Iterator[torch.Tensor]:
    """The output tensor of one job, as one tensor or as consecutive blocks of rows; NaN/Inf in the inputs
    go to `findings`. With a vocabulary, token-indexed inputs are read realigned (core.merge.aligned).
    release: a one-pass merge releases each input block once merged (Checkpoint.release)."""
    rows, names, base, base_name = job_inputs(recipe, job, checkpoints)
    rows, base = align_inputs(vocabulary, recipe, job, rows, names, base, base_name)
    if not job.merged:
        yield rows[0].read(names[0])
        return
    reads = paired(rows, names, base, base_name)
    working = DTYPES.get(recipe.dtype or "")
    generator = None
    if recipe.method.random:
        generator = torch.Generator(device=device)
        generator.manual_seed((seed * 1_000_003 + zlib.crc32(job.name.encode())) % 2**64)

    if recipe.method.coefficients is not None:
        models, base_coefficient = recipe.method.coefficients(job.params)
        coefficients = models + ([base_coefficient] if base is not None else [])
        if sum_is_precise_enough(coefficients, job.out_dtype):
            yield from weighted_sum(job, reads, coefficients, working, device, cancel, findings, release)
            return

    passes = 0  # a method may read the tensor more than once (TIES: twice for top-k, then to merge)

    def read() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Every input's next block of rows as float32 on the device: (n, *block) models, (*block) base.

        Inputs are checked for NaN/Inf on the first pass only, so each value is counted once."""
        nonlocal passes
        passes += 1
        for stored in input_blocks(job, reads, cancel):
            stack = torch.empty((len(rows), *stored[0].shape), dtype=torch.float32, device=device)  # (n, *block)
            for i in range(len(rows)):
                stack[i].copy_(prepared(stored[i], device, working))
            if passes == 1:
                findings.check(job.name, stack, rows)
            base_block = None
            if base is not None:
                base_block = prepared(stored[-1], device, working).to(torch.float32, copy=True)
                if passes == 1:
                    findings.check(job.name, base_block.unsqueeze(0), [base])
            yield stack, base_block

    for merged in recipe.method.merge_blocks(read, job.shape, generator=generator, **job.params):
        yield merged.to(job.out_dtype)


def job_reads(recipe: MergeRecipe, job: TensorJob, checkpoints: dict[str, Checkpoint]) -> list[tuple[Checkpoint, str]]:
    """(checkpoint, tensor read there) for each input of `job`: the models, then the base if the recipe uses one."""
    return paired(*job_inputs(recipe, job, checkpoints))

