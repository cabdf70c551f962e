"""core.rerank.significance against scipy and hand-enumerated distributions on small cases."""
import itertools

import numpy as np
import pytest
from scipy import stats

from core.errors import RerankError
from core.rerank.significance import paired_test, verdict


def _scipy_p(a, b, **options):
    return stats.permutation_test((np.asarray(a, float), np.asarray(b, float)), lambda x, y: np.mean(y - x),
                                  permutation_type="samples", alternative="two-sided", **options).pvalue


@pytest.mark.parametrize("a, b", [
    ([0.0, 0.5, 1.0, 0.2], [1.0, 0.5, 1.0, 0.9]),  # one tie
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.1, 0.6, 0.4, 0.9, 0.2]),  # wins and losses
    ([0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.5]),  # all wins
    ([1.0, 0.5, 0.25], [0.5, 1.0, 0.25]),  # deltas of equal size and opposite sign: mean 0
])
def test_exact_randomization_p_equals_scipys_exact_permutation_test(a, b):
    test = paired_test(a, b)
    assert test.exact
    assert test.p_value == pytest.approx(_scipy_p(a, b), abs=1e-12)


def test_p_value_by_hand_three_equal_wins():
    # 8 sign flips of (+1, +1, +1): only "all +" reaches mean 1 and only "all −" reaches -1 → p = 2/8
    assert paired_test([0, 0, 0], [1, 1, 1]).p_value == pytest.approx(0.25)


def test_monte_carlo_p_is_near_scipys_and_never_zero():
    rng = np.random.default_rng(3)
    a = rng.random(40)
    b = a + rng.normal(0.05, 0.2, 40)  # 2^40 flips: Monte Carlo
    test = paired_test(a, b, resamples=20_000, seed=1)
    assert not test.exact
    reference = _scipy_p(a, b, n_resamples=20_000, rng=np.random.default_rng(2))
    assert test.p_value == pytest.approx(reference, abs=0.015)
    strong = paired_test(a, a + 1.0, resamples=500)
    assert strong.p_value == pytest.approx(2 / 501)  # (0 + 1) / (500 + 1) per tail, two-sided


def test_bootstrap_interval_matches_scipys_percentile_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.random(30), rng.random(30)
    test = paired_test(a, b, resamples=40_000, seed=0)
    reference = stats.bootstrap((b - a,), np.mean, method="percentile", n_resamples=40_000,
                                rng=np.random.default_rng(1)).confidence_interval
    assert test.ci_low == pytest.approx(reference.low, abs=0.01)
    assert test.ci_high == pytest.approx(reference.high, abs=0.01)
    assert test.ci_low < test.mean_delta < test.ci_high


def test_bootstrap_interval_of_three_queries_matches_the_enumerated_distribution():
    deltas = [0.0, 0.3, 1.2]
    means = sorted(np.mean(draw) for draw in itertools.product(deltas, repeat=3))  # all 27 resamples
    cdf = np.arange(1, 28) / 27
    low = means[int(np.argmax(cdf >= 0.025))]  # 1/27 ≈ 0.037: the smallest mean, 0.0
    high = means[int(np.argmax(cdf >= 0.975))]  # the largest, 1.2
    test = paired_test([0, 0, 0], deltas, resamples=20_000)
    assert (test.ci_low, test.ci_high) == pytest.approx((low, high))
    narrower = paired_test([0, 0, 0], deltas, resamples=20_000, confidence=0.5)  # quartiles lie between atoms
    q1, q3 = means[int(np.argmax(cdf >= 0.25))], means[int(np.argmax(cdf >= 0.75))]
    assert q1 - 0.15 <= narrower.ci_low <= q1 + 1e-9 and q3 - 1e-9 <= narrower.ci_high <= q3 + 0.15


def test_ties_wins_losses_and_skipped_queries():
    a = [0.5, 1.0, None, 0.2, 0.0]
    b = [0.5, 0.5, None, 0.7, 0.0]
    test = paired_test(a, b)
    assert (test.n, test.skipped, test.wins, test.ties, test.losses) == (4, 1, 1, 2, 1)
    assert test.mean_a == pytest.approx(1.7 / 4) and test.mean_delta == pytest.approx(0.0)
    assert test.p_value == pytest.approx(1.0)  # deltas (0, -0.5, +0.5, 0) are symmetric
    assert paired_test([0.3, 0.3], [0.3, 0.3]).p_value == 1.0  # every delta 0


def test_seeded_and_reproducible():
    rng = np.random.default_rng(0)
    a, b = list(rng.random(50)), list(rng.random(50))
    assert paired_test(a, b, seed=7) == paired_test(a, b, seed=7)
    assert paired_test(a, b, seed=7).ci_low != paired_test(a, b, seed=8).ci_low


def test_verdicts_in_words():
    flat = paired_test([0.5, 0.4, 0.3], [0.5, 0.5, 0.3])
    assert verdict(flat, "nDCG@10").startswith("nDCG@10: not significant on 3 queries (Δ +0.033")
    better = paired_test([0.0] * 8, [1.0] * 8)
    assert verdict(better, "MRR@10") == ("MRR@10: B better by 1.000 (95% CI of B − A +1.000 … +1.000), p = 0.0078 "
                                         "on 8 queries; 8 wins / 0 ties / 0 losses for B")
    assert verdict(paired_test([1.0] * 8, [0.0] * 8), "MRR@10", names=("base", "merge")).startswith(
        "MRR@10: base better by 1.000")


@pytest.mark.parametrize("a, b, options, message", [
    ([0.1, 0.2], [0.1], {}, "one value per query for both models, got 2 and 1"),
    ([None], [None], {}, "every query lacks a relevant passage"),
    ([0.1], [0.2], {"resamples": 0}, "resamples must be at least 1"),
    ([0.1], [0.2], {"confidence": 1.0}, "confidence must be between 0 and 1"),
])
def test_bad_input_is_refused(a, b, options, message):
    with pytest.raises(RerankError, match=message):
        paired_test(a, b, **options)
