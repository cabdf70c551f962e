"""The planner works on names and sizes alone: fed plain TensorInfo values here."""
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError, RecipeError
from core.io.header import TensorInfo
from core.merge.plan import CHUNK_ELEMENTS, layer_position, plan_merge, plan_shards
from core.merge.recipe import recipe_from_dict


def listing(shapes, dtype=torch.bfloat16, file="model.safetensors"):
    infos, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        infos[name] = TensorInfo(name, tuple(shape), dtype, Path(file), offset, nbytes)
        offset += nbytes
    return infos


SHAPES = {
    "model.embed_tokens.weight": (32000, 1024),
    "model.layers.0.mlp.up_proj.weight": (2048, 1024),
    "model.layers.1.mlp.up_proj.weight": (2048, 1024),
    "model.norm.weight": (1024,),
    "position_ids": (1, 512),
}


def ta_recipe(**extra):
    return recipe_from_dict({"merge_method": "task_arithmetic", "base_model": "base", "models": [
        {"model": "a", "parameters": {"weight": [0.0, 1.0]}}, {"model": "b", "parameters": {"weight": 0.5}}], **extra})


def plan(recipe, shapes=SHAPES, **kwargs):
    listings = {ref: listing(shapes) for ref in recipe.inputs()}
    listings["base"]["position_ids"] = TensorInfo("position_ids", (1, 512), torch.int64, Path("x"), 10**9, 4096)
    for ref in ("a", "b"):
        listings[ref]["position_ids"] = listings["base"]["position_ids"]
    return plan_merge(recipe, listings, **kwargs)


def test_plan_orders_resolves_and_chunks():
    result = plan(ta_recipe(dtype="bfloat16", out_dtype="float16"))
    jobs = {job.name: job for job in result.jobs}
    assert jobs["position_ids"].merged is False and jobs["position_ids"].out_dtype == torch.int64
    assert jobs["model.layers.1.mlp.up_proj.weight"].params["weight"] == [1.0, 0.5]
    assert jobs["model.layers.0.mlp.up_proj.weight"].params["weight"] == [0.0, 0.5]
    assert jobs["model.norm.weight"].out_dtype == torch.float16
    embed = jobs["model.embed_tokens.weight"]
    assert embed.rows_per_chunk == CHUNK_ELEMENTS // 1024  # elementwise method: chunked rows
    assert sum((s.stop - s.start) for s in embed.row_slices()) >= 32000
    assert jobs["model.norm.weight"].rows_per_chunk is None
    assert result.bytes_written == sum(job.nbytes for job in result.jobs)
    # three inputs + 3 work tensors of one chunk, plus the output tensor
    assert result.peak_bytes == CHUNK_ELEMENTS * 4 * 6 + 32000 * 1024 * 2


def ties_recipe(method="ties", **parameters):
    return recipe_from_dict({"merge_method": method, "base_model": "base", "parameters": parameters, "models": [
        {"model": "a", "parameters": {"weight": 1, "density": 0.5}}, {"model": "b", "parameters": {"weight": 1}}]})


@pytest.mark.parametrize("recipe", [ties_recipe("dare_ties"), ties_recipe(rescale=True)], ids=["random", "rescale"])
def test_methods_that_need_the_whole_tensor_get_it_whole(recipe):
    result = plan(recipe)
    assert all(job.rows_per_chunk is None for job in result.jobs)
    assert result.peak_bytes >= 32000 * 1024 * 4 * 3


def test_ties_streams_in_blocks_of_rows():
    jobs = {job.name: job for job in plan(ties_recipe()).jobs}
    assert jobs["model.embed_tokens.weight"].rows_per_chunk == CHUNK_ELEMENTS // 1024
    assert jobs["model.norm.weight"].rows_per_chunk is None


def test_shards_respect_the_size_limit_and_keep_order():
    shards = plan_shards([("a", 6), ("b", 6), ("c", 3), ("d", 20), ("e", 1)], 10)
    assert shards == [("model-00001-of-00004.safetensors", ["a"]), ("model-00002-of-00004.safetensors", ["b", "c"]),
                      ("model-00003-of-00004.safetensors", ["d"]), ("model-00004-of-00004.safetensors", ["e"])]
    assert plan_shards([("a", 1), ("b", 1)], 10) == [("model.safetensors", ["a", "b"])]


@pytest.mark.parametrize("name,layers,expected", [
    ("model.layers.0.mlp.w", 4, 0.0), ("model.layers.3.mlp.w", 4, 1.0), ("encoder.layer.1.attention.w", 3, 0.5),
    ("model.embed_tokens.weight", 4, 0.0), ("lm_head.weight", 4, 0.0), ("model.layers.0.x", 1, 1.0)])
def test_layer_position(name, layers, expected):
    assert layer_position(name, layers) == expected


def test_different_architectures_are_refused_before_anything_runs():
    recipe = ta_recipe()
    listings = {ref: listing(SHAPES) for ref in recipe.inputs()}
    del listings["b"]["model.norm.weight"]
    with pytest.raises(CheckpointError, match="b lacks 'model.norm.weight' compared with base"):
        plan_merge(recipe, listings)
    listings["b"] = listing({**SHAPES, "model.norm.weight": (512,)})
    with pytest.raises(CheckpointError, match=r"shape mismatch at model.norm.weight: base has \[1024\], b has \[512\]"):
        plan_merge(recipe, listings)


def test_parameter_problems_surface_at_planning():
    recipe = recipe_from_dict({"merge_method": "linear", "base_model": "base", "parameters": {"normalize": True},
                               "models": [{"model": "base", "parameters": {"weight": 0.0}},  # linear: 0 sums refused
                                          {"model": "a", "parameters": {"weight": [0.0, 1.0]}},
                                          {"model": "b", "parameters": {"weight": -1.0}}]})
    with pytest.raises(RecipeError, match="at tensor model.layers.1.mlp.up_proj.weight: weights"):
        plan(recipe)
