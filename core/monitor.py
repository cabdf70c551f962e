"""Memory sampler: how much this process really uses, what the container allows, and each GPU.

    sample = sample_memory()             # one cheap reading (~0.1 ms): /proc, cgroup, GPU counters
    with MONITOR.job("merge my-model"):  # samples every 0.2 s in a thread while the job runs
        merge(...)
    MONITOR.job_state().peak_anon        # the highest real memory seen during the job

Real memory is RssAnon, not RSS: a merge reads its inputs through mmap, and those pages are
page cache that the kernel drops under pressure; they show up as `file`, apart. The parsers
are pure functions of the files' text so tests can feed them strings.

This file must not import gradio, and sampling must stay cheap (the UI polls it every second
and a job thread five times a second): no smaps scans, no iteration over processes, and no
CUDA context created on a GPU this process has not used (see `gpu_memory`).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Iterator

import psutil
import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as 2**63 - 4096; no machine has an exabyte of RAM


@dataclass(frozen=True)
class GpuMemory:
    """One CUDA device, in bytes."""

    index: int
    name: str
    used: int | None  # by all processes (nvidia-smi's figure); None when unreadable without a new context
    total: int
    allocated: int  # held by this process's live tensors (torch.cuda.memory_allocated)
    reserved: int  # held by this process's caching allocator, allocated included


@dataclass(frozen=True)
class MemorySample:
    """One reading, in bytes."""

    time: float  # time.time()
    anon: int  # this process's RssAnon: real memory that only swap or exit gives back
    file: int  # this process's RssFile: mmap'ed checkpoint pages, reclaimable page cache
    ram_used: int  # the container's usage (cgroup, page cache included) or the system's total - available
    ram_limit: int  # the container's memory limit, or the system's total RAM
    ram_source: str  # "cgroup" or "system"
    gpus: tuple[GpuMemory, ...]  # empty without CUDA


@dataclass(frozen=True)
class JobState:
    """What the latest job did to memory, in bytes; times are time.time()."""

    label: str
    started: float
    finished: float | None  # None while it runs
    start_anon: int  # real memory when it started: peak_anon - start_anon is what the job added
    peak_anon: int
    peak_gpu_allocated: tuple[int, ...]  # per GPU, in the order of MemorySample.gpus


def parse_status(text: str) -> tuple[int, int]:
    """(RssAnon, RssFile) in bytes from the text of /proc/<pid>/status.

    Example:
        >>> parse_status("VmRSS:\\t  2076 kB\\nRssAnon:\\t   152 kB\\nRssFile:\\t  1924 kB\\n")
        (155648, 1970176)

    Raises ValueError when either line is missing (Linux before 4.5).
    """
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            number, unit = value.split()
            fields[key] = int(number) * (1024 if unit == "kB" else 1)
    if len(fields) < 2:
        raise ValueError(f"no RssAnon/RssFile lines in /proc status (found {sorted(fields)})")
    return fields["RssAnon"], fields["RssFile"]


def parse_cgroup_limit(text: str | None) -> int | None:
    """A cgroup memory limit in bytes, or None for no limit: "max" (v2), v1's 2**63 - 4096,
    an empty or unreadable value, or None (file missing).

    Example:
        >>> parse_cgroup_limit("25769803776\\n"), parse_cgroup_limit("max\\n")
        (25769803776, None)
    """
    try:
        limit = int((text or "").strip())
    except ValueError:
        return None
    return limit if 0 < limit < NO_LIMIT else None


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory-controller path) of this process from the text of /proc/self/cgroup.

    Example:
        >>> parse_proc_cgroup("4:memory:/docker/ab12\\n0::/\\n")
        ('/', '/docker/ab12')
    """
    v2 = v1 = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def find_memory_cgroup(proc_cgroup: str, root: Path = CGROUP_ROOT) -> tuple[Path, Path] | None:
    """(usage file, limit file) of the cgroup whose limit binds this process, or None if none does.

    The binding limit may sit on an ancestor (a container's limit, the process in a sub-group),
    so this walks from the process's own group up to the mount's root and keeps the smallest.
    Without a cgroup namespace the own path may not exist under the mount; the root still counts.
    """
    v2, v1 = parse_proc_cgroup(proc_cgroup)
    layouts = [(root, v2, "memory.current", "memory.max"),
               (root / "memory", v1, "memory.usage_in_bytes", "memory.limit_in_bytes")]
    best: tuple[int, Path, Path] | None = None
    for mount, path, usage_name, limit_name in layouts:
        if path is None:
            continue
        own = mount / path.lstrip("/")
        for folder in [own, *own.parents]:  # own group first, up to the mount
            if folder != mount and mount not in folder.parents:
                break
            limit = parse_cgroup_limit(_read_text(folder / limit_name))
            if limit is not None and (best is None or limit < best[0]):
                best = (limit, folder / usage_name, folder / limit_name)
    return (best[1], best[2]) if best else None


