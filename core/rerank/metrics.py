"""Ranking metrics over plain lists of scores and labels: no models, no tensors needed.

    ranks([0.2, 0.9, 0.5])                       # [3, 1, 2]  (1 = best; ties keep input order)
    mrr_at_k([0.2, 0.9, 0.5], [1, 0, 0])         # 1/3: the only relevant passage is ranked 3rd
    ndcg_at_k([0.2, 0.9, 0.5], [1, 0, 0])        # 0.5 = (1/log2(4)) / (1/log2(2))
    kendall_tau([1, 2, 3], [3, 2, 1])            # -1.0

    average_precision_at_k([0.2, 0.9, 0.5], [1, 0, 1])   # (1/2 + 2/3) / 2: hits at ranks 2 and 3

Labels are relevance grades (0 = not relevant; 0–3 graded labels or binary). nDCG uses linear
gain (rel / log2(rank + 1)), as trec_eval, pytrec_eval and BEIR do; with binary labels every
common definition agrees (the 2^rel − 1 gain of Burges et al. weighs grade 3 seven times grade
1 instead of three). MRR, MAP and recall treat label > 0 as relevant. A query without any
relevant passage scores 0 on every metric here (and is still counted in the means of
compare.Comparison.metrics), as sentence-transformers' evaluators do; the paired test in
core.rerank.significance leaves such queries out. Equal scores rank in input order.
"""
from __future__ import annotations

import math


def ranks(scores: list[float]) -> list[int]:
    """Rank of each item, 1 for the highest score; equal scores keep their input order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    result = [0] * len(scores)
    for position, index in enumerate(order, start=1):
        result[index] = position
    return result


def mrr_at_k(scores: list[float], labels: list[int], k: int = 10) -> float:
    """1 / rank of the best-ranked relevant item, 0 when none is in the top k."""
    hits = [rank for rank, label in zip(ranks(scores), labels) if label > 0 and rank <= k]
    return 1.0 / min(hits) if hits else 0.0


def ndcg_at_k(scores: list[float], labels: list[int], k: int = 10) -> float:
    """Discounted cumulative gain of the top k, divided by that of the ideal order."""
    gained = sum(label / math.log2(rank + 1) for rank, label in zip(ranks(scores), labels) if rank <= k)
    ideal = sum(label / math.log2(rank + 1) for rank, label in enumerate(sorted(labels, reverse=True)[:k], 1))
    return gained / ideal if ideal > 0 else 0.0


def recall_at_k(scores: list[float], labels: list[int], k: int = 10) -> float:
    """Share of the relevant items that are ranked in the top k."""
    relevant = sum(1 for label in labels if label > 0)
    found = sum(1 for rank, label in zip(ranks(scores), labels) if label > 0 and rank <= k)
    return found / relevant if relevant else 0.0


def average_precision_at_k(scores: list[float], labels: list[int], k: int = 10) -> float:
    """Mean of precision@rank over the relevant items in the top k, divided by min(#relevant, k)
    (MTEB's and trec_eval's map_cut convention, so a perfect top k scores 1)."""
    hits = sorted(rank for rank, label in zip(ranks(scores), labels) if label > 0 and rank <= k)
    relevant = min(k, sum(1 for label in labels if label > 0))
    return sum(found / rank for found, rank in enumerate(hits, start=1)) / relevant if relevant else 0.0


def first_stage_scores(n: int) -> list[float]:
    """Scores that rank n passages in the order given: the first-stage retriever's order, the baseline."""
    return [float(n - i) for i in range(n)]


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two scorings of the same items (1 = same order, -1 = reversed).

    Ties are handled as tau-b does; with fewer than two items, or when either scoring gives
    every item the same score, the order is undefined and the result is nan.
    """
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else float("nan")


def top_k_overlap(a: list[float], b: list[float], k: int = 10) -> float:
    """Share of the top k items (k capped at the list length) that both scorings put there."""
    k = min(k, len(a))
    if k == 0:
        return float("nan")
    top_a = {i for i, rank in enumerate(ranks(a)) if rank <= k}
    top_b = {i for i, rank in enumerate(ranks(b)) if rank <= k}
    return len(top_a & top_b) / k


LABELLED_METRICS = {"MRR@10": mrr_at_k, "nDCG@10": ndcg_at_k, "MAP@10": average_precision_at_k}


def labelled_metrics(scores: list[float], labels: list[int], *, recall_k: tuple[int, ...] = (1, 5, 10)) -> dict:
    """MRR@10, nDCG@10, MAP@10 and recall@k of one query's ranking."""
    found = {name: metric(scores, labels, 10) for name, metric in LABELLED_METRICS.items()}
    found.update({f"recall@{k}": recall_at_k(scores, labels, k) for k in recall_k})
    return found
