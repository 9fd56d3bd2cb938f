"""FAISS index, eligibility selector and duplicate collapse on real FAISS (generated vectors)."""

from __future__ import annotations

import time

import faiss
import numpy as np
import pytest

from server.query.duplicates import collapse_duplicates, mark_duplicates
from server.store.base import Candidate
from server.store.faiss.eligibility import Eligibility
from server.store.faiss.index import VectorIndex
from server.store.faiss.params import RERANK_HEAD, flat_quantizer_params, ivf_params, large_params, params_for


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 200, noise: float = 0.6) -> np.ndarray:
    """Unit vectors around random centres: a realistic embedding-like distribution."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def embedding_like(n: int, dim: int, seed: int = 0, clusters: int = 100) -> np.ndarray:
    """Unit vectors with the shape of real embeddings: clusters and a decaying spectrum (a few directions carry
    most of the variance), randomly rotated. Compact codes rank these as they rank real embeddings; on
    isotropic noise (`clustered`) they lose most of the order (shared/README.md)."""
    rng, fixed = np.random.default_rng(seed), np.random.default_rng(123)
    decay = np.arange(1, dim + 1, dtype=np.float32)
    centres = fixed.standard_normal((clusters, dim)).astype(np.float32) * decay**-0.5
    noise = rng.standard_normal((n, dim)).astype(np.float32) * 0.5 * decay**-0.6
    rotation = np.linalg.qr(fixed.standard_normal((dim, dim)))[0].astype(np.float32)
    x = (centres[rng.integers(0, clusters, n)] + noise) @ rotation
    faiss.normalize_L2(x)
    return x


def recall_at_10(index: VectorIndex, x: np.ndarray, queries: np.ndarray) -> float:
    """10-recall@10 of the index against exact inner-product search over x."""
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(queries, 10)
    _, got = index.search(queries, 10)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)]))


def test_params_follow_corpus_size():
    assert params_for(1000, 1280).factory == "Flat"
    big = params_for(1_000_000, 1280)
    assert big.factory == "IVF4096_HNSW32,PQ256x4fs" and big.hnsw_quantizer and big.rerank_from_disk
    assert not big.exact_rerank and big.k_factor == 40
    in_ram = params_for(1_000_000, 1280, rows_on_disk=False)
    assert in_ram.factory == "IVF4096_HNSW32,PQ1280x4fs,RFlat" and in_ram.exact_rerank
    assert params_for(10_000_000, 1280).factory == "IVF4096_HNSW32,PQ256x4fs"


def stored_rows(path, x: np.ndarray) -> np.ndarray:
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=x.shape)
    stored[:] = x
    return stored


@pytest.mark.timeout(300)
def test_compact_index_holds_codes_and_reranks_from_the_stored_rows(tmp_path):
    """Above the flat threshold the index keeps only compact codes in RAM; the exact re-rank reads the
    candidates' stored rows (the catalog's memory-mapped vector log). Recall, selectors and snapshots hold."""
    dim, n = 128, 12_000
    x, queries = embedding_like(n, dim), embedding_like(200, dim, seed=1)
    stored = stored_rows(tmp_path / "rows.npy", x)
    index = VectorIndex(dim, flat_threshold=2_000, rebuild_in_background=False, stored=lambda: stored)
    index.add(0, x[:1_000])
    assert index.describe()[0] == "Flat"
    index.add(1_000, x[1_000:])
    assert index.params.layout == "compact" and index.describe()[0].startswith("IVF")
    np.testing.assert_array_equal(index.reconstruct(np.array([7, 11_999])), x[[7, 11_999]])
    read_before = index.rows_reranked
    recall = recall_at_10(index, x, queries)
    assert recall >= 0.95, recall
    # Only candidates whose code score may still make the top 10 are read from disk: far fewer than the
    # k x k_factor the codes proposed, never fewer than the head whose code error is measured.
    read = (index.rows_reranked - read_before) / len(queries)
    assert RERANK_HEAD <= read < 10 * index.params.k_factor / 2, read
    scores, ids = index.search(queries[:3], 10)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries[:3], x[ids]), rtol=1e-5)  # exact scores
    eligible = Eligibility()
    for i in range(0, n, 50):  # 2% eligible: most probed lists hold none
        eligible.set(i, True)
    selector, _keep, _count = eligible.snapshot()
    _, ids = index.search(queries[:5], 10, selector)
    assert (ids >= 0).all() and all(i % 50 == 0 for i in ids.ravel())
    # With a floor (the caller drops exact scores under it) far fewer rows are read, and what is above it is
    # nearly always the same (approximate: params.FLOOR_SIGMAS).
    full_scores, full_ids = index.search(queries, 60)
    read_before, same, overlap = index.rows_reranked, [], []
    for q, floor in enumerate(full_scores[:, 9]):
        scores, ids = index.search(queries[q:q + 1], 60, floor=float(floor))
        got, want = set(ids[0][scores[0] >= floor]), set(full_ids[q][full_scores[q] >= floor])
        same.append(got == want)
        overlap.append(len(got & want) / len(want))
    assert index.rows_reranked - read_before < len(queries) * 60 * index.params.k_factor / 4
    assert np.mean(same) >= 0.95 and np.mean(overlap) >= 0.99, (np.mean(same), np.mean(overlap))
    index.save(tmp_path / "index.faiss")
    # What the snapshot (= what RAM holds) costs per vector: codes, ids, lists; far below one float row.
    assert (tmp_path / "index.faiss").stat().st_size / n < dim * 4 / 2
    loaded = VectorIndex(dim, stored=lambda: stored)
    loaded.load(tmp_path / "index.faiss")
    assert loaded.describe() == index.describe()
    np.testing.assert_array_equal(loaded.search(queries[:5], 10)[1], index.search(queries[:5], 10)[1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("earlier", ["exact-copy", "sq8-copy"])
def test_a_snapshot_of_an_earlier_layout_serves_then_converts_to_compact(tmp_path, earlier):
    """Data directories written before the compact layout keep working: the loaded index answers at once, and
    the background rebuild converts it from the stored rows."""
    dim, n = 64, 6_000
    x, queries = embedding_like(n, dim), embedding_like(50, dim, seed=1)
    stored = stored_rows(tmp_path / "rows.npy", x)
    legacy = ivf_params(64, dim) if earlier == "exact-copy" else large_params(64, dim)
    old = faiss.index_factory(dim, legacy.factory, faiss.METRIC_INNER_PRODUCT)
    old.train(x)
    old.add(x)
    faiss.write_index(old, str(tmp_path / "index.faiss"))
    index = VectorIndex(dim, flat_threshold=2_000, stored=lambda: stored)
    index.load(tmp_path / "index.faiss")  # converts in the background; searches never wait for it
    assert recall_at_10(index, x, queries) >= 0.9
    for _ in range(600):
        if index.params.layout == "compact":
            break
        time.sleep(0.1)
    assert index.params.layout == "compact" and index.ntotal == n
    assert recall_at_10(index, x, queries) >= 0.95


@pytest.mark.timeout(300)
def test_flat_rebuilds_into_ivfpq_with_recall_above_095():
    dim, n = 128, 12_000  # the IVF's training is most of this test's time: as small as still needs an IVF
    x, queries = clustered(n, dim), clustered(200, dim, seed=1)
    index = VectorIndex(dim, flat_threshold=10_000, rebuild_in_background=False)
    index.add(0, x[:8_000])
    assert index.describe()[0] == "Flat"
    index.add(8_000, x[8_000:])
    factory, params = index.describe()
    assert factory.startswith("IVF") and "nprobe" in params
    recall = recall_at_10(index, x, queries)
    assert recall >= 0.95, recall


def test_ids_are_positions():
    index = VectorIndex(8)
    index.add(0, np.eye(8, dtype=np.float32)[:4])
    with pytest.raises(ValueError, match="positions"):
        index.add(7, np.eye(8, dtype=np.float32)[:1])


@pytest.mark.parametrize("n", [5_000, 12_000])  # Flat, then IVF
def test_selector_filters_inside_the_search_and_still_returns_k(n):
    dim = 64
    x = clustered(n, dim, clusters=20)
    index = VectorIndex(dim, flat_threshold=10_000, rebuild_in_background=False)
    index.add(0, x)
    assert index.describe()[0].startswith("IVF") == (n > 10_000)
    eligible = Eligibility()
    rng = np.random.default_rng(3)
    allowed = set(rng.choice(n, size=60, replace=False).tolist())  # 0.5-1.2%: post-filtering would starve
    for i in range(n):
        eligible.set(i, i in allowed)
    selector, _keep, _count = eligible.snapshot()
    _, ids = index.search(x[:20], 50, selector)
    assert all(set(row) <= allowed and len(set(row)) == 50 for row in ids)


def test_eligibility_exclude_and_toggle():
    e = Eligibility()
    for i in range(20):
        e.set(i, i % 2 == 0)
    assert e.count == 10 and e.eligible_count(exclude=4) == 9 and e.eligible_count(exclude=5) == 10
    e.set(4, False)
    e.set(4, False)
    assert e.count == 9 and not e.is_eligible(4) and not e.is_eligible(10_000)
    selector, _, count = e.snapshot(exclude=6)
    assert not selector.is_member(6) and selector.is_member(8) and not selector.is_member(4) and count == 8
    e.set(8, False)  # a snapshot: later changes do not reach a search already under way, nor its count
    assert selector.is_member(8) and count == 8 and e.count == 8


def test_the_selector_never_reads_past_its_copy_of_the_bitmap():
    """FAISS's IDSelectorBitmap takes the bitmap's length in bytes and reads byte id>>3 for every id below 8x
    that: given more, it read past the copy, and garbage there admitted private ids added after the last
    eligible one (found by the large-corpus test above, 1 in 5 queries)."""
    e = Eligibility()
    for i in range(0, 12_000, 50):
        e.set(i, True)
    selector, bits, _count = e.snapshot()
    assert selector.n == len(bits) == (11_950 + 8) // 8
    assert not any(selector.is_member(i) for i in range(11_951, 8 * len(bits)))


def test_snapshot_round_trip(tmp_path):
    dim = 32
    x = clustered(3000, dim)
    index = VectorIndex(dim, flat_threshold=2000, rebuild_in_background=False)
    index.add(0, x)
    index.save(tmp_path / "i.faiss")
    loaded = VectorIndex(dim, flat_threshold=2000)
    loaded.load(tmp_path / "i.faiss")
    assert loaded.describe() == index.describe() and loaded.ntotal == 3000
    np.testing.assert_array_equal(loaded.vectors(), x)
    np.testing.assert_array_equal(loaded.search(x[:5], 5)[1], index.search(x[:5], 5)[1])


def test_collapse_keeps_best_of_each_group_and_backfills():
    v = np.eye(6, dtype=np.float32)
    near = (v[0] + 0.05 * v[1]) / np.linalg.norm(v[0] + 0.05 * v[1])
    vectors = np.stack([v[0], v[0], near, v[2], v[3], v[4]])
    hashes = ["a", "a", "b", "c", "d", "e"]  # 0 and 1: exact copies; 2: near-duplicate of 0
    ranked = [Candidate(str(i), 1.0 - i / 10, hashes[i], vectors[i]) for i in range(6)]
    kept, removed = collapse_duplicates(ranked, 3, threshold=0.9)
    assert [c.image_id for c in kept] == ["0", "3", "4"] and removed == 2
    # A search that keeps duplicates shows each next to the kept image it would have been dropped for.
    assert mark_duplicates(ranked, threshold=0.9) == [None, "0", "0", None, None, None]


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="no CUDA GPU on this host (faiss-cpu build): GPU index path "
                    "runs only on GPU hosts with the `gpu` extra")
def test_index_moves_to_gpu():  # pragma: no cover
    index = VectorIndex(64)
    index.add(0, clustered(100, 64))
    assert index.describe()[1]["gpu"] == "true"


def test_a_snapshot_with_a_flat_coarse_quantizer_loads_with_its_own_parameters(tmp_path):
    """Indexes written before the HNSW coarse quantizer keep serving after an upgrade, searched as built."""
    dim, n = 64, 3_000
    x, queries = clustered(n, dim), clustered(50, dim, seed=1)
    legacy = flat_quantizer_params(32, dim // 2)
    index = faiss.index_factory(dim, legacy.factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    loaded = VectorIndex(dim)
    loaded.load(tmp_path / "index.faiss")
    factory, params = loaded.describe()
    assert factory == legacy.factory and "ef_search" not in params and params["nprobe"] == str(legacy.nprobe)
    assert recall_at_10(loaded, x, queries) >= 0.9  # searched with its own nprobe and 32x re-rank


@pytest.mark.parametrize("rows", [[7], [3, 4, 5, 9, 10, 2, 1, 0], [5, 5, 6, 4],
                                  list(range(0, 400, 3)) + list(range(40, 90)), list(range(399, -1, -1))])
def test_the_vector_log_reads_exactly_the_rows_asked_for_in_their_order(tmp_path, rows) -> None:
    """Runs of consecutive rows are read with one pread each: reversed, repeated and interleaved rows must still
    come back as asked (the re-rank pairs each row with its candidate by position); the longer lists go through
    the reader threads."""
    from server.store.faiss.vector_log import VectorLog

    for suffix, dtype in ((".f32", np.float32), (".f16", np.float16)):  # float16: the store's logs
        log = VectorLog(tmp_path / f"rows{suffix}", 16)
        raw = np.random.default_rng(4).standard_normal((400, 16))
        raw[0, :4] = [0.0, -0.0, 3e-7, -1e-5]  # zeros and float16 subnormals convert exactly too
        stored = raw.astype(dtype).astype(np.float32)  # what the log keeps
        log.append(stored[:250])
        log.append(stored[250:])
        asked = np.array(rows)
        got = log.read_rows(asked)
        assert got.dtype == np.float32 and np.array_equal(got, stored[asked])
        assert log.read_rows(np.array([], np.int64)).shape == (0, 16)
        log.close()
