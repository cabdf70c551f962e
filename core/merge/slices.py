"""Plan a `slices:` recipe (frankenmerges): output layers renumbered from their sources' layer ranges.

mergekit 0.1.5's semantics (plan.py), which ported recipes rely on:
- output slice k stacks its layers after slice k−1's: its layer j is layer start+j of every
  source, merged with the recipe's method as a plain recipe of those sources (its own base and
  parameters over the recipe's; MergeRecipe.slice_recipes), and renumbered `...layers.N...`;
- gradients run over each slice: layer j of a slice of n layers sits at t = j/(n−1) (1 for n = 1);
- tensors outside the layer stack come from the first slice's sources (embeddings) or the last
  slice's (the final norm, lm_head), at t = 0;
- the output config's layer count is the slices' sum (`write_layer_count`), and per-layer lists
  (such as layer_types) follow their layers.

The plan is a MergePlan like any other; each job says which tensor of which input it reads
(TensorJob.rows_from / base_from), which the engine reads through `job_inputs`.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import CheckpointError
from core.io.checkpoint import Checkpoint
from core.io.header import TensorInfo
from core.merge.plan import (LAYER, TOKEN_INDEXED, MergePlan, TensorJob, output_dtype, plan_shards, rows_per_chunk,
                             working_bytes)
from core.merge.recipe import MergeRecipe, resolve_params
from core.merge.slice_spec import OutputSlice

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
EMBEDDING_PARTS = ("embed", "wte", "wpe")  # names of tensors before the layer stack (mergekit's pre_weights)


def plan_slices(recipe: MergeRecipe, listings: dict[str, dict[str, TensorInfo]], *, shard_bytes: int,
                realign: bool = False) -> MergePlan:
    """The MergePlan of a sliced recipe over inputs listed as {reference: {tensor name: TensorInfo}}
    (realign: token-indexed tensors may differ in rows, as in plan_merge)."""
    parts = list(zip(recipe.slices, recipe.slice_recipes()))
    template = listings[recipe.slices[0].sources[0].model]
    stack = _layer_stack(recipe.slices[0].sources[0].model, template)
    _check_ranges(recipe, stack, listings)
    outer = [name for name in template if not LAYER.search(name)]
    pre = [name for name in outer if any(part in name for part in EMBEDDING_PARTS)]
    jobs = [_job(parts[0], name, {s.model: name for s in parts[0][0].sources}, 0.0, listings, realign) for name in pre]
    layer = 0
    for out, part in parts:
        for offset in range(out.length):
            t = offset / (out.length - 1) if out.length > 1 else 1.0
            for suffix in _layer_suffixes(out, offset, stack, listings):
                names = {s.model: f"{stack}.{s.layer_range[0] + offset}.{suffix}" for s in out.sources}
                jobs.append(_job((out, part), f"{stack}.{layer}.{suffix}", names, t, listings))
            layer += 1
    jobs += [_job(parts[-1], name, {s.model: name for s in parts[-1][0].sources}, 0.0, listings, realign)
             for name in outer if name not in pre]
    return MergePlan(
        jobs=jobs,
        shards=plan_shards([(job.name, job.nbytes) for job in jobs], shard_bytes),
        inputs=len({ref for job in jobs for ref, _ in _reads(job)}),
        bytes_read=sum(listings[ref][name].nbytes for job in jobs for ref, name in _reads(job)),
        bytes_written=sum(job.nbytes for job in jobs),
        peak_bytes=max((working_bytes(job, len(_reads(job))) for job in jobs), default=0),
    )


def output_layers(recipe: MergeRecipe) -> int:
    """How many layers a sliced recipe's model has."""
    return sum(out.length for out in recipe.slices or ())


def write_layer_count(config_path: Path, recipe: MergeRecipe, inputs: dict[str, Checkpoint]) -> None:
    """Set the output config's layer count, and rebuild per-layer lists from each layer's first source."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    layers = [(inputs[out.sources[0].model].config, out.sources[0].layer_range[0] + offset)
              for out in recipe.slices for offset in range(out.length)]
    first_count = inputs[recipe.slices[0].sources[0].model].num_layers()
    for key, value in list(config.items()):
        if key in LAYER_COUNT_KEYS and isinstance(value, int):
            config[key] = len(layers)
        elif isinstance(value, list) and first_count and len(value) == first_count:
            config[key] = [source[key][index] for source, index in layers]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def paired(rows: list, names: list[str], base: Checkpoint | None, base_name: str) -> list[tuple[Checkpoint, str]]:
    """job_inputs' reads as (checkpoint, tensor name) pairs: the models', then the base's when there is one."""
    return list(zip(rows, names)) + ([(base, base_name)] if base is not None else [])


