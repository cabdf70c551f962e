"""The app's own memory before, during and after "Build demo models" (issue 17, item 4).

    python3 bench/demo_memory_bench.py             # the full demo kit, as the button builds it (~5 min)

Launches the app on a fresh temporary workspace in this process, loads the page's first events,
then runs the Build demo models event the way the page does (queue join + event stream) and
samples this process's RssAnon every 0.2 s: before the build, its peak during the build, and
after it, once idle for 10 s. Training runs in child processes (core.demo.child); their memory
is theirs and gone when they exit, so it is reported apart (each child's peak RSS, from
resource.getrusage(RUSAGE_CHILDREN): the largest child's).
"""
from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.app_server import browser_event, fn_index, launched, local_workspace  # noqa: E402

MB = 10**6


def rss_anon() -> int:
    """This process's anonymous resident memory (heap, not mapped files), in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class Peak(threading.Thread):
    """Samples rss_anon() until stopped; `peak` is the largest sample."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = rss_anon(), threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            self.peak = max(self.peak, rss_anon())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = local_workspace(Path(tmp).resolve())
        with launched(ws) as (blocks, client):
            client.view_api(print_info=False)  # the page's first load
            time.sleep(5)
            before = rss_anon()
            sampler = Peak()
            sampler.start()
            start = time.perf_counter()
            done = browser_event(blocks, fn_index(blocks, "build_demo"), [None], "bench", timeout=3600)
            took = time.perf_counter() - start
            sampler.done.set()
            time.sleep(10)
            after = rss_anon()
            built = sorted(p.name for p in (ws.models_dir / "demo").iterdir()) if (ws.models_dir / "demo").is_dir() else []
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"build: {'ok' if done.get('success') else 'FAILED'} in {took:.0f} s; models: {', '.join(built)}")
    print("| app RssAnon before | peak during build | idle 10 s after | after − before | largest child's peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| {before / MB:.0f} MB | {sampler.peak / MB:.0f} MB | {after / MB:.0f} MB | {(after - before) / MB:+.0f} MB "
          f"| {child / MB:.0f} MB |")


if __name__ == "__main__":
    main()
