"""Plan a merge from names and sizes alone: which tensors, in what order, in which shard,
with which parameters, and what it will cost — before a byte is read or written.

`plan_merge(recipe, listings)` takes each input's tensor listing (name → TensorInfo, from
safetensors headers) and returns a MergePlan; tests feed it plain TensorInfo values. All
checks that depend on tensor names (same tensor set and shapes across inputs, every
parameter resolvable for every tensor, method rules such as weights summing to zero) run
here, so a merge that starts will not fail on bad input halfway. A recipe with `slices:` is
planned by core.merge.slices.plan_slices on the same jobs and estimates (core.merge.preview picks).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch

from core.errors import CheckpointError
from core.io.header import TensorInfo
from core.merge.recipe import DTYPES, MergeRecipe, resolve_params

DEFAULT_SHARD_BYTES = 2 * 1000**3  # "2GB" as transformers counts it
# Blockwise methods work on ≤ 2 MB (float32) per input at a time. Small on purpose: blocks this
# size come from malloc's heap and are reused, while 32 MB ones were mmap'ed fresh each time, and
# the kernel zeroing those pages cost more than the merge (bench: TA on 3 x 1.46 GB, 8.5 s -> 3.5 s).
CHUNK_ELEMENTS = 512 * 1024
# Output heads a tied model (tie_word_embeddings) does not store: its embedding is read instead (mergekit's tied_names)
TIED = {"lm_head.weight": "model.embed_tokens.weight"}
TOKEN_INDEXED = ("embed_tokens.weight", "lm_head.weight", "word_embeddings.weight", "wte.weight")
VOCABULARY_HINT = (" (their vocabularies differ: set tokenizer_source: base or union, as in mergekit, to realign "
                   "embedding rows through each model's tokenizer)")
LAYER = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class TensorJob:
    """How one output tensor is made."""

    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    merged: bool  # False: copied unchanged from the first input (non-float tensors such as position_ids)
    t: float  # position of the tensor's layer in [0, 1] (0 for tensors outside the layer stack)
    params: dict  # resolved method parameters for this tensor (empty when copied)
    rows_per_chunk: int | None  # elementwise methods: merge this many rows at a time; None = whole tensor
    sources: tuple[tuple[str, str], ...] = ()  # (model reference, tensor read there) where it is not `name`

    def source(self, ref: str) -> str:
        """The tensor read from input `ref` for this job (a tied model's embedding stands in for its lm_head)."""
        return dict(self.sources).get(ref, self.name)
    # sliced recipes (core.merge.slices): (model reference, its tensor name) per model row, and the base's;
    # empty: the recipe's rows() and base, read under the job's own name
    rows_from: tuple[tuple[str, str], ...] = ()
    base_from: tuple[str, str] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.out_dtype).element_size()

    def row_slices(self) -> list[slice | None]:
        """The pieces the engine reads and merges one after another."""
        if self.rows_per_chunk is None:
            return [None]
        return [slice(start, start + self.rows_per_chunk) for start in range(0, self.shape[0], self.rows_per_chunk)]


@dataclass(frozen=True)
class MergePlan:
    """Everything the engine and the writer need, and what a person wants to know first."""

    jobs: list[TensorJob]  # in output order
    shards: list[tuple[str, list[str]]]  # (file name, tensor names) in output order
    inputs: int  # models read
    bytes_read: int  # from all inputs
    bytes_written: int
    peak_bytes: int  # estimated working memory on the compute device, largest job
    left_out: tuple[str, ...] = ()  # one line per input tensor not merged, and why (the log says it)
    vocabulary: object | None = None  # core.merge.vocabulary.Vocabulary when embedding rows are realigned