def job_inputs(recipe: MergeRecipe, job: TensorJob,
               checkpoints: dict[str, Checkpoint]) -> tuple[list[Checkpoint], list[str], Checkpoint | None, str]:
    """What the engine reads for one job: (model rows, the tensor read from each, base or None, the base's tensor).

    A plain job reads its own name from the recipe's rows() and base (a job left unmerged: from the first
    input), or the name job.source gives (a tied model's embedding for the lm_head); a sliced one the
    (model, tensor) pairs its plan gives (its layer, not the output's).
    """
    if job.rows_from:
        rows = [checkpoints[ref] for ref, _ in job.rows_from]
        base_ref, base_name = job.base_from or (None, job.name)
        return rows, [name for _, name in job.rows_from], checkpoints[base_ref] if base_ref else None, base_name
    refs = [e.model for e in recipe.rows()] if job.merged else recipe.inputs()[:1]
    base = checkpoints[recipe.base_model] if recipe.uses_base else None
    base_name = job.source(recipe.base_model) if base is not None else job.name
    return [checkpoints[ref] for ref in refs], [job.source(ref) for ref in refs], base, base_name


def _job(part: tuple[OutputSlice, MergeRecipe], out_name: str, names: dict[str, str], t: float,
         listings: dict[str, dict[str, TensorInfo]], realign: bool = False) -> TensorJob:
    """One output tensor of a slice: read from names[model] of each source (checked to exist alike)."""
    out, recipe = part
    first = None
    for source in out.sources:
        info = listings[source.model].get(names[source.model])
        rows_only = realign and out_name.endswith(TOKEN_INDEXED) and first is not None and info is not None \
            and info.shape[1:] == first.shape[1:]
        if info is None or (first is not None and info.shape != first.shape and not rows_only):
            found = "lacks it" if info is None else f"has {list(info.shape)}, {out.sources[0].model} {list(first.shape)}"
            raise CheckpointError(f"slice source {source.model!r} cannot give {names[source.model]!r} for {out_name}: "
                                  f"it {found}")
        first = first or info
    if not first.dtype.is_floating_point:
        return TensorJob(out_name, first.shape, first.dtype, False, 0.0, {}, None,
                         rows_from=((out.sources[0].model, first.name),))
    params = resolve_params(recipe, out_name, t)
    base = (recipe.base_model, names[recipe.base_model]) if recipe.uses_base else None
    return TensorJob(out_name, first.shape, output_dtype(recipe, first), True, t, params,
                     rows_per_chunk(recipe, params, first),
                     rows_from=tuple((e.model, names[e.model]) for e in recipe.rows()), base_from=base)


def _reads(job: TensorJob) -> list[tuple[str, str]]:
    return list(job.rows_from) + ([job.base_from] if job.base_from else [])


def _layer_stack(ref: str, listing: dict[str, TensorInfo]) -> str:
    """The one layer stack's name prefix up to its index, e.g. 'model.layers' (mergekit slices one stack)."""
    stacks = {name[:match.start()] + match.group(0)[:-len(match.group(1)) - 2] for name in listing
              if (match := LAYER.search(name))}
    if len(stacks) != 1:
        what = "no layers" if not stacks else f"{len(stacks)} layer stacks ({', '.join(sorted(stacks))})"
        raise CheckpointError(f"{ref} has {what}: slices take layer ranges of a model with one layer stack")
    return stacks.pop()


def _layer_suffixes(out: OutputSlice, offset: int, stack: str,
                    listings: dict[str, dict[str, TensorInfo]]) -> list[str]:
    """The tensor names inside one layer of the slice's first source (after '<stack>.<i>.'), in stored order."""
    source = out.sources[0]
    prefix = f"{stack}.{source.layer_range[0] + offset}."
    listing = listings[source.model]
    names = sorted((info for name, info in listing.items() if name.startswith(prefix)),
                   key=lambda info: (str(info.file), info.offset, info.name))
    return [info.name[len(prefix):] for info in names]


def _check_ranges(recipe: MergeRecipe, stack: str, listings: dict[str, dict[str, TensorInfo]]) -> None:
    counts = {ref: _layer_count(listings[ref], stack) for ref in {s.model for out in recipe.slices for s in out.sources}}
    for index, out in enumerate(recipe.slices):
        for source in out.sources:
            if source.layer_range[1] > counts[source.model]:
                raise CheckpointError(f"slices[{index}]: {source.model} has {counts[source.model]} layers; layer_range "
                                      f"{list(source.layer_range)} runs past them")


def _layer_count(listing: dict[str, TensorInfo], stack: str) -> int:
    indices = [int(m.group(1)) for name in listing if name.startswith(stack + ".") and (m := LAYER.search(name))]
    return max(indices, default=-1) + 1


def slice_lines(recipe: MergeRecipe) -> list[str]:
    """One line per output slice for the CLI's plan and the app's Check, e.g.
    'layers 0-1 ← layers 0-1 of ./a' (a merged slice lists each source, joined by ' + ')."""
    lines, start = [], 0
    for out in recipe.slices or ():
        sources = " + ".join(f"layers {s.layer_range[0]}-{s.layer_range[1] - 1} of {s.model}" for s in out.sources)
        lines.append(f"layers {start}-{start + out.length - 1} ← {sources}")
        start += out.length
    return lines
