"""Vector sets of the embedding dimension for index evaluation (no images, no encoder).

- `synthetic_dataset`: faiss's SyntheticDataset (low intrinsic dimension), L2-normalised;
- `hard_dataset`: weakly clustered Gaussian (high intrinsic dimension), L2-normalised.
Synthetic vectors overstate what compact codes keep on real embeddings (shared/README.md): quality claims about
compact codes are measured on real embeddings too.
"""

from __future__ import annotations

import faiss
import numpy as np
from faiss.contrib.datasets import SyntheticDataset

from server.embedding.contract import EMBEDDING_DIM as DIM


def synthetic_dataset(n: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    ds = SyntheticDataset(DIM, 1000, n, nq, metric="IP")
    xb, xq = ds.get_database().astype(np.float32), ds.get_queries().astype(np.float32)
    faiss.normalize_L2(xb)
    faiss.normalize_L2(xq)
    return xb, xq


def hard_dataset(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, DIM), np.float32)
        for start in range(0, count, 100_000):
            m = min(100_000, count - start)
            out[start:start + m] = centres[rng.integers(0, 1000, m)] + 0.9 * rng.standard_normal((m, DIM), np.float32)
        faiss.normalize_L2(out)
        return out
    return draw(n), draw(nq)
