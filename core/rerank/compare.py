"""Compare rerankers on the same queries: scores, ranks, how they moved, and metrics.

    items = read_queries("eval.jsonl")          # or [QueryItem("q", ["d1", "d2"], labels=[1, 0])]
    result = compare([base, merged], items)     # Reranker objects from core.rerank.model.load_reranker
    result.queries[0].rows[0].rank_change       # +2: the merged model ranks this passage 2 higher
    result.metrics["nDCG@10"]                   # one value per model, averaged over the queries

The first model is the reference: deltas and rank changes are "model i minus model 0".
Input lines are `{"query": str, "docs": [str, …], "labels": [int, …]?}` or FlagEmbedding's
training format `{"query": str, "pos": [str, …], "neg": [str, …]}` (labels 1 for pos, 0 for neg).
This module scores through Reranker.score_pairs and computes metrics through core.rerank.metrics;
it loads nothing itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import RerankError
from core.io.json_input import parse_json
from core.rerank.metrics import kendall_tau, labelled_metrics, ranks, top_k_overlap

MAX_GRADE = 1e6  # relevance labels are small grades; anything bigger is a mistake in the file


@dataclass(frozen=True)
class QueryItem:
    """One query with its candidate passages and, optionally, their relevance labels."""

    query: str
    docs: list[str]
    labels: list[int] | None = None  # one grade per doc; > 0 means relevant
    ordered: bool = True  # docs come in a first-stage (retrieval) order; False: pos/neg lists positives first

    def __post_init__(self):
        if not isinstance(self.query, str) or not self.query.strip():
            raise RerankError("a query is empty: every query needs some text")
        if not self.docs:
            raise RerankError(f"query {self.query[:60]!r} has no passages to rank")
        if not all(isinstance(d, str) for d in self.docs):
            raise RerankError(f"query {self.query[:60]!r}: every passage must be text")
        if self.labels is not None:
            if not isinstance(self.labels, (list, tuple)):
                raise RerankError(f"query {self.query[:60]!r}: labels must be a list, one per passage")
            if len(self.labels) != len(self.docs):
                raise RerankError(f"query {self.query[:60]!r} has {len(self.docs)} passages but "
                                  f"{len(self.labels)} labels: give one label per passage")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in self.labels):
                raise RerankError(f"query {self.query[:60]!r}: labels must be numbers (0 = not relevant)")
            if not all(abs(x) <= MAX_GRADE for x in self.labels):  # also NaN; nDCG's label / log2 overflows on huge ints
                raise RerankError(f"query {self.query[:60]!r}: labels must be relevance grades from "
                                  f"-{MAX_GRADE:g} to {MAX_GRADE:g} (0 = not relevant)")


@dataclass(frozen=True)
class DocRow:
    """One passage as every model sees it."""

    doc: str
    label: int | None
    scores: list[float]  # one per model
    ranks: list[int]  # one per model, 1 = best

    @property
    def delta(self) -> float:
        """Last model's score minus the first's (for two models: B − A)."""
        return self.scores[-1] - self.scores[0]

    @property
    def rank_change(self) -> int:
        """How many places the last model moved this passage up (negative: down)."""
        return self.ranks[0] - self.ranks[-1]


@dataclass(frozen=True)
class QueryResult:
    query: str
    rows: list[DocRow]
    kendall_tau: list[float]  # model i against model 0, for i ≥ 1
    top_k_overlap: list[float]  # share of model 0's top 10 that model i also puts there
    metrics: list[dict[str, float]] = field(default_factory=list)  # per model; empty without labels


@dataclass(frozen=True)
class Comparison:
    models: list[str]  # the references, in the order given
    kinds: list[str]
    score_labels: list[str]  # what each model's numbers are, e.g. "logit", "sigmoid(logit)", "cosine"
    queries: list[QueryResult]
    metrics: dict[str, list[float]]  # metric name → mean over labelled queries, per model

    @property
    def score_label(self) -> str:
        """One label for all models ("logit"), or each model's in order ("logit / cosine") when they differ."""
        return self.score_labels[0] if len(set(self.score_labels)) == 1 else " / ".join(self.score_labels)

    def metric_delta(self, name: str) -> float:
        """Last model minus first on a metric (nan without labels)."""
        values = self.metrics.get(name)
        return values[-1] - values[0] if values else float("nan")


