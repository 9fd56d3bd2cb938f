"""Ranking metrics: the published worked examples, properties on random rankings, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.metrics import (
    average_precision_at_k,
    dcg_at_k,
    evaluate,
    mean_average_precision_at_k,
    mean_reciprocal_rank,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)


def test_ndcg_worked_example() -> None:
    """Ranked list with true relevances [0, 5, 1, 4, 2]; ideal DCG from the same relevances: 6.151 / 8.954."""
    relevance = {"a": 0, "b": 5, "c": 1, "d": 4, "e": 2}
    ranking = ["a", "b", "c", "d", "e"]
    assert dcg_at_k(ranking, relevance) == pytest.approx(6.151, abs=5e-4)
    assert dcg_at_k(["b", "d", "e", "c", "a"], relevance) == pytest.approx(8.954, abs=5e-4)
    assert ndcg_at_k(ranking, relevance) == pytest.approx(0.6869, abs=5e-5)


def test_mrr_worked_example() -> None:
    """First relevant items at ranks 3, 1, 3 and none: (1/3 + 1 + 1/3 + 0) / 4 = 0.417."""
    rankings = [["x", "y", "hit"], ["hit", "x", "y"], ["x", "y", "hit"], ["x", "y", "z"]]
    relevances = [{"hit": 1}] * 4
    assert mean_reciprocal_rank(rankings, relevances) == pytest.approx(0.417, abs=5e-4)


def _random_query(rng: np.random.Generator) -> tuple[list[int], dict[int, int]]:
    """A random ranked list over a random catalogue, with random graded relevances (many zeros)."""
    catalogue = int(rng.integers(1, 40))
    relevance = {i: int(rng.choice(6, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1])) for i in range(catalogue)}
    length = int(rng.integers(0, catalogue + 1))
    ranking = [int(i) for i in rng.permutation(catalogue)[:length]]
    return ranking, relevance


def _perfect(relevance: dict[int, int]) -> list[int]:
    return sorted((i for i, rel in relevance.items() if rel > 0), key=lambda i: -relevance[i])


@pytest.mark.parametrize("seed", range(20))
def test_perfect_ranking_scores_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, relevance = _random_query(rng)
    relevance[-1] = 3  # at least one relevant item
    ranking = _perfect(relevance)
    n_relevant = len(ranking)
    assert reciprocal_rank(ranking, relevance) == 1.0
    for k in (1, 3, 5, 10, 50):
        assert ndcg_at_k(ranking, relevance, k) == pytest.approx(1.0)
        assert average_precision_at_k(ranking, relevance, k) == pytest.approx(1.0)
        if k <= n_relevant:
            assert precision_at_k(ranking, relevance, k) == 1.0
        if k >= n_relevant:
            assert recall_at_k(ranking, relevance, k) == 1.0
    assert ndcg_at_k(ranking, relevance) == pytest.approx(1.0)
    table = evaluate([ranking], [relevance], ks=(n_relevant,))  # the one depth where precision and recall are both 1
    assert all(value == pytest.approx(1.0) for value in table.values())


@pytest.mark.parametrize("seed", range(50))
def test_metrics_stay_in_unit_interval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    queries = [_random_query(rng) for _ in range(5)]
    rankings = [q[0] for q in queries]
    relevances = [q[1] for q in queries]
    for ranking, relevance in queries:
        values = [reciprocal_rank(ranking, relevance), ndcg_at_k(ranking, relevance)]
        for k in (1, 5, 10):
            values += [recall_at_k(ranking, relevance, k), precision_at_k(ranking, relevance, k),
                       average_precision_at_k(ranking, relevance, k), ndcg_at_k(ranking, relevance, k)]
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in values), values
    table = evaluate(rankings, relevances)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in table.values()), table


@pytest.mark.parametrize("seed", range(20))
def test_reversing_a_perfect_ranking_lowers_ndcg(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 20))
    grades = rng.integers(1, 6, size=n)
    grades[0] = 5
    grades[1] = 1  # at least two different grades, so the order matters
    relevance = {i: int(g) for i, g in enumerate(grades)}
    ranking = _perfect(relevance)
    assert ndcg_at_k(ranking[::-1], relevance) < ndcg_at_k(ranking, relevance)


def test_no_relevant_items_scores_zero() -> None:
    relevance = {"a": 0, "b": 0}
    for ranking in (["a", "b"], []):
        assert reciprocal_rank(ranking, relevance) == 0.0
        assert recall_at_k(ranking, relevance, 5) == 0.0
        assert precision_at_k(ranking, relevance, 5) == 0.0
        assert average_precision_at_k(ranking, relevance, 5) == 0.0
        assert ndcg_at_k(ranking, relevance, 5) == 0.0
        assert ndcg_at_k(ranking, relevance) == 0.0
    assert ndcg_at_k([], {}) == 0.0
    assert mean_reciprocal_rank([], []) == 0.0
    assert mean_average_precision_at_k([], [], 10) == 0.0


def test_empty_ranking_with_relevant_items_scores_zero() -> None:
    table = evaluate([[]], [{"a": 3}])
    assert all(value == 0.0 for value in table.values())


def test_unknown_ids_count_as_irrelevant() -> None:
    relevance = {"a": 2}
    assert reciprocal_rank(["zz", "a"], relevance) == 0.5
    assert precision_at_k(["zz", "a"], relevance, 2) == 0.5


def test_precision_divides_by_k_even_for_short_lists() -> None:
    assert precision_at_k(["a"], {"a": 1}, 10) == 0.1
    assert recall_at_k(["a"], {"a": 1, "b": 1}, 10) == 0.5


def test_average_precision_counts_rank_of_each_hit() -> None:
    """Hits at ranks 1 and 3 of two relevant items: (1/1 + 2/3) / 2."""
    assert average_precision_at_k(["a", "x", "b"], {"a": 1, "b": 1}, 3) == pytest.approx((1 + 2 / 3) / 2)


def test_ndcg_cutoff_uses_ideal_of_same_depth() -> None:
    """At k=1 only the top item counts, against the single best grade."""
    relevance = {"a": 0, "b": 5, "c": 1, "d": 4, "e": 2}
    assert ndcg_at_k(["d", "b"], relevance, 1) == pytest.approx(4 / 5)
    assert ndcg_at_k(["b", "a"], relevance, 1) == 1.0


def test_ndcg_missing_relevant_items_costs() -> None:
    """The ideal DCG includes relevant items that were never retrieved."""
    assert ndcg_at_k(["a"], {"a": 3, "b": 3}) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_evaluate_keys_and_errors() -> None:
    table = evaluate([["a"]], [{"a": 1}], ks=(1, 5))
    assert set(table) == {"mrr", "recall@1", "precision@1", "map@1", "ndcg@1",
                          "recall@5", "precision@5", "map@5", "ndcg@5"}
    with pytest.raises(ValueError):
        evaluate([["a"]], [])
    with pytest.raises(ValueError):
        precision_at_k(["a"], {"a": 1}, 0)
