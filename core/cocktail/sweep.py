"""The α-sweep: merge two models at α = 0, 0.1, …, 1 and measure each merge on labelled sets.

    sets = {"cooking": read_queries("assets/demo/cooking/eval.jsonl"), "general": read_queries(...)}
    result = sweep("models/general-ce", "models/cooking-ce", sets, device="cpu")
    result.values("cooking", "nDCG@10")     # one value per α: the in-domain curve
    print(result.table())                   # α by rows, set × metric by columns

The merge at α is `linear` (1 − α)·A + α·B — with A the base, the base plus α times B's task
vector — or `task_arithmetic` A + α·(B − A) (α may leave [0, 1]) or `slerp` at t = α, or
`dare_linear` / `della_linear`: A + α·(B − A) with the task vector sparsified at random to
`density`. Those two depend on the seed: `seeds=K` merges each α with the seeds 0 … K−1 and
the result keeps every draw, summarized per α and set by SweepResult.spread (core.cocktail.spread:
min, max, mean, 95% interval); a deterministic method is merged once whatever K is. The
recipe goes through the engine's planner and method code, so the sweep measures exactly the
models `python -m core merge` would write. This is the trade-off curve of the LM-Cocktail paper
(in-domain against general skill), for the user's own models and queries.

Two ways to get each merge (core.cocktail.sweep_merges), same numbers (a test checks it):
- "memory": A is loaded once as a private copy (not the playground's cached one); for each α the
  engine's loop computes every merged tensor from the memory-mapped inputs and copies it into that
  model's weights (core.merge.engine.merge_into). Nothing is written to disk.
- "disk": each merge is streamed by the engine into a temporary folder (in `scratch`, e.g. a hosted
  visitor's own folder, so their size cap counts it and closing the page removes it), loaded, scored, deleted.
  Used when the model's names do not line up with its checkpoint's, or when "auto" finds that
  a loaded model would take more than half of the free memory of the device.
Scores and metrics come from core.rerank.model / core.rerank.compare (nDCG@10, MRR@10, recall@k).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from core.cocktail.spread import Spread, sweep_seeds
from core.cocktail.sweep_merges import Scoring, fits_in_memory, merged_in_memory, merged_on_disk
from core.errors import RerankError
from core.merge.recipe import MergeRecipe, recipe_from_dict
from core.rerank.compare import QueryItem, compare, pooled, read_queries

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, …, 1
SWEEP_FORMULAS = {"linear": "(1 − α)·A + α·B", "task_arithmetic": "A + α·(B − A)",
                  "slerp": "spherical interpolation at t = α",
                  "dare_linear": "A + α·DARE(B − A): random drop to the density, rescaled",
                  "della_linear": "A + α·DELLA(B − A): drop by magnitude-ranked chance, rescaled"}
SWEEP_METHODS = tuple(SWEEP_FORMULAS)  # the CLI's --method choices and the Sweep tab's "Mix" dropdown
DEFAULT_METHOD = "linear"
MODES = ("auto", "memory", "disk")
SHOWN_METRICS = ("nDCG@10", "MRR@10")
SWEEP_DENSITY = 0.5  # the random methods' share of B − A kept (density 1 would drop nothing: no spread)
@dataclass(frozen=True)
class SweepPoint:
    """The merge at one α, measured on one labelled set."""

    alpha: float
    set_name: str
    metrics: dict[str, float]  # nDCG@10, MRR@10, recall@k: means over the set's queries
    seed: int = 0  # the merge's seed (matters for the random methods only)


@dataclass(frozen=True)
class SweepResult:
    model_a: str  # α = 0
    model_b: str  # α = 1
    method: str  # one of SWEEP_METHODS
    mode: str  # "memory" or "disk": how the merges were made
    alphas: list[float]
    set_names: list[str]
    points: list[SweepPoint]  # α-major: every seed's sets at the first α, then at the next…
    seeds: list[int] = field(default_factory=lambda: [0])  # each α merged with each of these
    density: float = SWEEP_DENSITY  # dare_linear / della_linear only

    def values(self, set_name: str, metric: str) -> list[float]:
        """One value per α (in self.alphas order) of `metric` on `set_name`: the mean over the seeds."""
        return [spread.mean for spread in self.spread(set_name, metric)]

    def spread(self, set_name: str, metric: str) -> list[Spread]:
        """Per α (in self.alphas order): `metric` on `set_name` over the seeds (min, max, mean, interval)."""
        found: dict[float, list[float]] = {}
        for p in self.points:
            if p.set_name == set_name:
                found.setdefault(p.alpha, []).append(p.metrics[metric])
        return [Spread.of(found[a]) for a in self.alphas]

    def table(self, metrics: tuple[str, ...] = SHOWN_METRICS) -> str:
        """Aligned text, one row per α: what `python -m core sweep` prints.

        Example:
            alpha  cooking nDCG@10  cooking MRR@10  general nDCG@10  general MRR@10
              0.0           0.6120          0.5540           0.8013          0.7622
        """
        headers = [f"{s} {m}" for s in self.set_names for m in metrics]
        lines = ["alpha  " + "  ".join(headers)]
        for alpha in self.alphas:
            cells = [f"{self.values(s, m)[self.alphas.index(alpha)]:>{len(f'{s} {m}')}.4f}"
                     for s in self.set_names for m in metrics]
            lines.append(f"{alpha:>5.2f}  " + "  ".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data for JSON (the CLI's --json, the PNG tool)."""
        return {"model_a": self.model_a, "model_b": self.model_b, "method": self.method, "mode": self.mode,
                "alphas": self.alphas, "sets": self.set_names, "seeds": self.seeds, "density": self.density,
                "points": [{"alpha": p.alpha, "set": p.set_name, "seed": p.seed, **p.metrics} for p in self.points],
                "spread": [{"alpha": alpha, "set": name, "metric": metric, **spread.to_dict()}
                           for name in self.set_names for metric in self.metric_names()
                           for alpha, spread in zip(self.alphas, self.spread(name, metric))]}

    def metric_names(self) -> list[str]:
        return list(self.points[0].metrics) if self.points else []

    def spread_table(self, metrics: tuple[str, ...] = SHOWN_METRICS) -> str:
        """Aligned text, one row per α, set and metric: the spread over the seeds (the CLI's --seeds K > 1).

        Example:
            alpha  set      metric    mean     min     max  95% low  95% high
             0.50  cooking  nDCG@10   0.6120  0.6001  0.6240   0.5824    0.6416
        """
        width = max(len(name) for name in self.set_names)
        lines = [f"alpha  {'set':<{width}}  metric     mean     min     max  95% low  95% high"]
        for name in self.set_names:
            for metric in metrics:
                for alpha, s in zip(self.alphas, self.spread(name, metric)):
                    lines.append(f"{alpha:>5.2f}  {name:<{width}}  {metric:<8} {s.mean:.4f}  {s.min:.4f}  "
                                 f"{s.max:.4f}   {s.low:.4f}    {s.high:.4f}")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        """The inverse of to_dict (for JSON written by `python -m core sweep --json`)."""
        try:
            points = [SweepPoint(p["alpha"], p["set"], {k: v for k, v in p.items() if k not in ("alpha", "set", "seed")},
                                 p.get("seed", 0)) for p in data["points"]]
            return cls(data["model_a"], data["model_b"], data["method"], data["mode"], list(data["alphas"]),
                       list(data["sets"]), points, list(data.get("seeds", [0])), data.get("density", SWEEP_DENSITY))
        except (KeyError, TypeError) as error:
            raise RerankError(f"not a sweep result: missing or malformed {error}") from None


