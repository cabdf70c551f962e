"""Is a difference between two rerankers real? A paired test over queries, seeded.

    test = paired_test([0.5, 1.0, 0.33], [1.0, 1.0, 0.5])   # per-query metric of model A, of model B
    test.mean_delta, test.ci_low, test.ci_high              # mean of B − A and its 95% bootstrap interval
    test.p_value                                            # paired randomization test, two-sided
    test.wins, test.ties, test.losses                       # queries where B is above / equal / below A
    verdict(test, "nDCG@10")                                # "nDCG@10: not significant on 3 queries (Δ +0.222, …"

Why these two: queries are the unit that varies (each has its own difficulty), so both models
are compared on the same query and only the per-query deltas d_i = B_i − A_i matter.
- Interval: percentile bootstrap of the mean delta: resample the n deltas with replacement
  `resamples` times, take the 2.5% and 97.5% quantiles of the resampled means (as
  scipy.stats.bootstrap(method="percentile") does).
- p-value: paired randomization (sign-flip) test of "A and B are exchangeable on each query":
  flip the sign of each d_i at random; p = share of flipped means at least as far from 0 as
  the observed one, two-sided as scipy.stats.permutation_test(permutation_type="samples")
  computes it (2 × the smaller tail, capped at 1). Exact over all 2^n flips when
  2^n ≤ resamples, else Monte Carlo with the (count + 1) / (resamples + 1) correction.
Queries given as None (a query with no relevant passage: every model scores 0 there, so it says
nothing about which is better) are left out and counted in `skipped`. A tie is |d_i| ≤ TIE.
Pure numpy; no models.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from core.errors import RerankError

TIE = 1e-12  # per-query deltas this small are ties (metrics are exact fractions; this absorbs rounding)
CHUNK = 1000  # resamples drawn at once: bounds memory at CHUNK × n indices


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of model B against model A on one metric, over queries."""

    n: int  # queries tested (those with a relevant passage)
    skipped: int  # queries left out (no relevant passage)
    mean_a: float  # mean metric of A over the tested queries
    mean_b: float
    mean_delta: float  # mean of B − A
    ci_low: float  # percentile bootstrap interval of mean_delta, at `confidence`
    ci_high: float
    p_value: float  # paired randomization test, two-sided; 1.0 when every delta is 0
    wins: int  # queries where B > A
    ties: int
    losses: int  # queries where B < A
    confidence: float  # 0.95
    resamples: int  # bootstrap draws (and randomization draws unless exact)
    exact: bool  # True when the p-value enumerated all 2^n sign flips
    seed: int

    def significant(self, alpha: float | None = None) -> bool:
        """p below 1 − confidence (0.05 by default)."""
        return self.p_value < (1 - self.confidence if alpha is None else alpha)

    def to_dict(self) -> dict:
        return asdict(self)


def paired_test(a: list[float | None], b: list[float | None], *, resamples: int = 10_000, seed: int = 0,
                confidence: float = 0.95) -> PairedTest:
    """Paired bootstrap interval and randomization p-value of mean(b − a) over queries.

    Args:
        a, b: one metric value per query for model A and model B, same query order; None
            where the query has no relevant passage (left out, counted in `skipped`).
        resamples: bootstrap draws, and randomization draws when 2^n > resamples.
        seed: numpy Generator seed; the same inputs and seed give the same numbers.
        confidence: of the interval; also sets `significant()`'s default level.
    Example:
        >>> t = paired_test([0.0, 0.5, 1.0], [1.0, 0.5, 1.0])
        >>> (t.mean_delta, t.wins, t.ties, t.losses, t.p_value)   # 2 flips of 1 non-zero delta
        (0.333..., 1, 2, 0, 1.0)
    """
    if len(a) != len(b):
        raise RerankError(f"paired test needs one value per query for both models, got {len(a)} and {len(b)}")
    if resamples < 1:
        raise RerankError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise RerankError(f"confidence must be between 0 and 1, got {confidence}")
    kept = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    skipped = len(a) - len(kept)
    if not kept:
        raise RerankError("no query to test: every query lacks a relevant passage")
    pairs = np.asarray(kept, dtype=float)  # (n, 2)
    delta = pairs[:, 1] - pairs[:, 0]
    rng = np.random.default_rng(seed)
    low, high = _bootstrap_interval(delta, rng, resamples, confidence)
    p_value, exact = _randomization_p(delta, rng, resamples)
    return PairedTest(
        n=len(delta), skipped=skipped, mean_a=float(pairs[:, 0].mean()), mean_b=float(pairs[:, 1].mean()),
        mean_delta=float(delta.mean()), ci_low=low, ci_high=high, p_value=p_value,
        wins=int((delta > TIE).sum()), ties=int((np.abs(delta) <= TIE).sum()), losses=int((delta < -TIE).sum()),
        confidence=confidence, resamples=resamples, exact=exact, seed=seed)


