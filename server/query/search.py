"""The Search path: the served embedder -> store search (eligible images only) -> duplicate collapse -> results."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace

import numpy as np

from server.core.config import Settings
from server.core.errors import InvalidInput, NotFound, ServiceError
from server.core.ids import check_image_id
from server.core.metrics import GatewayMetrics
from server.embedding import imaging
from server.model_versions.feedback_calibration import CorpusRelevance
from server.query.ranking import Hit, Ranker
from server.query.verification import Verifier
from server.runtime.admission import MIN_COST_PIXELS, Admission
from server.runtime.callers import ANONYMOUS, Principal
from server.runtime.serving import Live, Serving
from server.store.base import ImageRecord, Store


@dataclass(frozen=True)
class Query:
    image_bytes: bytes | None = None
    image_id: str | None = None
    crop: imaging.CropBox | None = None
    k: int = 0
    min_score: float | None = None
    min_relevance: float | None = None
    include_duplicates: bool = False


@dataclass(frozen=True)
class Answer:
    hits: list[Hit]
    model_version: str
    index_version: int
    request_id: str


def not_visible(image_id: str) -> NotFound:
    return NotFound(f"no visible indexed image {image_id!r}", field="image_id")


def visible(store: Store, image_id: str) -> ImageRecord:
    """Search's rule for naming an image: only an indexed, public, not deleted one; anything else is NOT_FOUND,
    with the same message whether it exists or not."""
    record = store.get(image_id)
    if record is None or not record.eligible:
        raise not_visible(image_id)
    return record


class Searcher:
    """Every query reads `live.serving` once: its vector and its index come from the same model version."""

    def __init__(self, live: Live, settings: Settings, metrics: GatewayMetrics,
                 admission: Admission | None = None, relevance: CorpusRelevance | None = None,
                 verifier: Verifier | None = None) -> None:
        self.live, self.settings, self.metrics = live, settings, metrics
        self.relevance = relevance or CorpusRelevance()  # the shipped curve, or the corpus's refit of it
        self.admission = admission or Admission(
            "search", settings.admission_max_in_flight, settings.admission_max_pixels,
            settings.admission_latency_budget_ms / 1000 if settings.admission_latency_budget_ms > 0 else None,
            target_service_s=settings.admission_target_service_ms / 1000 if settings.admission_target_service_ms > 0
            else None, share=settings.admission_share, on_shed=lambda caller: metrics.shed("search", caller))
        self.limits = imaging.Limits(settings.max_image_bytes, settings.max_image_pixels)
        self.verifier = verifier if settings.copy_verification else None
        self.ranker = Ranker(settings.duplicate_threshold, metrics, self.verifier)

    def _validate(self, query: Query) -> int:
        k = query.k or self.settings.default_k
        if not 1 <= k <= self.settings.max_k:
            raise InvalidInput(f"must be between 1 and {self.settings.max_k} (0 means {self.settings.default_k}), "
                               f"got {query.k}", field="k")
        if (query.image_bytes is None) == (query.image_id is None):
            raise InvalidInput("set exactly one of image_bytes or image_id", field="query")
        if query.image_id is not None:
            check_image_id(query.image_id)
        if query.crop is not None and query.image_id is not None:
            raise InvalidInput("a crop applies to image_bytes only, not to image_id queries", field="crop")
        if query.min_score is not None and not -1.0 <= query.min_score <= 1.0:
            raise InvalidInput(f"must be within [-1, 1], got {query.min_score}", field="min_score")
        if query.min_relevance is not None and not 0.0 <= query.min_relevance <= 1.0:
            raise InvalidInput(f"must be a probability within [0, 1], got {query.min_relevance}",
                               field="min_relevance")
        return k

    async def embed_query(self, serving: Serving, query: Query, timeout_s: float | None
                          ) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """The query vector, pixel signature and shorter side in pixels: the stored vector and signature for a
        search by ID (no signature if none was stored; no side), else the served embedder's for the (cropped)
        image, whose side comes from its header."""
        if query.image_id is not None:
            record = visible(serving.store, query.image_id)
            vector = serving.store.vector(query.image_id)
            if vector is None:  # deleted since
                raise not_visible(query.image_id)
            own = self.verifier.read([record.content_hash]) if self.verifier is not None else {}
            return vector, own.get(record.content_hash), None
        with self.ranker.stage("embed"):
            embedded = await serving.embedder.embed_query(query.image_bytes or b"", query.crop, timeout_s)
        return embedded.vector, embedded.signature, imaging.shorter_side(query.image_bytes or b"", query.crop)

    def _cost(self, query: Query) -> int:
        """Checks the image's header against the limits (bytes, JPEG scans, pixels), so what would be refused never
        waits for admission, and returns its decode cost (pixels, more for a JPEG of many scans): what admission
        counts (a search by ID decodes nothing)."""
        if query.image_bytes is None:
            return MIN_COST_PIXELS
        imaging.check_header(query.image_bytes, self.limits)
        return imaging.decode_cost(query.image_bytes) or MIN_COST_PIXELS

    async def search(self, query: Query, timeout_s: float | None = None, caller: Principal = ANONYMOUS) -> Answer:
        k = self._validate(query)
        async with self.admission.admit(self._cost(query), timeout_s, caller=caller):
            return await self._search(query, k, timeout_s)

    async def _search(self, query: Query, k: int, timeout_s: float | None) -> Answer:
        serving = self.live.serving
        vector, signature, side = await self.embed_query(serving, query, timeout_s)
        # In a worker thread: FAISS releases the GIL, so concurrent searches use every core while the event
        # loop keeps serving gRPC.
        hits = await asyncio.to_thread(self.ranker.rank, serving.store, vector, k, query.image_id,
                                       query.include_duplicates,
                                       serving.duplicate_threshold(self.settings.duplicate_threshold), signature, side)
        calibration = self.relevance.calibration(serving.embedder.model_version, serving.calibration)
        if calibration is not None:
            relevance = calibration.relevance(np.array([h.score for h in hits], dtype=np.float64))
            hits = [replace(h, relevance=float(r)) for h, r in zip(hits, relevance, strict=True)]
            if query.min_relevance is not None:
                kept = [h for h in hits if h.relevance >= query.min_relevance]
                self.metrics.filtered_results.labels("min_relevance").inc(len(hits) - len(kept))
                hits = kept
        if query.min_score is not None:
            kept = [h for h in hits if h.score >= query.min_score]
            self.metrics.filtered_results.labels("min_score").inc(len(hits) - len(kept))
            hits = kept
        return Answer(hits, serving.embedder.model_version, serving.store.version, uuid.uuid4().hex)

    async def search_many(self, queries: list[Query], timeout_s: float | None, caller: Principal = ANONYMOUS
                          ) -> list[Answer]:
        """Queries run concurrently so Triton's dynamic batcher can merge their embeddings. The batch is admitted
        as one unit costing the decoded pixels of all its images, checked against the batch budget first.

        The first failing query fails the call, its position named in the message.
        """
        ks, pixels = [], 0
        for n, query in enumerate(queries):
            try:
                ks.append(self._validate(query))
                pixels += self._cost(query)
            except ServiceError as exc:
                raise exc.prefixed(f"requests[{n}]") from None
        if pixels > self.settings.max_batch_pixels:
            raise InvalidInput(f"the images decode to {pixels} pixels in all, over the "
                               f"{self.settings.max_batch_pixels}-pixel batch limit", field="requests")
        async with self.admission.admit(pixels, timeout_s, units=len(queries), caller=caller):
            answers = await asyncio.gather(*(self._search(q, k, timeout_s) for q, k in zip(queries, ks, strict=True)),
                                           return_exceptions=True)
        for n, answer in enumerate(answers):
            if isinstance(answer, ServiceError):
                raise answer.prefixed(f"requests[{n}]")
            if isinstance(answer, BaseException):
                raise answer
        return answers  # type: ignore[return-value]
