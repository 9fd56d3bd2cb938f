"""Filtered ANN search on Milvus: privacy in the filter, widened until k eligible rows come back, exact re-rank."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from server.store.base import Candidate, ImageRecord, Visibility
from server.store.milvus.client import ELIGIBLE, MAX_TOPK, SCALARS, _literal, log


class MilvusReads:
    """The search half of `MilvusVectorStore` (a mixin: it shares the store's client and index config)."""

    def healthy(self) -> bool:
        """The collection is loaded and answers (after a Milvus restart it reloads first; the gateway's health
        check asks every second and stays NOT_SERVING until then)."""
        try:
            state = self._call(self._client.get_load_state, self.collection).get("state")
            return str(state).rsplit(".", 1)[-1] == "Loaded"
        except Exception:
            return False

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
            eligible = self._count(expr)
            if len(hits) < min(k, eligible):
                if eligible > self.index.exact_fallback_max:
                    log.warning("filtered search found %d of %d eligible rows at full width", len(hits), eligible)
                else:
                    hits = self._exact_rows(expr)
        return self._rerank(query, hits, k)

    def _start_widen(self, limit: int) -> int:
        """Breadth for the first try from the eligible fraction (cached counts): probe enough lists to expect
        4x `limit` eligible rows, as FAISS' selector path does; the retries below handle what this misses."""
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
        found = self._call(self._client.search, self.collection, data=[query.tolist()], filter=expr, limit=limit,
                           output_fields=["embedding", "content_hash"], anns_field="embedding",
                           search_params=self.index.search_params(widen, limit), consistency_level=self.consistency)
        return [{"image_id": h["id"], **h["entity"]} for h in found[0]]

    def _exact_rows(self, expr: str) -> list[dict[str, Any]]:
        """Every row matching `expr` with its vector (the exact answer for very selective filters)."""
        return list(self._iterate(expr, ["embedding", "content_hash"]))

    def _iterate(self, expr: str, fields: list[str], batch: int = 1000) -> Iterator[dict[str, Any]]:
        """All rows matching expr, paged by primary key (no offset limit)."""
        last: str | None = None
        while True:
            page_expr = expr if last is None else f"({expr}) and image_id > {_literal(last)}"
            rows = self._query(page_expr, ["image_id", *fields], limit=batch)
            if not rows:
                return
            rows.sort(key=lambda r: r["image_id"])
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1]["image_id"]

    @staticmethod
    def _rerank(query: np.ndarray, hits: list[dict[str, Any]], k: int) -> list[Candidate]:
        if not hits:
            return []
        vectors = np.asarray([h["embedding"] for h in hits], dtype=np.float32)
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [Candidate(hits[i]["image_id"], float(scores[i]), hits[i]["content_hash"], vectors[i]) for i in order]

    def _count(self, expr: str) -> int:
        rows = self._query(expr, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def eligible_count(self) -> int:
        return self.counts().public

    def get(self, image_id: str) -> ImageRecord | None:
        row = self._rows([image_id], SCALARS).get(image_id)
        return self._record(row) if row else None

    def _record(self, row: dict[str, Any]) -> ImageRecord:
        return ImageRecord(image_id=row["image_id"], internal_id=-1, owner_id=row["owner_id"],
                           visibility=Visibility(int(row["visibility"])), deleted=bool(row["deleted"]),
                           content_hash=row["content_hash"], model_version=self.model_version,
                           added_at=float(row["added_at"]))

    def vector(self, image_id: str) -> np.ndarray | None:
        row = self._rows([image_id], ["embedding"]).get(image_id)
        return np.asarray(row["embedding"], dtype=np.float32) if row else None

    def records(self, start: int, stop: int) -> list[ImageRecord]:
        """Records at ranks [start, stop) of `seq` (one pass over every row's id and seq, then a fetch)."""
        order = sorted(self._iterate("seq >= 0", ["seq"]), key=lambda r: (r["seq"], r["image_id"]))
        ids = [r["image_id"] for r in order[max(0, start):max(0, stop)]]
        rows = self._rows(ids, SCALARS)
        return [self._record(rows[i]) for i in ids if i in rows]

    def iter_records(self) -> Iterator[ImageRecord]:
        for row in self._iterate("seq >= 0", SCALARS[1:]):
            yield self._record(row)