def sample_memory() -> MemorySample:
    """One reading of process, container/system and GPU memory. Never raises on a missing file."""
    anon, file = _process_memory()
    system = psutil.virtual_memory()
    ram_used, ram_limit, ram_source = system.total - system.available, system.total, "system"
    cgroup = _memory_cgroup()
    if cgroup is not None:
        usage, limit = _read_int(cgroup[0]), parse_cgroup_limit(_read_text(cgroup[1]))
        # A limit above physical RAM never binds: the machine runs out first.
        if usage is not None and limit is not None and limit < system.total:
            ram_used, ram_limit, ram_source = usage, limit, "cgroup"
    return MemorySample(time.time(), anon, file, ram_used, ram_limit, ram_source, gpu_memory())


def gpu_memory() -> tuple[GpuMemory, ...]:
    """Every CUDA device's memory, without creating a CUDA context on any of them.

    A context costs ~300-500 MB of the GPU it is made on, so a gauge must not make one:
    - allocated/reserved come from torch's allocator counters, which are 0, and read as 0,
      until this process initialises CUDA: nothing allocated is the truth, not a guess.
    - used: where this process already holds memory it already has a context, so
      cudaMemGetInfo (torch.cuda.mem_get_info) is exact and free. Elsewhere it would create a
      context (pytorch#103584), so used comes from NVML (torch.cuda.device_memory_used, needs
      nvidia-ml-py) and is None when NVML is missing.
    - name/total and the NVML path run torch's lazy CUDA init, which makes no context
      (pytorch#99533) but does mark CUDA initialised: start worker processes with "spawn".
    """
    if not torch.cuda.is_available():
        return ()
    return tuple(_one_gpu(index) for index in range(torch.cuda.device_count()))


class MemoryMonitor:
    """A ring buffer of samples plus the latest job's peaks; safe to share between threads.

    Memory is per process, so jobs that overlap (two users merging at once) share one curve.
    The monitor tracks the latest job started; an earlier one that ends later does not close it.
    """

    def __init__(self, *, capacity: int = 3000, interval: float = 0.2):
        self.interval = interval  # seconds between a job thread's samples
        self._samples: deque[MemorySample] = deque(maxlen=capacity)  # 10 min of a job at 0.2 s
        self._lock = threading.Lock()
        self._job: JobState | None = None
        self._job_serial = 0  # tells the latest job apart from one that overlapped it
        self._running = 0  # jobs inside job() now, overlapping ones included

    def tick(self) -> MemorySample:
        """Take a sample, keep it, and raise the running job's peaks with it."""
        sample = sample_memory()
        with self._lock:
            self._samples.append(sample)
            job = self._job
            if job is not None and job.finished is None:
                gpu_peaks = tuple(max(peak, gpu.allocated) for peak, gpu in zip(job.peak_gpu_allocated, sample.gpus))
                self._job = replace(job, peak_anon=max(job.peak_anon, sample.anon), peak_gpu_allocated=gpu_peaks)
        return sample

    def samples(self, since: float | None = None) -> list[MemorySample]:
        """The kept samples, oldest first; only those taken at or after `since` when given."""
        with self._lock:
            return [s for s in self._samples if since is None or s.time >= since]

    def busy(self) -> bool:
        """Whether any job runs now (the latest one, or an earlier one that overlaps it)."""
        with self._lock:
            return self._running > 0

    def job_state(self) -> JobState | None:
        """The latest job's state, or None when no job has run."""
        with self._lock:
            return self._job

    @contextmanager
    def job(self, label: str) -> Iterator[None]:
        """Watch memory while the body runs: a daemon thread samples every `interval` seconds,
        so peaks shorter than the UI's one-second poll are caught."""
        first = sample_memory()
        with self._lock:
            self._job_serial += 1
            self._running += 1
            serial = self._job_serial
            self._job = JobState(label, first.time, None, first.anon, first.anon,
                                 tuple(gpu.allocated for gpu in first.gpus))
            self._samples.append(first)
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample_until, args=(stop,), daemon=True,
                                   name=f"memory sampler: {label}")
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
            last = self.tick()
            with self._lock:
                self._running -= 1
                if self._job_serial == serial:
                    self._job = replace(self._job, finished=last.time)

    def _sample_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.tick()


MONITOR = MemoryMonitor()  # the app's one monitor: the merge panel and the playground report jobs to it


def _process_memory() -> tuple[int, int]:
    """(anon, file) of this process; RSS and 0 where /proc is absent (macOS, Windows)."""
    try:
        return parse_status(Path("/proc/self/status").read_text())
    except (OSError, ValueError):
        return psutil.Process().memory_info().rss, 0


@cache
def _memory_cgroup() -> tuple[Path, Path] | None:
    """This process's binding cgroup files; looked up once (a process does not change cgroup)."""
    return find_memory_cgroup(_read_text(Path("/proc/self/cgroup")) or "")


def _one_gpu(index: int) -> GpuMemory:
    properties = torch.cuda.get_device_properties(index)
    allocated, reserved = torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index)
    if reserved:
        free, total = torch.cuda.mem_get_info(index)
        used = total - free
    else:
        used = _nvml_used(index)
    return GpuMemory(index, properties.name, used, properties.total_memory, allocated, reserved)


def _nvml_used(index: int) -> int | None:
    try:
        return torch.cuda.device_memory_used(index)
    except Exception:  # nvidia-ml-py missing or NVML failing: the gauge shows "used unknown"
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = (_read_text(path) or "").strip()
    return int(text) if text.isdigit() else None
