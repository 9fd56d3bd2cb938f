"""The ranking stage of a Search, once the query vector exists: store search (eligible images only) -> copy
verification -> duplicate collapse with backfill."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from server.core.metrics import GatewayMetrics
from server.query.duplicates import collapse_duplicates, mark_duplicates
from server.query.verification import Verifier
from server.runtime.serving import FALLBACK_DUPLICATE_THRESHOLD
from server.store.base import Candidate, VectorStore


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float
    relevance: float | None = None  # calibrated probability that the result is relevant (None: no calibration)
    duplicate_of: str | None = None  # with include_duplicates: the better-ranked hit this one duplicates


class Ranker:
    """Store search + copy verification + duplicate collapse with backfill.

    The first fetch is sized from the share of candidates the collapse kept in recent queries, so on a
    duplicate-heavy corpus one store search usually suffices; it goes back for more only when that fell short.
    """

    def __init__(self, duplicate_threshold: float | None, metrics: GatewayMetrics,
                 verifier: Verifier | None = None) -> None:
        self.metrics, self.verifier = metrics, verifier
        self.duplicate_threshold = FALLBACK_DUPLICATE_THRESHOLD if duplicate_threshold is None else duplicate_threshold
        self.keep_rate = 1.0  # moving average of kept / examined candidates

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_latency.labels(name).observe(time.perf_counter() - start)

    def first_fetch(self, k: int) -> int:
        """Enough candidates that k survive the collapse at the recent keep rate, with a 50% margin (25% sent
        1 query in 6 back for a second search on a duplicate-heavy corpus; sizing for a low quantile of the
        keep rate fetched so much that the first search cost more than the second ones it saved)."""
        return max(2 * k + 10, math.ceil(1.5 * k / max(self.keep_rate, 0.02)) + 10)

    def _search(self, store: VectorStore, vector: np.ndarray, k: int, exclude: str | None,
                signature: np.ndarray | None, side: int | None) -> list[Candidate]:
        verifier = self.verifier if signature is not None else None
        with self.stage("search"):  # verification looks its depth deep whatever k is: a source may rank below k
            candidates = store.search(vector, max(k, verifier.rule.depth_for(side)) if verifier else k, exclude)
        if verifier:
            with self.stage("verify"):
                candidates = verifier.rescore(candidates, signature, side)[:k]
        return candidates

    def rank(self, store: VectorStore, vector: np.ndarray, k: int, exclude: str | None,
             include_duplicates: bool, threshold: float | None = None, signature: np.ndarray | None = None,
             side: int | None = None) -> list[Hit]:
        """`threshold`: the served version's duplicate threshold (default: the one given at construction);
        `signature`: the query's pixel signature, for copy verification (server/query/verification.py), and
        `side` the query's shorter side in pixels (a small query is verified deeper)."""
        threshold = threshold if threshold is not None else self.duplicate_threshold
        if self.verifier is not None and signature is not None:
            deep = self.verifier.rule.depth_for(side) > self.verifier.rule.depth
            self.metrics.verified_searches.labels("small_query" if deep else "usual").inc()
        if include_duplicates:
            candidates = self._search(store, vector, k, exclude, signature, side)
            with self.stage("filter"):
                marks = mark_duplicates(candidates, threshold)
            self.metrics.ann_searches.observe(1)
            return [Hit(c.image_id, c.score, duplicate_of=d) for c, d in zip(candidates, marks, strict=True)]
        # Ask for more than k so duplicates can be collapsed and backfilled, as many more as the recent collapse
        # rate says; go back for more only if that fell short. The store clamps to the eligible images it sees:
        # fewer candidates than asked means there are no more (no count is read here: one read before the search
        # goes stale when visibility flips meanwhile).
        fetch, searches = self.first_fetch(k), 0
        while True:
            candidates = self._search(store, vector, fetch, exclude, signature, side)
            searches += 1
            with self.stage("filter"):
                kept, removed = collapse_duplicates(candidates, k, threshold)
            if kept:
                self.keep_rate = 0.9 * self.keep_rate + 0.1 * len(kept) / (len(kept) + removed)
            if len(kept) == k or len(candidates) < fetch:
                break
            fetch *= 4
        self.metrics.ann_searches.observe(searches)
        if removed:
            self.metrics.filtered_results.labels("duplicate").inc(removed)
        return [Hit(c.image_id, c.score) for c in kept]
