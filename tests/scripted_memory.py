"""A scripted stand-in for core.monitor.sample_memory, so monitor tests wait on samples, not sleeps.

The job sampler is a thread on a timer; a test that sleeps and hopes it ticked in time is flaky
on a busy machine. Patched in with `monkeypatch.setattr(core.monitor, "sample_memory", memory)`,
this returns the given RssAnon values in order (the last one repeats), each sample one second
after the previous on a clock of its own, and `wait_for(n)` blocks until n samples were taken.
"""
import threading

from core.monitor import MemorySample

MB = 2**20


class ScriptedMemory:
    def __init__(self, anon: list[int], *, start: float = 1000.0):
        self.anon = anon
        self.start = start
        self.taken = 0
        self._changed = threading.Condition()

    def __call__(self) -> MemorySample:
        with self._changed:
            i = self.taken
            self.taken += 1
            self._changed.notify_all()
        return MemorySample(time=self.start + i, anon=self.anon[min(i, len(self.anon) - 1)], file=0,
                            ram_used=1_000 * MB, ram_limit=24_000 * MB, ram_source="system", gpus=())

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Block until `count` samples were taken in all; fail after `timeout` seconds."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.taken >= count, timeout), \
                f"only {self.taken} of {count} memory samples in {timeout} s"
