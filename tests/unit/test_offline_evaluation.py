"""The evaluation set and the promotion gate (the offline evaluation through a real Triton:
tests/integration/test_offline_evaluation.py)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from evaluation.dataset import EvalSet, builtin_set
from evaluation.gate import decide

SOURCES = 6


@pytest.fixture(scope="module")
def small_set() -> EvalSet:
    return builtin_set(sources=SOURCES, seed=0)


def test_builtin_set_is_deterministic_and_well_formed(small_set, tmp_path):
    again = builtin_set(sources=SOURCES, seed=0)
    assert again.corpus == small_set.corpus
    assert [(q.query_id, q.image, q.crop, q.relevance) for q in again.queries] == \
        [(q.query_id, q.image, q.crop, q.relevance) for q in small_set.queries]
    assert builtin_set(sources=SOURCES, seed=1).queries[0].image != small_set.queries[0].image
    assert len(small_set.queries) == 2 * SOURCES
    for q in small_set.queries:
        assert set(q.relevance) <= set(small_set.corpus)
        assert all(1 <= g <= 5 for g in q.relevance.values())
        assert set(q.relevance.values()) == {1, 2, 3, 4, 5}  # four graded edits, the original (and its twins)
        if q.crop:
            x0, y0, x1, y1 = q.crop
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        Image.open(io.BytesIO(q.image)).verify()
    small_set.save(tmp_path / "set")
    loaded = EvalSet.load(tmp_path / "set")
    assert loaded.corpus == small_set.corpus and loaded.queries == small_set.queries


def test_gate_promotes_only_when_not_worse():
    current = {"ndcg@10": 0.80}
    assert decide(current, {"ndcg@10": 0.82})[0]
    assert decide(current, {"ndcg@10": 0.80})[0]
    ok, reason = decide(current, {"ndcg@10": 0.797}, tolerance=0.005)
    assert ok and "0.7970" in reason and "0.8000" in reason
    refused, reason = decide(current, {"ndcg@10": 0.79}, tolerance=0.005)
    assert not refused and "0.7900" in reason and "0.8000" in reason and "0.0100" in reason
