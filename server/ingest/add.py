"""The AddImages path: an image is acknowledged only once its original, embedding and record are durable,
and it is searchable as soon as it is acknowledged.

decode (parallel threads) -> embed (one encoder call per chunk) -> blob store (originals, for re-embedding)
-> store.add (vector log fsync, records, index) -> per-item outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from server.core.errors import InvalidInput, ServiceError
from server.core.ids import check_image_id
from server.core.metrics import GatewayMetrics
from server.embedding.imaging import Limits, header_pixels
from server.embedding.pipeline import ImageInput, embed_pixels, prepare_many
from server.runtime.admission import MIN_COST_PIXELS, Admission
from server.runtime.serving import Live
from server.store.base import NewImage, Visibility
from server.store.blobs import BlobStore


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Upload:
    image_id: str
    data: bytes
    owner_id: str
    visibility: Visibility


class Status(Enum):
    ADDED = "added"
    ALREADY_EXISTS = "already_exists"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Outcome:
    status: Status
    error: ServiceError | None = None


class Indexer:
    def __init__(self, live: Live, blobs: BlobStore, limits: Limits, metrics: GatewayMetrics,
                 admission: Admission | None = None) -> None:
        self.live, self.blobs, self.limits, self.metrics = live, blobs, limits, metrics
        # Chunks being decoded and embedded at once; waits as long as the stream's deadline allows.
        self.admission = admission or Admission("ingest", 2, 4 * limits.max_pixels, None)

    async def add(self, uploads: Sequence[Upload], timeout_s: float | None = None) -> list[Outcome]:
        """One outcome per upload, in order. Send at most EMBED_CHUNK uploads per call (one encoder call)."""
        outcomes: dict[int, Outcome] = {}
        serving = self.live.serving
        todo = []
        for n, upload in enumerate(uploads):
            try:
                check_image_id(upload.image_id)
            except InvalidInput as exc:
                outcomes[n] = Outcome(Status.REJECTED, exc)
                continue
            if serving.store.get(upload.image_id) is not None:
                outcomes[n] = Outcome(Status.ALREADY_EXISTS)  # idempotent: skip the decode and embed
            else:
                todo.append(n)
        cost = sum(header_pixels(uploads[n].data) or MIN_COST_PIXELS for n in todo)
        async with self.admission.admit(cost, timeout_s):
            return await self._decode_and_persist(uploads, todo, outcomes, timeout_s)

    async def _decode_and_persist(self, uploads: Sequence[Upload], todo: list[int], outcomes: dict[int, Outcome],
                                  timeout_s: float | None) -> list[Outcome]:
        start = time.perf_counter()
        prepared = await prepare_many([ImageInput(uploads[n].data) for n in todo], self.limits)
        self.metrics.stage_latency.labels("decode").observe(time.perf_counter() - start)
        pixels: dict[int, np.ndarray] = {}
        for n, outcome in zip(todo, prepared, strict=True):
            if isinstance(outcome, InvalidInput):
                outcomes[n] = Outcome(Status.REJECTED, outcome)
            else:
                pixels[n] = outcome
        if pixels:
            try:
                outcomes.update(await self._persist(uploads, pixels, timeout_s))
            except ServiceError as exc:
                outcomes.update({n: Outcome(Status.REJECTED, exc) for n in pixels})
        for outcome in outcomes.values():
            self.metrics.images_added.labels(outcome.status.value).inc()
        return [outcomes[n] for n in range(len(uploads))]

    async def _persist(self, uploads: Sequence[Upload], pixels: dict[int, np.ndarray], timeout_s: float | None
                       ) -> dict[int, Outcome]:
        order = list(pixels)
        batch = [pixels[n] for n in order]
        hashes = [content_hash(uploads[n].data) for n in order]
        serving = self.live.serving
        start = time.perf_counter()
        vectors = await embed_pixels(serving.encoder, batch, timeout_s)
        self.metrics.stage_latency.labels("embed").observe(time.perf_counter() - start)
        start = time.perf_counter()
        # Originals first: a new model version re-embeds from them (server/ingest/reindex.py).
        await asyncio.to_thread(self.blobs.put_many, [(h, uploads[n].data) for h, n in zip(hashes, order,
                                                                                            strict=True)])
        async with self.live.writes:
            if self.live.serving is not serving:  # a model cut-over happened meanwhile: embed for the new one
                serving = self.live.serving
                vectors = await embed_pixels(serving.encoder, batch, timeout_s)
            images = [NewImage(uploads[n].image_id, uploads[n].owner_id, uploads[n].visibility, h, vectors[j])
                      for j, (n, h) in enumerate(zip(order, hashes, strict=True))]
            added = await asyncio.to_thread(serving.store.add, images)
        self.metrics.stage_latency.labels("persist").observe(time.perf_counter() - start)
        return {n: Outcome(Status.ADDED if ok else Status.ALREADY_EXISTS) for n, ok in zip(order, added, strict=True)}

    async def finish(self) -> int:
        """After a stream of adds: snapshot the index if enough was added; returns the store's version."""
        store = self.live.serving.store
        await asyncio.to_thread(store.snapshot_if_due)
        return store.version
