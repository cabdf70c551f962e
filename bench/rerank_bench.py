"""Reranker speed: MergeDesk against FlagReranker and CrossEncoder.predict on the same pairs.

    python3 bench/rerank_bench.py                    # 2,000 pairs, every tool installed
    python3 bench/rerank_bench.py --pairs 500 --out bench/rerank_results.md

The model is the packaged all-MiniLM-L6-v2 under a seeded one-logit head (a MiniLM-L6
cross-encoder, built once into bench/.cache/). The pairs are seeded: short queries and
passages from 5 to 600 words of English vocabulary, shuffled so lengths are mixed. Each tool
runs in its own subprocess on CPU in float32 with its default batch size (and once more at
batch 32, the CrossEncoder default, for a like-for-like row); the table shows the scoring
time (model already loaded), pairs/s, peak anonymous memory (RssAnon, sampled every 20 ms)
and the largest score difference from MergeDesk's. Scores are raw logits everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
TOOLS = ("mergedesk", "flagreranker", "crossencoder")
DEFAULT_BATCH = {"mergedesk": 32, "flagreranker": 256, "crossencoder": 32}


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (query, passage) pairs of mixed lengths from the model's own whole-word vocabulary."""
    sys.path.insert(0, str(ROOT))
    from tests.model_factory import minilm_folder

    vocab = (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w for w in vocab[2000:] if w.isalpha()]
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(words, k=rng.randint(3, 15))) for _ in range(max(1, n // 20))]
    lengths = [rng.choice([rng.randint(5, 40), rng.randint(40, 150), rng.randint(150, 600)]) for _ in range(n)]
    return [(rng.choice(queries), " ".join(rng.choices(words, k=k))) for k in lengths]


def model_folder() -> Path:
    folder = CACHE / "minilm-cross-encoder"
    if not (folder / "config.json").exists():
        sys.path.insert(0, str(ROOT))
        from tests.model_factory import build_minilm_cross_encoder

        build_minilm_cross_encoder(folder)
    return folder


def worker(tool: str, model: str, pairs_file: str, batch: int) -> dict:
    """Run one tool in this process; return timings and scores."""
    import torch

    pairs = [tuple(p) for p in json.loads(Path(pairs_file).read_text())]
    start = time.perf_counter()
    if tool == "mergedesk":
        sys.path.insert(0, str(ROOT))
        from core.rerank.model import load_reranker

        reranker = load_reranker(model, device="cpu")
        score = lambda: reranker.score_pairs(pairs, batch_size=batch)  # noqa: E731
    elif tool == "flagreranker":
        from FlagEmbedding import FlagReranker

        reranker = FlagReranker(model, use_fp16=False, devices=["cpu"], batch_size=batch)
        score = lambda: reranker.compute_score(pairs)  # noqa: E731
    else:
        from sentence_transformers import CrossEncoder

        reranker = CrossEncoder(model, device="cpu", max_length=512, activation_fn=torch.nn.Identity())
        score = lambda: reranker.predict(pairs, batch_size=batch).tolist()  # noqa: E731
    loaded = time.perf_counter()
    scores = [float(s) for s in score()]
    done = time.perf_counter()
    return {"load_s": loaded - start, "score_s": done - loaded, "scores": scores}


def run_tool(tool: str, model: Path, pairs_file: Path, batch: int) -> dict | None:
    """The tool in a subprocess, its peak RssAnon sampled from here."""
    command = [sys.executable, __file__, "--worker", tool, "--model", str(model), "--pairs-file", str(pairs_file),
               "--batch", str(batch)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="true")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _rss_anon(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    sampler.join()
    if process.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        print(f"{tool}: skipped ({last})", file=sys.stderr)
        return None
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_anon_mb"] = peak[0] / 1e6
    return result


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.pairs_file, args.batch)))
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    model = model_folder()
    pairs_file = CACHE / f"pairs-{args.pairs}.json"
    pairs_file.write_text(json.dumps(make_pairs(args.pairs)))
    runs = []
    for tool in args.tools.split(","):
        for batch in sorted({DEFAULT_BATCH[tool], 32}, reverse=True):
            result = run_tool(tool, model, pairs_file, batch)
            if result:
                runs.append((tool, batch, result))
                print(f"{tool} batch {batch}: {result['score_s']:.1f} s", file=sys.stderr)
    print_table(runs, args.pairs, args.out)


def print_table(runs, n_pairs: int, out: str | None) -> None:
    ours = next((r for t, b, r in runs if t == "mergedesk" and b == DEFAULT_BATCH["mergedesk"]), None)
    lines = ["| tool | batch | load s | score s | pairs/s | peak anon MB | max abs Δ vs MergeDesk | MergeDesk speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for tool, batch, r in runs:
        delta = max(abs(a - b) for a, b in zip(r["scores"], ours["scores"])) if ours else float("nan")
        speedup = r["score_s"] / ours["score_s"] if ours else float("nan")
        lines.append(f"| {tool} | {batch} | {r['load_s']:.1f} | {r['score_s']:.1f} | {n_pairs / r['score_s']:.0f} | "
                     f"{r['peak_anon_mb']:.0f} | {delta:.1e} | {speedup:.2f}× |")
    import platform

    import torch

    lines.append("")
    lines.append(f"{n_pairs} pairs, MiniLM-L6 cross-encoder, float32, CPU; {platform.machine()}, {os.cpu_count()} CPUs, "
                 f"Python {platform.python_version()}, torch {torch.__version__}. Speed-up = that tool's score time / "
                 "MergeDesk's at its default batch.")
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).write_text(table + "\n")
        print(f"table written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
