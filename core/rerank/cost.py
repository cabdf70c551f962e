"""What a reranker costs to run: load time, scoring time per 100 pairs, peak memory, size.

    reranker, load = load_measured("out/merged", device="cpu")      # a fresh load, timed and watched
    cost = measure_cost(reranker, pairs, load=load)                   # → ModelCost
    cost.score_s_per_100, cost.peak_bytes, cost.parameters, cost.dtype

Peak memory is read where the model lives: on CUDA, torch's max_memory_allocated on its device
(reset before the load); on CPU, how much this process's real memory (RssAnon, core.monitor)
rose above its level before the load, sampled every 50 ms. Scoring time is wall-clock over up
to TIMED_PAIRS pairs after one untimed warm-up pair (the first call pays one-off set-up), scaled
to 100 pairs; it uses the batch size the evaluation uses.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from core.devices import parse_device
from core.errors import MergeDeskError
from core.io.reference import resolve_reference
from core.monitor import MemoryMonitor

TIMED_PAIRS = 100


@dataclass(frozen=True)
class LoadCost:
    """What loading took: seconds, and the memory peak it reached (bytes, see the module doc)."""

    seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class ModelCost:
    ref: str
    kind: str
    device: str
    dtype: str  # a core.units.DTYPES name
    parameters: int  # weights counted once (tied embeddings once)
    load_s: float | None  # None when the model was already loaded (cached) before measuring
    score_s_per_100: float  # wall-clock seconds to score 100 pairs
    pairs_timed: int
    peak_bytes: int  # the highest memory seen over loading (when measured) and scoring
    peak_source: str  # "cuda max_memory_allocated" or "process RssAnon added"

    def to_dict(self) -> dict:
        return asdict(self)


def load_measured(ref: str, **load_options) -> tuple[object, LoadCost]:
    """load_reranker(ref, cached=False, **load_options), timed and with its memory peak.

    The architecture's Python modules are imported before the clock starts, so the first model
    measured does not also pay transformers' one-off imports (seconds, and ~100 MB).
    """
    from core.rerank.model import load_reranker

    _import_architecture(ref, token=load_options.get("token"))
    with _peak(parse_device(load_options.get("device", "cpu"))) as peak:
        start = time.perf_counter()
        reranker = load_reranker(ref, cached=False, **load_options)
        seconds = time.perf_counter() - start
    return reranker, LoadCost(seconds, peak())


def measure_cost(reranker, pairs: list[tuple[str, str]], *, load: LoadCost | None = None, batch_size: int = 32,
                 max_length: int | None = None) -> ModelCost:
    """Time scoring up to TIMED_PAIRS of `pairs` with `reranker` and gather its size and memory peak."""
    timed = pairs[:TIMED_PAIRS]
    with _peak(reranker.device) as peak:
        reranker.score_pairs(timed[:1], batch_size=batch_size, max_length=max_length)  # warm-up, untimed
        start = time.perf_counter()
        reranker.score_pairs(timed, batch_size=batch_size, max_length=max_length)
        seconds = time.perf_counter() - start
    scoring_peak = peak()
    parameters = sum(p.numel() for p in reranker.model.parameters())
    return ModelCost(
        ref=reranker.ref, kind=reranker.kind, device=str(reranker.device),
        dtype=str(reranker.dtype).removeprefix("torch."), parameters=parameters,
        load_s=load.seconds if load else None, score_s_per_100=seconds * 100 / len(timed), pairs_timed=len(timed),
        peak_bytes=max(scoring_peak, load.peak_bytes if load else 0),
        peak_source="cuda max_memory_allocated" if reranker.device.type == "cuda" else "process RssAnon added")


def _import_architecture(ref: str, *, token) -> None:
    """Import the model classes config.json names (transformers imports them lazily, on first use)."""
    import transformers

    try:
        config = json.loads((resolve_reference(ref, token=token) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, MergeDeskError):
        return  # load_reranker reports what is wrong with the folder
    for name in [*(config.get("architectures") or []), "AutoTokenizer", "AutoModel"]:
        getattr(transformers, name, None)


@contextmanager
def _peak(device: torch.device):
    """Yields a function giving the body's memory peak in bytes, once the body has run."""
    found = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: found[0]
        found.append(torch.cuda.max_memory_allocated(device))
        return
    monitor = MemoryMonitor(interval=0.05)
    with monitor.job("cost"):
        yield lambda: found[0]
    state = monitor.job_state()
    found.append(max(0, state.peak_anon - state.start_anon))