def plan_merge(recipe: MergeRecipe, listings: dict[str, dict[str, TensorInfo]], *,
               num_layers: int | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES, realign: bool = False) -> MergePlan:
    """Plan `recipe` over inputs listed as {model reference: {tensor name: TensorInfo}}.

    `listings` must hold every reference in recipe.inputs(); the first is the base (or the
    first model) and decides tensor order and the dtype written when the recipe sets none.
    `num_layers` (the config's count) places gradients; see _stack_depths for a deeper stack.
    `realign`: token-indexed tensors may differ in their row count (core.merge.aligned reshapes their jobs).
    """
    if recipe.slices:
        raise ValueError("a sliced recipe is planned by core.merge.slices.plan_slices")
    refs = recipe.inputs()
    first = listings[refs[0]]
    sources, left_out = common_tensors(refs, listings, realign=realign)
    _check_float8_scales(refs[0], first)
    layers = _stack_depths(first, num_layers)
    rows = [e.model for e in recipe.rows()]
    order = sorted((listings[refs[0]].get(name) or _stand_in(name, sources[name], listings) for name in sources),
                   key=lambda info: (str(info.file), info.offset, info.name))
    jobs = [_job(recipe, info, layers, [listings[r][sources[info.name][r]] for r in rows], sources[info.name])
            for info in order]
    shards = plan_shards([(job.name, job.nbytes) for job in jobs], shard_bytes)
    inputs_per_job = len(rows) + (1 if recipe.uses_base else 0)
    return MergePlan(
        jobs=jobs,
        shards=shards,
        inputs=len(refs),
        bytes_read=sum(listings[r][job.source(r)].nbytes for job in jobs for r in refs if job.merged or r == refs[0]),
        bytes_written=sum(job.nbytes for job in jobs),
        peak_bytes=max((working_bytes(job, inputs_per_job) for job in jobs), default=0),
        left_out=tuple(left_out),
    )


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[tuple[str, list[str]]]:
    """Group tensors, in order, into files of at most `max_bytes` (a bigger tensor gets its own).

    Example:
        >>> plan_shards([("a", 6), ("b", 6), ("c", 3)], 10)
        [('model-00001-of-00002.safetensors', ['a']), ('model-00002-of-00002.safetensors', ['b', 'c'])]
    """
    groups: list[list[str]] = []
    used = 0
    for name, nbytes in sizes:
        if not groups or (used + nbytes > max_bytes and groups[-1]):
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += nbytes
    if len(groups) == 1:
        return [("model.safetensors", groups[0])]
    return [(f"model-{i:05d}-of-{len(groups):05d}.safetensors", group) for i, group in enumerate(groups, 1)]


