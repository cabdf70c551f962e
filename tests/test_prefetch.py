"""The row-block reader thread (core.io.prefetch) and the out-of-core page release (Checkpoint.release).

The reader must give exactly the rows a direct read gives, in order, end its thread however the loop
ends (all blocks, a break, a read error, a Stop in a merge) and raise a read error in the caller. A merge
whose inputs count as larger than RAM releases their pages as it goes, and still writes the same bytes.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.devices import block_threads
from core.errors import CheckpointError, MergeCancelled
from core.io.checkpoint import Checkpoint
from core.io.prefetch import RowBlocks
from core.merge import engine
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict

SHAPES = {"a.weight": ((1001, 700), torch.bfloat16), "b.weight": ((1001, 700), torch.float32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Three one-file models with two tensors of 1001 rows (so a 128-row block leaves a short last one)."""
    root, generator, folders = tmp_path_factory.mktemp("prefetch"), torch.Generator().manual_seed(3), []
    for index in range(3):
        folder = root / f"m{index}"
        folder.mkdir()
        tensors = {name: torch.randn(shape, generator=generator).to(dtype) for name, (shape, dtype) in SHAPES.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"architectures": ["TinyForTests"], "model_type": "tiny"}))
        folders.append(folder)
    return folders


def readers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "row-block reader"]


def pieces(rows: int, per_block: int) -> list[slice]:
    return [slice(start, start + per_block) for start in range(0, rows, per_block)]


def test_blocks_read_ahead_are_the_rows_of_each_tensor_in_order(models):
    checkpoints = [Checkpoint.open(str(folder)) for folder in models]
    try:
        reads = [(checkpoints[0], "a.weight"), (checkpoints[1], "b.weight"), (checkpoints[2], "a.weight")]
        wholes = [checkpoint.read(name).clone() for checkpoint, name in reads]
        seen = []
        with RowBlocks(reads, pieces(1001, 128)) as blocks:
            for piece, stored in blocks:
                assert [block.dtype for block in stored] == [torch.bfloat16, torch.float32, torch.bfloat16]
                assert all(torch.equal(block, whole[piece]) for block, whole in zip(stored, wholes))
                seen.append((piece.start, len(stored[0])))
        assert seen == [(start, min(128, 1001 - start)) for start in range(0, 1001, 128)]  # last block: 105 rows
        assert not readers()
    finally:
        for checkpoint in checkpoints:
            checkpoint.close()


def test_leaving_the_loop_early_ends_the_reader_thread(models):
    with Checkpoint.open(str(models[0])) as checkpoint:
        with RowBlocks([(checkpoint, "a.weight")], pieces(1001, 10)) as blocks:
            for number, _ in enumerate(blocks):
                if number == 2:
                    break
        assert not readers()


def test_a_read_error_on_the_thread_is_raised_in_the_caller(models, tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((models[0] / name).read_bytes())
    with Checkpoint.open(str(folder)) as checkpoint:
        last = max(checkpoint.tensors.values(), key=lambda info: info.offset + info.nbytes)
        os.truncate(folder / "model.safetensors", last.offset + last.nbytes // 2)
        got = []
        with pytest.raises(CheckpointError, match=f"ends inside tensor {last.name!r}"):
            with RowBlocks([(checkpoint, last.name)], pieces(1001, 100)) as blocks:
                for piece, _ in blocks:
                    got.append(piece.start)
        assert got == [0, 100, 200, 300, 400]  # the blocks before the cut arrive first
        assert not readers()


def recipe(models: list[Path]) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": str(models[0]), "dtype": "bfloat16",
            "models": [{"model": str(m), "parameters": {"weight": 0.7}} for m in models[1:]]}


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_stopped_merge_leaves_no_reader_thread_and_no_open_file(models, tmp_path, monkeypatch):
    cancel, real_read, reads = threading.Event(), Checkpoint.read, []

    def read(self, name, **options):
        reads.append(name)
        if len(reads) == 3:
            cancel.set()  # Stop pressed while the reader thread fills the first blocks
        return real_read(self, name, **options)

    monkeypatch.setattr(Checkpoint, "read", read)
    before = open_descriptors()
    with pytest.raises(MergeCancelled):
        merge(recipe_from_dict(recipe(models)), tmp_path / "stopped", cancel=cancel)
    assert not readers() and open_descriptors() == before
    assert not any(tmp_path.iterdir())  # no half model


def test_inputs_larger_than_ram_are_released_as_merged_and_give_the_same_bytes(models, tmp_path, monkeypatch):
    merge(recipe_from_dict(recipe(models)), tmp_path / "in-ram")
    released, real_release = [], Checkpoint.release

    def release(self, name, rows=None):
        released.append((self.folder.name, name, rows and (rows.start, rows.stop)))
        real_release(self, name, rows)

    class LittleRam:  # what the engine asks psutil: 1 byte of RAM available, so the inputs do not fit
        @staticmethod
        def virtual_memory():
            return type("Memory", (), {"available": 1})

    monkeypatch.setattr(Checkpoint, "release", release)
    monkeypatch.setattr(engine, "psutil", LittleRam)  # the engine's view only: the preflight still sees this RAM
    merge(recipe_from_dict(recipe(models)), tmp_path / "out-of-core")
    files = [(tmp_path / out / "model.safetensors").read_bytes() for out in ("in-ram", "out-of-core")]
    assert files[0] == files[1]
    rows_per_block = engine.plan_for(recipe_from_dict(recipe(models)),
                                     {str(m): Checkpoint.open(str(m)) for m in models}).jobs[0].rows_per_chunk
    for model in ("m0", "m1", "m2"):  # each block of each input once as merged, then each whole tensor
        for name in SHAPES:
            blocks = [rows for folder, tensor, rows in released if folder == model and tensor == name and rows]
            assert blocks == [(start, start + rows_per_block) for start in range(0, 1001, rows_per_block)]
            assert (model, name, None) in released


def test_a_released_range_is_the_rows_bytes_in_the_file(models, monkeypatch):
    hints = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: hints.append((offset, length, advice)))
    with Checkpoint.open(str(models[0])) as checkpoint:
        info = checkpoint.tensors["b.weight"]  # float32, 700 columns: 2800 bytes a row
        checkpoint.release("b.weight", slice(1000, 1100))  # past the end: only row 1000
        checkpoint.release("b.weight")
    dontneed = [hint[:2] for hint in hints if hint[2] == os.POSIX_FADV_DONTNEED]
    assert dontneed == [(info.offset + 1000 * 2800, 2800), (info.offset, 1001 * 2800)]


def test_block_merges_restore_torchs_thread_count(models, tmp_path):
    before = torch.get_num_threads()
    merge(recipe_from_dict(recipe(models)), tmp_path / "merged")
    assert torch.get_num_threads() == before


def test_two_block_merges_that_overlap_restore_the_count_when_the_last_ends():
    """The app can run a merge and a sweep's merge at once: the first one in must not 'restore' the count the
    second set, nor the second the first's (before, the one that ended last left torch on one thread fewer)."""
    before, cpu = torch.get_num_threads(), torch.device("cpu")
    torch.set_num_threads(2)
    try:
        first, second = block_threads(cpu, True), block_threads(cpu, True)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert torch.get_num_threads() == max(1, min(2, (os.cpu_count() or 1) - 1))  # second still merging
        second.__exit__(None, None, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