def compare(models: list, items: list[QueryItem], *, batch_size: int = 32, max_length: int | None = None,
            normalize: bool = False) -> Comparison:
    """Score every query's passages with every model and line the results up."""
    if not models:
        raise RerankError("give at least one model to score with")
    if not items:
        raise RerankError("give at least one query with passages")
    pairs = [(item.query, doc) for item in items for doc in item.docs]
    per_model = [m.score_pairs(pairs, batch_size=batch_size, max_length=max_length, normalize=normalize)
                 for m in models]
    queries, start = [], 0
    for item in items:
        stop = start + len(item.docs)
        scores = [s[start:stop] for s in per_model]  # (models, docs)
        queries.append(_query_result(item, scores))
        start = stop
    labelled = [q for q in queries if q.metrics]
    metrics = {}
    if labelled:
        for name in labelled[0].metrics[0]:
            metrics[name] = [sum(q.metrics[m][name] for q in labelled) / len(labelled) for m in range(len(models))]
    labels = [m.score_label if not normalize or m.score_label == "cosine" else f"sigmoid({m.score_label})"
              for m in models]
    return Comparison([m.ref for m in models], [m.kind for m in models], labels, queries, metrics)


def _query_result(item: QueryItem, scores: list[list[float]]) -> QueryResult:
    model_ranks = [ranks(s) for s in scores]
    rows = [DocRow(doc, item.labels[d] if item.labels else None, [s[d] for s in scores],
                   [r[d] for r in model_ranks]) for d, doc in enumerate(item.docs)]
    taus = [kendall_tau(scores[0], s) for s in scores[1:]]
    overlaps = [top_k_overlap(scores[0], s) for s in scores[1:]]
    metrics = [labelled_metrics(s, item.labels) for s in scores] if item.labels else []
    return QueryResult(item.query, rows, taus, overlaps, metrics)


def read_queries(path: str | Path) -> list[QueryItem]:
    """Queries from a JSONL file (one JSON object per line; blank lines are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RerankError(f"cannot read {path}: {error}") from None
    items = parse_queries(text, source=str(path))
    if not items:
        raise RerankError(f"{path} holds no queries: expected lines like "
                          '{"query": "…", "docs": ["…", "…"], "labels": [1, 0]}')
    return items


def pooled(items: list[QueryItem]) -> list[QueryItem]:
    """Every labelled query ranked against every passage of the set (retrieval-style evaluation).

    Why: a query's own few hard negatives make an easy test (good models sit near nDCG 1, so
    merges look alike); among all of the set's passages, each other query's positive and
    negatives become distractors too. A passage is relevant to a query where that query's own
    labels say so. Bi-encoders embed each distinct text once, so this costs them little; a
    cross-encoder scores queries × passages pairs. Unlabelled queries are left out.
    """
    passages = list(dict.fromkeys(doc for item in items if item.labels for doc in item.docs))
    pool = []
    for item in items:
        if item.labels:
            grade = {doc: label for doc, label in zip(item.docs, item.labels)}
            pool.append(QueryItem(item.query, passages, [grade.get(doc, 0) for doc in passages]))
    if not pool:
        raise RerankError("pooling needs labelled queries: add \"labels\" or use the pos/neg format")
    return pool


def parse_queries(text: str, *, source: str = "input") -> list[QueryItem]:
    """Queries from JSONL text, each error naming `source:line` (read_queries reads a file through it)."""
    return [_parse_line(line, f"{source}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_line(line: str, where: str) -> QueryItem:
    data = parse_json(line, where=where, error=RerankError)
    if not isinstance(data, dict) or "query" not in data:
        raise RerankError(f'{where}: expected an object with "query" and "docs" (or "pos"/"neg")')
    lists = {key: data[key] for key in ("docs", "pos", "neg") if key in data}
    if not all(isinstance(value, list) for value in lists.values()):
        raise RerankError(f'{where}: "docs", "pos" and "neg" must be lists of passages')
    try:
        if "docs" in data:
            return QueryItem(data["query"], data["docs"], data.get("labels"))
        if "pos" in data:
            pos, neg = data["pos"], data.get("neg", [])
            return QueryItem(data["query"], pos + neg, [1] * len(pos) + [0] * len(neg), ordered=False)
    except RerankError as error:
        raise RerankError(f"{where}: {error}") from None
    raise RerankError(f'{where}: has no "docs" (or "pos"/"neg") list of passages')


def mean_or_nan(values: list[float]) -> float:
    """Mean of the finite values (nan when there are none), for per-query summaries."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")
