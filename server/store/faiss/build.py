"""Build a FAISS index by its `index_factory` string: train, then add the stored rows in chunks; on a GPU host an
exact index moves to the GPU."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from server.store.faiss.params import IndexParams


def build_index(params: IndexParams, dim: int, stored: np.ndarray, training: np.ndarray | None = None,
                progress: Callable[[int], None] | None = None) -> faiss.Index:
    """Train on `training` (default: a sample of the stored rows), then add the stored rows in chunks (they may
    be a memory map of 10M rows)."""
    index = faiss.index_factory(dim, params.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if training is None:
            rng = np.random.default_rng(0)
            rows = np.sort(rng.choice(len(stored), 200_000, replace=False)) if len(stored) > 200_000 else slice(None)
            training = stored[rows]
        index.train(np.ascontiguousarray(training, dtype=np.float32))
    for start in range(0, len(stored), 100_000):
        index.add(np.ascontiguousarray(stored[start:start + 100_000], dtype=np.float32))
        if progress is not None:
            progress(min(100_000, len(stored) - start))
    return maybe_to_gpu(index)


def maybe_to_gpu(index: faiss.Index) -> faiss.Index:
    """One code path: on a GPU host an exact index moves to the GPU (faiss-gpu build). The IVF layouts stay on
    the CPU: FAISS has no GPU version of 4-bit fast-scan PQ, and their re-rank reads the log on disk anyway."""
    if faiss.get_num_gpus() > 0 and isinstance(index, faiss.IndexFlat):  # pragma: no cover - no GPU in CI
        return faiss.index_cpu_to_all_gpus(index)
    return index


def on_gpu() -> bool:
    return faiss.get_num_gpus() > 0
