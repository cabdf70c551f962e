"""Compute devices: parse the user's choice, check it exists, describe what is there.

Accepted spellings: "cpu", "auto" (cuda:0 → mps → cpu), "cuda" (= cuda:0), "cuda:N", "mps".
The merge engine, the reranker and the UI all go through `parse_device`, so a typo or a GPU
that is not there gives the same one-line error everywhere.

Example:
    >>> parse_device("cpu")
    device(type='cpu')
    >>> parse_device("cuda:7")        # on a machine without 8 GPUs
    DeviceError: device 'cuda:7' does not exist: this machine has 0 CUDA device(s) ...
"""
from __future__ import annotations

import os
import threading
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from core.errors import DeviceError
from core.units import human

_CUDA = re.compile(r"^cuda(?::(\d+))?$")
DEVICE_HELP = "cpu | auto | cuda | cuda:N | mps (default cpu)"  # every --device of the CLI: the spellings above


def parse_device(spec: str) -> torch.device:
    """Turn a device string into a torch.device that exists on this machine."""
    text = str(spec).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        return auto_devices()[0]
    if text == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' is not available on this machine: use 'cpu' or 'auto'")
        return torch.device("mps")
    match = _CUDA.match(text)
    if not match:
        raise DeviceError(f"unknown device {spec!r}: use 'cpu', 'auto', 'cuda', 'cuda:N' or 'mps'")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise DeviceError(
            f"device {spec!r} does not exist: this machine has {count} CUDA device(s); "
            "use 'cpu' or 'auto'"
        )
    return torch.device("cuda", index)


def auto_devices() -> list[torch.device]:
    """What "auto" means here: every CUDA GPU, else the Apple GPU, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if _mps_available():
        return [torch.device("mps")]
    return [torch.device("cpu")]


def devices_for(spec: str) -> list[torch.device]:
    """The devices a job may use: all GPUs for "auto" (tensors are spread), else just one."""
    if str(spec).strip().lower() == "auto":
        return auto_devices()
    return [parse_device(spec)]


@dataclass(frozen=True)
class DeviceInfo:
    """One choice for a device picker."""

    spec: str  # what parse_device accepts, e.g. "cuda:0"
    label: str  # what a person reads, e.g. "cuda:0 · NVIDIA H100 · 75.2 GB / 79.1 GB free"
    free_bytes: int | None  # free accelerator memory; None for the CPU (see monitor for RAM)


def list_devices() -> list[DeviceInfo]:
    """Every device this machine offers, CPU first, then "auto", each GPU, and mps."""
    found = [DeviceInfo("cpu", "CPU", None), DeviceInfo("auto", "auto (best available)", None)]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            label = f"cuda:{index} · {name} · {human(free)} / {human(total)} free"
            found.append(DeviceInfo(f"cuda:{index}", label, free))
    if _mps_available():
        found.append(DeviceInfo("mps", "mps (Apple GPU)", None))
    return found


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


class _BlockThreads:
    """torch's thread count to restore, and how many block merges are running (the app may run two at once)."""

    lock = threading.Lock()
    running = 0
    saved = 0


@contextmanager
def block_threads(device: torch.device, in_blocks: bool) -> Iterator[None]:
    """While one tensor is merged in blocks of rows on the CPU: torch computes on one core fewer than the machine has.

    Why: a block is small (a few MB; core.merge.plan.CHUNK_ELEMENTS), so each op splits into a few
    short pieces, and all of them wait for the slowest thread. With every core in torch's pool, one
    core busy with anything else (the block reader of core.io.prefetch, another program) stalls
    every op: a 3 x 1.46 GB task arithmetic took 60 s instead of 5 on 2 cores with another process
    running, TIES 56 s instead of 22 (bench/README.md). Only block merges: their math is elementwise
    or exact counts, so the bytes do not depend on the thread count, while a whole-tensor reduction
    (DARE's rescale) adds up in a different order with fewer threads. The setting is torch's, for the
    whole process, and comes back when the last block merge running ends.
    """
    if not (in_blocks and device.type == "cpu"):
        yield
        return
    state = _BlockThreads
    with state.lock:  # the first block merge in sets the count, the last one out restores it
        if state.running == 0:
            state.saved = torch.get_num_threads()
            torch.set_num_threads(max(1, min(state.saved, (os.cpu_count() or 1) - 1)))
        state.running += 1
    try:
        yield
    finally:
        with state.lock:
            state.running -= 1
            if state.running == 0:
                torch.set_num_threads(state.saved)
