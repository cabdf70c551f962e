"""The memory sampler: parsers fed plain text, real readings on this Linux machine, GPUs faked."""
import mmap
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import core.monitor as monitor
from core.monitor import (MemoryMonitor, find_memory_cgroup, parse_cgroup_limit, parse_proc_cgroup, parse_status,
                          sample_memory)
from tests.scripted_memory import ScriptedMemory

MB = 1e6
STATUS = """Name:\tpython
VmHWM:\t  412000 kB
VmRSS:\t  398120 kB
RssAnon:\t  301200 kB
RssFile:\t   96896 kB
RssShmem:\t      24 kB
"""


def test_parse_status_reads_anon_and_file_in_bytes():
    assert parse_status(STATUS) == (301200 * 1024, 96896 * 1024)


def test_parse_status_without_the_lines_names_them():
    with pytest.raises(ValueError, match="no RssAnon/RssFile lines"):
        parse_status("VmRSS:\t 398120 kB\nRssAnon:\t 1 kB\n")


@pytest.mark.parametrize("text, limit", [
    ("25769803776\n", 25769803776),  # v2 / v1: a real 24 GiB limit
    ("max\n", None),  # v2: no limit
    ("9223372036854771712\n", None),  # v1: no limit is 2**63 - 4096
    ("", None), (None, None), ("garbage", None), ("0", None),
])
def test_parse_cgroup_limit(text, limit):
    assert parse_cgroup_limit(text) == limit


@pytest.mark.parametrize("text, paths", [
    ("0::/user.slice/session-2.scope\n", ("/user.slice/session-2.scope", None)),  # pure v2
    ("4:memory:/process_api/3cf2\n3:cpuset:/\n0::/\n", ("/", "/process_api/3cf2")),  # hybrid
    ("5:cpu,memory:/docker/ab12\n1:name=systemd:/docker/ab12\n", (None, "/docker/ab12")),  # v1 only
    ("", (None, None)),
])
def test_parse_proc_cgroup(text, paths):
    assert parse_proc_cgroup(text) == paths


def write(folder, **files):
    """Cgroup files named with "_" for the first ".": memory_max= writes memory.max."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_the_smallest_limit_up_to_the_mount_binds(tmp_path):
    root = tmp_path / "cgroup"
    write(tmp_path, memory_max="1000")  # above the mount: must be ignored
    write(root / "box", memory_current="700", memory_max="2000000000")
    write(root / "box" / "job", memory_current="300", memory_max="max")
    assert find_memory_cgroup("0::/box/job\n", root) == (root / "box" / "memory.current", root / "box" / "memory.max")
    write(root / "box" / "job", memory_current="300", memory_max="1500000000")
    assert find_memory_cgroup("0::/box/job\n", root)[1] == root / "box" / "job" / "memory.max"


def test_v1_without_a_namespace_falls_back_to_the_mount_root(tmp_path):
    write(tmp_path / "memory", memory_usage_in_bytes="500", memory_limit_in_bytes="4000000000")
    usage, limit = find_memory_cgroup("4:memory:/docker/not-here\n0::/\n", tmp_path)
    assert (usage.name, limit.parent) == ("memory.usage_in_bytes", tmp_path / "memory")


def test_no_limit_or_no_files_means_no_cgroup(tmp_path):
    assert find_memory_cgroup("4:memory:/a\n0::/\n", tmp_path) is None
    write(tmp_path / "memory" / "a", memory_usage_in_bytes="500", memory_limit_in_bytes="9223372036854771712")
    assert find_memory_cgroup("4:memory:/a\n0::/\n", tmp_path) is None


@pytest.mark.parametrize("limit, source", [(10**9, "cgroup"), (10**15, "system")])
def test_sample_reports_a_binding_cgroup_and_ignores_one_above_physical_ram(tmp_path, monkeypatch, limit, source):
    write(tmp_path, memory_current="123456789", memory_max=str(limit))
    monkeypatch.setattr(monitor, "_memory_cgroup", lambda: (tmp_path / "memory.current", tmp_path / "memory.max"))
    sample = sample_memory()
    assert sample.ram_source == source
    if source == "cgroup":
        assert (sample.ram_used, sample.ram_limit) == (123456789, limit)
    else:
        assert 0 < sample.ram_used < sample.ram_limit < limit


def test_sample_survives_cgroup_files_that_vanish(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor, "_memory_cgroup", lambda: (tmp_path / "gone.current", tmp_path / "gone.max"))
    assert sample_memory().ram_source == "system"


def test_sample_on_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sample = sample_memory()
    assert sample.anon > 10 * MB and sample.file > 0
    assert 0 < sample.ram_used <= sample.ram_limit
    assert sample.gpus == ()
    assert abs(sample.time - time.time()) < 5


def test_anon_follows_a_touched_tensor():
    before = sample_memory().anon
    tensor = torch.ones(50_000_000)  # 200 MB of float32, every page written
    during = sample_memory().anon
    del tensor
    after = sample_memory().anon
    assert 180 * MB < during - before < 260 * MB
    assert during - after > 180 * MB  # freed: a large block goes straight back to the system


def test_a_read_mmap_counts_as_file_backed_not_anon(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(np.full(50_000_000, 7, dtype=np.uint8).tobytes())
    before = sample_memory()
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert int(np.frombuffer(mapped, dtype=np.uint8)[::4096].sum()) == 7 * len(range(0, 50_000_000, 4096))
        during = sample_memory()
    assert 45 * MB < during.file - before.file < 60 * MB
    assert during.anon - before.anon < 20 * MB


@pytest.fixture
def two_gpus(monkeypatch):
    """GPU 0 used by this process (it holds a context there), GPU 1 untouched."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=f"Fake GPU {i}", total_memory=80 * 10**9))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: [2 * 10**9, 0][i])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: [3 * 10**9, 0][i])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: asked.append(i) or (50 * 10**9, 80 * 10**9))
    monkeypatch.setattr(torch.cuda, "device_memory_used", lambda i: 7 * 10**9)
    return asked


