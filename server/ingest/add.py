"""The AddImages path: an image is acknowledged only once its original, embedding and record are durable,
and it is searchable as soon as it is acknowledged.

embed (the served embedder: whole image + regions when the store keeps them) -> blob store (originals, for
re-embedding) -> store.add (vector log fsync, records, index) -> per-item outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from server.core.errors import InvalidInput, ServiceError
from server.core.ids import check_image_id
from server.core.metrics import GatewayMetrics
from server.embedding.embedder import Embedded, Embedder, ImageInput
from server.embedding.imaging import Limits, decode_cost
from server.runtime.admission import MIN_COST_PIXELS, Admission
from server.runtime.callers import ANONYMOUS, Principal
from server.runtime.serving import Live
from server.store.base import Changed, EmbeddedImage, Visibility
from server.store.blobs import BlobStore
from server.store.signatures import SignatureStore


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


OwnerCheck = Callable[[str], bool]  # may the caller change images of this owner?


def _anyone(owner_id: str) -> bool:
    return True


class Indexer:
    def __init__(self, live: Live, blobs: BlobStore, limits: Limits, metrics: GatewayMetrics,
                 admission: Admission | None = None, signatures: SignatureStore | None = None) -> None:
        self.live, self.blobs, self.limits, self.metrics = live, blobs, limits, metrics
        self.signatures = signatures  # where the images' pixel signatures go (copy verification)
        # Chunks being decoded and embedded at once; waits as long as the stream's deadline allows.
        self.admission = admission or Admission("ingest", 2, 4 * limits.max_pixels, None)

    async def add(self, uploads: Sequence[Upload], timeout_s: float | None = None, caller: Principal = ANONYMOUS
                  ) -> list[Outcome]:
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
        cost = sum(decode_cost(uploads[n].data) or MIN_COST_PIXELS for n in todo)
        async with self.admission.admit(cost, timeout_s, caller=caller):
            try:
                vectors = await self._embed(serving.embedder, [uploads[n] for n in todo], timeout_s,
                                            serving.store.regions_per_image > 0)
                embedded = {}
                for n, vector in zip(todo, vectors, strict=True):
                    if isinstance(vector, InvalidInput):
                        outcomes[n] = Outcome(Status.REJECTED, vector)
                    else:
                        embedded[n] = vector
                if embedded:
                    outcomes.update(await self._persist(uploads, embedded, timeout_s))
            except ServiceError as exc:  # the encoder or the store failed: nothing of this chunk was acknowledged
                outcomes.update({n: Outcome(Status.REJECTED, exc) for n in todo if n not in outcomes})
        for outcome in outcomes.values():
            self.metrics.images_added.labels(outcome.status.value).inc()
        return [outcomes[n] for n in range(len(uploads))]

    async def _embed(self, embedder: Embedder, uploads: Sequence[Upload], timeout_s: float | None, regions: bool
                     ) -> list[Embedded | InvalidInput]:
        """Per upload its embeddings (with its regions if `regions`) or why it was rejected."""
        start = time.perf_counter()
        outcomes = await embedder.embed([ImageInput(u.data) for u in uploads], regions, timeout_s)
        self.metrics.stage_latency.labels("embed").observe(time.perf_counter() - start)
        return outcomes

    async def _persist(self, uploads: Sequence[Upload], embedded: dict[int, Embedded], timeout_s: float | None
                       ) -> dict[int, Outcome]:
        order = list(embedded)
        hashes = [content_hash(uploads[n].data) for n in order]
        serving = self.live.serving
        start = time.perf_counter()
        # Originals first: a new model version re-embeds from them (server/ingest/reindex.py). Then the pixel
        # signatures, before the image can be found, so its first search can verify it.
        await asyncio.to_thread(self.blobs.put_many, [(h, uploads[n].data) for h, n in zip(hashes, order,
                                                                                            strict=True)])
        if self.signatures is not None:
            await asyncio.to_thread(self.signatures.write, [
                (h, embedded[n].signature) for h, n in zip(hashes, order, strict=True)
                if embedded[n].signature is not None])
        async with self.live.writes:
            vectors = [embedded[n] for n in order]
            if self.live.serving is not serving:  # a model cut-over happened meanwhile: embed for the new one
                serving = self.live.serving
                vectors = await self._embed(serving.embedder, [uploads[n] for n in order], timeout_s,
                                            serving.store.regions_per_image > 0)
            images = [EmbeddedImage(uploads[n].image_id, uploads[n].owner_id, uploads[n].visibility, h, v.vector,
                                    v.regions)
                      for n, h, v in zip(order, hashes, vectors, strict=True)]  # type: ignore[union-attr]
            added = await asyncio.to_thread(serving.store.add, images)
        self.metrics.stage_latency.labels("persist").observe(time.perf_counter() - start)
        return {n: Outcome(Status.ADDED if ok else Status.ALREADY_EXISTS) for n, ok in zip(order, added, strict=True)}

    async def delete(self, image_ids: Sequence[str], owns: OwnerCheck = _anyone) -> Changed:
        """Deleted images never come back; honoured by every search that starts after this returns."""
        async with self.live.writes:
            return await asyncio.to_thread(self._change, image_ids, owns, self.live.serving.store.delete)

    async def set_visibility(self, image_ids: Sequence[str], visibility: Visibility,
                             owns: OwnerCheck = _anyone) -> Changed:
        async with self.live.writes:
            return await asyncio.to_thread(self._change, image_ids, owns,
                                           lambda mine: self.live.serving.store.set_visibility(mine, visibility))

    def _change(self, image_ids: Sequence[str], owns: OwnerCheck, change: Callable[[list[str]], Changed]) -> Changed:
        """Apply `change` to the caller's own live images. Another owner's image (public or private), a deleted one
        and one that never existed all come back as not found: the answer is the same for each."""
        store = self.live.serving.store
        mine, others = [], []
        for image_id in image_ids:
            record = store.get(image_id)
            ok = record is not None and not record.deleted and owns(record.owner_id)
            (mine if ok else others).append(image_id)
        changed = change(mine) if mine else Changed(0, [])
        return Changed(changed.count, [*changed.not_found, *others])

    async def finish(self) -> int:
        """After a stream of adds: snapshot the index if enough was added; returns the store's version."""
        store = self.live.serving.store
        await asyncio.to_thread(store.snapshot, True)
        return store.version
