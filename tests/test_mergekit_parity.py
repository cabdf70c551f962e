"""Recipes ported from mergekit give mergekit's tensors: both tools run the same recipe.

Runs when mergekit is installed (found as $MERGEKIT_YAML, on PATH, or in /work/mkvenv, a
separate venv because mergekit pins its own dependencies); skipped otherwise. Random
methods (DARE, DELLA) cannot match draw for draw and are checked statistically elsewhere.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.engine import merge
from core.recipe import recipe_from_dict

MERGEKIT = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml") or "/work/mkvenv/bin/mergekit-yaml"
pytestmark = pytest.mark.skipif(not Path(MERGEKIT).exists(), reason="mergekit not installed")


def recipes(base, a, b):
    w = lambda x, y: [{"model": str(a), "parameters": {"weight": x}}, {"model": str(b), "parameters": {"weight": y}}]
    return {
        "linear": {"merge_method": "linear", "models": w(0.7, 0.5)},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base), "models": w(0.7, [0.2, 0.9]),
                            "parameters": {"lambda": 0.8}},
        "ties": {"merge_method": "ties", "base_model": str(base), "models": w(0.6, 0.4),
                 "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]}},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": str(base), "models": w(0.5, 0.5),
                             "parameters": {"density": 0.6, "gamma": 0.05}},
        "slerp": {"merge_method": "slerp", "base_model": str(base),
                  "models": [{"model": str(base)}, {"model": str(a)}], "parameters": {"t": [0.1, 0.9]}},
        "nuslerp": {"merge_method": "nuslerp", "base_model": str(base), "models": w(1.0, 2.0)},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base),
                        "models": [{"model": str(a)}, {"model": str(b)}, {"model": str(base)}]},
    }


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "breadcrumbs_ties", "slerp", "nuslerp",
                                    "model_stock"])
def test_same_tensors_as_mergekit(method, llama_family, tmp_path):
    spec = {**recipes(*llama_family)[method], "dtype": "float32"}
    recipe_file = tmp_path / "recipe.yml"
    recipe_file.write_text(yaml.safe_dump(spec))
    run = subprocess.run([MERGEKIT, str(recipe_file), str(tmp_path / "mergekit"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ours = merge(recipe_from_dict(spec), tmp_path / "ours")
    theirs = {}
    for file in (tmp_path / "mergekit").glob("*.safetensors"):
        theirs.update(load_file(file))
    mine = {}
    for file in ours.glob("*.safetensors"):
        mine.update(load_file(file))
    assert set(mine) == set(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, atol=2e-6, rtol=1e-5, msg=f"{method}: {name}")
