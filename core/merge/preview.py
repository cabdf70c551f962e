"""Preview a merge: open its inputs (headers only), plan it, and measure whether it fits — one answer for all.

    found = preview(recipe, "out/my-merge", devices_for("cpu"))
    found.plan.bytes_written, found.resources.memory_free, found.problem   # problem: None when it fits

The CLI's `plan`, the app's Check, the hosted size cap and the sweep's scratch merge all read
this, and the engine makes the same Preview before it writes (core.merge.engine), so what Check
says and what Merge does cannot disagree: one plan (core.merge.plan) and one measurement with
one rule (core.merge.preflight). `open_inputs` hands out the opened checkpoints as a context
manager, so every memory map is closed when the block ends, on error too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core.errors import CheckpointError, ResourceError
from core.io.checkpoint import Checkpoint
from core.io.lora import AdaptedCheckpoint, open_adapted, split_reference
from core.merge.aligned import align_plan
from core.merge.plan import DEFAULT_SHARD_BYTES, MergePlan, plan_merge
from core.merge.preflight import Resources, measure_resources, shortage
from core.merge.recipe import MergeRecipe
from core.merge.slices import plan_slices
from core.merge.vocabulary import build_vocabulary


@dataclass(frozen=True)
class Preview:
    """What a merge will do and whether this machine can take it, measured before anything is written."""

    plan: MergePlan
    resources: Resources  # disk and memory needed and free, as core.merge.preflight measures them
    problem: str | None  # why the merge would be refused (disk or memory short); None when it fits

    @property
    def fits(self) -> bool:
        return self.problem is None

    def check(self) -> None:
        """Raise the ResourceError the merge would stop with, if it would."""
        if self.problem is not None:
            raise ResourceError(self.problem)


class Inputs(dict[str, Checkpoint]):
    """A recipe's opened checkpoints, reference → Checkpoint; `with` closes them all at the end of the block."""

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for checkpoint in self.values():
            checkpoint.close()


def preview(recipe: MergeRecipe, out: str | Path, devices: list[torch.device], *, token: str | bool | None = None,
            shard_bytes: int = DEFAULT_SHARD_BYTES) -> Preview:
    """Open the recipe's inputs, plan the merge into `out` on `devices`, measure, close the inputs.

    Args:
        recipe: a validated MergeRecipe.
        out: the output folder the merge would create (free disk is measured at its nearest existing folder).
        devices: from core.devices.devices_for; memory is measured on them.
        token: Hugging Face access for Hub ids (see checkpoint.resolve_reference).
        shard_bytes: maximum size of one output safetensors file.
    Raises a MergeDeskError for inputs that cannot be merged (not found, other architectures, bad names);
    a merge that would not fit is not an error here: see Preview.problem.
    """
    with open_inputs(recipe, token=token) as inputs:
        return preview_inputs(recipe, inputs, out, devices, shard_bytes=shard_bytes, token=token)


def plan_inputs(recipe: MergeRecipe, *, token: str | bool | None = None,
                shard_bytes: int = DEFAULT_SHARD_BYTES) -> MergePlan:
    """The plan alone, inputs closed after, for a caller with no output folder to measure (the sweep's
    check that a loaded model has a place for every merged tensor)."""
    with open_inputs(recipe, token=token) as inputs:
        return plan_for(recipe, inputs, shard_bytes=shard_bytes, token=token)


def preview_inputs(recipe: MergeRecipe, inputs: Inputs, out: str | Path, devices: list[torch.device], *,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, token: str | bool | None = None) -> Preview:
    """preview, for inputs already opened (the engine's, which it goes on to read)."""
    plan = plan_for(recipe, inputs, shard_bytes=shard_bytes, token=token)
    found = measure_resources(plan, out, devices)
    return Preview(plan, found, shortage(found))


def open_inputs(recipe: MergeRecipe, *, token: str | bool | None = None) -> Inputs:
    """Every input of the recipe, opened lazily (headers only), base first; token: for Hub ids,
    as in checkpoint.resolve_reference (a hosted visitor's own, or False). Use it in `with`."""
    opened = Inputs()
    try:
        for ref in recipe.inputs():
            opened[ref] = open_checkpoint(ref, token=token)
    except BaseException:
        opened.close()
        raise
    return opened


def open_checkpoint(ref: str, *, token: str | bool | None = None) -> Checkpoint:
    """Checkpoint.open, with the file system's own refusals (name too long, a symlink loop) as one line."""
    if os.path.islink(ref) and not os.path.exists(ref):  # else a looping link reads as a Hub id to download
        raise CheckpointError(f"model {ref!r} is a symbolic link that loops or leads nowhere: point it at a model folder")
    model, adapter = split_reference(ref)
    try:
        return open_adapted(model, adapter, token=token) if adapter else Checkpoint.open(ref, token=token)
    except OSError as error:
        raise CheckpointError(f"model {ref!r} cannot be opened: {error.strerror or error}; "
                              "check the path (each folder name at most 255 bytes)") from None


def plan_for(recipe: MergeRecipe, checkpoints: dict[str, Checkpoint], *,
             shard_bytes: int = DEFAULT_SHARD_BYTES, token: str | bool | None = None) -> MergePlan:
    """The MergePlan for opened inputs (layer count from the base's config when it has one; sliced recipes:
    core.merge.slices); a recipe that realigns vocabularies has them built here (core.merge.vocabulary), so
    its token-indexed jobs take the output vocabulary's rows (token: for a tokenizer_source Hub id)."""
    first = checkpoints[recipe.inputs()[0]]
    listings = {ref: ckpt.tensors for ref, ckpt in checkpoints.items()}
    vocabulary = build_vocabulary(recipe, checkpoints, token=token)
    realign = vocabulary is not None
    if recipe.slices:
        plan = plan_slices(recipe, listings, shard_bytes=shard_bytes, realign=realign)
    else:
        plan = plan_merge(recipe, listings, num_layers=first.num_layers(), shard_bytes=shard_bytes, realign=realign)
    plan = replace(align_plan(plan, vocabulary, recipe, shard_bytes=shard_bytes), vocabulary=vocabulary)
    adapters = sum(c.adapter_bytes for c in checkpoints.values() if isinstance(c, AdaptedCheckpoint))
    return replace(plan, bytes_read=plan.bytes_read + adapters)
