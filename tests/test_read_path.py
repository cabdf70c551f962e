"""Row blocks are read with preadv (core.io.checkpoint), not through the memory map: the merged bytes must
not change, a bad file must still fail in one line, and Stop must still end a merge within one tensor.

The reference is the engine as it was before the change (commit REFERENCE, extracted with `git archive`
and run as `python -m core merge` in a subprocess), on the same recipes and inputs: outputs are compared
byte for byte. The inputs have tensors above the plan's CHUNK_ELEMENTS, so they are merged in row blocks,
in bf16, float16 and float32, with a row count that leaves a short last block.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
from io import BytesIO
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from core.errors import CheckpointError, MergeCancelled
from core.io.checkpoint import Checkpoint
from core.merge.engine import merge
from core.merge.plan import CHUNK_ELEMENTS
from core.merge.recipe import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "24bc04eadd9337215c7e720d403bc5492668f8b1"  # main before row blocks were read with preadv
SHAPES = {"embed.weight": ((1501, 700), torch.bfloat16), "mlp.weight": ((900, 1200), torch.float16),
          "proj.weight": ((1100, 600), torch.float32), "norm.weight": ((700,), torch.bfloat16)}


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[Path]:
    """base + two fine-tunes whose large tensors are split into row blocks by the plan."""
    assert all(shape[0] * (shape[1] if len(shape) > 1 else 1) > CHUNK_ELEMENTS
               for shape, _ in list(SHAPES.values())[:3])
    root, generator, folders = tmp_path_factory.mktemp("read_path"), torch.Generator().manual_seed(7), []
    base = {name: torch.randn(shape, generator=generator) * 0.02 for name, (shape, _) in SHAPES.items()}
    for index in range(3):
        folder = root / f"m{index}"
        folder.mkdir()
        tensors = {name: (t + index * 0.003 * torch.randn(t.shape, generator=generator)).to(SHAPES[name][1])
                   for name, t in base.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"architectures": ["TinyForTests"], "model_type": "tiny"}))
        folders.append(folder)
    return folders


def recipe(method: str, models: list[Path]) -> dict:
    params = {"weight": 0.6, **({"density": 0.5} if method in ("ties", "dare_ties") else {})}
    if method == "linear":  # no base: linear averages an unlisted base_model in now (as mergekit), before it did not
        return {"merge_method": method, "dtype": "bfloat16",
                "models": [{"model": str(m), "parameters": dict(params)} for m in models]}
    return {"merge_method": method, "base_model": str(models[0]), "dtype": "bfloat16",
            "models": [{"model": str(m), "parameters": dict(params)} for m in models[1:]]}


@pytest.fixture(scope="module")
def reference_code(tmp_path_factory) -> Path:
    """The pre-change core/ package, extracted from git."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", REFERENCE, "core"], capture_output=True)
    if archive.returncode:
        pytest.skip(f"commit {REFERENCE[:8]} not in this clone: {archive.stderr.decode()[:200]}")
    folder = tmp_path_factory.mktemp("reference")
    tarfile.open(fileobj=BytesIO(archive.stdout)).extractall(folder, filter="data")
    return folder


def weight_bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "linear", "dare_ties"])
def test_merged_bytes_match_the_engine_before_preadv(method, family, reference_code, tmp_path):
    recipe_file = tmp_path / "recipe.yml"
    recipe_file.write_text(yaml.safe_dump(recipe(method, family)))
    env = {**os.environ, "PYTHONPATH": str(reference_code)}
    done = subprocess.run([sys.executable, "-P", "-m", "core", "merge", str(recipe_file), str(tmp_path / "before")],
                          cwd=reference_code, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    merge(recipe_from_dict(recipe(method, family)), tmp_path / "now")
    before, now = weight_bytes(tmp_path / "before"), weight_bytes(tmp_path / "now")
    assert before and before.keys() == now.keys()
    assert all(before[name] == now[name] for name in before)


def test_a_row_block_equals_the_same_rows_of_the_whole_tensor(family):
    with Checkpoint.open(str(family[1])) as checkpoint:
        for name, (shape, dtype) in SHAPES.items():
            whole = checkpoint.read(name)
            for rows in (slice(0, 1), slice(300, 749), slice(shape[0] - 5, shape[0] + 10), slice(10, 10)):
                block = checkpoint.read(name, rows=rows)
                assert block.dtype == dtype and torch.equal(block, whole[rows])
            block = checkpoint.read(name, rows=slice(0, 2))
            block.add_(1)  # a copy: writing to it leaves the file's tensor as it was
            assert not torch.equal(block, checkpoint.read(name, rows=slice(0, 2)))


def test_a_file_cut_short_after_opening_fails_in_one_line(family, tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((family[1] / name).read_bytes())
    with Checkpoint.open(str(folder)) as checkpoint:  # the header is checked here, against the whole file
        last = max(checkpoint.tensors.values(), key=lambda info: info.offset + info.nbytes)
        os.truncate(folder / "model.safetensors", last.offset + last.nbytes - 1000)
        with pytest.raises(CheckpointError, match=f"ends inside tensor {last.name!r}"):
            checkpoint.read(last.name, rows=slice(0, last.shape[0]))


def test_stop_during_a_block_read_ends_the_merge_within_one_tensor(family, tmp_path, monkeypatch):
    cancel, real_read, reads, tensors = threading.Event(), Checkpoint.read, [], []

    def read(self, name, **options):
        reads.append(name)
        if options.get("rows") is not None and len(reads) == 2:
            cancel.set()  # Stop pressed while the first block of a tensor is being read
        return real_read(self, name, **options)

    monkeypatch.setattr(Checkpoint, "read", read)
    out = tmp_path / "stopped"
    with pytest.raises(MergeCancelled):
        merge(recipe_from_dict(recipe("task_arithmetic", family)), out,
              on_progress=lambda event: tensors.append(event.tensor), cancel=cancel)
    assert tensors == [] and set(reads) == {reads[0]}  # no tensor finished, no second tensor read
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
