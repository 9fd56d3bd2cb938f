"""The offline evaluation through a real Triton: the pretrained encoder ranks the built-in set far better than
chance, by exact search and through the served index."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.dataset import EvalSet, builtin_set
from evaluation.metrics import evaluate
from evaluation.run_eval import run


@pytest.fixture(scope="module")
def small_set() -> EvalSet:
    return builtin_set(sources=6, seed=0)


def test_pretrained_encoder_beats_a_random_ranking_on_the_real_encoder_and_index(small_set, triton_server):
    rows = run(small_set, ["1"], (triton_server.endpoint.grpc_url, triton_server.settings.triton_admin_key), k=10,
               filler=2_000)
    assert [r["index"].split(" ")[0] for r in rows] == ["exact", "served"]
    for row in rows:
        assert all(0.0 <= v <= 1.0 for k, v in row.items() if "@" in k or k == "mrr")
    # The baseline: the same queries ranked at random over the same corpus.
    rng = np.random.default_rng(0)
    ids = list(small_set.corpus)
    random_rankings = [list(rng.permutation(ids)[:10]) for _ in small_set.queries]
    baseline = evaluate(random_rankings, [q.relevance for q in small_set.queries])
    exact = rows[0]
    assert exact["ndcg@10"] > baseline["ndcg@10"] + 0.3
    assert exact["mrr"] > 0.8  # the original (or an edit of it) is found first for most copy and crop queries
