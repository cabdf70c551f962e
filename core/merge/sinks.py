"""Where the engine's merged tensors go: a model folder on disk, or a loaded model's own weights.

The engine's one loop (core.merge.engine.stream) hands every output tensor, whole or as
consecutive blocks of rows, to `sink.write(name, chunk)` in plan order; what happens next is the
sink's business:

    with ShardSink(recipe, "out/my-merge", inputs, plan) as sink:    # safetensors shards + side files
        for event in stream(recipe, inputs, plan, sink, devices=[cpu]): ...
        sink.finish()                                                # the folder appears only now
    sink = WeightsSink(dict(model.named_parameters()))               # copied into the model, nothing written

A sink does no tensor math and never reads the inputs.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch

from core.io.card import model_card
from core.io.checkpoint import Checkpoint
from core.io.lora import AdaptedCheckpoint
from core.io.staging import staged_output
from core.io.writer import ShardWriter, copy_side_files
from core.merge.plan import TIED, MergePlan
from core.merge.recipe import MergeRecipe, to_yaml
from core.merge.slices import write_layer_count
from core.merge.tokenizer_out import check_chat_template_target, write_tokenizer


class ShardSink:
    """A new model folder: shards streamed by ShardWriter into OUT.partial, then config, tokenizer, card and recipe.

    Use it in `with`: leaving the block without finish() (an error, a cancel) removes the partial folder.
    """

    def __init__(self, recipe: MergeRecipe, out_dir: str | Path, inputs: dict[str, Checkpoint], plan: MergePlan, *,
                 overwrite: bool = False):
        self.recipe, self.out_dir, self.plan, self.overwrite = recipe, Path(out_dir), plan, overwrite
        self.inputs = inputs
        self.first = inputs[recipe.inputs()[0]]
        check_chat_template_target(recipe, inputs)
        self.tokenizer_from = plan.vocabulary.copy_from if plan.vocabulary is not None else None
        adapters = tuple(c.adapter.folder for c in inputs.values() if isinstance(c, AdaptedCheckpoint))
        tokenizer = (self.tokenizer_from,) if self.tokenizer_from else ()
        self.read = tuple(c.folder for c in inputs.values()) + adapters + tokenizer
        self._exit = ExitStack()

    def __enter__(self) -> ShardSink:
        with ExitStack() as stack:
            self.staging = stack.enter_context(staged_output(self.out_dir, overwrite=self.overwrite, inputs=self.read))
            self.writer = ShardWriter(self.staging, self.plan)
            stack.callback(self.writer.abort)
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        return self._exit.__exit__(*exc)

    def write(self, name: str, chunk: torch.Tensor) -> None:
        self.writer.write(name, chunk)

    def finish(self) -> None:
        """Close the last shard and add the side files; the folder is published when the block ends."""
        self.writer.finish()
        untie = any(job.sources for job in self.plan.jobs if job.name in TIED)  # tied and untied inputs mixed
        copy_side_files(self.first.folder, self.staging, tokenizer_source=self.tokenizer_from,
                        dtype=_main_dtype(self.plan), untie=untie)
        write_tokenizer(self.staging, self.recipe, self.plan.vocabulary, self.inputs)
        if self.recipe.slices and (self.staging / "config.json").exists():
            write_layer_count(self.staging / "config.json", self.recipe, self.inputs)
        (self.staging / "mergekit_config.yml").write_text(to_yaml(self.recipe), encoding="utf-8")
        is_st = (self.first.folder / "modules.json").exists()
        card = model_card(self.recipe, name=self.out_dir.name, sentence_transformers=is_st, inputs=self.inputs)
        (self.staging / "README.md").write_text(card, encoding="utf-8")


class WeightsSink:
    """A loaded model's tensors (name → parameter or buffer, tied weights under each name): each chunk is copied
    into its place, block after block of rows. Every planned tensor needs a same-shaped place (see
    core.cocktail.sweep_merges.weights_line_up); the model is changed in place, nothing is written to disk."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights = weights
        self._rows_done: dict[str, int] = {}  # tensor → rows copied so far

    def write(self, name: str, chunk: torch.Tensor) -> None:
        target, start = self.weights[name], self._rows_done.get(name, 0)
        rows = chunk.shape[0] if chunk.dim() and target.dim() else None
        with torch.no_grad():  # parameters require grad; copying into them is not a step to differentiate
            (target[start:start + rows] if rows is not None else target).copy_(chunk)
        self._rows_done[name] = start + (rows or 0)

    def finish(self) -> None:
        self._rows_done.clear()  # ready for the next merge into the same model


def _main_dtype(plan: MergePlan) -> torch.dtype:
    """The dtype most output bytes are in: what config.json should announce."""
    totals: dict[torch.dtype, int] = {}
    for job in plan.jobs:
        if job.merged:
            totals[job.out_dtype] = totals.get(job.out_dtype, 0) + job.nbytes
    return max(totals, key=totals.get) if totals else torch.float32
