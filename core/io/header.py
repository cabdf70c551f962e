"""Read and check a safetensors file's header without trusting it.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
data. `read_header` checks every field (length within the file and under 100 MB, known dtype,
shape × item size == byte count, offsets inside the data and not overlapping) before anything
is mapped, so a truncated or hostile file gives one clear CheckpointError, never a crash or a
huge allocation. `encode_header` is the inverse, used by the writer.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
DTYPE_CODES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is; enough to plan a merge without reading data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int  # absolute byte offset of the data in `file` (safetensors only)
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Tensors and `__metadata__` of one safetensors file, every field checked."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: file is too short to be safetensors ({size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: safetensors header claims {length} bytes (limit 100 MB): file is corrupt")
            if 8 + length > size:
                raise CheckpointError(f"{path}: safetensors header ({length} bytes) runs past the end of "
                                      f"the file ({size} bytes): file is truncated")
            raw = handle.read(length)
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({error})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: safetensors header nests too deeply to be a tensor list: file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + length, size - 8 - length
    tensors = {name: _tensor_info(path, name, entry, data_start, data_size) for name, entry in header.items()}
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values())
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: tensors {first} and {second} overlap: file is corrupt")
    return tensors, metadata if isinstance(metadata, dict) else {}


def encode_header(entries: list[tuple[str, tuple[int, ...], torch.dtype]], metadata: dict) -> bytes:
    """Length prefix + JSON header for tensors laid out back to back in the given order.

    The JSON is padded with spaces to a multiple of 8 bytes so the data stays aligned.
    """
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = math.prod(shape) * _itemsize(dtype)
        header[name] = {"dtype": CODE_OF_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _tensor_info(path: Path, name: str, entry: object, data_start: int, data_size: int) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: header entry must be an object")
    dtype = DTYPE_CODES.get(entry.get("dtype"))
    if dtype is None:
        raise CheckpointError(f"{where}: unknown dtype {entry.get('dtype')!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} lie outside the file's {data_size} data bytes")
    nbytes = offsets[1] - offsets[0]
    expected = math.prod(shape) * _itemsize(dtype)
    if nbytes != expected:
        raise CheckpointError(f"{where}: shape {shape} in {entry['dtype']} needs {expected} bytes, header gives {nbytes}")
    return TensorInfo(name, tuple(shape), dtype, path, data_start + offsets[0], nbytes)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
