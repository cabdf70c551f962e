"""How long the CLI takes to fail on a Hub id when the Hub cannot be reached (issue 17, item 5).

    python3 bench/offline_bench.py                   # 3 runs of each command, median
    python3 bench/offline_bench.py --repeat 5 --endpoint http://127.0.0.1:9   # a closed port as "the Hub"

Each command runs as a subprocess from the repo root with HF_HUB_OFFLINE unset, so huggingface_hub
really tries the network (on a machine without one: DNS fails at once). `--endpoint` sets HF_ENDPOINT
instead, for a machine that is online. The baseline row fails on a local folder that does not exist:
same imports, no Hub, so `over baseline s` is the time spent on the Hub. The last row times
resolve_reference('org/name') alone in a fresh process, after its imports: the Hub part without
the noise of importing torch (4–13 s on a loaded 2-core VM) and huggingface_hub (0.5–3 s), which
the CLI rows include. The table also counts the stderr
lines and the "Retrying in …" lines among them, and shows the last line (the error).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "core"]
# The last row times resolve_reference alone, after the imports (torch's, huggingface_hub's): the Hub part.
ALONE = ("import sys, time\nfrom huggingface_hub import list_repo_files, snapshot_download\n"
         "from core.io.reference import resolve_reference\nstart = time.perf_counter()\n"
         "try:\n    resolve_reference('org/name')\nexcept Exception as error:\n    print(error, file=sys.stderr)\n"
         "print(time.perf_counter() - start)")
COMMANDS = {
    "baseline: rerank --model ./no-such-folder": [*CLI, "rerank", "--model", "./no-such-folder", "--query", "q",
                                                  "--doc", "d"],  # no Hub, and huggingface_hub not imported
    "plan assets/recipes/ties.yml": [*CLI, "plan", "assets/recipes/ties.yml"],
    "rerank --model org/name": [*CLI, "rerank", "--model", "org/name", "--query", "q", "--doc", "d"],
    "resolve_reference('org/name') alone, after imports": [sys.executable, "-c", ALONE],
}


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds (for ALONE: the seconds it printed) and stderr of one run."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return (float(done.stdout) if ALONE in argv else seconds), done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoint", help="HF_ENDPOINT for the runs (default: the real Hub)")
    options = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if options.endpoint:
        env["HF_ENDPOINT"] = options.endpoint
    rows = []
    for label, args in COMMANDS.items():
        times, stderr = [], ""
        for _ in range(options.repeat):
            seconds, stderr = run_once(args, env)
            times.append(seconds)
        lines = stderr.strip().splitlines()
        retries = sum("Retrying in" in line for line in lines)
        rows.append((label, statistics.median(times), times, len(lines), retries, lines[-1] if lines else ""))
    baseline = rows[0][1]
    print("| command | wall s (median) | runs s | over baseline s | stderr lines | 'Retrying' lines | last line |")
    print("|---|---|---|---|---|---|---|")
    for label, median, times, count, retries, last in rows:
        runs = " ".join(f"{t:.2f}" for t in times)
        over = f"{median - baseline:+.1f}" if label in list(COMMANDS)[1:3] else ""
        print(f"| {label} | {median:.2f} | {runs} | {over} | {count} | {retries} | {last[:120]} |")
    endpoint = env.get("HF_ENDPOINT", "(default)")
    print(f"\nFrom {ROOT}, HF_HUB_OFFLINE unset, HF_ENDPOINT={endpoint}, {options.repeat} runs each; "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
