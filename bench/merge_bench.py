"""Merge benchmark: MergeDesk against mergekit on synthetic Llama-style checkpoints.

What it measures
    For each size (GB per model, bf16) it generates a family of three Llama-style checkpoints
    (base + two fine-tunes = base + small noise), generated tensor by tensor from seeded
    generators, no transformers model, and saved with safetensors in ~500 MB shards (one shard in
    memory at a time). Families are cached (default bench/.cache/) so reruns skip generation. For
    each merge method (task_arithmetic, ties) it writes one mergekit-style recipe and runs each
    tool on it as a subprocess:

        ours:      python -m core merge RECIPE.yml OUT_DIR --overwrite        (cwd = repo root)
        mergekit:  mergekit-yaml RECIPE.yml OUT_DIR --lazy-unpickle --no-copy-tokenizer

    Before each timed run the input files are read once (cat > /dev/null), so both tools start
    with a warm page cache. While a tool runs, /proc/<pid>/status of the process and all its
    children is sampled every 0.1 s (the children looked up every 1 s); the table reports wall time, the peak of the summed
    RssAnon (anonymous memory: what the tool itself allocates, not mapped file pages) and the
    peak summed RssFile, the CPU other processes used meanwhile (a disturbed timing shows), and
    ratios (mergekit time / ours, ours anon / mergekit anon). Outputs are deleted after each run.
    Each tool runs --repeat times (default 3), the tools taking turns, and the table gives the
    median wall time: this machine's speed drifts by ±30 % over minutes, and alternating runs
    let a slow spell hit both tools alike.

How to run (from the repo root)
    python3 bench/merge_bench.py                                  # sizes 0.1,0.4,1.5 GB, both methods
    python3 bench/merge_bench.py --sizes 0.1 --methods ties --skip-mergekit
    python3 bench/merge_bench.py --mergekit "$(bash .ci/mergekit_venv)" --out bench/results.md
    python3 bench/merge_bench.py --big --repeat 1   # Llama-70B shapes, 2 layers: 3 x 7.6 GB under /work/bigbench

    GB/s is the input merged per second (3 models' bytes / wall s). Each family also gets floor
    rows: the time `cat` takes to read the same input files warm (just read) and cold (after
    dropping the page cache, which needs root; when that is refused the row says so).

    mergekit is optional: --mergekit PATH, else `mergekit-yaml` on PATH, else
    $MERGEKIT_YAML (`bash .ci/mergekit_venv` builds one); without one its rows are skipped with a note.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psutil
import torch
import yaml
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
VOCAB = 32000
HEAD_DIM = 64
SHARD_BYTES = 500 * 10**6
BIG_FAMILY_BYTES = 3 * 7.6e9
BIG_CACHE = Path("/work/bigbench")  # --big's default: outside the repo, it is ~23 GB
FAMILY = ("base", "ft1", "ft2")
GENERATOR_VERSION = 1  # bump when generation changes, so cached families are rebuilt
OURS_CMD = "{python} -m core merge {recipe} {out} --overwrite"
# (minimum mergekit time / ours, maximum ours peak anon MB); set for 3 x 1.5 GB bf16, 2-core CPU
# Memory sampling: every 0.1 s, children looked up every 1 s. On 2 cores a sampler that wakes
# more often steals enough CPU from a 2-thread torch process to add 15-20 % to its wall time.
SAMPLE_SECONDS = 0.1
CHILDREN_EVERY = 10
TARGETS = {"task_arithmetic": (3.0, 600.0), "ties": (4.0, None)}


def llama_config(size_gb: float) -> dict:
    """A LlamaForCausalLM config whose bf16 weights come close to size_gb (at most 16 layers)."""
    target = size_gb * 1e9 / 2
    for hidden in (512, 1024, 2048, 3072, 4096, 5120, 8192):
        inter = 256 * round(hidden * 8 / 3 / 256)
        per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
        layers = max(1, round((target - 2 * VOCAB * hidden - hidden) / per_layer))
        if layers <= 16:
            break
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": hidden // HEAD_DIM, "num_key_value_heads": hidden // HEAD_DIM,
        "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    }


def big_config() -> dict:
    """Llama-3-70B's tensor shapes (vocab 128256, hidden 8192, ffn 28672, 8 KV heads) with 2 layers: 7.6 GB bf16."""
    cfg = llama_config(0.1)
    cfg.update({"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 2, "num_attention_heads": 64,
                "num_key_value_heads": 8, "vocab_size": 128256})
    return cfg


