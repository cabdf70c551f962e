"""core.rerank.score_shift: histograms, precision/recall at a threshold, and Platt recalibration,
against hand counts, numpy and scikit-learn's logistic regression."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from core.errors import RerankError
from core.rerank.score_shift import platt_fit, score_shift

A = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.3]
LABELS = [0, 2, 0, 3, 1, 0, 1, 0]  # positives (> 0) score 0.4, 0.8, 0.7, 0.9


def test_default_threshold_is_the_base_median_positive_and_counts_are_by_hand():
    b = [s + 1.0 for s in A]  # a merge that shifted every score up by 1
    shift = score_shift(A, b, LABELS, bins=4)
    assert shift.threshold == pytest.approx(np.median([0.4, 0.8, 0.7, 0.9]))  # 0.75
    a_stats, b_stats = shift.at_threshold
    assert (a_stats.kept, a_stats.precision, a_stats.recall) == (2, 1.0, 0.5)  # 0.8, 0.9 kept
    assert (b_stats.kept, b_stats.precision, b_stats.recall) == (8, 0.5, 1.0)  # everything passes
    assert shift.medians["B"]["positive"] == pytest.approx(1.75)
    assert shift.medians["A"]["negative"] == pytest.approx(np.median([0.1, 0.35, 0.2, 0.3]))


def test_histograms_share_edges_and_match_numpy():
    b = [2 * s - 0.5 for s in A]
    shift = score_shift(A, b, LABELS, bins=5)
    edges = np.linspace(min(A + b), max(A + b), 6)
    assert shift.edges == pytest.approx(edges.tolist())
    positive = np.asarray(LABELS) > 0
    assert shift.counts["B"]["positive"] == np.histogram(np.asarray(b)[positive], edges)[0].tolist()
    assert shift.counts["A"]["negative"] == np.histogram(np.asarray(A)[~positive], edges)[0].tolist()
    assert sum(shift.counts["A"]["positive"]) + sum(shift.counts["A"]["negative"]) == len(A)


def test_platt_fit_matches_sklearn_logistic_regression_on_platts_targets():
    rng = np.random.default_rng(0)
    positive = rng.random(300) < 0.3
    scores = rng.normal(0, 1.5, 300) + 3 * positive
    a, b = platt_fit(scores, positive)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    target = np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    # soft targets as two weighted copies of each pair, no regularisation
    model = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(
        np.r_[scores, scores][:, None], np.r_[np.ones(300), np.zeros(300)], sample_weight=np.r_[target, 1 - target])
    assert a == pytest.approx(model.coef_[0, 0], rel=1e-5)
    assert b == pytest.approx(model.intercept_[0], rel=1e-5, abs=1e-6)


def test_separable_scores_still_give_a_finite_fit():
    a, b = platt_fit([0.0, 1.0, 2.0, 3.0], [False, False, True, True])
    assert np.isfinite(a) and np.isfinite(b) and a > 0


@pytest.mark.parametrize("scale, offset", [(1.0, 10.0), (2.0, 3.0), (0.25, -1.0)])
def test_recalibration_undoes_an_affine_shift_of_the_scale(scale, offset):
    rng = np.random.default_rng(1)
    positive = rng.random(200) < 0.4
    a_scores = rng.normal(0, 1, 200) + 2 * positive
    b_scores = scale * a_scores + offset  # the same ranking on another scale
    shift = score_shift(list(a_scores), list(b_scores), list(positive.astype(int)))
    assert shift.calibration.scale == pytest.approx(1 / scale, rel=1e-6)
    assert shift.calibration.shift == pytest.approx(-offset / scale, rel=1e-6, abs=1e-6)
    assert shift.after == shift.at_threshold[0]  # mapped back, B keeps exactly what A keeps


def test_nothing_kept_gives_nan_precision_and_an_explicit_threshold_is_used():
    shift = score_shift(A, A, LABELS, threshold=5.0)
    assert shift.threshold == 5.0 and shift.at_threshold[0].kept == 0
    assert np.isnan(shift.at_threshold[0].precision) and shift.at_threshold[0].recall == 0.0


@pytest.mark.parametrize("args, message", [
    (([0.1, 0.2], [0.1], [1, 0]), "one score per pair for both models and one label each, got 2, 1 and 2"),
    (([0.1, 0.2], [0.1, 0.2], [1, 1]), "both relevant and non-relevant"),
    (([0.5, 0.5], [0.1, 0.2], [1, 0]), "do not separate relevant from non-relevant"),
])
def test_bad_input_is_refused(args, message):
    with pytest.raises(RerankError, match=message):
        score_shift(*args)


def test_an_evaluation_recomputes_its_shift_at_another_threshold():
    from core.rerank.compare import QueryItem
    from core.rerank.evaluation import evaluate
    from tests.test_graded_metrics import FixedReranker

    base = FixedReranker("base", {"a": 2.0, "b": 0.0, "c": 1.0})
    merged = FixedReranker("merged", {"a": 12.0, "b": 10.0, "c": 11.0})
    result = evaluate([base, merged], [QueryItem("q", ["a", "b", "c"], [1, 0, 1])], resamples=10)
    assert result.shift.threshold == 1.5  # median of the base's positives 2.0 and 1.0
    moved = result.shift_at(11.5)
    assert moved.threshold == 11.5 and moved.at_threshold[1].kept == 1 and moved.at_threshold[0].kept == 0
    assert moved.calibration == result.shift.calibration
    everything_relevant = evaluate([base, merged], [QueryItem("q", ["a", "b"], [1, 2])], resamples=10)
    assert everything_relevant.shift is None
    assert everything_relevant.notes == ["score shift: score shift needs both relevant and non-relevant labelled "
                                         "passages"]
