"""How a merge moves the score scale, and what that does to a pipeline that cuts at a threshold.

    shift = score_shift(base_scores, merged_scores, labels)   # flat lists: every labelled pair
    shift.threshold                       # default: the base's median score of positive pairs
    shift.at_threshold[1].precision       # the merged model's precision when it keeps score ≥ threshold
    shift.after.recall                    # the merged model's recall there once recalibrated
    shift.edges, shift.counts["B"]["positive"]   # a histogram to plot, bins shared by both models

Ranking metrics ignore the scale; a reranker used as a filter ("keep passages scoring above
2.0") does not. The recalibration is Platt scaling (Platt 1999): per model, a logistic fit
p(relevant | s) = sigmoid(a·s + b) on the labelled pairs, with Platt's smoothed targets
(N₊+1)/(N₊+2) and 1/(N₋+2) so separable data still gives finite a, b. The merged model's score
is then mapped to the base score of equal fitted probability, s' = (a_B·s + b_B − b_A) / a_A,
so the base's threshold can be kept unchanged: `after` is what it gives. Only the affine map
(one scale, one shift) is fitted, so ranks never change. Label > 0 is positive.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.errors import RerankError

NEWTON_STEPS = 100  # Newton's method converges in ~10 steps on this convex 2-parameter loss


@dataclass(frozen=True)
class ThresholdStats:
    """What keeping score ≥ threshold gives, pooled over every labelled pair."""

    kept: int  # pairs at or above the threshold
    precision: float  # share of kept pairs that are relevant (nan when none is kept)
    recall: float  # share of relevant pairs that are kept


@dataclass(frozen=True)
class Calibration:
    """Platt fits p = sigmoid(a·s + b), one per model, and the map of B's scores onto A's scale."""

    a: list[float]  # per model
    b: list[float]
    scale: float  # s' = scale · s + shift maps B's scores to A's
    shift: float


@dataclass(frozen=True)
class ScoreShift:
    score_label: str  # "logit", "cosine", "sigmoid(logit)", ...
    edges: list[float]  # bins + 1 edges shared by both models
    counts: dict[str, dict[str, list[int]]]  # "A"/"B" → "positive"/"negative" → count per bin
    medians: dict[str, dict[str, float]]  # "A"/"B" → "positive"/"negative" → median score
    threshold: float
    at_threshold: list[ThresholdStats]  # per model (A, B)
    calibration: Calibration
    after: ThresholdStats  # B recalibrated onto A's scale, same threshold

    def to_dict(self) -> dict:
        return asdict(self)


def score_shift(scores_a: list[float], scores_b: list[float], labels: list[int], *, threshold: float | None = None,
                bins: int = 30, score_label: str = "logit") -> ScoreShift:
    """Both models' score distributions, precision/recall at one threshold, and B recalibrated onto A.

    Args:
        scores_a, scores_b: base and merged scores of the same labelled pairs (flat, any order).
        labels: one grade per pair; > 0 is relevant.
        threshold: where the pipeline cuts; default the base's median score of relevant pairs.
        bins: histogram bins over the range of both models' scores.
    Example:
        >>> s = score_shift([0, 1, 2, 3], [10, 11, 12, 13], [0, 0, 1, 1])
        >>> s.threshold, s.at_threshold[1].recall, s.after.recall   # B is shifted by +10
        (2.5, 1.0, 0.5)
    """
    a, b, y = (np.asarray(v, dtype=float) for v in (scores_a, scores_b, labels))
    if not len(a) == len(b) == len(y):
        raise RerankError(f"score shift needs one score per pair for both models and one label each, "
                          f"got {len(a)}, {len(b)} and {len(y)}")
    if bins < 1:
        raise RerankError(f"bins must be at least 1, got {bins}")
    positive = y > 0
    if positive.all() or not positive.any():
        raise RerankError("score shift needs both relevant and non-relevant labelled passages")
    if threshold is None:
        threshold = float(np.median(a[positive]))
    low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    calibration = _calibrate(a, b, positive)
    mapped = calibration.scale * b + calibration.shift
    return ScoreShift(
        score_label=score_label, edges=edges.tolist(),
        counts={name: {"positive": np.histogram(s[positive], edges)[0].tolist(),
                       "negative": np.histogram(s[~positive], edges)[0].tolist()} for name, s in (("A", a), ("B", b))},
        medians={name: {"positive": float(np.median(s[positive])), "negative": float(np.median(s[~positive]))}
                 for name, s in (("A", a), ("B", b))},
        threshold=float(threshold), at_threshold=[_at(a, positive, threshold), _at(b, positive, threshold)],
        calibration=calibration, after=_at(mapped, positive, threshold))


def _at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> ThresholdStats:
    kept = scores >= threshold
    hits = int((kept & positive).sum())
    precision = hits / int(kept.sum()) if kept.any() else float("nan")
    return ThresholdStats(int(kept.sum()), precision, hits / int(positive.sum()))


def _calibrate(a: np.ndarray, b: np.ndarray, positive: np.ndarray) -> Calibration:
    (a_a, b_a), (a_b, b_b) = platt_fit(a, positive), platt_fit(b, positive)
    if abs(a_a) < 1e-12:
        raise RerankError("the base's scores do not separate relevant from non-relevant passages: "
                          "no scale to recalibrate onto")
    return Calibration([a_a, a_b], [b_a, b_b], scale=a_b / a_a, shift=(b_b - b_a) / a_a)


def platt_fit(scores, positive) -> tuple[float, float]:
    """(a, b) minimising the cross-entropy of sigmoid(a·s + b) against Platt's smoothed targets."""
    s, y = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    target = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    # Standardise s so Newton starts well-conditioned whatever the score scale; undo at the end.
    centre, spread = s.mean(), s.std() or 1.0
    x = np.stack([(s - centre) / spread, np.ones_like(s)], axis=1)  # (pairs, 2)
    w = np.zeros(2)
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - target)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-12:
            break
    a = w[0] / spread
    return float(a), float(w[1] - a * centre)
