"""A base-vs-merged evaluation a practitioner can trust: metrics, per-query deltas, significance,
the first-stage baseline, score shift and cost, in one dataclass that prints as JSON.

    items = read_queries("eval.jsonl")                  # labels 0–3 (graded) or 0/1
    result = evaluate([base, merged], items)            # loaded Rerankers: first = A (base), last = B
    result.tests["nDCG@10"].p_value                     # paired randomization test, B vs A, over queries
    result.verdicts["nDCG@10"]                          # "nDCG@10: not significant on 40 queries (…)"
    result.baseline["nDCG@10"]                          # the input (first-stage) order's nDCG@10
    result.shift.at_threshold[1].precision              # B's precision at the base's threshold
    json.dumps(result.to_dict())                        # what `python -m core evaluate --json` prints

Deltas and tests are "last model minus first" (compare.Comparison's convention); with one model
there is no B vs A test, only each model against the first-stage order. Unlabelled queries are
left out; a query with no relevant passage counts 0 in the metric means (as compare does) and is
left out of the paired tests (see core.rerank.significance). Scoring goes through compare; this
module loads nothing (core.rerank.cost measures loading).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from core.errors import RerankError
from core.rerank.compare import Comparison, QueryItem, compare
from core.rerank.metrics import first_stage_scores, labelled_metrics
from core.rerank.score_shift import ScoreShift, score_shift
from core.rerank.significance import PairedTest, paired_test, verdict


@dataclass(frozen=True)
class QueryDelta:
    """One labelled query's metrics for every model and for the first-stage order."""

    query: str
    relevant: int  # passages with label > 0; 0: left out of the paired tests
    values: dict[str, list[float]]  # metric → value per model
    baseline: dict[str, float]  # metric → value of the input order

    @property
    def delta(self) -> dict[str, float]:
        """Metric → last model minus first."""
        return {name: v[-1] - v[0] for name, v in self.values.items()}


@dataclass(frozen=True)
class Evaluation:
    comparison: Comparison  # scores and ranks of every passage, per model
    metrics: dict[str, list[float]]  # metric → mean over labelled queries, per model
    baseline: dict[str, float]  # metric → mean of the first-stage (input) order
    queries: list[QueryDelta]  # labelled queries, in input order
    tests: dict[str, PairedTest]  # metric → last model vs first (empty with one model)
    baseline_tests: dict[str, list[PairedTest]]  # metric → each model vs the first-stage order
    verdicts: dict[str, str]  # metric → one line in words (last vs first)
    shift: ScoreShift | None  # None with one model or when labels are all one class (see notes)
    costs: list = field(default_factory=list)  # core.rerank.cost.ModelCost per model, when measured
    notes: list[str] = field(default_factory=list)  # why something is missing

    @property
    def models(self) -> list[str]:
        return self.comparison.models

    def shift_at(self, threshold: float | None = None, *, bins: int = 30) -> ScoreShift:
        """The score shift recomputed at another threshold (a slider in the app), last model vs first."""
        return _shift(self.comparison, threshold, bins)

    def to_dict(self) -> dict:
        """Plain JSON-able data (nan → None): what `evaluate --json` prints and report.py writes."""
        out = {
            "models": [{"model": ref, "kind": kind, "score": label} for ref, kind, label in
                       zip(self.comparison.models, self.comparison.kinds, self.comparison.score_labels)],
            "queries": len(self.queries),
            "passages": sum(len(q.rows) for q in self.comparison.queries if q.metrics),
            "metrics": self.metrics, "baseline": self.baseline,
            "per_query": [{"query": q.query, "relevant": q.relevant, "values": q.values, "baseline": q.baseline,
                           "delta": q.delta, "labels": [row.label for row in scored.rows],
                           "scores": [[row.scores[m] for row in scored.rows] for m in range(len(self.models))]}
                          for q, scored in zip(self.queries, self.comparison.queries)],
            "tests": {name: t.to_dict() for name, t in self.tests.items()},
            "baseline_tests": {name: [t.to_dict() for t in tests] for name, tests in self.baseline_tests.items()},
            "verdicts": self.verdicts,
            "score_shift": self.shift.to_dict() if self.shift else None,
            "cost": [c.to_dict() for c in self.costs],
            "notes": self.notes,
        }
        return _finite(out)


def evaluate(models: list, items: list[QueryItem], *, seed: int = 0, resamples: int = 10_000,
             threshold: float | None = None, bins: int = 30, batch_size: int = 32, max_length: int | None = None,
             normalize: bool = False, costs: list | None = None) -> Evaluation:
    """Score labelled queries with every model and say whether the last one differs from the first.

    Args:
        models: loaded Rerankers (core.rerank.model.load_reranker); the first is the base (A).
        items: queries with labels (unlabelled ones are left out); grades > 0 are relevant.
        seed, resamples: of the paired tests (bootstrap and randomization draws).
        threshold: the score cut for score_shift; default the base's median positive score.
        costs: ModelCost per model (core.rerank.cost) to carry along.
    """
    labelled = [item for item in items if item.labels]
    if not labelled:
        raise RerankError('evaluation needs labelled queries: add "labels" or use the pos/neg format')
    if not any(label > 0 for item in labelled for label in item.labels):
        raise RerankError("no query has a relevant passage (label > 0): nothing to evaluate")
    paired_test([0.0], [0.0], resamples=resamples)  # refuses bad options before the models' slow scoring
    comparison = compare(models, labelled, batch_size=batch_size, max_length=max_length, normalize=normalize)
    queries = [_query_delta(item, q.metrics) for item, q in zip(labelled, comparison.queries)]
    names = list(queries[0].values)
    baseline = {name: sum(q.baseline[name] for q in queries) / len(queries) for name in names}
    tests, verdicts, notes = {}, {}, []
    if len(models) > 1:
        for name in names:
            tests[name] = paired_test(*(_column(queries, name, m) for m in (0, -1)), resamples=resamples, seed=seed)
            verdicts[name] = verdict(tests[name], name)
    baseline_tests = {name: [paired_test(_column(queries, name, None), _column(queries, name, m),
                                         resamples=resamples, seed=seed) for m in range(len(models))]
                      for name in names}
    shift = None
    if len(models) > 1:
        try:
            shift = _shift(comparison, threshold, bins)
        except RerankError as error:
            notes.append(f"score shift: {error}")
    return Evaluation(comparison, comparison.metrics, baseline, queries, tests, baseline_tests, verdicts, shift,
                      list(costs or []), notes)


def _query_delta(item: QueryItem, per_model: list[dict[str, float]]) -> QueryDelta:
    values = {name: [m[name] for m in per_model] for name in per_model[0]}
    first_stage = labelled_metrics(first_stage_scores(len(item.docs)), item.labels)
    return QueryDelta(item.query, sum(1 for label in item.labels if label > 0), values, first_stage)


def _column(queries: list[QueryDelta], name: str, model: int | None) -> list[float | None]:
    """One metric per query for a model (None: the first-stage order); None where nothing is relevant."""
    return [None if q.relevant == 0 else (q.baseline[name] if model is None else q.values[name][model])
            for q in queries]


def _shift(comparison: Comparison, threshold: float | None, bins: int) -> ScoreShift:
    rows = [row for q in comparison.queries for row in q.rows]
    return score_shift([r.scores[0] for r in rows], [r.scores[-1] for r in rows], [r.label for r in rows],
                       threshold=threshold, bins=bins, score_label=comparison.score_label)


def _finite(value):
    """Replace nan/inf by None throughout, so the JSON is standard (json.dumps writes NaN otherwise)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
