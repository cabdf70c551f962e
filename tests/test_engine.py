"""End-to-end merges of tiny generated model families: values, files, loading, failure paths."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.__main__ import main
from core.errors import MergeCancelled, OutputError
from core.io import staging
from core.io.checkpoint import Checkpoint
from core.merge import plan as planner
from core.merge.engine import merge
from core.merge.methods import METHODS
from core.merge.recipe import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single file or shards)."""
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def ta_recipe(family, weights_=(0.7, 0.3), **extra):
    base, *others = family
    return recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(base),
                             "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(others, weights_)],
                             **extra})


def expected_task_arithmetic(family, weights_, dtype=None):
    """base + Σ w_i (x_i − base), per tensor, in float64 with numpy (independent of core)."""
    tensors = [weights(f) for f in family]
    result = {}
    for name, base in tensors[0].items():
        if not base.is_floating_point():
            result[name] = base
            continue
        rounded = [t[name].to(dtype) if dtype else t[name] for t in tensors]
        arrays = [r.to(torch.float64).numpy() for r in rounded]
        result[name] = arrays[0] + sum(w * (a - arrays[0]) for w, a in zip(weights_, arrays[1:]))
    return result


@pytest.mark.parametrize("family_name,auto_class", [
    ("llama_family", "AutoModelForCausalLM"), ("qwen2_family", "AutoModelForCausalLM"),
    ("bert_st_family", "AutoModel"), ("bert_cls_family", "AutoModelForSequenceClassification"),
    ("xlmr_cls_family", "AutoModelForSequenceClassification")])
def test_task_arithmetic_on_each_architecture_matches_formula_and_loads(family_name, auto_class, request, tmp_path):
    import transformers

    family = request.getfixturevalue(family_name)
    out = merge(ta_recipe(family), tmp_path / "merged")
    got, want = weights(out), expected_task_arithmetic(family, (0.7, 0.3))
    assert set(got) == set(want)
    for name, tensor in got.items():
        np.testing.assert_allclose(tensor.to(torch.float64).numpy(), np.asarray(want[name]), atol=1e-6, err_msg=name)
    model = getattr(transformers, auto_class).from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        output = model(**tokenizer(["the cat sat"], return_tensors="pt"))
    assert torch.isfinite(output[0]).all()
    assert (out / "mergekit_config.yml").exists() and "task_arithmetic" in (out / "README.md").read_text()
    assert not (tmp_path / "merged.partial").exists()


@pytest.mark.parametrize("method,params,global_params", [
    ("task_arithmetic", ([0.6, -1.4], None), {"normalize": True, "lambda": 0.8}),
    ("task_arithmetic", ([2.5, 1.5], None), {"lambda": 1.3}),
    ("linear", ([0.2, 0.5, 0.9], None), {"normalize": False}),
    ("linear", ([3.0, 1.0, 1.0], None), {}),
])
def test_weighted_sum_methods_match_their_formula(llama_family, tmp_path, method, params, global_params):
    """linear and task_arithmetic are merged as Σ c_i·x_i straight from the stored dtype;
    checked here against each method's own formula, in float64, with λ, normalize and
    weights that do not sum to 1."""
    weights_ = params[0]
    base, *others = llama_family
    models = others if method == "task_arithmetic" else llama_family
    recipe = {"merge_method": method, "models": [{"model": str(m), "parameters": {"weight": w}}
                                                 for m, w in zip(models, weights_)], "parameters": global_params}
    if method == "task_arithmetic":
        recipe["base_model"] = str(base)
    out = merge(recipe_from_dict(recipe), tmp_path / "merged")
    inputs = [weights(f) for f in llama_family]
    total = sum(weights_)
    for name, tensor in weights(out).items():
        if not tensor.is_floating_point():
            continue
        arrays = [t[name].to(torch.float64).numpy() for t in inputs]
        if method == "task_arithmetic":
            divisor = total if global_params.get("normalize") else 1.0
            mix = sum(w * (a - arrays[0]) for w, a in zip(weights_, arrays[1:])) / divisor
            want = arrays[0] + global_params.get("lambda", 1.0) * mix
        else:
            want = sum(w * a for w, a in zip(weights_, arrays)) / (total if global_params.get("normalize", True) else 1.0)
        np.testing.assert_allclose(tensor.to(torch.float64).numpy(), want, atol=2e-6, rtol=1e-6, err_msg=name)


