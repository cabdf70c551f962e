"""Ranking metrics on hand-made cases with known answers, and compare() / read_queries()."""
import json
import math

import pytest

from core.errors import RerankError
from core.rerank.compare import QueryItem, compare, parse_queries, pooled, read_queries
from core.rerank.metrics import kendall_tau, mrr_at_k, ndcg_at_k, ranks, recall_at_k, top_k_overlap


def test_ranks_put_the_highest_score_first_and_keep_ties_in_order():
    assert ranks([0.2, 0.9, 0.5]) == [3, 1, 2]
    assert ranks([1.0, 1.0, 2.0]) == [2, 3, 1]


def test_mrr_counts_the_first_relevant_passage_within_k():
    assert mrr_at_k([0.2, 0.9, 0.5], [1, 0, 0]) == pytest.approx(1 / 3)
    assert mrr_at_k([0.2, 0.9, 0.5], [1, 0, 1]) == pytest.approx(1 / 2)
    assert mrr_at_k(list(range(20, 0, -1)), [0] * 12 + [1] + [0] * 7) == 0.0  # rank 13 is outside @10
    assert mrr_at_k([0.1, 0.2], [0, 0]) == 0.0


def test_ndcg_against_the_formula_written_out():
    # order by score: d1 (label 0), d2 (label 2), d0 (label 1)
    scores, labels = [0.1, 0.9, 0.5], [1, 0, 2]
    dcg = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 0 / math.log2(4)
    assert ndcg_at_k(scores, labels) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
    assert ndcg_at_k([3, 2, 1], [0, 0, 0]) == 0.0


def test_recall_at_k():
    scores, labels = [5, 4, 3, 2, 1], [0, 1, 0, 0, 1]
    assert recall_at_k(scores, labels, 1) == 0.0
    assert recall_at_k(scores, labels, 2) == 0.5
    assert recall_at_k(scores, labels, 5) == 1.0


def test_kendall_tau_known_values_and_ties():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((5 - 1) / 6)  # one swapped pair
    # tau-b with a tie in a: C=2, D=0, one pair tied only in a -> 2 / sqrt(2 * 3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1, 1], [1, 2]))
    assert math.isnan(kendall_tau([1], [1]))


def test_top_k_overlap():
    a = [10, 9, 8, 7, 1]
    b = [1, 9, 8, 7, 10]
    assert top_k_overlap(a, b, 2) == 0.5  # a's top 2 {0, 1}, b's {4, 1}
    assert top_k_overlap(a, b, 10) == 1.0  # capped at the 5 items


class FakeReranker:
    """Scores by looking the passage up in a table: compare() must only route and line up."""

    def __init__(self, ref, table, kind="cross-encoder"):
        self.ref, self.table, self.kind, self.score_label = ref, table, kind, "logit"
        self.calls = []

    def score_pairs(self, pairs, *, batch_size, max_length, normalize):
        self.calls.append(len(pairs))
        return [self.table[d] for _, d in pairs]


def test_compare_lines_up_scores_ranks_deltas_and_metrics():
    base = FakeReranker("base", {"a": 3.0, "b": 2.0, "c": 1.0, "x": 0.0, "y": 1.0})
    merged = FakeReranker("merged", {"a": 1.0, "b": 2.0, "c": 3.0, "x": 1.0, "y": 0.0})
    items = [QueryItem("q1", ["a", "b", "c"], labels=[0, 0, 1]), QueryItem("q2", ["x", "y"], labels=[1, 0])]
    result = compare([base, merged], items)
    assert base.calls == [5] and merged.calls == [5]  # one batched call per model, all queries at once
    first = result.queries[0]
    assert [r.scores for r in first.rows] == [[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]]
    assert [r.ranks for r in first.rows] == [[1, 3], [2, 2], [3, 1]]
    assert [r.delta for r in first.rows] == [-2.0, 0.0, 2.0]
    assert [r.rank_change for r in first.rows] == [-2, 0, 2]
    assert first.kendall_tau == [pytest.approx(-1.0)]
    # q1: relevant "c" is rank 3 for base, 1 for merged; q2: relevant "x" is rank 2 then 1
    assert result.metrics["MRR@10"] == [pytest.approx((1 / 3 + 1 / 2) / 2), pytest.approx(1.0)]
    assert result.metric_delta("MRR@10") == pytest.approx(1 - (1 / 3 + 1 / 2) / 2)
    assert result.metrics["recall@1"] == [0.0, 1.0]


def test_compare_without_labels_has_no_metrics_and_labels_normalized_scores():
    model = FakeReranker("m", {"a": 1.0})
    result = compare([model], [QueryItem("q", ["a"])], normalize=True)
    assert result.metrics == {} and result.queries[0].metrics == []
    assert result.score_label == "sigmoid(logit)"
    assert math.isnan(result.metric_delta("MRR@10"))


def test_read_queries_accepts_both_formats(tmp_path):
    path = tmp_path / "eval.jsonl"
    lines = [{"query": "q1", "docs": ["a", "b"], "labels": [1, 0]}, {"query": "q2", "pos": ["p"], "neg": ["n1", "n2"]},
             {"query": "q3", "docs": ["only"]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = read_queries(path)
    assert [i.docs for i in items] == [["a", "b"], ["p", "n1", "n2"], ["only"]]
    assert [i.labels for i in items] == [[1, 0], [1, 0, 0], None]


@pytest.mark.parametrize("line, message", [
    ('{"query": "q", "docs": ["a", "b"], "labels": [1]}', r"input:1: query 'q' has 2 passages but 1 labels"),
    ('{"query": "q", "docs": []}', "input:1: query 'q' has no passages to rank"),
    ('{"query": "  ", "docs": ["a"]}', "input:1: a query is empty"),
    ('{"query": "q"}', 'input:1: has no "docs"'),
    ('{"query": "q", "docs": "a"}', '"docs", "pos" and "neg" must be lists'),
    ('{"query": "q", "docs": ["a", 3]}', "input:1: query 'q': every passage must be text"),
    ('{"query": "q", "docs": ["a"], "labels": 1}', "labels must be a list"),
    ('{"query": "q", "docs": 5}', '"docs", "pos" and "neg" must be lists'),
    ("not json", "input:1: not valid JSON"),
    ('["q", "d"]', 'expected an object with "query"'),
])
def test_bad_query_lines_are_clear_errors(line, message):
    with pytest.raises(RerankError, match=message):
        parse_queries(line)


def test_an_empty_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(RerankError, match="holds no queries"):
        read_queries(tmp_path / "empty.jsonl")


def test_pooled_ranks_each_query_against_every_passage_of_the_set():
    items = [QueryItem("q1", ["a", "b", "c"], [1, 0, 0]),
             QueryItem("q2", ["d", "b", "e"], [2, 0, 1]),
             QueryItem("unlabelled", ["f"])]
    pool = pooled(items)
    assert [item.query for item in pool] == ["q1", "q2"]
    assert all(item.docs == ["a", "b", "c", "d", "e"] for item in pool)
    assert pool[0].labels == [1, 0, 0, 0, 0] and pool[1].labels == [0, 0, 0, 2, 1]
    with pytest.raises(RerankError, match="pooling needs labelled queries"):
        pooled([QueryItem("q", ["x"])])
