"""How long the CLI takes to fail on a Hub id when the Hub cannot be reached (issue 17, item 5).

    python3 bench/offline_bench.py                   # 3 runs of each command, median
    python3 bench/offline_bench.py --repeat 5 --endpoint http://127.0.0.1:9   # a closed port as "the Hub"

Each command runs as a subprocess from the repo root with HF_HUB_OFFLINE unset, so huggingface_hub
really tries the network (on a machine without one: DNS fails at once). `--endpoint` sets HF_ENDPOINT
instead, for a machine that is online. The baseline row fails on a local folder that does not exist:
same imports, no Hub, so `over baseline s` is the time spent on the Hub. The table also counts the
stderr lines and the "Retrying in …" lines among them, and shows the last line (the error).
Wall times on a shared 2-core VM drift (torch's import alone took 4–13 s under load): compare the
`over baseline` column, measured in the same run.
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
COMMANDS = {
    "baseline (local folder missing)": ["rerank", "--model", "./no-such-folder", "--query", "q", "--doc", "d"],
    "plan assets/recipes/ties.yml": ["plan", "assets/recipes/ties.yml"],
    "rerank --model org/name": ["rerank", "--model", "org/name", "--query", "q", "--doc", "d"],
}


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stderr of `python3 -m core ARGS`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.stderr


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
        runs = " ".join(f"{t:.1f}" for t in times)
        print(f"| {label} | {median:.1f} | {runs} | {median - baseline:+.1f} | {count} | {retries} | {last[:160]} |")
    print(f"\n`python3 -m core …` from {ROOT}, HF_HUB_OFFLINE unset, HF_ENDPOINT={env.get('HF_ENDPOINT', '(default)')}, "
          f"{options.repeat} runs each; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