def test_float32_task_arithmetic_keeps_small_task_vectors_precise(tmp_path):
    """λ = 2 over four fine-tunes that differ from a base of size ~1 by ~1e-5: written as
    Σ c_i·x_i that would cancel terms of size 7 and lose the task vector's digits; the merged
    task vector must stay within 2e-5 of its own size (float64 reference)."""
    generator = torch.Generator().manual_seed(3)
    base = 1 + torch.rand(64, 64, generator=generator)
    folders = []
    for index in range(5):
        folder = tmp_path / f"m{index}"
        folder.mkdir()
        tensor = base if index == 0 else base + 1e-5 * torch.randn(64, 64, generator=generator)
        save_file({"w": tensor.contiguous()}, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"architectures": ["Tiny"], "model_type": "tiny"}))
        folders.append(folder)
    recipe = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(folders[0]),
                               "models": [{"model": str(f), "parameters": {"weight": 1.0}} for f in folders[1:]],
                               "parameters": {"lambda": 2.0}})
    merged = load_file(merge(recipe, tmp_path / "out") / "model.safetensors")["w"].double()
    inputs = [load_file(f / "model.safetensors")["w"].double() for f in folders]
    vector = 2 * sum(x - inputs[0] for x in inputs[1:])
    error = (merged - inputs[0] - vector).abs().max() / vector.abs().max()
    assert error < 2e-5, float(error)


def test_early_writeback_keeps_the_bytes(llama_family, tmp_path, monkeypatch):
    """Writeback requests every few KB (instead of 128 MB) leave the shards byte-identical."""
    from core.io import writer

    plain = merge(ta_recipe(llama_family), tmp_path / "plain")
    requests = []
    real = writer.ShardWriter._start_writeback
    monkeypatch.setattr(writer, "WRITEBACK_EVERY", 4096)
    monkeypatch.setattr(writer.ShardWriter, "_start_writeback", lambda self: requests.append(self.unflushed) or real(self))
    early = merge(ta_recipe(llama_family), tmp_path / "early")
    assert len(requests) > 3 and all(size >= 4096 for size in requests)
    for file in plain.glob("*.safetensors"):
        assert (early / file.name).read_bytes() == file.read_bytes()


def test_sentence_transformers_folder_survives_the_merge(bert_st_family, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = merge(ta_recipe(bert_st_family), tmp_path / "st")
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"):
        assert (out / name).exists(), name
    embedding = SentenceTransformer(str(out), device="cpu").encode(["a small test"])
    assert embedding.shape[0] == 1 and np.isfinite(embedding).all()
    assert "library_name: sentence-transformers" in (out / "README.md").read_text()


def test_tied_embeddings_stay_tied(qwen2_family, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge(ta_recipe(qwen2_family), tmp_path / "tied")
    assert "lm_head.weight" not in weights(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_streams_the_same_tensors_as_a_whole_model_merge(method, llama_family, tmp_path):
    """The engine (ordering, chunking, dtype, writer) adds nothing to the method's own result.

    Random methods run at density 1, where they draw nothing; their draws through the engine
    are checked against a formula in test_random_methods_drop_whole_changes_at_the_density.
    """
    base, a, b = llama_family
    spec = {"merge_method": method, "models": [{"model": str(a)}, {"model": str(b)}], "parameters": {}}
    m = METHODS[method]
    if m.base != "unused":
        spec["base_model"] = str(base)
    if m.param("weight"):
        spec["models"] = [{"model": str(a), "parameters": {"weight": 0.6}}, {"model": str(b), "parameters": {"weight": 0.4}}]
    if m.param("density"):
        spec["parameters"]["density"] = 1.0 if m.random else 0.6
    spec["models"] = spec["models"][:m.max_inputs]  # passthrough, arcee_fusion: one model (besides the base)
    if method == "slerp":
        spec["models"] = [{"model": str(base)}, {"model": str(a)}]
        spec["parameters"]["t"] = [0.2, 0.8]
    if method == "model_stock":
        spec["models"].append({"model": str(base)})
    if method == "nearswap":
        spec["parameters"]["t"] = 0.01  # the fine-tunes' noise: some values swapped, some stepped
    recipe = recipe_from_dict(spec)
    out = merge(recipe, tmp_path / method, seed=5)
    got, inputs = weights(out), {str(p): weights(p) for p in llama_family}
    rows = [e.model for e in recipe.rows()]
    layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    for name, tensor in got.items():
        t = planner.layer_position(name, layers)
        from core.merge.recipe import resolve_params
        stack = torch.stack([inputs[r][name].float() for r in rows])
        base_t = inputs[str(base)][name].float() if recipe.uses_base else None
        want = m.merge(stack, base_t, generator=None, **resolve_params(recipe, name, t))
        torch.testing.assert_close(tensor, want.to(tensor.dtype), msg=name)


@pytest.mark.parametrize("family_name", ["llama_family", "llama_bf16_family"])  # bf16: many tied magnitudes
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "breadcrumbs_ties"])
def test_merge_in_blocks_equals_whole_tensor_merge(method, family_name, request, tmp_path, monkeypatch):
    base, a, b = request.getfixturevalue(family_name)
    density = {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]} if method != "task_arithmetic" else {}
    recipe = recipe_from_dict({"merge_method": method, "base_model": str(base), "parameters": density, "models": [
        {"model": str(a), "parameters": {"weight": 0.7}}, {"model": str(b), "parameters": {"weight": 0.3}}]})
    whole = merge(recipe, tmp_path / "whole")
    monkeypatch.setattr(planner, "CHUNK_ELEMENTS", 100)  # every matrix now goes in blocks of rows
    listings = {ref: Checkpoint.open(ref).tensors for ref in recipe.inputs()}
    assert any(job.rows_per_chunk for job in planner.plan_merge(recipe, listings).jobs)
    chunked = merge(recipe, tmp_path / "chunked")
    whole, chunked = weights(whole), weights(chunked)
    assert all(torch.equal(whole[n], chunked[n]) for n in whole)


