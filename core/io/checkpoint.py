"""Read a checkpoint lazily: resolve a reference, list its tensors, read one tensor at a time.

    ckpt = Checkpoint.open("./models/base")            # or a Hub id such as "BAAI/bge-reranker-base"
    ckpt.tensors["model.norm.weight"].shape            # from headers only, nothing loaded
    ckpt.read("model.norm.weight", device="cpu")       # one tensor, straight from the mmap
    ckpt.read("lm_head.weight", rows=slice(0, 1024))   # or a block of rows
    with Checkpoint.open(ref) as ckpt: ...             # memory maps closed at the end of the block

A whole safetensors tensor is a view of the memory-mapped file (`torch.frombuffer`): nothing is
copied, and its pages stay page cache (file-backed), not process memory. A block of rows (what the
merge engine reads) is instead copied with one `preadv` into a fresh tensor: touching mapped pages
keeps every page read mapped into the process until the map closes, so at inputs larger than RAM
the kernel must unmap them again to reclaim memory (RSS grew to 21.8 GB and a 3 x 7.6 GB merge ran
~10x slower per byte); a copied block costs only its own size, and the files are opened
POSIX_FADV_SEQUENTIAL so the kernel reads ahead of the engine.
`.bin` pickles are opened only with `torch.load(weights_only=True, mmap=True)`; arbitrary
code in a pickle is refused, never executed. Every file a checkpoint's own index names must
lie inside its folder (`own_file`): a downloaded repo whose weight_map says `../../secret`
or `/etc/x` is refused, in every mode. A reference is resolved to its folder by core.io.reference
(Hub ids fetched with huggingface_hub; when the Hub cannot be reached, core.io.hub: probed once, no
retries, a cached repo still opens for this machine's user, and anything else fails at once with one
line that says so).
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import torch

from core.errors import CheckpointError
from core.io.header import TensorInfo, read_header
from core.io.json_input import parse_json
from core.io.reference import resolve_reference


class Checkpoint:
    """One model's weights, listed from headers and read tensor by tensor."""

    def __init__(self, ref: str, folder: Path):
        self.ref = ref  # what the user wrote
        self.folder = folder  # local folder holding the files
        self.config = read_json_object(folder / "config.json") if (folder / "config.json").exists() else {}
        self.tensors: dict[str, TensorInfo] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._files: dict[Path, int] = {}  # descriptors for preadv of row blocks
        self._pickled: dict[str, torch.Tensor] = {}
        self._list_tensors()

    @classmethod
    def open(cls, ref: str, *, token: str | bool | None = None) -> "Checkpoint":
        """Open a local folder or a Hugging Face Hub id (token: as for resolve_reference)."""
        return cls(ref, resolve_reference(ref, token=token))

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def num_layers(self) -> int | None:
        """The layer count from config.json, if it says."""
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(self.config.get(key), int):
                return self.config[key]
        return None

    def read(self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             rows: slice | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor (or rows[start:stop] of its first dimension) on `device`, cast to `dtype`.

        out: a CPU tensor of the block's shape and stored dtype to read into, reused from block to block
        (a fresh block of a megabyte or more is a fresh mapping whose every page faults on first write)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.ref}: has no tensor {name!r}")
        if name in self._pickled:
            tensor = self._pickled[name]
            tensor = tensor[rows] if rows is not None else tensor
            tensor = out.copy_(tensor) if out is not None else tensor
        else:
            tensor = self._mapped(info, rows, out)
        return tensor.to(device=device, dtype=dtype or tensor.dtype)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the memory maps (tensors already read stay valid only if copied)."""
        for mapping in self._maps.values():
            try:
                mapping.close()
            except BufferError:  # a view still points into it; the OS frees it with the view
                pass
        self._maps.clear()
        for descriptor in self._files.values():
            os.close(descriptor)
        self._files.clear()
        self._pickled.clear()

    def release(self, name: str, rows: slice | None = None) -> None:
        """Tell the kernel that tensor `name`'s bytes (or those of its `rows`) will not be read again
        (POSIX_FADV_DONTNEED on their file range).

        Why: when the inputs are larger than RAM, pages kept after use push out the pages of the tensors not read
        yet (cached by an earlier read), which then come from the disk a second time. A hint: ignored where the
        OS or the file system does not take it, and for a .bin checkpoint (loaded, not read from its file)."""
        info = self.tensors.get(name)
        if info is None or name in self._pickled or not hasattr(os, "posix_fadvise"):
            return
        offset, length = _byte_range(info, rows)
        if length == 0:  # 0 would mean "to the end of the file"
            return
        try:
            os.posix_fadvise(self._descriptor(info.file), offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass

    def _mapped(self, info: TensorInfo, rows: slice | None, out: torch.Tensor | None) -> torch.Tensor:
        shape, (offset, _) = list(info.shape), _byte_range(info, rows)
        if rows is not None and shape:
            start, stop, _ = rows.indices(shape[0])
            shape[0] = max(0, stop - start)
        count = 1
        for dim in shape:
            count *= dim
        if count == 0:
            return torch.empty(shape, dtype=info.dtype)
        if rows is not None or out is not None:
            return self._pread(info, shape, offset, out)
        mapping = self._maps.get(info.file)
        if mapping is None:
            with open(info.file, "rb") as handle:
                # ACCESS_COPY: writable for torch.frombuffer, yet pages stay file-backed until written.
                mapping = self._maps[info.file] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        return torch.frombuffer(mapping, dtype=info.dtype, count=count, offset=offset).reshape(shape)

    def _pread(self, info: TensorInfo, shape: list[int], offset: int, out: torch.Tensor | None) -> torch.Tensor:
        """A block copied from the file into `out` or a new tensor (the module docstring says why not the map)."""
        descriptor = self._descriptor(info.file)
        block = torch.empty(shape, dtype=info.dtype) if out is None else out
        if list(block.shape) != shape or block.dtype != info.dtype or not block.is_contiguous():
            raise ValueError(f"out must be a contiguous {info.dtype} tensor of shape {shape}, got {block.dtype} "
                             f"{list(block.shape)}")
        buffer, done = memoryview(block.view(-1).view(torch.uint8).numpy()), 0
        while done < len(buffer):
            got = os.preadv(descriptor, [buffer[done:]], offset + done)
            if got == 0:
                raise CheckpointError(f"{self.ref}: {info.file.name} ends inside tensor {info.name!r}")
            done += got
        return block

    def _descriptor(self, file: Path) -> int:
        """The file opened for preadv, once; POSIX_FADV_SEQUENTIAL so the kernel reads ahead of the engine."""
        descriptor = self._files.get(file)
        if descriptor is None:
            descriptor = self._files[file] = os.open(file, os.O_RDONLY)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return descriptor

    def _list_tensors(self) -> None:
        files = sorted(self.folder.glob("*.safetensors"))
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            files = index_files(self.folder, index, self.ref)
        for file in files:
            if not file.exists():
                raise CheckpointError(f"{self.ref}: index lists {file.name}, which is missing")
            found, _ = read_header(file)
            self._add(found)
        if not files:
            self._list_pickles()
        if not self.tensors:
            raise CheckpointError(f"{self.ref}: no weights found in {self.folder} "
                                  "(expected *.safetensors or pytorch_model.bin)")

    def _list_pickles(self) -> None:
        index = self.folder / "pytorch_model.bin.index.json"
        if index.exists():
            files = index_files(self.folder, index, self.ref)
        else:
            files = sorted(self.folder.glob("*.bin"))
        for file in files:
            state = _load_pickle(file)
            self._pickled.update(state)
            self._add({name: TensorInfo(name, tuple(t.shape), t.dtype, file, 0, t.numel() * t.element_size())
                       for name, t in state.items()})

    def _add(self, found: dict[str, TensorInfo]) -> None:
        for name, info in found.items():
            if name in self.tensors:
                raise CheckpointError(f"{self.ref}: tensor {name!r} appears in both "
                                      f"{self.tensors[name].file.name} and {info.file.name}")
            self.tensors[name] = info


def _byte_range(info: TensorInfo, rows: slice | None) -> tuple[int, int]:
    """(file offset, length) of a tensor's bytes, or of its rows[start:stop] (first dimension)."""
    if rows is None or not info.shape:
        return info.offset, info.nbytes
    start, stop, _ = rows.indices(info.shape[0])
    row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
    return info.offset + start * row_bytes, max(0, stop - start) * row_bytes


