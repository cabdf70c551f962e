"""Issue 16, "errors that are not one line": inputs that once ended as `internal error` (exit 3) in the
CLI or a blank "Error" in the app.

Each group builds its bad input, runs it through the CLI in-process (`main([...])`) and, where the
issue names the app, through the app's handler (ui.merge.panel.plan/merge, ui.playground.rerank_compare).
A refusal must be exit 1 with exactly one stderr line `error: …` of bounded length naming the culprit
(file, tensor, field). Inputs that are legitimately mergeable (float8 under linear, zero-size tensors,
a layer stack deeper than config.json says) must merge, and their values are checked against a
formula written here. The fp16 overflow group checks that the engine looks at its merged output.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import gradio as gr
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from core.__main__ import main
from core.app.models import find_models
from core.app.paths import check_model_ref
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from core.merge.methods import METHODS
from tests.reliability.merge_helpers import figures, one_line
from ui.merge.panel import merge as app_merge
from ui.merge.panel import plan as app_plan
from ui.playground import rerank_compare

LONGEST = 700  # characters in one error line: room for a 300-character path, not for a dumped input
TALLY = Counter()


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    figures("errors", inputs_tried=sum(TALLY.values()), one_line=TALLY["one line"], merged_right=TALLY["merged"],
            internal=TALLY["internal"])


def refused(capsys, argv: list[str], *culprits: str) -> str:
    """Run the CLI: exit 1, one bounded `error: ` line on stderr that names every culprit."""
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001 - counted, then shown by pytest
        TALLY["internal"] += 1
        raise
    err = capsys.readouterr().err.strip()
    if code != 1:
        TALLY["internal"] += 1
    assert code == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and len(err) < LONGEST, err
    assert "internal error" not in err and all(c in err for c in culprits), err
    TALLY["one line"] += 1
    return err


def merged(capsys, argv: list[str]) -> str:
    """Run the CLI: exit 0; returns stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    TALLY["merged"] += 1
    return err


def app_refuses(message: str, *culprits: str) -> None:
    """The app's text (a plan's "✗ Not ready" line or a gr.Error) is one line naming the culprits."""
    assert one_line(message) and len(message) < LONGEST and all(c in message for c in culprits), message
    TALLY["one line"] += 1


def app_merge_refuses(recipe: dict, ws: Workspace, *culprits: str, seed: float = 0) -> None:
    with pytest.raises(gr.Error) as raised:
        list(app_merge(yaml.safe_dump(recipe), "out", "cpu", False, seed, ws))
    app_refuses(str(raised.value.message), *culprits)
    assert not (ws.outputs_dir / "out").exists()


def model(folder: Path, tensors: dict[str, torch.Tensor], config: dict | str | None = None) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    text = config if isinstance(config, str) else json.dumps(config or {"architectures": ["TinyForTests"]})
    (folder / "config.json").write_text(text, encoding="utf-8")
    return folder


