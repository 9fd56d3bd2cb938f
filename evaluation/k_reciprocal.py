"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017), for category retrieval where every gallery image queries the rest (issue 28 part 4).

Two images are k-reciprocal neighbours when each is in the other's k1 nearest: a stricter, symmetric neighbourhood
than the top k1. Each image's neighbourhood (expanded by its neighbours' half-size neighbourhoods when those mostly
agree) becomes a vector of weights exp(-distance); k2 nearest images' vectors are averaged (local query expansion);
the final distance mixes the weighted Jaccard distance of two neighbourhoods with the original distance:
(1 - lambda) * jaccard + lambda * original. The published defaults are k1 = 20, k2 = 6, lambda = 0.3.

Serving it would need each indexed image's k1-neighbour list (8 x k1 B of ids per image, refreshed as the corpus
changes) and, per query, the lists of its candidates: measured here first, served only if it pays.
"""

from __future__ import annotations

import numpy as np


def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """The images among i's k + 1 nearest (itself included) that have i among their own k + 1 nearest."""
    forward = rank[i, :k + 1]
    return forward[(rank[forward, :k + 1] == i).any(axis=1)]


def k_reciprocal_distance(similarity: np.ndarray, k1: int = 20, k2: int = 6, lam: float = 0.3) -> np.ndarray:
    """[n, n] re-ranked distances of n images to each other from their [n, n] similarities (diagonal: self)."""
    n = len(similarity)
    original = np.maximum(2.0 - 2.0 * similarity, 0.0)  # squared L2 distance of unit vectors
    original = original / np.maximum(original.max(axis=0, keepdims=True), 1e-12)  # per column, as published
    rank = np.argsort(original, axis=1, kind="stable")
    weights = np.zeros((n, n), np.float32)
    half = round(k1 / 2)
    for i in range(n):
        neighbours = _reciprocal(rank, i, k1)
        expansion = [neighbours]
        for candidate in neighbours:
            theirs = _reciprocal(rank, int(candidate), half)
            if len(np.intersect1d(theirs, neighbours)) > 2 / 3 * len(theirs):
                expansion.append(theirs)
        members = np.unique(np.concatenate(expansion))
        w = np.exp(-original[i, members])
        weights[i, members] = w / w.sum()
    if k2 > 1:
        weights = weights[rank[:, :k2]].mean(axis=1)
    shared = np.zeros((n, n), np.float32)  # sum over images of min(weight of i, weight of j)
    for column in range(n):
        rows = np.flatnonzero(weights[:, column])
        if len(rows):
            values = weights[rows, column]
            shared[np.ix_(rows, rows)] += np.minimum(values[:, None], values[None, :])
    jaccard = 1.0 - shared / (2.0 - shared)
    return (1.0 - lam) * jaccard + lam * original
