"""The Search path: imaging -> encoder -> index search (eligible ids only) -> duplicate collapse -> results."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from server import imaging
from server.config import Settings
from server.errors import InvalidInput, NotFound, ServiceError
from server.filters import Candidate, collapse_duplicates
from server.ingest import Catalog
from server.metrics import GatewayMetrics
from server.reindex import Live, Serving


@dataclass(frozen=True)
class Query:
    image_bytes: bytes | None = None
    image_id: str | None = None
    crop: imaging.CropBox | None = None
    k: int = 0
    min_score: float | None = None
    include_duplicates: bool = False


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float


@dataclass(frozen=True)
class Answer:
    hits: list[Hit]
    model_version: str
    index_version: int
    request_id: str


class Searcher:
    """Every query reads `live.serving` once: its vector and its index come from the same model version."""

    def __init__(self, live: Live, settings: Settings, metrics: GatewayMetrics) -> None:
        self.live, self.settings, self.metrics = live, settings, metrics
        self.limits = imaging.Limits(settings.max_image_bytes, settings.max_image_pixels)

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_latency.labels(name).observe(time.perf_counter() - start)

    def _validate(self, query: Query) -> int:
        k = query.k or self.settings.default_k
        if not 1 <= k <= self.settings.max_k:
            raise InvalidInput(f"must be between 1 and {self.settings.max_k} (0 means {self.settings.default_k}), "
                               f"got {query.k}", field="k")
        if (query.image_bytes is None) == (query.image_id is None):
            raise InvalidInput("set exactly one of image_bytes or image_id", field="query")
        if query.crop is not None and query.image_id is not None:
            raise InvalidInput("a crop applies to image_bytes only, not to image_id queries", field="crop")
        if query.min_score is not None and not -1.0 <= query.min_score <= 1.0:
            raise InvalidInput(f"must be within [-1, 1], got {query.min_score}", field="min_score")
        return k

    async def embed_query(self, serving: Serving, query: Query, timeout_s: float | None
                          ) -> tuple[np.ndarray, int | None]:
        """The query vector, and the internal id to exclude (search by ID)."""
        if query.image_id is not None:
            catalog = serving.catalog
            record = catalog.get_visible(query.image_id)
            if record is None:
                raise NotFound(f"no visible indexed image {query.image_id!r}", field="image_id")
            return catalog.index.reconstruct(np.array([record.internal_id]))[0], record.internal_id
        with self._stage("decode"):
            # Off the event loop: decoding a large photo takes milliseconds (PIL releases the GIL).
            pixels = await asyncio.to_thread(imaging.prepare, query.image_bytes or b"", query.crop, self.limits)
        with self._stage("embed"):
            vector = (await serving.encoder.embed(pixels[None], timeout_s))[0]
        return vector, None

    async def search(self, query: Query, timeout_s: float | None = None) -> Answer:
        k = self._validate(query)
        serving = self.live.serving
        vector, exclude = await self.embed_query(serving, query, timeout_s)
        hits = self.rank(serving.catalog, vector, k, exclude, query.include_duplicates)
        if query.min_score is not None:
            kept = [h for h in hits if h.score >= query.min_score]
            self.metrics.filtered_results.labels("min_score").inc(len(hits) - len(kept))
            hits = kept
        return Answer(hits, serving.encoder.model_version, serving.catalog.index.version, uuid.uuid4().hex)

    def rank(self, catalog: Catalog, vector: np.ndarray, k: int, exclude: int | None,
             include_duplicates: bool) -> list[Hit]:
        eligible = catalog.eligibility.eligible_count(exclude)
        # Ask for more than k so duplicates can be collapsed and backfilled; go back for more if needed.
        fetch = min(eligible, k if include_duplicates else 2 * k + 10)
        while True:
            with self._stage("search"):
                selector, _keepalive = catalog.eligibility.selector(exclude)
                scores, ids = catalog.index.search(vector[None], max(fetch, 1), selector)
            candidates = [Candidate(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)
                          if i >= 0 and catalog.eligibility.is_eligible(int(i)) and i != exclude]
            if include_duplicates:
                kept = candidates[:k]
                break
            with self._stage("filter"):
                kept, removed = collapse_duplicates(
                    candidates, k, content_hash=lambda i: catalog.hashes[i],
                    vectors=catalog.index.reconstruct, threshold=self.settings.duplicate_threshold)
            if len(kept) == k or fetch >= eligible:
                break
            fetch = min(eligible, fetch * 4)
        if not include_duplicates and removed:
            self.metrics.filtered_results.labels("duplicate").inc(removed)
        return [Hit(catalog.image_ids[c.internal_id], c.score) for c in kept]

    async def search_many(self, queries: list[Query], timeout_s: float | None) -> list[Answer]:
        """Queries run concurrently so Triton's dynamic batcher can merge their embeddings.

        The first failing query fails the call, its position named in the message.
        """
        answers = await asyncio.gather(*(self.search(q, timeout_s) for q in queries), return_exceptions=True)
        for n, answer in enumerate(answers):
            if isinstance(answer, ServiceError):
                answer.message = f"requests[{n}]: {answer.message}"
                raise answer
            if isinstance(answer, BaseException):
                raise answer
        return answers  # type: ignore[return-value]