def _bootstrap_interval(delta: np.ndarray, rng, resamples: int, confidence: float) -> tuple[float, float]:
    n, means = len(delta), []
    for start in range(0, resamples, CHUNK):
        draws = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))  # (chunk, n) query indices
        means.append(delta[draws].mean(axis=1))
    means = np.concatenate(means)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _randomization_p(delta: np.ndarray, rng, resamples: int) -> tuple[float, bool]:
    """Two-sided sign-flip p-value of the mean delta and whether it was exact."""
    observed = delta.mean()
    if np.all(np.abs(delta) <= TIE):
        return 1.0, True
    n = len(delta)
    tolerance = abs(observed) * 1e-10 + 1e-15  # flips that equal the observed mean up to rounding count as equal
    if 2**n <= resamples:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n) every flip
        flipped = (signs * delta).mean(axis=1)
        greater = np.mean(flipped >= observed - tolerance)
        less = np.mean(flipped <= observed + tolerance)
        return float(min(1.0, 2 * min(greater, less))), True
    greater = less = 0
    for start in range(0, resamples, CHUNK):
        signs = rng.choice((1.0, -1.0), size=(min(CHUNK, resamples - start), n))
        flipped = (signs * delta).mean(axis=1)
        greater += int((flipped >= observed - tolerance).sum())
        less += int((flipped <= observed + tolerance).sum())
    # The observed arrangement counts as one draw (scipy's adjustment): p is never 0 by chance.
    tails = (greater + 1) / (resamples + 1), (less + 1) / (resamples + 1)
    return float(min(1.0, 2 * min(tails))), False


def verdict(test: PairedTest, metric: str, *, names: tuple[str, str] = ("A", "B")) -> str:
    """One line in words, e.g. "nDCG@10: B better by 0.031 (95% CI of B − A +0.012 … +0.050), p = 0.002 on
    200 queries; 61 wins / 120 ties / 19 losses for B", or "nDCG@10: not significant on 40 queries (…)"."""
    a, b = names
    queries = f"{test.n} quer{'y' if test.n == 1 else 'ies'}"
    counts = f"{test.wins} wins / {test.ties} ties / {test.losses} losses for {b}"
    interval = f"{test.confidence:.0%} CI of {b} − {a} {test.ci_low:+.3f} … {test.ci_high:+.3f}"
    if not test.significant():
        return (f"{metric}: not significant on {queries} (Δ {test.mean_delta:+.3f}, {interval}, "
                f"p = {format_p(test.p_value)}; {counts})")
    better = b if test.mean_delta > 0 else a
    return (f"{metric}: {better} better by {abs(test.mean_delta):.3f} ({interval}), p = {format_p(test.p_value)} "
            f"on {queries}; {counts}")


def format_p(p: float) -> str:
    """p as people write it: two significant digits, scientific below 0.001."""
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"