def check_big_disk(cache: Path, family_bytes: float = BIG_FAMILY_BYTES) -> None:
    """Refuse --big before writing anything when the cache's disk cannot hold the family and two outputs."""
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    need = 0 if (cache / f"llama-big-v{GENERATOR_VERSION}" / "complete").exists() else family_bytes
    need += 2 * family_bytes / 3  # one output at a time, plus room for a half-deleted one
    print(f"--big: the 70B-shaped family needs ~{family_bytes / 1e9:.0f} GB of disk (base + 2 fine-tunes) plus "
          f"~7.6 GB per output; {cache} has {free / 1e9:.0f} GB free", flush=True)
    if free < need:
        raise SystemExit(f"--big needs {need / 1e9:.0f} GB free under {cache}, it has {free / 1e9:.0f} GB")


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Llama checkpoint's tensors, in file order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        specs += [(f"{p}self_attn.{n}_proj.weight", (kv if n in "kv" else h, h)) for n in "qkvo"]
        specs += [(f"{p}mlp.gate_proj.weight", (i, h)), (f"{p}mlp.up_proj.weight", (i, h)),
                  (f"{p}mlp.down_proj.weight", (h, i)),
                  (f"{p}input_layernorm.weight", (h,)), (f"{p}post_attention_layernorm.weight", (h,))]
    return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def make_tensor(name: str, shape: tuple[int, ...], variant: int) -> torch.Tensor:
    """One bf16 tensor, seeded by its name: variant 0 is the base, variant k adds fine-tune noise k."""
    seed = zlib.crc32(name.encode())
    gen = torch.Generator().manual_seed(seed)
    t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02
    if variant:
        gen.manual_seed(seed + variant * 2**32)
        t += torch.randn(shape, generator=gen) * 0.002
    return t.to(torch.bfloat16)


def write_model(path: Path, cfg: dict, variant: int) -> None:
    """Write config.json, ~500 MB safetensors shards and model.safetensors.index.json."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    groups, size = [[]], 0
    for name, shape in tensor_specs(cfg):
        nbytes = 2 * torch.Size(shape).numel()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups, size = groups + [[]], 0
        groups[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for n, group in enumerate(groups, 1):
        file = f"model-{n:05d}-of-{len(groups):05d}.safetensors"
        shard = {name: make_tensor(name, shape, variant) for name, shape in group}
        save_file(shard, str(path / file), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in shard.values())
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def ensure_family(cache: Path, size_gb: float | None) -> Path:
    """Return the cached family folder for size_gb (None: the 70B-shaped one), generating it first if missing."""
    family = cache / (f"llama-{size_gb:g}GB-v{GENERATOR_VERSION}" if size_gb else f"llama-big-v{GENERATOR_VERSION}")
    if (family / "complete").exists():
        return family
    shutil.rmtree(family, ignore_errors=True)
    cfg = llama_config(size_gb) if size_gb else big_config()
    start = time.perf_counter()
    for variant, name in enumerate(FAMILY):
        write_model(family / name, cfg, variant)
    (family / "complete").touch()
    print(f"generated {family.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return family


def write_recipe(path: Path, method: str, family: Path) -> Path:
    """Write the mergekit-style recipe: base + two fine-tunes at weight 0.5 (ties: density 0.5)."""
    params = {"weight": 0.5, **({"density": 0.5} if method == "ties" else {})}
    recipe = {"merge_method": method, "base_model": str(family / "base"),
              "models": [{"model": str(family / m), "parameters": dict(params)} for m in FAMILY[1:]],
              "dtype": "bfloat16"}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def warm_page_cache(family: Path) -> None:
    """Read every input file once so each tool starts with the inputs in the page cache."""
    subprocess.run(["cat", *map(str, sorted(family.rglob("*.safetensors")))], stdout=subprocess.DEVNULL, check=True)


def cat_floor(family: Path) -> list[tuple[str, float | None]]:
    """(label, seconds) for reading the family's input files with cat, warm and cold (None: cache not dropped)."""
    files = list(map(str, sorted(family.rglob("*.safetensors"))))
    timed = []
    for label in ("warm", "cold"):
        if label == "cold":
            try:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            except OSError as error:
                timed.append((f"cold: page cache not dropped ({error.strerror})", None))
                continue
        start = time.perf_counter()
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
        timed.append((label, time.perf_counter() - start))
    return timed


