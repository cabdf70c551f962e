"""Graded labels (0–3) in the ranking metrics, MAP@10, the first-stage baseline, and how ties in
scores and queries without a relevant passage count; each against an independent computation."""
import math

import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from core.errors import RerankError
from core.rerank.compare import QueryItem
from core.rerank.evaluation import evaluate
from core.rerank.metrics import (average_precision_at_k, first_stage_scores, labelled_metrics, mrr_at_k, ndcg_at_k,
                                 recall_at_k)


class FixedReranker:
    """A reranker stand-in that scores by passage text, so a test knows every score."""

    kind, score_label = "cross-encoder", "logit"

    def __init__(self, ref, table):
        self.ref, self.table = ref, table

    def score_pairs(self, pairs, **_):
        return [self.table[doc] for _, doc in pairs]


GRADED = ([0.9, 0.8, 0.1, 0.5, 0.3], [3, 0, 2, 1, 0])  # ranks 1, 2, 5, 3, 4


def test_graded_ndcg_uses_linear_gain_by_hand_and_as_sklearn():
    scores, labels = GRADED
    dcg = 3 / math.log2(2) + 0 + 1 / math.log2(4) + 0 + 2 / math.log2(6)  # gains at ranks 1..5: 3, 0, 1, 0, 2
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(scores, labels) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(scores, labels) == pytest.approx(ndcg_score([labels], [scores], k=10))  # linear gain too
    assert ndcg_at_k(scores, labels, k=3) == pytest.approx(ndcg_score([labels], [scores], k=3))


def test_graded_labels_count_as_relevant_above_zero_for_mrr_map_recall():
    scores, labels = GRADED
    binary = [1 if label > 0 else 0 for label in labels]
    for metric in (mrr_at_k, average_precision_at_k, recall_at_k):
        assert metric(scores, labels) == metric(scores, binary)
    assert average_precision_at_k(scores, labels) == pytest.approx(average_precision_score(binary, scores))
    assert average_precision_at_k(scores, labels) == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
    assert recall_at_k(scores, labels, k=3) == pytest.approx(2 / 3)
    assert mrr_at_k([0.1, 0.9], [2, 0]) == 0.5


def test_map_at_10_divides_by_the_relevant_that_fit_in_the_top_10():
    labels = [1] * 12  # 12 relevant, all ranked in order: a perfect top 10
    assert average_precision_at_k(first_stage_scores(12), labels) == 1.0
    assert average_precision_at_k([0.0, 1.0, 0.5], [1, 0, 0], k=2) == 0.0  # the relevant one is 3rd


def test_ties_in_scores_rank_in_input_order():
    # all scores equal: the ranking is the input order, so the relevant passage at index 2 is rank 3
    assert mrr_at_k([0.5, 0.5, 0.5], [0, 0, 1]) == pytest.approx(1 / 3)
    assert ndcg_at_k([0.5, 0.5, 0.5], [0, 0, 1]) == pytest.approx(1 / math.log2(4))
    assert labelled_metrics([0.5, 0.5, 0.5], [0, 0, 1]) == labelled_metrics(first_stage_scores(3), [0, 0, 1])


def test_first_stage_scores_rank_in_input_order():
    assert first_stage_scores(4) == [4.0, 3.0, 2.0, 1.0]
    assert mrr_at_k(first_stage_scores(3), [0, 2, 0]) == 0.5


def test_query_without_relevant_passage_scores_zero_in_means_and_is_left_out_of_tests():
    assert labelled_metrics([0.3, 0.1], [0, 0]) == dict.fromkeys(labelled_metrics([0.3, 0.1], [1, 0]), 0.0)

    items = [QueryItem("q1", ["a", "b", "c"], [0, 3, 1]), QueryItem("q2", ["d", "e"], [0, 0]),
             QueryItem("q3", ["f", "g"], [2, 0])]
    base = FixedReranker("base", {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 0.0, "f": 0.0, "g": 1.0})
    merged = FixedReranker("merged", {"a": 1.0, "b": 3.0, "c": 2.0, "d": 0.0, "e": 1.0, "f": 1.0, "g": 0.0})
    result = evaluate([base, merged], items)
    mrr = result.tests["MRR@10"]
    assert (mrr.n, mrr.skipped, mrr.wins, mrr.ties, mrr.losses) == (2, 1, 2, 0, 0)
    assert result.metrics["MRR@10"] == pytest.approx([(1 / 2 + 0 + 1 / 2) / 3, (1 + 0 + 1) / 3])  # q2 counts 0
    assert mrr.mean_a == pytest.approx(0.5) and mrr.mean_b == 1.0
    assert result.baseline["MRR@10"] == pytest.approx((1 / 2 + 0 + 1) / 3)  # input order: q1 rank 2, q3 rank 1
    assert [q.relevant for q in result.queries] == [2, 0, 1]
    assert result.queries[0].delta["nDCG@10"] == pytest.approx(
        ndcg_at_k([1.0, 3.0, 2.0], [0, 3, 1]) - ndcg_at_k([3.0, 2.0, 1.0], [0, 3, 1]))


def test_evaluate_refuses_before_scoring():
    class Unscored(FixedReranker):
        def score_pairs(self, pairs, **_):
            raise AssertionError("scored before the input was checked")

    model = Unscored("m", {})
    with pytest.raises(RerankError, match="no query has a relevant passage"):
        evaluate([model, model], [QueryItem("q", ["a"], [0])])
    with pytest.raises(RerankError, match="resamples must be at least 1"):
        evaluate([model, model], [QueryItem("q", ["a"], [1])], resamples=0)
    with pytest.raises(RerankError, match="needs labelled queries"):
        evaluate([model], [QueryItem("q", ["a"])])