def sweep(model_a: str, model_b: str, sets: dict[str, list[QueryItem]], **options) -> SweepResult:
    """Run the whole sweep and collect it; see sweep_points for the arguments."""
    points, mode = [], ""
    for point, mode in sweep_points(model_a, model_b, sets, **options):
        points.append(point)
    alphas = list(dict.fromkeys(p.alpha for p in points))
    method = options.get("method", DEFAULT_METHOD)
    return SweepResult(model_a, model_b, method, mode, alphas, list(sets), points,
                       sweep_seeds(method, options.get("seeds", 1)), options.get("density", SWEEP_DENSITY))


def sweep_points(model_a: str, model_b: str, sets: dict[str, list[QueryItem]], *,
                 alphas=DEFAULT_ALPHAS, method: str = DEFAULT_METHOD, device: str = "cpu", mode: str = "auto",
                 dtype: str | None = None, batch_size: int = 32, max_length: int | None = None,
                 seeds: int = 1, density: float = SWEEP_DENSITY, cancel: threading.Event | None = None,
                 scratch: Path | None = None, token: str | bool | None = None) -> Iterator[tuple[SweepPoint, str]]:
    """Yield (SweepPoint, mode used) for every α, seed and set, as each is measured.

    Args:
        model_a, model_b: folders or Hub ids of the same architecture (α = 0 is A, α = 1 is B).
        sets: name → labelled queries (read_queries / read_sets); every query needs labels.
        alphas: the mixing weights, in the order to evaluate them.
        method: "linear" (1−α)A + αB, "task_arithmetic" A + α(B − A), or "slerp" at t = α.
        device, dtype: where and in which precision the merges are scored (core.rerank.model defaults).
        mode: "memory", "disk" or "auto" (see the module docstring).
        seeds: K, how many seeds (0 … K−1) each α of a random method is merged with; 1 for others.
        density: the share of B − A that dare_linear / della_linear keep.
        cancel: set it to stop between two α's (raises MergeCancelled).
        scratch: the folder that holds the "disk" mode's temporary merge; None = the system's temp dir.
        token: Hugging Face access for Hub ids: None = this machine's login; a hosted visitor's
            token or False = only theirs (see checkpoint.resolve_reference).
    """
    alphas = check_sweep(alphas, sets, method, mode)
    seed_list = sweep_seeds(method, seeds)
    recipes = [(sweep_recipe(method, model_a, model_b, alpha, density), seed) for alpha in alphas for seed in seed_list]
    if mode == "auto":
        mode = "memory" if fits_in_memory(model_a, device, dtype, token=token) else "disk"
    merges = merged_in_memory if mode == "memory" else merged_on_disk
    scoring = Scoring(device, dtype, batch_size, max_length, token)
    steps = [(alpha, seed) for alpha in alphas for seed in seed_list]
    for (alpha, seed), (reranker, used) in zip(steps, merges(recipes, scoring, cancel, scratch=scratch)):
        for name, items in sets.items():
            metrics = compare([reranker], items, batch_size=batch_size, max_length=max_length).metrics
            yield SweepPoint(alpha, name, {k: v[0] for k, v in metrics.items()}, seed), used


