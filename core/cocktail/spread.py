"""How much a sweep's metric moves with the merge's seed: min, max, mean and a 95% interval of the mean.

    spread = Spread.of([0.61, 0.64, 0.60])   # one value per seed (DARE / DELLA drop at random)
    spread.low, spread.high                  # mean ± t(0.975, K − 1) · s / √K, s the sample std (K − 1)

DARE and DELLA drop entries of the task vector at random, so one merge's score is one draw; a gain
smaller than the spread across seeds is not a gain. The interval is Student's t interval of the mean
over the K seeds (the seeds are independent draws); with one seed, or seeds that all score the same,
it has no width. sweep_seeds says which seeds a sweep merges with (one, 0, for a deterministic
method: seeds do not apply there). The t quantile is computed here (numerically, no scipy at run time); the tests check
it against scipy.stats.t.ppf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import RerankError
from core.merge.methods import METHODS

CONFIDENCE = 0.95
MAX_SEEDS = 50


def seeds_apply(method: str) -> bool:
    """Whether the sweep's merges depend on the seed (the registry's `random`: DARE, DELLA)."""
    return method in METHODS and METHODS[method].random


def sweep_seeds(method: str, seeds: int) -> list[int]:
    """The seeds to merge each α with: 0 … K−1 for a random method, [0] for a deterministic one."""
    if isinstance(seeds, float) and seeds.is_integer():
        seeds = int(seeds)  # the app's number box hands over floats
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
        raise RerankError(f"seeds {seeds!r}: give a whole number of seeds from 1 to {MAX_SEEDS}")
    return list(range(seeds)) if seeds_apply(method) else [0]


@dataclass(frozen=True)
class Spread:
    """One metric at one α on one set, over the seeds."""

    mean: float
    min: float
    max: float
    low: float  # the interval of the mean
    high: float
    seeds: int  # how many values it summarizes

    @classmethod
    def of(cls, values: list[float], confidence: float = CONFIDENCE) -> "Spread":
        count = len(values)
        mean = math.fsum(values) / count
        half = 0.0
        if count > 1:
            deviation = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1))
            half = t_quantile(0.5 + confidence / 2, count - 1) * deviation / math.sqrt(count)
        return cls(mean, min(values), max(values), mean - half, mean + half, count)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "min": self.min, "max": self.max, "low": self.low, "high": self.high,
                "seeds": self.seeds}


def t_quantile(probability: float, freedom: int) -> float:
    """The Student t quantile for probability in (0.5, 1): bisection on the CDF (Simpson's rule on the density)."""
    low, high = 0.0, 1.0
    while t_cdf(high, freedom) < probability:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, freedom) < probability else (low, middle)
    return (low + high) / 2


def t_cdf(x: float, freedom: int, steps: int = 2000) -> float:
    """P(T ≤ x) for x ≥ 0: ½ plus the density's integral over [0, x] (Simpson, `steps` even)."""
    scale = math.exp(math.lgamma((freedom + 1) / 2) - math.lgamma(freedom / 2)) / math.sqrt(freedom * math.pi)

    def density(t: float) -> float:
        return scale * (1 + t * t / freedom) ** (-(freedom + 1) / 2)

    width = x / steps
    inner = sum((4 if i % 2 else 2) * density(i * width) for i in range(1, steps))
    return 0.5 + width / 3 * (density(0.0) + inner + density(x))
