"""Shared pieces of the merge reliability tests (promises 1-5 and 8 of docs/RELIABILITY.md).

A tiny multi-shard model family written with the safetensors library, a linear recipe over it,
the merge that recipe must give computed here with numpy (independent of core/), a digest of
a folder's bytes (to prove a folder was left exactly as it was), `ByteBudget` (a stand-in for
`open` in core.io.writer that fails once a number of bytes is written), and `figures`, which prints
one line of counts that docs/RELIABILITY.md quotes (run pytest with -s to see them).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

TENSORS = 24  # per model: enough for several shards and a measurable write phase
SHAPE = (256, 192)  # float32: 192 KB per tensor, 4.7 MB per model


def build_models(root: Path, count: int = 3, *, seed: int = 0) -> list[Path]:
    """`count` model folders root/m0.. holding TENSORS seeded float32 tensors and a config.json."""
    generator = torch.Generator().manual_seed(seed)
    folders = []
    for index in range(count):
        folder = root / f"m{index}"
        folder.mkdir(parents=True)
        tensors = {f"model.layers.{i}.weight": torch.randn(SHAPE, generator=generator) for i in range(TENSORS)}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config = {"architectures": ["TinyForTests"], "model_type": "tiny", "num_hidden_layers": TENSORS}
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders


def linear_recipe(models: list[Path], weights: list[float]) -> dict:
    """A mergekit linear recipe (plain data) over `models` with `weights`."""
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": w}}
                                                 for m, w in zip(models, weights)]}


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def model_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder (one file or shards), as float64 numpy arrays."""
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update({name: t.to(torch.float64).numpy() for name, t in load_file(file).items()})
    return found


def expected_linear(models: list[Path], weights: list[float]) -> dict[str, np.ndarray]:
    """Σ w_i x_i / Σ w_i per tensor (mergekit's normalized linear merge), in float64."""
    inputs = [model_tensors(m) for m in models]
    return {name: sum(w * t[name] for w, t in zip(weights, inputs)) / sum(weights) for name in inputs[0]}


def matches(folder: Path, expected: dict[str, np.ndarray]) -> bool:
    """True when `folder` holds exactly the expected tensors, to float32 rounding."""
    found = model_tensors(folder)
    return found.keys() == expected.keys() and all(np.allclose(found[n], expected[n], atol=1e-5) for n in found)


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests, identical folders."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def one_line(message: str) -> bool:
    """An error message a person can read: non-empty, a single line, no traceback."""
    return bool(message.strip()) and "\n" not in message.strip() and "Traceback" not in message


def figures(promise: str, **counts) -> None:
    """Print `promise: name value, …` on its own line (pytest -s shows it; the doc quotes it)."""
    print(f"\nreliability {promise}: " + ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in counts.items()))


def disk_full(path: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class ByteBudget:
    """Stands in for `open` in core.io.writer: files accept `budget` bytes in all, then `when_spent(path)` runs.

    The bytes that fit are written and flushed first, as a real disk or a crash would leave them.
    By default `when_spent` raises ENOSPC (disk full); the kill test passes one that SIGKILLs.
    """

    def __init__(self, budget: int, when_spent: Callable[[str], None] = disk_full):
        self.budget = budget
        self.when_spent = when_spent

    def __call__(self, path, mode="r", *args, **kwargs):
        return _Budgeted(open(path, mode, *args, **kwargs), self, str(path))


class _Budgeted:
    def __init__(self, handle, budget: ByteBudget, path: str):
        self.handle, self.budget, self.path = handle, budget, path

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        fits = min(len(data), self.budget.budget)
        self.handle.write(data[:fits])
        self.budget.budget -= fits
        if fits < len(data):
            self.handle.flush()
            self.budget.when_spent(self.path)
        return fits

    def __getattr__(self, name):
        return getattr(self.handle, name)
