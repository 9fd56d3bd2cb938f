"""The compact index measures its own search depth (server/store/faiss/search_tuning.py) on real FAISS: the estimate
holds for queries it never saw, the depth is the fewest lists reaching the target, it is saved with the snapshot,
and it is measured again when the corpus has doubled."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.store.faiss import search_tuning
from server.store.faiss.index import VectorIndex
from server.store.faiss.search_tuning import K, SearchTuning, blocks_of, exact_top_of, measure
from tests.unit.test_faiss_index import embedding_like, recall_at_10, stored_rows


@pytest.mark.parametrize(("group", "block"), [(1, 1000), (1, 7), (4, 333)])
def test_the_exact_scan_leaves_out_the_queries_own_image(group, block):
    """Against a brute-force ranking: every block size, the query's own `group` rows never found."""
    x = embedding_like(3_000, 32, seed=4)
    rows = np.array([0, 5, 1234, 2999])
    own = rows - rows % group
    _, ids = exact_top_of(blocks_of(x, block), x[rows], exclude=own, group=group)
    scores = x[rows] @ x.T
    for q, first in enumerate(own):
        scores[q, first:first + group] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-scores, axis=1, kind="stable")[:, :K])


def fake_search(truth_of: dict[int, np.ndarray], found_share) -> search_tuning.Search:
    """A search that finds `found_share(nprobe, k_factor)` of each query's true top 10 (the decision rule alone)."""
    def search(queries: np.ndarray, k: int, nprobe: int, k_factor: int) -> np.ndarray:
        keep = round(K * found_share(nprobe, k_factor))
        out = np.full((len(queries), k), -1, np.int64)
        for q, truth in enumerate(truth_of.values()):
            out[q, :keep] = truth[:keep]
        return out
    return search


def test_the_rule_takes_the_fewest_lists_or_deepens_the_rerank_where_lists_stop_helping(tmp_path):
    x = embedding_like(2_000, 16, seed=2)
    rows = search_tuning.sample_rows(len(x), 20)
    truth = exact_top_of(blocks_of(x), x[rows], exclude=rows)[1]
    truth_of = dict(zip(rows.tolist(), truth, strict=True))
    by_lists = measure(fake_search(truth_of, lambda p, f: min(1.0, p / 20)), x, 1024, 40, sample=20)
    assert (by_lists.nprobe, by_lists.k_factor) == (24, 40) and by_lists.recall_at_10 == 1.0
    assert [p for p, _, _ in by_lists.curve] == [8, 12, 16, 24]  # stops at the first count reaching the target
    # Recall stops rising at 0.9 from 16 lists on: the re-rank deepens there, to the first depth reaching 0.97.
    plateau = measure(fake_search(truth_of, lambda p, f: min(0.9, p / 16) + (0.1 if f >= 80 else 0)),
                      x, 1024, 40, sample=20)
    assert (plateau.nprobe, plateau.k_factor) == (16, 80), plateau.curve
    # Never reached: the best measured, and never more lists than there are.
    short = measure(fake_search(truth_of, lambda p, f: min(0.9, p / 60)), x, 64, 40, sample=20)
    assert (short.nprobe, short.recall_at_10) == (64, 0.9) and max(p for p, _, _ in short.curve) == 64


@pytest.mark.timeout(300)
def test_the_tuned_depth_holds_for_new_queries_is_saved_and_is_measured_again_when_the_corpus_doubles(tmp_path):
    dim, n = 128, 12_000
    x, queries = embedding_like(2 * n, dim), embedding_like(300, dim, seed=1)
    stored = stored_rows(tmp_path / "rows.npy", x)
    index = VectorIndex(dim, flat_threshold=2_000, rebuild_in_background=False, stored=lambda: stored)
    index.add(0, x[:n])
    tuning = index._tuner.tuning
    assert tuning is not None and tuning.rows == n and index.params.nprobe == tuning.nprobe
    assert tuning.recall_at_10 >= search_tuning.TARGET_RECALL
    assert all(r < search_tuning.TARGET_RECALL for p, f, r in tuning.curve[:-1])  # the fewest lists that reach it
    # Queries from outside the corpus: the estimate holds (within the sample's error).
    assert recall_at_10(index, x[:n], queries) >= search_tuning.TARGET_RECALL - 0.03
    assert index.describe()[1]["recall_at_10_estimate"] == f"{tuning.recall_at_10:.4f}"
    index.save(tmp_path / "index.faiss")
    saved = json.loads((tmp_path / "index.tuning.json").read_text())
    assert saved["nprobe"] == tuning.nprobe and saved["rows"] == n
    # A load adopts the saved depth instead of measuring again (an edited file shows which one serves).
    (tmp_path / "index.tuning.json").write_text(json.dumps({**saved, "nprobe": 5}))
    loaded = VectorIndex(dim, stored=lambda: stored[:n])
    loaded.load(tmp_path / "index.faiss")
    assert loaded.params.nprobe == 5
    # Doubled: measured again, on every row.
    index.add(n, x[n:])
    assert index._tuner.tuning.rows == 2 * n and index.params.nprobe == index._tuner.tuning.nprobe


def test_an_unreadable_saved_tuning_is_measured_again(tmp_path):
    (tmp_path / "t.json").write_text("{not json")
    assert SearchTuning.load(tmp_path / "t.json") is None
    assert SearchTuning.load(tmp_path / "missing.json") is None
