"""Multi-stage recipes, as mergekit-multi reads them: `---`-separated recipes, later ones merging earlier outputs.

    stages = parse_stages(text, "out/final")               # [Stage], in the order they run
    for stage, found in preview_stages(stages, devices): ...  # every stage's plan, before anything runs
    for event in merge_stages(stages, device="cpu"): ...    # a StageProgress after each tensor

Each document is a recipe; a document with `name: X` is written to INTERMEDIATE/X (INTERMEDIATE
defaults to OUT's sibling OUT-stages, mergekit-multi's --intermediate-dir), and the one document
without a name is the final merge, written to OUT. Where every document is named, the last one
is the final (mergekit-multi then writes only intermediates). A stage reads an earlier one by
writing its name where a model goes (model, base_model, tokenizer_source, the tokenizer: block's sources; `X+lora` too); stages
run in dependency order (file order among equals), a cycle or a stage reading the final is refused.

As mergekit-multi (whose --lazy is the default), intermediates are kept after the run, and an
intermediate folder that already exists is reused, not merged again, unless overwrite is set
(then every stage is merged again and replaced only once complete). Each stage is one staged
merge (core.io.staging): a failed or stopped stage leaves no folder, the stages before it stay.
A stage whose inputs do not exist yet is planned from the plan of the stage that makes them
(names, shapes, dtypes), so every stage is checked before the first one starts.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from core.devices import devices_for
from core.errors import MergeCancelled, RecipeError
from core.io.header import TensorInfo
from core.io.lora import split_reference
from core.io.safe_yaml import load_yaml_documents
from core.merge.engine import STOPPED, Progress, merge_events
from core.merge.plan import DEFAULT_SHARD_BYTES, MergePlan, plan_merge
from core.merge.preflight import measure_resources, shortage
from core.merge.preview import Preview, open_checkpoint, preview
from core.merge.recipe import MergeRecipe, recipe_from_dict
from core.merge.tokenizer_spec import WORDS

NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}$")
# where a stage name stands for its output (source: the tokenizer: block's, and its tokens' sources)
REFERENCE_KEYS = ("model", "models", "base_model", "tokenizer_source", "source")
KEEP = WORDS  # tokenizer_source / source words that are no model


@dataclass(frozen=True)
class Stage:
    """One document of a multi-stage recipe, its stage names replaced by their output folders."""

    name: str | None  # None: the unnamed final document
    recipe: MergeRecipe
    out: Path
    reads: tuple[str, ...]  # names of the stages whose outputs it merges
    final: bool

    @property
    def label(self) -> str:
        return self.name or "final"

    def reused(self, overwrite: bool) -> bool:
        """An intermediate already there is kept, as mergekit-multi's --lazy does (unless overwrite)."""
        return not self.final and not overwrite and self.out.is_dir()


@dataclass(frozen=True)
class StageProgress:
    """A step of one stage: `progress` after each tensor, or None once for a stage reused as it is."""

    index: int  # 1-based
    count: int
    stage: Stage
    progress: Progress | None


def is_multi_stage(text: str, *, source: str = "the recipe") -> bool:
    """Whether `text` is a multi-stage recipe: more than one document, or a document with a name."""
    documents = load_yaml_documents(text, source=source)
    return len(documents) > 1 or any(isinstance(d, dict) and "name" in d for d in documents)


def parse_stages(text: str, out_dir: str | Path, *, intermediate_dir: str | Path | None = None,
                 source: str = "the recipe", check_ref: Callable[[str], str] | None = None) -> list[Stage]:
    """The stages of a multi-stage recipe, in run order; RecipeError (one line) for what cannot run.

    check_ref: applied to every model reference that is no stage (the hosted path policy).
    """
    out = Path(out_dir).expanduser()
    intermediate = Path(intermediate_dir).expanduser() if intermediate_dir else out.with_name(out.name + "-stages")
    documents = load_yaml_documents(text, source=source)
    names = [_stage_name(doc, index) for index, doc in enumerate(documents, 1)]
    if names.count(None) > 1:
        raise RecipeError(f"{source} has {names.count(None)} documents without a name: "
                          "only the final one may go unnamed")
    for name in names:
        if name is not None and names.count(name) > 1:
            raise RecipeError(f"{source} names two stages {name!r}: each stage needs its own name")
    final = names.index(None) if None in names else len(names) - 1
    outputs = {name: str(intermediate / name) for i, name in enumerate(names) if name is not None and i != final}
    stages = []
    for index, (name, doc) in enumerate(zip(names, documents)):
        reads: list[str] = []
        body = {key: value for key, value in doc.items() if key != "name"}
        patched = _patch(body, outputs, reads, check_ref or (lambda ref: ref))
        if names[final] is not None and names[final] in _refs(body):
            raise RecipeError(f"stage {name or index + 1!r} reads the final stage {names[final]!r}: "
                              "the final merge must come last")
        try:
            recipe = recipe_from_dict(patched)
        except RecipeError as error:
            raise RecipeError(f"stage {name or 'final'}: {error}") from None
        stages.append(Stage(name, recipe, out if index == final else intermediate / name, tuple(reads), index == final))
    return _in_run_order(stages)


