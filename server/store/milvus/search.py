"""Filtered ANN search on Milvus: privacy in the filter, widened until k eligible rows come back, exact re-rank."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from server.store.base import Candidate, Counts
from server.store.milvus.client import ELIGIBLE, MAX_TOPK, Connection, _literal, log
from server.store.milvus.config import MilvusIndexConfig


class FilteredSearch:
    """Top-k eligible images of one collection. `counts` gives the cached counts (sizes the first probe)."""

    def __init__(self, conn: Connection, index: MilvusIndexConfig, counts: Callable[[], Counts]) -> None:
        self.conn, self.index, self.counts = conn, index, counts

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[Candidate]:
        """Top-k eligible images by exact inner product (ANN candidates re-scored), min(k, eligible) of them."""
        if k <= 0:
            return []
        query = np.asarray(vector, np.float32).reshape(-1)
        expr = ELIGIBLE if exclude is None else f"{ELIGIBLE} and image_id != {_literal(exclude)}"
        limit = min(MAX_TOPK, max(k, k * self.index.candidates_per_result))
        widen = self._start_widen(limit)
        hits = self._ann(query, expr, limit, widen)
        while len(hits) < k and not self.index.exhausted(widen, limit):
            widen *= 8
            hits = self._ann(query, expr, limit, widen)
        if len(hits) < k:
            eligible = self.conn.count(expr)
            if len(hits) < min(k, eligible):
                if eligible > self.index.exact_fallback_max:
                    log.warning("filtered search found %d of %d eligible rows at full width", len(hits), eligible)
                else:  # the exact answer for very selective filters: every eligible row
                    hits = list(self.conn.iterate(expr, ["embedding", "content_hash"]))
        return _rerank(query, hits, k)

    def _start_widen(self, limit: int) -> int:
        """Breadth for the first try from the eligible fraction (cached counts): probe enough lists to expect
        4x `limit` eligible rows, as FAISS' selector path does; the retries above handle what this misses."""
        if self.index.kind not in ("IVF_PQ", "GPU_IVF_PQ", "IVF_FLAT"):
            return 1
        counts = self.counts()
        total = counts.live + counts.deleted
        if counts.public <= 0 or total <= 0:
            return 1
        rows_per_list = counts.public / max(1, min(self.index.nlist, total))
        lists = 4 * limit / max(rows_per_list, 1e-9)
        return max(1, math.ceil(lists / self.index.nprobe))

    def _ann(self, query: np.ndarray, expr: str, limit: int, widen: int) -> list[dict[str, Any]]:
        c = self.conn
        found = c.call(c.client.search, c.collection, data=[query.tolist()], filter=expr, limit=limit,
                       output_fields=["embedding", "content_hash"], anns_field="embedding",
                       search_params=self.index.search_params(widen, limit), consistency_level=c.consistency)
        return [{"image_id": h["id"], **h["entity"]} for h in found[0]]


def _rerank(query: np.ndarray, hits: list[dict[str, Any]], k: int) -> list[Candidate]:
    if not hits:
        return []
    vectors = np.asarray([h["embedding"] for h in hits], dtype=np.float32)
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [Candidate(hits[i]["image_id"], float(scores[i]), hits[i]["content_hash"], vectors[i]) for i in order]