def sweep_recipe(method: str, model_a: str, model_b: str, alpha: float, density: float = SWEEP_DENSITY) -> MergeRecipe:
    """The recipe of the merge at α (validated like any recipe; `density` for the random methods only)."""
    if method == "linear":
        data = {"merge_method": "linear", "parameters": {"normalize": False},
                # round: the form and YAML show 0.3, not 0.30000000000000004
                "models": [{"model": model_a, "parameters": {"weight": round(1 - alpha, 12)}},
                           {"model": model_b, "parameters": {"weight": alpha}}]}
    elif method == "task_arithmetic":
        data = {"merge_method": "task_arithmetic", "base_model": model_a,
                "models": [{"model": model_b, "parameters": {"weight": alpha}}]}
    elif method == "slerp":
        data = {"merge_method": "slerp", "base_model": model_a, "models": [{"model": model_b}],
                "parameters": {"t": alpha}}
    elif method in ("dare_linear", "della_linear"):
        data = {"merge_method": method, "base_model": model_a,
                "models": [{"model": model_b, "parameters": {"weight": alpha, "density": density}}]}
    else:
        raise RerankError(f"unknown sweep method {method!r}: use one of {', '.join(SWEEP_METHODS)}")
    return recipe_from_dict(data)


def check_sweep(alphas, sets: dict, method: str, mode: str) -> list[float]:
    """Every problem found before a model is loaded; the α's as floats."""
    if method not in SWEEP_METHODS:
        raise RerankError(f"unknown sweep method {method!r}: use one of {', '.join(SWEEP_METHODS)}")
    if mode not in MODES:
        raise RerankError(f"unknown sweep mode {mode!r}: use one of {', '.join(MODES)}")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise RerankError("give at least one α to evaluate")
    if method != "task_arithmetic" and any(not 0 <= a <= 1 for a in alphas):
        raise RerankError(f"{method} needs every α in [0, 1] (got {alphas}); task_arithmetic extrapolates")
    if not sets:
        raise RerankError("give at least one labelled set to measure the merges on")
    for name, items in sets.items():
        if not items or any(item.labels is None for item in items):
            raise RerankError(f"set {name!r}: every query needs labels (or pos/neg passages) to be measured")
    return alphas


def read_sets(files: list[tuple[str | None, str | Path]], *, pool: bool = False) -> dict[str, list[QueryItem]]:
    """Labelled sets from (name, path) pairs; a name of None or "" is the file's (its folder's for eval/test/dev).

    Names and paths are kept apart as data, never joined into one "NAME=PATH" string: a file
    may have '=' in its name (an upload called `x=private.jsonl` must not open private.jsonl).
    pool: rank each query against every passage of its set (core.rerank.compare.pooled).

    Example:
        >>> list(read_sets([(None, "assets/demo/cooking/eval.jsonl"), ("mine", "my_queries.jsonl")]))
        ['cooking', 'mine']
    """
    sets: dict[str, list[QueryItem]] = {}
    for name, path in files:
        path = Path(path)
        name = name or (path.parent.name if path.stem in ("eval", "test", "dev") and path.parent.name else path.stem)
        if name in sets:
            raise RerankError(f"two sets are called {name!r}: give them different names")
        sets[name] = pooled(read_queries(path)) if pool else read_queries(path)
    return sets