def preview_stages(stages: list[Stage], devices: list[torch.device], *, token: str | bool | None = None,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> list[tuple[Stage, Preview]]:
    """Every stage's Preview; inputs still to be made are planned from their stage's plan."""
    planned: dict[str, tuple[MergePlan, int | None]] = {}  # output folder → its plan and layer count
    found = []
    for stage in stages:
        if stage.reused(overwrite):
            continue
        pending = {ref: planned[split_reference(ref)[0]] for ref in stage.recipe.inputs()
                   if split_reference(ref)[0] in planned}
        if pending:
            result = _preview_pending(stage, pending, devices, token, shard_bytes)
        else:
            result = preview(stage.recipe, stage.out, devices, token=token, shard_bytes=shard_bytes)
        planned[str(stage.out)] = (result.plan, _layers(stage, pending, token))
        found.append((stage, result))
    return found


def merge_stages(stages: list[Stage], *, device: str = "cpu", overwrite: bool = False, seed: int = 0,
                 shard_bytes: int = DEFAULT_SHARD_BYTES, refuse_nonfinite: bool = False,
                 cancel: threading.Event | None = None, token: str | bool | None = None,
                 admit: Callable[[Preview], None] | None = None) -> Iterator[StageProgress]:
    """Merge every stage in order (arguments as core.merge.engine.merge_events, which runs each one).

    Every stage is planned and measured first, so a recipe error in the last stage stops the run before the first.
    """
    for _, found in preview_stages(stages, devices_for(device), token=token, shard_bytes=shard_bytes,
                                   overwrite=overwrite):
        found.check()
    for index, stage in enumerate(stages, 1):
        MergeCancelled.check(cancel, STOPPED)
        if stage.reused(overwrite):
            yield StageProgress(index, len(stages), stage, None)
            continue
        for event in merge_events(stage.recipe, stage.out, device=device, overwrite=overwrite, seed=seed,
                                  shard_bytes=shard_bytes, refuse_nonfinite=refuse_nonfinite, cancel=cancel,
                                  token=token, admit=admit):
            yield StageProgress(index, len(stages), stage, event)


def _stage_name(doc: object, index: int) -> str | None:
    if not isinstance(doc, dict):
        raise RecipeError(f"document {index} of the recipe is no mapping: each document is one recipe")
    name = doc.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or not NAME.match(name) or re.search(r"\.(partial|old-\d+)$", name):
        raise RecipeError(f"stage name {name!r} (document {index}) is not allowed: use letters, digits, "
                          "'.', '_' and '-' (it names a folder)")
    return name


def _patch(value: object, outputs: dict[str, str], reads: list[str], check_ref: Callable[[str], str],
           key: str | None = None) -> object:
    """`value` with each stage name where a model goes replaced by its output folder, other references checked."""
    if isinstance(value, dict):
        return {k: _patch(v, outputs, reads, check_ref, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_patch(v, outputs, reads, check_ref, key) for v in value]
    if key not in REFERENCE_KEYS or not isinstance(value, str) or (key in ("tokenizer_source", "source") and value in KEEP):
        return value
    model, adapter = split_reference(value.strip())
    if model in outputs:
        reads.append(model)
        return outputs[model] + (f"+{check_ref(adapter)}" if adapter else "")
    return check_ref(value.strip())


def _refs(value: object, key: str | None = None) -> set[str]:
    """The model parts of every reference in a raw document."""
    if isinstance(value, dict):
        return set().union(*(_refs(v, k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(_refs(v, key) for v in value))
    return {split_reference(value.strip())[0]} if key in REFERENCE_KEYS and isinstance(value, str) else set()


def _in_run_order(stages: list[Stage]) -> list[Stage]:
    """Dependency order, file order among stages that are free to run; a cycle is refused."""
    by_name = {s.name: s for s in stages if s.name}
    done: list[Stage] = []
    waiting = list(stages)
    while waiting:
        ready = next((s for s in waiting if all(by_name[r] in done for r in s.reads)), None)
        if ready is None:
            raise RecipeError("the stages read each other in a cycle: " + ", ".join(s.label for s in waiting))
        done.append(ready)
        waiting.remove(ready)
    return done


def _listing(plan: MergePlan, out: Path) -> dict[str, TensorInfo]:
    """The output a plan will write, as the header listing plan_merge reads (files and order kept)."""
    listing = {}
    for file, names in plan.shards:
        for offset, name in enumerate(names):
            job = next(j for j in plan.jobs if j.name == name)
            listing[name] = TensorInfo(name, job.shape, job.out_dtype, out / file, offset, job.nbytes)
    return listing


def _preview_pending(stage: Stage, pending: dict, devices: list[torch.device], token: str | bool | None,
                     shard_bytes: int) -> Preview:
    """A stage's Preview where some inputs are earlier stages' plans (their adapters apply when run, unplanned)."""
    listings, layers, opened = {}, {}, []
    try:
        for ref in stage.recipe.inputs():
            if ref in pending:
                plan, count = pending[ref]
                listings[ref], layers[ref] = _listing(plan, Path(split_reference(ref)[0])), count
            else:
                checkpoint = open_checkpoint(ref, token=token)
                opened.append(checkpoint)
                listings[ref], layers[ref] = checkpoint.tensors, checkpoint.num_layers()
        first = stage.recipe.inputs()[0]
        # a vocabulary to realign to is built when the stage runs (its inputs' tokenizers exist only then)
        plan = plan_merge(stage.recipe, listings, num_layers=layers[first], shard_bytes=shard_bytes,
                          realign=stage.recipe.vocabulary_source is not None)
    finally:
        for checkpoint in opened:
            checkpoint.close()
    resources = measure_resources(plan, stage.out, devices)
    return Preview(plan, resources, shortage(resources))


def _layers(stage: Stage, pending: dict, token: str | bool | None) -> int | None:
    """The layer count a stage's output will have: its first input's."""
    first = stage.recipe.inputs()[0]
    if first in pending:
        return pending[first][1]
    with open_checkpoint(first, token=token) as checkpoint:
        return checkpoint.num_layers()
