"""Stream a merged model into safetensors shards and bring its side files along.

`ShardWriter` streams tensors into safetensors shards: each shard's header is computed from
the planned shapes before any data, then tensor bytes are appended as they arrive (chunk by
chunk), so a shard is never buffered in memory; every WRITEBACK_EVERY bytes the kernel is asked
to start writing them to disk, so the fsync before the folder appears has little left to wait
for. `copy_side_files` brings config, tokenizer and sentence-transformers files along.
The folder they write into is staged by core.io.staging (OUT.partial, renamed when complete).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from core.errors import CheckpointError
from core.io.header import encode_header
from core.merge.plan import MergePlan

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")
NOT_COPIED = {"README.md", "mergekit_config.yml", "model.safetensors.index.json", "pytorch_model.bin.index.json"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja")
WRITEBACK_EVERY = 128 << 20  # bytes appended to a shard between two writeback requests


class ShardWriter:
    """Streams planned tensors, in plan order, into the plan's safetensors shards."""

    def __init__(self, folder: Path, plan: MergePlan):
        self.folder = folder
        self.shards = plan.shards
        self.jobs = {job.name: job for job in plan.jobs}
        self.order = [name for _, names in plan.shards for name in names]
        self.position = 0  # index into self.order of the tensor being written
        self.written = 0  # bytes of that tensor written so far
        self.shard_index = -1
        self.handle = None
        self.unflushed = 0  # bytes appended to the open shard since the last writeback request

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next bytes of tensor `name` (the whole tensor or its next block of rows)."""
        expected = self.order[self.position] if self.position < len(self.order) else None
        job = self.jobs.get(name)
        if name != expected or job is None or chunk.dtype != job.out_dtype:
            raise RuntimeError(f"writer expected {expected!r} in {job and job.out_dtype}, got {name!r} in {chunk.dtype}")
        if self.written == 0 and not self._in_open_shard(name):
            self._open_next_shard()
        data = chunk.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self.handle.write(memoryview(data))
        self.unflushed += data.nbytes
        if self.unflushed >= WRITEBACK_EVERY:
            self._start_writeback()
        self.written += data.nbytes
        if self.written > job.nbytes:
            raise RuntimeError(f"writer got {self.written} bytes for {name}, planned {job.nbytes}")
        if self.written == job.nbytes:
            self.position += 1
            self.written = 0

    def finish(self) -> None:
        """Close the last shard and write the index; every planned tensor must be complete."""
        if self.position != len(self.order):
            raise RuntimeError(f"writer finished after {self.position} of {len(self.order)} tensors")
        self._close_shard()
        if len(self.shards) > 1:
            weight_map = {name: file for file, names in self.shards for name in names}
            total = sum(job.nbytes for job in self.jobs.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def _in_open_shard(self, name: str) -> bool:
        return self.shard_index >= 0 and name in self.shards[self.shard_index][1]

    def _open_next_shard(self) -> None:
        self._close_shard()
        self.shard_index += 1
        file, names = self.shards[self.shard_index]
        entries = [(n, self.jobs[n].shape, self.jobs[n].out_dtype) for n in names]
        self.handle = open(self.folder / file, "wb")
        self.handle.write(encode_header(entries, {"format": "pt"}))
        self.unflushed = 0

    def _start_writeback(self) -> None:
        """Ask the kernel to start writing the last bytes to disk now, without waiting for it.

        Why: the final fsync otherwise waits for the whole shard (0.4 s per 1.5 GB here); this
        way most of it is written while the next tensors merge. POSIX_FADV_DONTNEED starts
        writeback of dirty pages and drops only pages already clean, so the shard stays cached.
        """
        self.handle.flush()
        if hasattr(os, "posix_fadvise"):  # Linux and most Unixes; elsewhere the final fsync does it all
            end = self.handle.tell()
            try:
                os.posix_fadvise(self.handle.fileno(), end - self.unflushed, self.unflushed, os.POSIX_FADV_DONTNEED)
            except OSError:  # a file system that refuses the hint: only speed is lost, fsync still flushes
                pass
        self.unflushed = 0

    def _close_shard(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None

    def abort(self) -> None:
        """Close an open shard after a failure (the staged folder is then deleted)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def copy_side_files(source: Path, out: Path, *, tokenizer_source: Path | None, dtype: torch.dtype,
                    untie: bool = False) -> None:
    """Config, tokenizer, generation and sentence-transformers files from `source` into `out`.

    Files at the top of `source` are copied, weight files excepted. Of its sub-folders only the
    sentence-transformers module folders that modules.json names (1_Pooling/, 2_Normalize/, …)
    come along, whole: anything else beside the model (onnx/, checkpoint-500/) holds the unmerged
    source, not the merge. Known limit: a module with weights of its own (2_Dense/) is not merged
    but taken from `source`, as LM-Cocktail does, so the output still loads. config.json gets the new dtype. With `tokenizer_source`, its tokenizer
    files replace the source's. With `untie` (an lm_head is written though `source` is tied) config.json
    gets tie_word_embeddings: false, so the written head is the one transformers loads.
    """
    for item in source.iterdir():
        if item.is_symlink() and not item.exists():
            raise CheckpointError(f"{source}: {item.name} is a symbolic link that loops or leads nowhere: "
                                  "repair or remove it, then merge again")
        if item.is_file() and not item.name.startswith(".") and item.name not in NOT_COPIED \
                and not item.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(item, out / item.name)
    for folder in _module_folders(source):
        shutil.copytree(source / folder, out / folder, dirs_exist_ok=True, ignore=_HIDDEN)
    if tokenizer_source is not None:
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
            if (tokenizer_source / name).exists():
                shutil.copyfile(tokenizer_source / name, out / name)
    config_file = out / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        dtype_name = str(dtype).removeprefix("torch.")
        config["dtype"] = dtype_name
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype_name
        if untie:
            config["tie_word_embeddings"] = False
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


_HIDDEN = shutil.ignore_patterns(".*")


def _module_folders(source: Path) -> list[str]:
    """The sub-folders modules.json names as sentence-transformers modules (the Transformer's "" excluded)."""
    try:
        modules = json.loads((source / "modules.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    paths = [m.get("path") for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    inside = source.resolve()
    return [path for path in paths if isinstance(path, str) and path
            and inside in (source / path).resolve().parents and (source / path).is_dir()]
