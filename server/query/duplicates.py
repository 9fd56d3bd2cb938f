"""Near-duplicate collapse: keep the best-ranked of each group of copies, backfilled from further candidates.

A pure function over ranked candidates; the same for every store backend.
"""

from __future__ import annotations

import numpy as np

from server.store.base import Candidate


def collapse_duplicates(candidates: list[Candidate], k: int, threshold: float) -> tuple[list[Candidate], int]:
    """Keep the best-ranked of each group of exact (same content hash) or near (cosine > threshold) duplicates.

    Walks the ranked candidates, so the list is backfilled from further candidates: up to k come back.
    Returns (kept, number removed).
    """
    kept: list[Candidate] = []
    kept_vectors: list[np.ndarray] = []
    seen_hashes: set[str] = set()
    removed = 0
    for candidate in candidates:
        if len(kept) == k:
            break
        vec = candidate.vector
        if candidate.content_hash in seen_hashes or (
                kept_vectors and float(np.max(np.stack(kept_vectors) @ vec)) > threshold):
            removed += 1
            continue
        seen_hashes.add(candidate.content_hash)
        kept.append(candidate)
        kept_vectors.append(vec)
    return kept, removed