def layer_position(name: str, num_layers: int) -> float:
    """t in [0, 1] for gradients: layer i of n sits at i/(n−1); non-layer tensors at 0 (mergekit)."""
    match = LAYER.search(name)
    if not match:
        return 0.0
    return int(match.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


def _job(recipe: MergeRecipe, info: TensorInfo, layers: dict[str, int], row_infos: list[TensorInfo],
         sources: dict[str, str]) -> TensorJob:
    renamed = tuple((ref, name) for ref, name in sources.items() if name != info.name)
    merged = info.dtype.is_floating_point and bool(row_infos)
    if not merged:
        return TensorJob(info.name, info.shape, info.dtype, False, 0.0, {}, None, renamed)
    match = LAYER.search(info.name)
    t = layer_position(info.name, layers[info.name[:match.start()]]) if match else 0.0
    params = resolve_params(recipe, info.name, t)
    return TensorJob(info.name, info.shape, output_dtype(recipe, info), True, t, params,
                     rows_per_chunk(recipe, params, info), renamed)


def output_dtype(recipe: MergeRecipe, info: TensorInfo) -> torch.dtype:
    """The dtype a merged tensor is written in: the recipe's out_dtype, else its dtype, else the input's."""
    return DTYPES[recipe.out_dtype or recipe.dtype] if (recipe.out_dtype or recipe.dtype) else info.dtype


def rows_per_chunk(recipe: MergeRecipe, params: dict, info: TensorInfo) -> int | None:
    """Rows merged at a time for a method that may split this tensor; None: the whole tensor at once."""
    if recipe.method.in_blocks(params) and len(info.shape) >= 1 and info.numel > CHUNK_ELEMENTS:
        return max(1, CHUNK_ELEMENTS // max(1, info.numel // info.shape[0]))
    return None


def common_tensors(refs: list[str], listings: dict[str, dict[str, TensorInfo]], *, realign: bool = False
                   ) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The tensors every input has, each as {model reference: tensor name read there}, and what is left out.

    As mergekit does: a head some inputs lack (`score.weight` beside `model.*`) is not merged and
    not written; an lm_head that a tied model (tie_word_embeddings, no lm_head stored) lacks is read
    from its embedding there, and is written when any input stores one. A tensor of the backbone
    (under the module holding the layer stack, `model.` or `bert.`) that an input lacks, and a
    shape that differs, mean other architectures: refused (mergekit: "required but not present").

    Example:
        >>> info = lambda name: TensorInfo(name, (2,), torch.float32, None, 0, 8)
        >>> common_tensors(["a", "b"], {"a": {"w": info("w"), "x": info("x")}, "b": {"w": info("w")}})
        ({'w': {'a': 'w', 'b': 'w'}}, ["'x': only in a, not in b: left out (mergekit merges the tensors all inputs have)"])
    """
    names = list(listings[refs[0]]) + sorted({n for r in refs for n in listings[r]} - set(listings[refs[0]]))
    sources: dict[str, dict[str, str]] = {}
    left_out = []
    for name in names:
        found = {ref: _name_in(listings[ref], name) for ref in refs}
        lacking = [ref for ref, there in found.items() if there is None]
        if lacking:
            _check_not_backbone(name, refs, lacking, found, listings)
            if all(there is None or there == name for there in found.values()):  # not a stand-in: a real gap
                having = ", ".join(ref for ref in refs if found[ref] is not None)
                left_out.append(f"{name!r}: only in {having}, not in {', '.join(lacking)}: left out "
                                "(mergekit merges the tensors all inputs have)")
            continue
        if name not in TIED or any(there == name for there in found.values()):
            sources[name] = found
    for name, found in sources.items():
        shapes = {ref: listings[ref][there].shape for ref, there in found.items()}
        for ref, shape in shapes.items():
            rows_only = name.endswith(TOKEN_INDEXED) and shape[1:] == shapes[refs[0]][1:]
            if shape != shapes[refs[0]] and not (realign and rows_only):
                vocab = VOCABULARY_HINT if rows_only else ""
                raise CheckpointError(f"shape mismatch at {name}: {refs[0]} has {list(shapes[refs[0]])}, "
                                      f"{ref} has {list(shape)}{vocab}")
    return sources, left_out


def _check_not_backbone(name: str, refs: list[str], lacking: list[str], found: dict[str, str | None],
                        listings: dict[str, dict[str, TensorInfo]]) -> None:
    """Refuse a gap in the backbone: the tensor lies under a module that holds a layer stack."""
    backbones = {n.split(".")[0] for listing in listings.values() for n in listing if LAYER.search(n)}
    if name.split(".")[0] not in backbones:
        return
    first = refs[0]
    ref, what = (lacking[0], f"lacks {name!r}") if found[first] is not None else (
        next(r for r in refs if found[r] is not None), f"has extra tensor {name!r}")
    count = sum(set(listings[first]) != set(listings[r]) for r in refs[1:])
    raise CheckpointError(f"models are not the same architecture: {ref} {what} compared with {first} "
                          f"({count} model(s) differ in their tensor names)")


def _name_in(listing: dict[str, TensorInfo], name: str) -> str | None:
    """`name` where `listing` has it, else the tied tensor standing in for it, else None."""
    if name in listing:
        return name
    return TIED[name] if name in TIED and TIED[name] in listing else None


def _stand_in(name: str, found: dict[str, str], listings: dict[str, dict[str, TensorInfo]]) -> TensorInfo:
    """The first input's listing entry for an lm_head it reads from its tied embedding, under the lm_head's name."""
    ref = next(iter(found))
    return dataclasses.replace(listings[ref][found[ref]], name=name)


def _check_float8_scales(ref: str, listing: dict[str, TensorInfo]) -> None:
    """Refuse float8 weights that come with a scale tensor (FP8-quantized checkpoints).

    Plain float8 values merge like any float (the engine upcasts them); but where each weight W
    is stored as float8 q with a scale s (W = q·s, as "W_scale" or "W_scale_inv"), a weighted sum of
    the q's and another of the s's is not the weighted sum of the W's, so such a merge would be wrong.
    """
    for name, info in listing.items():
        if info.dtype.is_floating_point and info.dtype.itemsize == 1:
            scale = next((name + end for end in ("_scale", "_scale_inv") if name + end in listing), None)
            if scale is not None:
                raise CheckpointError(f"{ref}: tensor {name!r} is float8 quantized with the scale {scale!r}; merging "
                                      "quantized values and scales apart is wrong: dequantize the models to bfloat16 first")


def _stack_depths(listing: dict[str, TensorInfo], num_layers: int | None) -> dict[str, int]:
    """The layer count each layer stack (the name before `.layers.N.`) is placed on by gradients.

    Every stack that fits in `num_layers` (the config's count; default: the deepest stack's)
    uses it, as mergekit does. A stack with more layers than that (a vision tower deeper than
    the text stack the config counts, or a config that understates the weights) uses its own
    count, so each of its layers still lies in [0, 1] on the gradient.

    Example:
        >>> _stack_depths({n: None for n in ["m.layers.1.w", "v.layers.3.w"]}, 2)
        {'m': 2, 'v': 4}
    """
    counted: dict[str, int] = {}
    for name in listing:
        if match := LAYER.search(name):
            stack = name[:match.start()]
            counted[stack] = max(counted.get(stack, 0), int(match.group(1)) + 1)
    depth = num_layers or max(counted.values(), default=1)
    return {stack: depth if count <= depth else count for stack, count in counted.items()}


def working_bytes(job: TensorJob, inputs: int) -> int:
    """Float32 working set of one job: the input stack, the base, the result and ~2 temporaries."""
    if not job.merged:
        return job.nbytes
    elements = math.prod(job.shape)
    if job.rows_per_chunk is not None:
        elements = elements // job.shape[0] * job.rows_per_chunk
    return elements * 4 * (inputs + 3) + job.nbytes
