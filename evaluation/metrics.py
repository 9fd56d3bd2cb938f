"""Ranking metrics over one ranked list of IDs per query and graded relevances (0-5) per query.

Conventions (stated once so every metric agrees):
- a ranking is a list of IDs, best first; IDs absent from the relevance dict have relevance 0;
- "relevant" for the binary metrics means relevance > 0;
- nDCG uses gain = rel and discount = 1 / log2(rank + 1) (ranks start at 1); the ideal DCG is built
  from all known relevances of the query, not only the retrieved ones, so missing a relevant item costs;
- a query with no relevant item scores 0 on every metric (nothing can be found, nothing is rewarded).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

Ranking = Sequence[Hashable]
Relevance = Mapping[Hashable, float]


def _gains(ranking: Ranking, relevance: Relevance, k: int | None = None) -> np.ndarray:
    """Relevance of each ranked item (first k), as floats."""
    items = ranking if k is None else ranking[:k]
    return np.array([float(relevance.get(item, 0.0)) for item in items], dtype=np.float64)


def _num_relevant(relevance: Relevance) -> int:
    return sum(1 for rel in relevance.values() if rel > 0)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_lengths(rankings: Sequence[Ranking], relevances: Sequence[Relevance]) -> None:
    if len(rankings) != len(relevances):
        raise ValueError(f"{len(rankings)} rankings but {len(relevances)} relevance dicts")


def reciprocal_rank(ranking: Ranking, relevance: Relevance) -> float:
    """1 / rank of the first relevant item; 0 when none is retrieved."""
    for rank, item in enumerate(ranking, start=1):
        if relevance.get(item, 0) > 0:
            return 1.0 / rank
    return 0.0


def mean_reciprocal_rank(rankings: Sequence[Ranking], relevances: Sequence[Relevance]) -> float:
    """MRR: mean of the per-query reciprocal ranks (0 for an empty set of queries)."""
    _check_lengths(rankings, relevances)
    if not rankings:
        return 0.0
    return float(np.mean([reciprocal_rank(r, rel) for r, rel in zip(rankings, relevances, strict=True)]))


def recall_at_k(ranking: Ranking, relevance: Relevance, k: int) -> float:
    """Share of all relevant items that appear in the top k."""
    _check_k(k)
    total = _num_relevant(relevance)
    if total == 0:
        return 0.0
    return float(np.count_nonzero(_gains(ranking, relevance, k) > 0)) / total


def precision_at_k(ranking: Ranking, relevance: Relevance, k: int) -> float:
    """Relevant items in the top k, divided by k (a short list is not rewarded for being short)."""
    _check_k(k)
    return float(np.count_nonzero(_gains(ranking, relevance, k) > 0)) / k


def average_precision_at_k(ranking: Ranking, relevance: Relevance, k: int) -> float:
    """AP@k: mean of precision@i over the ranks i <= k holding a relevant item, normalised by
    min(k, number relevant) so that a perfect top-k scores 1 even when more than k items are relevant."""
    _check_k(k)
    total = _num_relevant(relevance)
    if total == 0:
        return 0.0
    hits = _gains(ranking, relevance, k) > 0
    if not hits.any():
        return 0.0
    ranks = np.arange(1, len(hits) + 1)
    precisions = np.cumsum(hits) / ranks
    return float(precisions[hits].sum()) / min(k, total)


def mean_average_precision_at_k(rankings: Sequence[Ranking], relevances: Sequence[Relevance], k: int) -> float:
    """mAP@k: AP@k averaged over queries."""
    _check_lengths(rankings, relevances)
    if not rankings:
        return 0.0
    return float(np.mean([average_precision_at_k(r, rel, k) for r, rel in zip(rankings, relevances, strict=True)]))


def _dcg(gains: np.ndarray) -> float:
    discounts = np.log2(np.arange(2, len(gains) + 2))  # rank i -> log2(i + 1)
    return float((gains / discounts).sum())


def dcg_at_k(ranking: Ranking, relevance: Relevance, k: int | None = None) -> float:
    """DCG over the top k (the whole list when k is None): sum of rel_i / log2(i + 1)."""
    if k is not None:
        _check_k(k)
    return _dcg(_gains(ranking, relevance, k))


def ndcg_at_k(ranking: Ranking, relevance: Relevance, k: int | None = None) -> float:
    """DCG@k divided by the DCG@k of the ideal ordering of all known relevances of the query."""
    if k is not None:
        _check_k(k)
    ideal = np.sort(np.array([float(r) for r in relevance.values() if r > 0], dtype=np.float64))[::-1]
    if k is not None:
        ideal = ideal[:k]
    ideal_dcg = _dcg(ideal)
    if ideal_dcg == 0.0:
        return 0.0
    return dcg_at_k(ranking, relevance, k) / ideal_dcg


def evaluate(rankings: Sequence[Ranking], relevances: Sequence[Relevance],
             ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Table of the means over queries: MRR, and recall/precision/mAP/nDCG at each k."""
    _check_lengths(rankings, relevances)
    pairs = list(zip(rankings, relevances, strict=True))

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    table = {"mrr": mean_reciprocal_rank(rankings, relevances)}
    for k in ks:
        table[f"recall@{k}"] = mean([recall_at_k(r, rel, k) for r, rel in pairs])
        table[f"precision@{k}"] = mean([precision_at_k(r, rel, k) for r, rel in pairs])
        table[f"map@{k}"] = mean_average_precision_at_k(rankings, relevances, k)
        table[f"ndcg@{k}"] = mean([ndcg_at_k(r, rel, k) for r, rel in pairs])
    return table