def test_working_dtype_rounds_inputs_and_out_dtype_is_written(llama_family, tmp_path):
    out = merge(ta_recipe(llama_family, dtype="bfloat16", out_dtype="float16"), tmp_path / "half")
    got = weights(out)
    want = expected_task_arithmetic(llama_family, (0.7, 0.3), dtype=torch.bfloat16)
    for name, tensor in got.items():
        assert tensor.dtype == torch.float16
        expected = torch.tensor(np.asarray(want[name]), dtype=torch.float64).to(torch.float16)
        torch.testing.assert_close(tensor, expected, atol=1e-3, rtol=1e-3)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_bf16_family_keeps_bf16_by_default(llama_bf16_family, tmp_path):
    out = merge(ta_recipe(llama_bf16_family), tmp_path / "bf16")
    assert {t.dtype for t in weights(out).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_sharded_in_and_sharded_out(llama_sharded_family, llama_family, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge(ta_recipe(llama_sharded_family), tmp_path / "sharded", shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights(out).values())
    reference = merge(ta_recipe(llama_family), tmp_path / "single")  # same values, unsharded inputs
    assert all(torch.equal(weights(out)[n], t) for n, t in weights(reference).items())
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_non_float_tensors_come_from_the_base(tmp_path):
    folders = []
    for i in range(2):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        save_file({"w": torch.full((2, 2), float(i)), "ids": torch.arange(4) + i}, folder / "model.safetensors")
        folders.append(folder)
    recipe = recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(folders[0]),
                               "models": [{"model": str(folders[1]), "parameters": {"weight": 0.5}}]})
    got = weights(merge(recipe, tmp_path / "out"))
    assert torch.equal(got["ids"], torch.arange(4)) and torch.equal(got["w"], torch.full((2, 2), 0.5))


def test_random_methods_follow_the_seed(llama_family, tmp_path):
    base, a, b = llama_family
    recipe = recipe_from_dict({"merge_method": "dare_ties", "base_model": str(base), "models": [
        {"model": str(a), "parameters": {"weight": 0.5, "density": 0.3}},
        {"model": str(b), "parameters": {"weight": 0.5, "density": 0.3}}]})
    one, again, other = (weights(merge(recipe, tmp_path / name, seed=seed))
                         for name, seed in (("one", 1), ("again", 1), ("other", 2)))
    assert all(torch.equal(one[n], again[n]) for n in one)
    assert any(not torch.equal(one[n], other[n]) for n in one)


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_random_methods_drop_whole_changes_at_the_density(method, llama_family, tmp_path):
    """One model, no rescale: every merged entry is base or base + δ; about `density` of each
    tensor keeps its change, and same-shaped tensors get different masks (a stream per tensor)."""
    base, a, _ = llama_family
    params = {"density": 0.3, "rescale": False, **({"epsilon": 0.1} if method == "della_linear" else {})}
    recipe = recipe_from_dict({"merge_method": method, "base_model": str(base), "parameters": params,
                               "models": [{"model": str(a), "parameters": {"weight": 1.0}}]})
    got, before, after = weights(merge(recipe, tmp_path / "out", seed=7)), weights(base), weights(a)
    masks = {}
    for name, tensor in got.items():
        delta = after[name] - before[name]
        kept = tensor != before[name]
        torch.testing.assert_close(tensor[kept], after[name][kept], msg=name)  # a kept entry is the fine-tune's
        masks[name] = kept
        if delta.numel() >= 2000:
            assert abs(kept[delta != 0].float().mean().item() - 0.3) < 0.05, name
    gate, up = (masks[f"model.layers.0.mlp.{p}_proj.weight"] for p in ("gate", "up"))
    assert not torch.equal(gate, up)