def test_gpus_are_read_without_a_context_on_an_untouched_one(two_gpus):
    gpu0, gpu1 = sample_memory().gpus
    assert (gpu0.name, gpu0.used, gpu0.total, gpu0.allocated, gpu0.reserved) == (
        "Fake GPU 0", 30 * 10**9, 80 * 10**9, 2 * 10**9, 3 * 10**9)
    assert (gpu1.index, gpu1.used, gpu1.allocated) == (1, 7 * 10**9, 0)  # from NVML
    assert two_gpus == [0]  # cudaMemGetInfo would have created a context on GPU 1


def test_gpu_used_is_unknown_without_nvml(two_gpus, monkeypatch):
    def no_nvml(index):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")
    monkeypatch.setattr(torch.cuda, "device_memory_used", no_nvml)
    assert [gpu.used for gpu in sample_memory().gpus] == [30 * 10**9, None]


def samplers():
    return [t for t in threading.enumerate() if t.name.startswith("memory sampler")]


def test_a_job_catches_a_peak_freed_before_it_ends(monkeypatch):
    memory = ScriptedMemory([100 * MB, 100 * MB, 250 * MB, 100 * MB])  # the peak lasts one sample
    monkeypatch.setattr(monitor, "sample_memory", memory)
    watcher = MemoryMonitor(interval=0.001)
    assert watcher.job_state() is None
    with watcher.job("merge tiny"):
        assert len(samplers()) == 1
        memory.wait_for(6)  # the job's first sample, then the thread's: past the peak
        running = watcher.job_state()
    job = watcher.job_state()
    assert samplers() == []
    assert running.finished is None and job.label == "merge tiny"
    assert job.finished >= job.started and job.peak_gpu_allocated == ()
    assert (job.start_anon, job.peak_anon) == (100 * MB, 250 * MB)
    assert watcher.samples()[-1].anon == 100 * MB  # only the thread saw the peak
    assert len(watcher.samples(since=job.started)) >= 6


def test_a_job_that_raises_still_stops_its_thread():
    watcher = MemoryMonitor(interval=0.05)
    with pytest.raises(RuntimeError, match="boom"), watcher.job("failing"):
        raise RuntimeError("boom")
    assert samplers() == [] and watcher.job_state().finished is not None


def test_peaks_stop_moving_once_the_job_is_done():
    watcher = MemoryMonitor()
    with watcher.job("short"):
        pass
    peak = watcher.job_state().peak_anon
    tensor = torch.ones(25_000_000)  # 100 MB after the job
    watcher.tick()
    del tensor
    assert watcher.job_state().peak_anon == peak


def test_the_latest_job_is_shown_when_jobs_overlap():
    watcher = MemoryMonitor(interval=0.05)
    first, second = watcher.job("first"), watcher.job("second")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert (watcher.job_state().label, watcher.job_state().finished) == ("second", None)
    second.__exit__(None, None, None)
    assert watcher.job_state().finished is not None and samplers() == []


def test_the_ring_buffer_keeps_the_latest_samples():
    watcher = MemoryMonitor(capacity=5)
    taken = [watcher.tick() for _ in range(12)]
    assert watcher.samples() == taken[-5:]
    assert watcher.samples(since=taken[9].time) == [s for s in taken[-5:] if s.time >= taken[9].time]
