"""FAISS index: build by `index_factory`, add, search with an in-search selector, snapshot, load.

FAISS ids are positions: internal id i is the i-th vector ever added (ids are never reused; deleted
images stay in the index and are excluded by the selector). So no id map is needed, the write-ahead
vector log and the index agree row for row, and replay after a snapshot is "add rows ntotal..end".

The index type follows the corpus size (`params.py`) and is rebuilt off to the side as the corpus grows, or
when a snapshot of an earlier layout is loaded (the conversion: serving continues on the loaded index).
In the compact layout the index returns k_factor x k candidates from its codes and the exact re-rank reads
their rows from the stored vectors (the catalog's vector log on disk, through `read_rows`); how many lists it
probes and how deep it re-ranks are measured on the corpus (search_tuning.py) and saved beside the snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from server.core.durable import replace_durably
from server.store.faiss.build import build_index, maybe_to_gpu, on_gpu
from server.store.faiss.params import COMPACT_K_FACTOR, FLAT_THRESHOLD, IndexParams, params_for, params_of
from server.store.faiss.rerank import ExactRerank
from server.store.faiss.search_tuning import SearchTuner, SearchTuning

log = logging.getLogger("index")


class VectorIndex:
    """Thread-safe: searches run concurrently (FAISS releases the GIL); adds and swaps take the lock."""

    def __init__(self, dim: int, flat_threshold: int = FLAT_THRESHOLD, rebuild_in_background: bool = True,
                 stored: Callable[[], np.ndarray] | None = None,
                 on_rebuilt: Callable[[], None] | None = None,
                 read_rows: Callable[[np.ndarray], np.ndarray] | None = None, tune: bool = True,
                 rows_per_image: int = 1) -> None:
        """`stored`: every added vector, row = id (the catalog's vector log, memory-mapped). Without it the index
        must keep exact copies itself (RFlat), so it never becomes compact. `read_rows(ids)`: the re-rank's
        reader of stored rows (default: from `stored`). `tune`: the compact layout measures its search depth on the
        corpus (search_tuning.py), leaving out each sampled query's image (`rows_per_image` consecutive rows)."""
        self.dim = dim
        self.flat_threshold = flat_threshold
        self.rebuild_in_background = rebuild_in_background
        self._stored = stored
        self._read_rows = read_rows or (lambda ids: np.asarray(self._stored()[ids], dtype=np.float32))
        self._rerank = ExactRerank(self._read_rows)
        self._on_rebuilt = on_rebuilt
        self.params = params_for(0, dim, flat_threshold)
        self._index: faiss.Index = build_index(self.params, dim, np.empty((0, dim), np.float32))
        self._lock = threading.RLock()
        self._rebuilding = False
        self._built_at = 0
        self._tuner = SearchTuner(tune, rebuild_in_background, rows_per_image)
        self.version = 0  # bumps on every change: answers carry it

    # -- state -------------------------------------------------------------------------------------------
    @property
    def rows_reranked(self) -> int:
        """Stored rows read by re-ranks (x row bytes: disk / page-cache bytes read)."""
        return self._rerank.rows_read

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def nlist(self) -> int:
        """Lists of the IVF layouts (0: Flat)."""
        return 0 if self.params.is_flat else faiss.extract_index_ivf(self._index).nlist

    def describe(self) -> tuple[str, dict[str, str]]:
        p = self.params
        extra = {"rerank": p.layout}
        if not p.is_flat:
            extra |= {"nprobe": str(p.nprobe), "k_factor": str(p.k_factor)}
        if p.hnsw_quantizer:
            extra["ef_search"] = str(p.quantizer_ef(p.nprobe))
        if (t := self._tuner.tuning) is not None and p.rerank_from_disk:
            extra["recall_at_10_estimate"] = f"{t.recall_at_10:.4f}"
        return p.factory, {"metric": "inner_product", **extra, "gpu": str(self._on_device).lower()}

    @property
    def _on_device(self) -> bool:
        """Only exact indexes move to a GPU (`maybe_to_gpu`)."""
        return on_gpu() and self.params.is_flat

    def vectors(self) -> np.ndarray:
        """Every vector added, row = id: a zero-copy view of the index's exact copies (Flat, RFlat) or, for
        the compact and SQ8 layouts, the stored rows. The view is invalid after the next add: copy what you keep."""
        with self._lock:
            if not self.params.exact_rerank:
                assert self._stored is not None
                return self._stored()
            flat = self._index if self.params.is_flat else faiss.downcast_index(self._index.refine_index)
            n = flat.ntotal
            if n == 0:
                return np.empty((0, self.dim), np.float32)
            return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if not self.params.exact_rerank:  # rows on disk: the re-rank's reader, not a new memory map per call
            return self._read_rows(ids)
        return np.asarray(self.vectors()[ids], dtype=np.float32)

    # -- writes ------------------------------------------------------------------------------------------
    def add(self, first_id: int, vectors: np.ndarray) -> None:
        """Append vectors whose ids are first_id, first_id+1, ... (must equal ntotal: ids are positions)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            if first_id != self.ntotal:
                raise ValueError(f"ids are positions: expected first id {self.ntotal}, got {first_id}")
            self._index.add(vectors)
            self.version += 1
            self._maybe_rebuild()
        self._maybe_tune()

    def _maybe_rebuild(self) -> None:
        with self._lock:
            target = params_for(self.ntotal, self.dim, self.flat_threshold, rows_on_disk=self._stored is not None)
            if not self._needs_rebuild(target) or self._rebuilding:
                return
            self._rebuilding = True
        if self.rebuild_in_background:
            threading.Thread(target=self._rebuild, args=(target,), daemon=True, name="index-rebuild").start()
        else:
            self._rebuild(target)

    def _needs_rebuild(self, target: IndexParams) -> bool:
        """Flat -> IVF-PQ at the threshold, an earlier layout -> this one (conversion); otherwise re-tune IVF
        only when the corpus has grown 4x since the last build. Never back to Flat (a loaded IVF snapshot of a
        catalog below this gateway's flat threshold keeps serving as built)."""
        if target.is_flat:
            return False
        if target.layout != self.params.layout:
            return True
        return target.factory != self.params.factory and self.ntotal >= 4 * self._built_at

    def _rebuild(self, target: IndexParams) -> None:
        """Train + fill a new index off to the side; searches continue on the old one; swap under the lock."""
        try:
            with self._lock:
                # Exact copies inside the index move when it grows: copy them. Stored rows are read in place.
                source = self.vectors() if self._stored is None else self._stored()
                snapshot = source.copy() if self._stored is None else source
                built = self.ntotal
            log.info("rebuilding index %s -> %s on %d vectors", self.params.factory, target.factory, built)
            started = time.monotonic()
            index = build_index(target, self.dim, snapshot[:built])
            with self._lock:
                late = self.vectors()[built:self.ntotal]
                if len(late):
                    index.add(np.ascontiguousarray(late, dtype=np.float32))
                self._index, self.params, self._built_at = index, target, built
                self.version += 1
                if self._on_rebuilt is not None:
                    self._on_rebuilt()
            log.info("index rebuilt: %s (%d vectors, %.1f s)", target.factory, index.ntotal, time.monotonic() - started)
        finally:
            self._rebuilding = False
        self._maybe_tune()

    def _maybe_tune(self) -> None:
        """Measure the compact layout's search depth when due (search_tuning.py), off the search path."""
        with self._lock:
            index, nlist = self._index, self.nlist if self.params.rerank_from_disk else 0
        if nlist and not self._rebuilding and self._tuner.due(index.ntotal, nlist):
            self._tuner.start(lambda q, k, nprobe, k_factor: self.search(q, k, depth=(nprobe, k_factor))[1],
                              self._stored()[:index.ntotal], nlist, COMPACT_K_FACTOR,
                              self._apply_tuning)

    def _apply_tuning(self, tuning: SearchTuning) -> None:
        with self._lock:
            if self.params.rerank_from_disk and self.nlist == tuning.nlist:
                self.params = replace(self.params, nprobe=tuning.nprobe, k_factor=tuning.k_factor)

    # -- reads -------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None = None,
               floor: float | None = None, depth: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product among ids accepted by `selector` (filtering happens inside FAISS).

        `floor`: the caller discards exact scores below it. The compact layout then re-reads only the candidates
        whose code score may reach it (rerank.py; fewer rows from disk; results under the floor may be missing).
        `depth`: (nprobe, k_factor) instead of the tuned ones (the tuning's own searches)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            index, params = self._index, self.params
        if depth is not None and not params.is_flat:
            params = replace(params, nprobe=depth[0], k_factor=depth[1])
        if index.ntotal == 0:
            return np.full((len(queries), 0), -1, np.float32), np.full((len(queries), 0), -1, np.int64)
        k = max(1, min(k, index.ntotal))
        if params.is_flat:
            return index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        if params.rerank_from_disk:
            codes, candidates = self._probe(index, params, queries, k * params.k_factor, k, selector)
            return self._rerank.top(queries, codes, candidates, k, index.ntotal, floor, params.rerank_sigmas)
        return self._probe(index, params, queries, k, k, selector)

    def _probe(self, index: faiss.Index, params: IndexParams, queries: np.ndarray, count: int, needed: int,
               selector: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        """`count` results of the IVF search. A restrictive selector can leave the probed lists with fewer than
        `needed` eligible vectors: probe more lists (up to all of them) so k eligible images always come back
        when they exist."""
        nprobe, nlist = params.nprobe, faiss.extract_index_ivf(index).nlist
        while True:
            ivf = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
            # The HNSW coarse quantizer must explore at least nprobe centroids (kept referenced during the search).
            quantizer = faiss.SearchParametersHNSW(efSearch=params.quantizer_ef(nprobe))
            if params.hnsw_quantizer:
                ivf.quantizer_params = quantizer
            search_params = ivf if params.rerank_from_disk else faiss.IndexRefineSearchParameters(
                k_factor=params.k_factor, base_index_params=ivf)
            scores, ids = index.search(queries, count, params=search_params)
            if selector is None or nprobe >= nlist or ((ids >= 0).sum(axis=1) >= min(needed, count)).all():
                return scores, ids
            nprobe = min(nlist, nprobe * 4)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Atomic snapshot: write to a temp file, fsync, rename over the old one."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        with self._lock:
            index = faiss.index_gpu_to_cpu(self._index) if self._on_device else self._index  # pragma: no branch
            faiss.write_index(index, str(tmp))
            params = self.params
        replace_durably(tmp, path)
        if params.rerank_from_disk:
            self._tuner.save(path.with_suffix(".tuning.json"))
        log.info("index snapshot %s (%s, %d vectors)", path, params.factory, index.ntotal)

    def load(self, path: Path) -> None:
        index = faiss.read_index(str(path))
        with self._lock:
            self._index = maybe_to_gpu(index)
            self.params = params_of(index)
            self._built_at = index.ntotal
            self.version += 1
        if self._tuner.enabled and (saved := SearchTuning.load(path.with_suffix(".tuning.json"))) is not None:
            self._tuner.adopt(saved)
            self._apply_tuning(saved)
        self._maybe_rebuild()  # a snapshot of an earlier layout converts in the background
        self._maybe_tune()