def read_rss(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of one process in bytes; zeros if it has gone."""
    try:
        fields = (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return 0, 0
    values = {key: int(value.split()[0]) * 1024 for key, value in fields if key in ("RssAnon", "RssFile")}
    return values.get("RssAnon", 0), values.get("RssFile", 0)


def cpu_seconds() -> tuple[float, float]:
    """(CPU s the whole machine has been busy, CPU s of this process and its reaped descendants)."""
    t = psutil.cpu_times()
    own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal, sum(r.ru_utime + r.ru_stime for r in own)


def run_measured(cmd: list[str], cwd: Path, log: Path) -> tuple[int, float, float, float, float]:
    """Run cmd; return (exit code, wall s, peak summed RssAnon MB and RssFile MB over it and its
    children, % of all cores that other processes used meanwhile)."""
    with log.open("w") as out:
        busy_before, own_before = cpu_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        root, peak_anon, peak_file = psutil.Process(proc.pid), 0, 0
        for poll in itertools.count():
            if poll % CHILDREN_EVERY == 0:  # the process tree walk is the costly part: not every sample
                pids = [proc.pid] + [c.pid for c in root.children(recursive=True)]  # proc unreaped until wait()
            anon, file = map(sum, zip(*(read_rss(pid) for pid in pids)))
            peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
            try:
                proc.wait(timeout=SAMPLE_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - start
    busy_after, own_after = cpu_seconds()
    other = (busy_after - busy_before) - (own_after - own_before)
    return proc.returncode, wall, peak_anon / 2**20, peak_file / 2**20, 100 * max(other, 0) / (wall * os.cpu_count())


def find_mergekit(option: str | None) -> str | None:
    """The mergekit-yaml to use: --mergekit, else on PATH, else $MERGEKIT_YAML, else None."""
    return option or shutil.which("mergekit-yaml") or os.environ.get("MERGEKIT_YAML") or None


def mergekit_version(script: str) -> str:
    """mergekit's version, asked of the Python interpreter named in mergekit-yaml's shebang."""
    python = Path(script).read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()
    done = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def verdict(method: str, time_ratio: float | None, anon_mb: float) -> str:
    """Ours against the issue's targets for method (set for 1.5 GB per model); unmeasurable checks are left out."""
    min_ratio, max_anon = TARGETS.get(method, (None, None))
    checks = []
    if min_ratio and time_ratio is not None:
        checks.append(f"time >= {min_ratio:g}x {'ok' if time_ratio >= min_ratio else 'MISSED'}")
    if max_anon:
        checks.append(f"anon <= {max_anon:g} MB {'ok' if anon_mb <= max_anon else 'MISSED'}")
    return ", ".join(checks)


def markdown_table(rows: list[dict]) -> str:
    """The results as a markdown table."""
    head = ["GB/model", "method", "tool", "wall s", "GB/s", "runs s", "peak anon MB", "peak file MB",
            "other CPU %", "time mk/ours", "anon ours/mk", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(r.get(k, "")) for k in head) + " |" for r in rows])