def test_cancel_mid_merge_leaves_nothing(llama_family, tmp_path):
    cancel = threading.Event()

    def stop_after_three(event):
        if event.step == 3:
            cancel.set()

    with pytest.raises(MergeCancelled):
        merge(ta_recipe(llama_family), tmp_path / "stopped", on_progress=stop_after_three, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_nothing(llama_family, tmp_path, monkeypatch):
    from core.io import writer

    calls = {"n": 0}
    real_write = writer.ShardWriter.write

    def failing_write(self, name, chunk):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real_write(self, name, chunk)

    monkeypatch.setattr(writer.ShardWriter, "write", failing_write)
    with pytest.raises(OutputError, match="No space left on device"):
        merge(ta_recipe(llama_family), tmp_path / "full")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_never_overwritten_without_permission(llama_family, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="already exists: choose another name or replace it"):
        merge(ta_recipe(llama_family), out)
    assert (out / "precious.txt").read_text() == "keep me" and not (tmp_path / "taken.partial").exists()
    merge(ta_recipe(llama_family), out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_output_inside_an_input_is_refused(llama_family):
    with pytest.raises(OutputError, match="overlaps input model folder"):
        merge(ta_recipe(llama_family), llama_family[1] / "merged")
    assert not (llama_family[1] / "merged").exists()


def test_stale_partial_from_a_crash_is_cleaned(llama_family, tmp_path):
    stale = tmp_path / "out.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    marker = {"tool": "MergeDesk", "out": "out", "pid": int(gone.stdout), "token": "0" * 16}  # its writer has exited
    (stale / staging.MARKER).write_text(json.dumps(marker))
    merge(ta_recipe(llama_family), tmp_path / "out")
    assert not stale.exists() and (tmp_path / "out" / "model.safetensors").stat().st_size > 100


def test_cli_merge_plan_inspect_and_errors(llama_family, tmp_path, capsys):
    def cli(*args):
        """`python -m core ARGS` run in this process (tests/test_cli_rerank.py runs the module itself)."""
        code = main(list(args))
        return subprocess.CompletedProcess(args, code, *capsys.readouterr())

    base, a, b = llama_family
    recipe_file = tmp_path / "recipe.yml"
    recipe_file.write_text(f"merge_method: ties\nbase_model: {base}\nmodels:\n"
                           f"  - model: {a}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
                           f"  - model: {b}\n    parameters: {{weight: 0.5, density: 0.5}}\n")
    done = cli("merge", str(recipe_file), str(tmp_path / "out"), "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == (tmp_path / "out").resolve()
    again = cli("merge", str(recipe_file), str(tmp_path / "out"))
    assert again.returncode == 1 and again.stderr.strip().startswith("error: output folder")
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
    plan = cli("plan", str(recipe_file))
    assert plan.returncode == 0 and "tensors" in plan.stdout and "peak memory" in plan.stdout
    inspect = cli("inspect", str(tmp_path / "out"))
    assert inspect.returncode == 0 and "LlamaForCausalLM" in inspect.stdout
    bad_device = cli("merge", str(recipe_file), str(tmp_path / "gpu"), "--device", "cuda:3")
    assert bad_device.returncode == 1 and "device 'cuda:3' does not exist" in bad_device.stderr
    assert not (tmp_path / "gpu").exists()
    recipe_file.write_text("merge_method: ties\nmodels: [x]\n")
    bad = cli("merge", str(recipe_file), str(tmp_path / "bad"))
    assert bad.returncode == 1 and bad.stderr.strip() == "error: ties needs a base_model: the model the others' changes are measured from"


def test_example_recipes_in_assets_are_valid():
    from core.merge.recipe import load_recipe

    files = sorted((ROOT / "assets" / "recipes").glob("*.yml"))
    assert files
    for file in files:
        load_recipe(file)
