"""The α-sweep's two ways to get each merged model, which give the same numbers (tests/test_sweep.py checks it).

    merges = merged_in_memory if fits_in_memory(model_a, device, dtype) else merged_on_disk
    for reranker, mode in merges([(recipe, seed), ...], Scoring(device), cancel, scratch=folder):
        score(reranker)   # before asking for the next one: the in-memory model is the same object each time

"memory" loads the first input once and has the engine copy each merge into its weights
(core.merge.engine.merge_into); "disk" streams each merge into a temporary folder, loads it, deletes
it. Kept apart from core.cocktail.sweep, which decides what to merge and measures it; this file only
makes the models.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import torch

from core.devices import parse_device
from core.errors import MergeCancelled
from core.io.checkpoint import Checkpoint
from core.merge.engine import merge, merge_into
from core.merge.plan import MergePlan
from core.merge.preview import plan_inputs
from core.merge.recipe import MergeRecipe
from core.rerank.model import Reranker, detect_kind, load_reranker, pick_dtype


@dataclass(frozen=True)
class Scoring:
    """How each merged model is loaded and scored (core.rerank.model's options)."""

    device: str = "cpu"  # "cpu" | "auto" | "cuda" | "cuda:N" | "mps": where merges are made and scored
    dtype: str | None = None  # None: float32 on CPU, float16 on GPUs (core.rerank.model.pick_dtype)
    batch_size: int = 32  # pairs per forward pass
    max_length: int | None = None  # tokens per pair; None: 512, bi-encoders their own
    token: str | bool | None = None  # Hugging Face access for Hub ids (checkpoint.resolve_reference)


def fits_in_memory(model: str, device: str, dtype: str | None, *, token: str | bool | None = None) -> bool:
    """Whether model A, loaded, would take at most half of the device's free memory."""
    target = parse_device(device)
    with Checkpoint.open(model, token=token) as checkpoint:
        folder = checkpoint.folder
        elements = sum(info.numel for info in checkpoint.tensors.values())
    loaded = elements * torch.empty((), dtype=pick_dtype(dtype, target, detect_kind(folder))).element_size()
    free = torch.cuda.mem_get_info(target)[0] if target.type == "cuda" else psutil.virtual_memory().available
    return loaded <= free / 2


def merged_in_memory(recipes: list[tuple[MergeRecipe, int]], scoring: Scoring, cancel: threading.Event | None, *,
                     scratch: Path | None = None) -> Iterator[tuple[Reranker, str]]:
    """(the merged model, "memory") per (recipe, seed): the first input loaded once, each merge copied into its
    weights.

    The model yielded is the same object each time: score it before asking for the next one.
    Falls back to merged_on_disk when the loaded model's tensor names or shapes differ from
    the checkpoint's.
    """
    reranker = load_reranker(recipes[0][0].inputs()[0], device=scoring.device, dtype=scoring.dtype,
                             max_length=scoring.max_length, cached=False, token=scoring.token)
    model = reranker.model  # tied weights appear under each of their names
    weights = {**dict(model.named_parameters(remove_duplicate=False)),
               **dict(model.named_buffers(remove_duplicate=False))}
    if not weights_line_up(plan_inputs(recipes[0][0], token=scoring.token), weights):
        del reranker, model, weights  # e.g. renamed on load: let the engine write real folders
        yield from merged_on_disk(recipes, scoring, cancel, scratch=scratch)
        return
    for recipe, seed in recipes:
        MergeCancelled.check(cancel, "sweep stopped")
        for _ in merge_into(recipe, weights, seed=seed, cancel=cancel, token=scoring.token):
            pass
        yield reranker, "memory"


def weights_line_up(plan: MergePlan, weights: dict[str, torch.Tensor]) -> bool:
    """Every planned tensor has a same-shaped, materialized place in the loaded model."""
    for job in plan.jobs:
        target = weights.get(job.name)
        if target is None or tuple(target.shape) != tuple(job.shape) or target.device.type == "meta":
            return False
    return True


def merged_on_disk(recipes: list[tuple[MergeRecipe, int]], scoring: Scoring, cancel: threading.Event | None, *,
                   scratch: Path | None = None) -> Iterator[tuple[Reranker, str]]:
    """(the merged model, "disk") per (recipe, seed): merged by the engine into a temporary folder made in `scratch`
    (a dot-folder, which model lists skip), loaded; the folder is deleted once the caller asks for the next
    one (or stops)."""
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".mergedesk-sweep-", dir=scratch))
    try:
        for step, (recipe, seed) in enumerate(recipes):
            MergeCancelled.check(cancel, "sweep stopped")
            folder = merge(recipe, scratch / f"merge-{step}", device=scoring.device, seed=seed, cancel=cancel,
                           token=scoring.token)
            reranker = load_reranker(str(folder), device=scoring.device, dtype=scoring.dtype,
                                     max_length=scoring.max_length, cached=False)
            yield reranker, "disk"
            del reranker
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