def check_own_files(folder: Path, ref: str) -> None:
    """Refuse a folder whose own files name files outside it, before transformers opens any of them:
    the weight indexes' shards and tokenizer_config.json's `fast_tokenizer_files` (transformers joins
    those names to the folder as they are)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            index_files(folder, folder / index, ref)
    if (folder / "tokenizer_config.json").exists():
        names = read_json_object(folder / "tokenizer_config.json").get("fast_tokenizer_files") or []
        for name in names if isinstance(names, list) else [names]:
            own_file(folder, name, ref, named_by="tokenizer_config.json")


def index_files(folder: Path, index: Path, ref: str) -> list[Path]:
    """The shard files a weight index (safetensors or .bin) names, each checked with own_file."""
    weight_map = read_json_object(index).get("weight_map", {})
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{ref}: {index.name} has no weight_map object")
    return sorted({own_file(folder, name, ref, named_by=index.name) for name in weight_map.values()})


def own_file(folder: Path, name: object, ref: str, *, named_by: str) -> Path:
    """folder / name, when that stays inside folder; else a CheckpointError naming the model and the file.

    Refused: absolute names, '..', backslashes, a folder on the way that links out, and a
    file that links out, except a link into the Hugging Face cache's own blob store (that
    cache keeps every snapshot file as such a link).

    Example:
        >>> own_file(Path("m"), "../../outside.safetensors", "org/evil", named_by="model.safetensors.index.json")
        CheckpointError: org/evil: model.safetensors.index.json names '../../outside.safetensors', which lies …
    """
    refuse = CheckpointError(f"{ref}: {named_by} names {name!r}, which lies outside the model's folder: "
                             "a model may only use its own files, so this one is refused")
    text = name if isinstance(name, str) else ""
    parts = Path(text).parts
    if not text or "\\" in text or Path(text).is_absolute() or ".." in parts:
        raise refuse
    home, path = folder.resolve(), folder / text
    allowed = [home] + ([home.parent.parent / "blobs"] if home.parent.name == "snapshots" else [])
    links_out = path.is_symlink() and not lies_within(path.resolve(), allowed)
    if links_out or not lies_within(path.parent.resolve(), [home]):
        raise refuse
    return path


def lies_within(path: Path, folders: list[Path]) -> bool:
    """Whether path is one of folders or inside one (compare resolved paths)."""
    return any(path == folder or folder in path.parents for folder in folders)


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    """A .bin state dict, loaded so that no pickled code can run (weights_only=True)."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (pre-zipfile) format cannot be memory-mapped
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a safe state dict"
        raise CheckpointError(f"{file}: not a plain tensor state dict that can be loaded safely "
                              f"({str(error).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors")
    return state


def read_json_object(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    data = parse_json(text, where=str(path), error=CheckpointError)  # deep nesting, huge ints: one line too
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
