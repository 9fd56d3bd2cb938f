"""Near-duplicate collapse: keep the best-ranked of each group of copies, backfilled from further candidates.

Pure functions over ranked candidates; the same for every store backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from server.store.base import Candidate


def _groups(candidates: list[Candidate], threshold: float) -> Iterator[tuple[Candidate, str | None]]:
    """Each candidate, in rank order, with the image ID of the better-ranked kept candidate it duplicates (same
    content hash, or cosine > threshold to it), or None when it is kept (the first of its group)."""
    kept_ids: list[str] = []
    kept_vectors: list[np.ndarray] = []
    by_hash: dict[str, str] = {}
    for candidate in candidates:
        if (first := by_hash.get(candidate.content_hash)) is not None:
            yield candidate, first
            continue
        if kept_vectors:
            similarity = np.stack(kept_vectors) @ candidate.vector
            best = int(np.argmax(similarity))
            if float(similarity[best]) > threshold:
                yield candidate, kept_ids[best]
                continue
        by_hash[candidate.content_hash] = candidate.image_id
        kept_ids.append(candidate.image_id)
        kept_vectors.append(candidate.vector)
        yield candidate, None


def collapse_duplicates(candidates: list[Candidate], k: int, threshold: float) -> tuple[list[Candidate], int]:
    """Keep the best-ranked of each group of exact (same content hash) or near (cosine > threshold) duplicates.

    Walks the ranked candidates, so the list is backfilled from further candidates: up to k come back.
    Returns (kept, number removed).
    """
    kept: list[Candidate] = []
    removed = 0
    if k <= 0:
        return kept, removed
    for candidate, duplicate_of in _groups(candidates, threshold):
        if duplicate_of is not None:
            removed += 1
            continue
        kept.append(candidate)
        if len(kept) == k:
            break
    return kept, removed


def mark_duplicates(candidates: list[Candidate], threshold: float) -> list[str | None]:
    """For each candidate, the ID of the better-ranked one it duplicates (what the collapse would drop it for),
    or None: what a search that keeps duplicates shows next to them."""
    return [duplicate_of for _, duplicate_of in _groups(candidates, threshold)]
