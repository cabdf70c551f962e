"""Preflight: will this merge fit on the destination disk and in the compute device's memory?

`measure_resources(plan, out_dir, devices)` and `shortage(found)` are what core.merge.preview
reads before a merge creates anything (the engine, `python -m core plan` and the app's Check
all go through it), so a merge that cannot fit is refused up front with how much it needs and
how much there is, instead of dying halfway on a full disk or an out-of-memory kill.

    found = measure_resources(plan, "out/merged", devices_for("cpu"))
    found.disk_free, found.memory_free           # bytes, as measured
    shortage(found)                               # None, or the one line a ResourceError carries

Disk: the output's bytes plus 16 MB for side files, against the free space of the nearest
existing folder on the output's path. Memory: the plan's peak working set (largest tensor ×
inputs, float32) against available RAM (CPU, MPS) or the emptiest chosen GPU's free memory.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from core.errors import OutputError
from core.merge.plan import MergePlan
from core.units import human

SIDE_FILES_BYTES = 16 * 1024 * 1024  # config, tokenizer, card: generous for any tokenizer.json
NAME_MAX = 255  # bytes in one file or folder name (ext4, APFS, NTFS in characters)
WRITER_SUFFIX = len(".old-12345678901234567890")  # core.io.writer's longest temporary suffix


@dataclass(frozen=True)
class Resources:
    """What a merge needs and what the machine has, in bytes."""

    disk_needed: int
    disk_free: int
    disk_at: Path  # the existing folder the free space was measured at
    memory_needed: int
    memory_free: int
    memory_of: str  # "RAM" or the GPU measured, e.g. "cuda:0"
    memory: dict[str, int]  # free bytes of RAM ("RAM") and of each chosen GPU ("cuda:0"), for display


def output_path(out_dir: str | Path) -> Path:
    """The output folder as an absolute path, or an OutputError when the file system cannot hold its name.

    Checked here, before any folder is created: a name over NAME_MAX (255 bytes on Linux and
    macOS) would otherwise fail deep inside the writer, which also needs room for the
    `.partial` and `.old-N` names it gives the folder while it works.
    """
    target = Path(out_dir).expanduser().resolve()
    too_long = next((part for part in target.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if too_long is None and len(os.fsencode(target.name)) > NAME_MAX - WRITER_SUFFIX:
        too_long = target.name
    if too_long is not None:
        raise OutputError(f"output folder name {too_long[:40]!r}… is too long ({len(os.fsencode(too_long))} bytes; "
                          f"the file system allows {NAME_MAX}, the output's own name at most "
                          f"{NAME_MAX - WRITER_SUFFIX}): choose a shorter name")
    return target


def measure_resources(plan: MergePlan, out_dir: str | Path, devices: list[torch.device]) -> Resources:
    """The figures shortage judges: the merge's working memory is held on the emptiest chosen GPU, or in RAM."""
    target = output_path(out_dir)
    existing = next(p for p in [target, *target.parents] if p.exists())
    ram = psutil.virtual_memory().available
    gpus = {str(d): torch.cuda.mem_get_info(d)[0] for d in devices if d.type == "cuda"}
    memory_free, memory_of = min((free, place) for place, free in gpus.items()) if gpus else (ram, "RAM")
    memory = {"RAM": ram, **gpus}
    return Resources(plan.bytes_written + SIDE_FILES_BYTES, shutil.disk_usage(existing).free, existing,
                     plan.peak_bytes, memory_free, memory_of, memory)


def shortage(found: Resources) -> str | None:
    """Why the merge would not fit (one line naming needed and available), or None when it does."""
    if found.disk_free < found.disk_needed:
        return (f"not enough disk space at {found.disk_at}: the merge writes {human(found.disk_needed)}, "
                f"{human(found.disk_free)} free; free some space or choose another output folder")
    if found.memory_free < found.memory_needed:
        return (f"not enough memory: the merge needs ≈ {human(found.memory_needed)} of working memory, "
                f"{found.memory_of} has {human(found.memory_free)} available; close other programs, "
                "merge fewer models at once or choose a device with more memory")
    return None