def main() -> int:
    """Parse options, run every size x method x tool, print (and optionally write) the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.1,0.4,1.5", help="GB per model, comma separated")
    ap.add_argument("--big", action="store_true",
                    help="instead of --sizes: the Llama-70B-shaped family (~23 GB disk, default cache /work/bigbench)")
    ap.add_argument("--methods", default="task_arithmetic,ties", help="merge methods, comma separated")
    ap.add_argument("--mergekit", help="path to mergekit-yaml (default: PATH, then $MERGEKIT_YAML)")
    ap.add_argument("--skip-mergekit", action="store_true", help="run MergeDesk only")
    ap.add_argument("--skip-ours", action="store_true", help="run mergekit only")
    ap.add_argument("--ours-cmd", default=OURS_CMD,
                    help="command for MergeDesk, with {python} {recipe} {out} (default: %(default)s)")
    ap.add_argument("--cache", type=Path, help="folder for generated models (default bench/.cache, --big: /work/bigbench)")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per tool, alternating between tools; the table gives the median wall time")
    args = ap.parse_args()
    args.cache = args.cache or (BIG_CACHE if args.big else REPO / "bench" / ".cache")
    if args.big:
        check_big_disk(args.cache)

    tools = [] if args.skip_ours else [("ours", args.ours_cmd.split())]
    notes = ["Inputs read once (cat > /dev/null) before each timed run: both tools see a warm page cache.",
             f"Each tool ran {args.repeat} times, alternating with the other: wall s is the median of the runs "
             "listed under runs s; peak memory and other CPU % are the highest of the runs."]
    mergekit = None if args.skip_mergekit else find_mergekit(args.mergekit)
    if mergekit:
        tools.append(("mergekit", [mergekit, "{recipe}", "{out}", "--lazy-unpickle", "--no-copy-tokenizer"]))
        notes.append(f"mergekit {mergekit_version(mergekit)}: {mergekit} --lazy-unpickle --no-copy-tokenizer (CPU)")
    elif not args.skip_mergekit:
        notes.append("mergekit not found (no --mergekit, none on PATH, no $MERGEKIT_YAML): its rows are skipped.")
    notes.append(f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
                 f"Python {platform.python_version()}, torch {torch.__version__}")
    notes.append("other CPU %: CPU time other processes used during the run, as % of all cores; "
                 "much above 5 % the wall times are disturbed.")
    print("\n".join(notes), flush=True)

    work, out = args.cache / "runs", args.cache / "runs" / "out"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [None] if args.big else [float(s) for s in args.sizes.split(",")]:
        family = ensure_family(args.cache, size)
        index = json.loads((family / "base" / "model.safetensors.index.json").read_text())
        gb = index["metadata"]["total_size"] / 1e9
        for label, seconds in cat_floor(family):
            rows.append({"GB/model": f"{gb:.2f}", "method": "(floor)", "tool": f"cat, {label}",
                         **({"wall s": f"{seconds:.1f}", "GB/s": f"{len(FAMILY) * gb / seconds:.2f}"} if seconds else {})})
        for method in args.methods.split(","):
            recipe = write_recipe(work / f"{method}.yml", method, family)
            runs: dict[str, list[tuple[float, float, float, float]]] = {tool: [] for tool, _ in tools}
            failed = set()
            for repeat in range(args.repeat):  # tools alternate, so a slow spell of the machine hits both
                for tool, template in tools:
                    if tool in failed:
                        continue
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = [part.format(python=sys.executable, recipe=recipe, out=out) for part in template]
                    log = work / f"{family.name}-{method}-{tool}.log"
                    warm_page_cache(family)
                    code, wall, anon, file, other = run_measured(cmd, REPO, log)
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"{gb:.2f} GB {method} {tool} run {repeat + 1}/{args.repeat}: "
                          f"{'exit ' + str(code) if code else f'{wall:.1f} s, anon {anon:.0f} MB'}", flush=True)
                    if code:
                        failed.add(tool)
                        print(f"{tool} {method} failed with exit {code}; last lines of {log}:\n"
                              + "\n".join(log.read_text(errors="replace").splitlines()[-10:]), flush=True)
                    else:
                        runs[tool].append((wall, anon, file, other))
            results = {}
            for tool, _ in tools:
                row = {"GB/model": f"{gb:.2f}", "method": method, "tool": tool}
                if tool in failed:
                    row["target"] = f"FAILED (log {work / f'{family.name}-{method}-{tool}.log'})"
                else:
                    wall = statistics.median(r[0] for r in runs[tool])
                    anon, file, other = (max(r[i] for r in runs[tool]) for i in (1, 2, 3))
                    results[tool] = (wall, anon)
                    row.update({"wall s": f"{wall:.1f}", "GB/s": f"{len(FAMILY) * gb / wall:.2f}", "runs s": " ".join(f"{r[0]:.1f}" for r in runs[tool]),
                                "peak anon MB": f"{anon:.0f}", "peak file MB": f"{file:.0f}", "other CPU %": f"{other:.0f}"})
                rows.append(row)
            if "ours" in results:
                ours, mk = results["ours"], results.get("mergekit")
                ours_row, ratio = next(r for r in reversed(rows) if r["tool"] == "ours"), mk and mk[0] / ours[0]
                if mk:
                    ours_row.update({"time mk/ours": f"{ratio:.2f}", "anon ours/mk": f"{ours[1] / mk[1]:.2f}"})
                ours_row["target"] = verdict(method, ratio, ours[1])

    report = markdown_table(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print("\n" + report, end="")
    if args.out:
        args.out.write_text(report)
        print(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