def recipe_file(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def linear(models: list[Path], weights: list, **parameters) -> dict:
    return {"merge_method": "linear", "parameters": parameters,
            "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)]}


def workspace(root: Path, *, hosted: bool = False) -> Workspace:
    root = root.resolve()
    (root / "models").mkdir(parents=True, exist_ok=True)
    return Workspace(root, root / "models", root / "outputs", hosted=hosted)


# ---- float8 under linear: upcast to float32 for the math, written back in float8 -------------------

@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_linear_merges_in_float32_and_keeps_float8(tmp_path, capsys, dtype):
    generator = torch.Generator().manual_seed(0)
    inputs = [{"model.layers.0.mlp.weight": (4 * torch.randn(8, 16, generator=generator)).to(dtype)} for _ in range(2)]
    models = [model(tmp_path / f"m{i}", tensors) for i, tensors in enumerate(inputs)]
    recipe = recipe_file(tmp_path / "r.yml", linear(models, [0.25, 0.75]))
    merged(capsys, ["merge", str(recipe), str(tmp_path / "out"), "--quiet"])
    out = load_file(tmp_path / "out" / "model.safetensors")["model.layers.0.mlp.weight"]
    a, b = (t["model.layers.0.mlp.weight"].to(torch.float32) for t in inputs)
    assert out.dtype == dtype and torch.equal(out.to(torch.float32), (0.25 * a + 0.75 * b).to(dtype).to(torch.float32))
    status, *_ = list(app_merge(yaml.safe_dump(linear(models, [0.25, 0.75])), "f8", "cpu", False, 0,
                                workspace(tmp_path / "ws")))[-1]
    assert status.startswith("**✓ Merged**"), status
    TALLY["merged"] += 1


def test_float8_with_a_scale_tensor_is_refused(tmp_path, capsys):
    """FP8-quantized weights (W = q·scale) cannot be merged value by value: one line says to dequantize first."""
    tensors = {"model.layers.0.mlp.weight": torch.ones(4, 4).to(torch.float8_e4m3fn),
               "model.layers.0.mlp.weight_scale_inv": torch.ones(1, 1)}
    models = [model(tmp_path / f"m{i}", tensors) for i in range(2)]
    refused(capsys, ["merge", str(recipe_file(tmp_path / "r.yml", linear(models, [1, 1]))), str(tmp_path / "out")],
            "'model.layers.0.mlp.weight'", "weight_scale_inv", "dequantize")


# ---- zero-size tensors: every method merges them to a zero-size tensor --------------------------

def _method_recipe(name: str, models: list[Path]) -> dict:
    method = METHODS[name]
    values = {"weight": 0.5, "density": 0.5, "epsilon": 0.1, "t": 0.5}
    declared = {k: v for k, v in values.items() if method.param(k)}
    own = {k: v for k, v in declared.items() if method.param(k).per_model}
    rows = models[1:2] if method.max_inputs == 1 else models[1:3]
    recipe = {"merge_method": name, "models": [{"model": str(m), "parameters": own} for m in rows],
              "parameters": {k: v for k, v in declared.items() if k not in own}}
    if method.base != "unused":
        recipe["base_model"] = str(models[0])
    return recipe


@pytest.mark.parametrize("method", sorted(METHODS))
def test_zero_size_tensor_merges_to_a_zero_size_tensor(tmp_path, capsys, method):
    models = [model(tmp_path / f"m{i}", {"model.layers.0.empty_rows": torch.zeros(0, 4),
                                         "model.layers.0.empty_cols": torch.zeros(3, 0),
                                         "model.layers.0.bias": torch.full((5,), float(i))}) for i in range(3)]
    recipe = recipe_file(tmp_path / "r.yml", _method_recipe(method, models))
    merged(capsys, ["merge", str(recipe), str(tmp_path / "out"), "--quiet", "--seed", "1"])
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert out["model.layers.0.empty_rows"].shape == (0, 4) and out["model.layers.0.empty_cols"].shape == (3, 0)
    assert out["model.layers.0.bias"].shape == (5,) and torch.isfinite(out["model.layers.0.bias"]).all()
    if method == "linear":  # (0.5·1 + 0.5·2) / 1
        assert torch.equal(out["model.layers.0.bias"], torch.full((5,), 1.5))


# ---- config.json that json.loads cannot turn into a config --------------------------------------

CONFIGS = {
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
    "5,000-digit integer": ('{"num_hidden_layers": ' + "9" * 5000 + "}", "more than 4300 digits"),
    "lone surrogate": ('{"model_type": "llama\\ud800"}', "lone surrogate"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_json_that_cannot_be_read(tmp_path, capsys, case):
    text, problem = CONFIGS[case]
    bad = model(tmp_path / "bad", {"w": torch.ones(3)}, text)
    good = model(tmp_path / "good", {"w": torch.ones(3)})
    recipe = linear([good, bad], [1, 1])
    refused(capsys, ["inspect", str(bad)], "bad/config.json", problem)
    refused(capsys, ["merge", str(recipe_file(tmp_path / "r.yml", recipe)), str(tmp_path / "out")],
            "bad/config.json", problem)
    app_refuses(app_plan(yaml.safe_dump(recipe), "out", "cpu", workspace(tmp_path / "ws")), "bad/config.json", problem)


# ---- a layer stack deeper than config.json's num_hidden_layers, under a gradient ----------------

@pytest.mark.parametrize("stack, depth", [("vision_tower.encoder.layers", 4), ("model.layers", 4)])
def test_stack_deeper_than_the_config_is_placed_on_its_own_depth(tmp_path, capsys, stack, depth):
    """config says 2 layers: the text stack has 2; `stack` has `depth`. Weight gradients [1, 0] and [0, 1]
    (normalized) make each layer (1 − t)·A + t·B with t = i/(depth − 1) over its own stack."""
    names = [f"model.layers.{i}.w" for i in range(2)] + [f"{stack}.{i}.w" for i in range(depth)]
    models = [model(tmp_path / f"m{k}", {n: torch.full((2,), 10.0 * k + 1) for n in names},
                    {"num_hidden_layers": 2}) for k in range(2)]
    recipe = recipe_file(tmp_path / "r.yml", linear(models, [[1, 0], [0, 1]]))
    merged(capsys, ["merge", str(recipe), str(tmp_path / "out"), "--quiet"])
    out = load_file(tmp_path / "out" / "model.safetensors")
    for i in range(depth):
        t = i / (depth - 1)
        assert torch.allclose(out[f"{stack}.{i}.w"], torch.full((2,), (1 - t) * 1 + t * 11)), (i, out[f"{stack}.{i}.w"])
    if stack != "model.layers":  # the text stack keeps the config's 2 layers: t = 0, 1
        assert out["model.layers.0.w"].tolist() == [1, 1] and out["model.layers.1.w"].tolist() == [11, 11]
    assert app_plan(yaml.safe_dump(linear(models, [[1, 0], [0, 1]])), "out", "cpu",
                    workspace(tmp_path / "ws")).startswith("**✓ Ready")


# ---- paths longer than a file name may be ---------------------------------------------------------

@pytest.mark.parametrize("where", ["recipe", "model", "output", "plan --out", "inspect"])
def test_path_over_255_characters(tmp_path, capsys, where):
    long = tmp_path / ("x" * 300)
    models = [model(tmp_path / f"m{i}", {"w": torch.ones(3)}) for i in range(2)]
    recipe = recipe_file(tmp_path / "r.yml", linear([models[0], long] if where == "model" else models, [1, 1]))
    argv = {"recipe": ["merge", str(long), str(tmp_path / "out")],
            "model": ["merge", str(recipe), str(tmp_path / "out")],
            "output": ["merge", str(recipe), str(long)],
            "plan --out": ["plan", str(recipe), "--out", str(long)],
            "inspect": ["inspect", str(long)]}[where]
    refused(capsys, argv, "x" * 40, "too long")
    if where == "model":
        app_refuses(app_plan(yaml.safe_dump(linear([models[0], long], [1, 1])), "out", "cpu",
                             workspace(tmp_path / "ws")), "xxxxxxxxxx", "too long")


# ---- seeds the random methods cannot take ---------------------------------------------------------

@pytest.fixture
def dare_models(tmp_path):
    return [model(tmp_path / f"m{i}", {"w": torch.arange(6.0) + i}) for i in range(2)]


def _dare(models: list[Path]) -> dict:
    return {"merge_method": "dare_ties", "base_model": str(models[0]),
            "models": [{"model": str(models[1]), "parameters": {"weight": 1, "density": 0.5}}]}


@pytest.mark.parametrize("seed", [str(2**63), str(2**70), "-1"])
def test_seed_out_of_range_in_the_cli(tmp_path, capsys, dare_models, seed):
    recipe = recipe_file(tmp_path / "r.yml", _dare(dare_models))
    refused(capsys, ["merge", str(recipe), str(tmp_path / "out"), "--seed", seed], "seed", "2**63 - 1")
    assert not (tmp_path / "out").exists()


def test_seed_out_of_range_for_the_demo_kit(tmp_path, capsys):
    """torch.manual_seed takes at most 2**64 - 1: the demo build refuses before it trains anything."""
    refused(capsys, ["demo", "--models-dir", str(tmp_path), "--seed", str(2**64), "--quiet"], "seed", "2**63 - 1")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("seed", [1e300, float(2**63), float("inf"), float("nan"), 0.5])
def test_seed_out_of_range_in_the_app(tmp_path, dare_models, seed):
    app_merge_refuses(_dare(dare_models), workspace(tmp_path / "ws"), "seed", "2**63 - 1", seed=seed)


def test_largest_seed_merges_and_repeats(tmp_path, capsys, dare_models):
    """2**63 - 1 is accepted (seed · 1000003 + crc32 is reduced mod 2**64 for torch), the same seed twice gives the same tensors."""
    recipe = recipe_file(tmp_path / "r.yml", _dare(dare_models))
    for out in ("a", "b"):
        merged(capsys, ["merge", str(recipe), str(tmp_path / out), "--quiet", "--seed", str(2**63 - 1)])
    assert torch.equal(load_file(tmp_path / "a" / "model.safetensors")["w"], load_file(tmp_path / "b" / "model.safetensors")["w"])


# ---- --shard-size that is not a finite number ------------------------------------------------------

@pytest.mark.parametrize("size", ["inf", "-inf", "1e400GB", "nan"])
@pytest.mark.parametrize("command", ["merge", "plan"])
def test_shard_size_not_finite(tmp_path, capsys, dare_models, size, command):
    recipe = recipe_file(tmp_path / "r.yml", _dare(dare_models))
    argv = ["merge", str(recipe), str(tmp_path / "out")] if command == "merge" else ["plan", str(recipe)]
    refused(capsys, [*argv, f"--shard-size={size}"], f"size {size!r}", "500MB")


# ---- JSONL the reranker commands and the playground read ------------------------------------------

JSONL = {
    "nested 100,000 deep": ('{"query": "q", "docs": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
    "5,000-digit integer": ('{"query": "q", "docs": ["a", "b"], "labels": [' + "9" * 5000 + ", 0]}", "4300 digits"),
    "400-digit label": ('{"query": "q", "docs": ["a", "b"], "labels": [' + "9" * 400 + ", 0]}", "relevance grades"),
    "NaN label": ('{"query": "q", "docs": ["a", "b"], "labels": [NaN, 0]}', "relevance grades"),
    "lone surrogate": ('{"query": "the model \\ud800", "docs": ["a", "b"], "labels": [1, 0]}', "lone surrogate"),
}


@pytest.mark.parametrize("case", sorted(JSONL))
def test_jsonl_that_cannot_be_read(tmp_path, capsys, bert_cls_family, case):
    line, problem = JSONL[case]
    data = tmp_path / "eval.jsonl"
    data.write_text('{"query": "fine", "docs": ["a", "b"], "labels": [1, 0]}\n' + line + "\n", encoding="utf-8")
    models = ["--model", str(bert_cls_family[0]), "--model", str(bert_cls_family[1])]
    refused(capsys, ["evaluate", *models, "--input", str(data)], "eval.jsonl:2", problem)
    refused(capsys, ["rerank", *models, "--input", str(data)], "eval.jsonl:2", problem)
    with pytest.raises(gr.Error) as raised:
        rerank_compare(str(bert_cls_family[0]), str(bert_cls_family[1]), "", "", str(data), "cpu", False,
                       workspace(tmp_path / "ws"))
    app_refuses(str(raised.value.message), "eval.jsonl:2", problem)


EXAMPLES = {
    "no pos": ('{"query": "q", "neg": ["a"]}', "has no positive passage"),
    "nested 100,000 deep": ('{"query": "q", "pos": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
    "lone surrogate": ('{"query": "q\\udfff", "pos": ["a"], "neg": ["b"]}', "lone surrogate"),
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_weights_examples_that_cannot_be_used(tmp_path, capsys, bert_cls_family, case):
    line, problem = EXAMPLES[case]
    examples = tmp_path / "few.jsonl"
    examples.write_text(line + "\n", encoding="utf-8")
    refused(capsys, ["weights", "--model", str(bert_cls_family[0]), "--examples", str(examples)], "1", problem)


# ---- a symlink loop in models/ ---------------------------------------------------------------------

def test_symlink_loop_in_models(tmp_path, capsys):
    ws = workspace(tmp_path / "ws", hosted=True)
    models = ws.models_dir
    good = model(models / "good", {"w": torch.ones(3)})
    os.symlink(models / "b", models / "a")
    os.symlink(models / "a", models / "b")  # a -> b -> a
    os.symlink(".", good / "again")  # good/again/config.json is good/config.json
    looping = model(models / "looping", {"w": torch.ones(3)})
    os.symlink("tokenizer.json", looping / "tokenizer.json")  # a file linking to itself
    for ref, culprit in (("models/a", "loops"), ("models/looping", "'tokenizer.json'")):
        with pytest.raises(MergeDeskError) as raised:  # was RuntimeError("Symlink loop from …"): a blank "Error"
            check_model_ref(ref, ws)
        app_refuses(str(raised.value), ref, culprit)
        app_refuses(app_plan(yaml.safe_dump(linear([good.relative_to(ws.root), ref], [1, 1])), "out", "cpu", ws),
                    ref, culprit)
    assert [c.label for c in find_models(ws, hub_cache=tmp_path / "no-cache") if c.source == "models"] == \
        ["models/good", "models/looping"]  # good/again is good itself: listed once
    recipe = recipe_file(tmp_path / "r.yml", linear([good, models / "a"], [1, 1]))
    refused(capsys, ["merge", str(recipe), str(tmp_path / "out")], "models/a", "loops")
    recipe = recipe_file(tmp_path / "r.yml", linear([looping, good], [1, 1]))
    refused(capsys, ["merge", str(recipe), str(tmp_path / "out"), "--quiet"], "tokenizer.json", "loops")
    assert not (tmp_path / "out").exists()


# ---- finite float16 inputs whose merge overflows to Inf --------------------------------------------

def test_fp16_merge_that_overflows_is_reported_and_refused(tmp_path, capsys):
    models = [model(tmp_path / f"m{i}", {"model.layers.0.w": torch.full((4, 8), 60000.0 + i, dtype=torch.float16),
                                         "model.layers.0.fine": torch.ones(3, dtype=torch.float16)}) for i in range(2)]
    recipe = recipe_file(tmp_path / "r.yml", linear(models, [1, 1], normalize=False))
    warned = merged(capsys, ["merge", str(recipe), str(tmp_path / "out"), "--quiet"])
    assert "warning: merged tensor 'model.layers.0.w' has 32 NaN/Inf value(s) in float16" in warned, warned
    assert torch.isinf(load_file(tmp_path / "out" / "model.safetensors")["model.layers.0.w"]).all()
    refused(capsys, ["merge", str(recipe), str(tmp_path / "refused"), "--quiet", "--refuse-nonfinite"],
            "model.layers.0.w", "float16", "refuse_nonfinite")
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob("refused*"))
    ws = workspace(tmp_path / "ws")
    status, log, *_ = list(app_merge(yaml.safe_dump(linear(models, [1, 1], normalize=False)), "o", "cpu", False, 0, ws))[-1]
    assert "**⚠ 1 merged tensor(s) overflow to NaN/Inf**" in status and "input tensor(s)" not in status, status
    assert "⚠ merged tensor 'model.layers.0.w' has 32 NaN/Inf value(s) in float16" in log
