"""Serving another encoder version: re-embed every image into a catalog beside the live one, then cut over.

The gateway serves one `Serving` pair (a store and the encoder version that produced its vectors) and
replaces it as a single reference (server/runtime/serving.py). A switch copies the live store in add order
(positions stay aligned, so the new store is a prefix of the live one and a failed switch resumes where it
stopped), re-embedding each original from the blob store. Searches, adds, deletes and visibility changes keep
going to the live store meanwhile. The cut-over holds `writes` (the lock every store write takes): it copies
the last rows, applies the live visibility and deletions to the new store, records the new version durably
(ACTIVE_MODEL) and swaps the pair.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum

from server.core.config import Settings
from server.core.errors import FailedPrecondition, InvalidInput, NotFound
from server.embedding.contract import EMBED_CHUNK
from server.embedding.encoder import EncoderClient
from server.embedding.imaging import Limits
from server.embedding.pipeline import ImageInput, embed_images, embed_with_regions, whole_and_regions
from server.runtime.serving import Live, Serving, SwitchProgress, serving
from server.store.base import NewImage, VectorStore, Visibility
from server.store.blobs import BlobStore
from server.store.catalogs import open_store, write_active_version

log = logging.getLogger("reindex")
RETIRE_AFTER_S = 30.0  # the old store stays open this long for searches that started before the cut-over


class ModelSwitch:
    def __init__(self, live: Live, blobs: BlobStore, settings: Settings, encoder: EncoderClient,
                 limits: Limits, on_cutover: Callable[[Serving], None] = lambda _: None) -> None:
        self.live, self.blobs, self.settings, self.encoder = live, blobs, settings, encoder
        self.limits, self.on_cutover = limits, on_cutover
        self.progress = SwitchProgress(encoder.model_version)

    @property
    def target(self) -> str:
        return self.encoder.model_version

    def start(self) -> None:
        self.live.switch = self.progress
        self.live.last_switch_error = ""
        self.progress.task = asyncio.create_task(self._run(), name=f"switch-to-{self.target}")

    async def _run(self) -> None:
        new = await asyncio.to_thread(open_store, self.settings, self.target, self.live.serving.store.dim)
        self._report(new)
        try:
            log.info("switching to %s: %d of %d images already re-embedded", self.target, new.added_total(),
                     self.live.serving.store.added_total())
            while await self._copy_chunk(new):
                pass
            async with self.live.writes:
                while await self._copy_chunk(new):
                    pass
                old = self.live.serving
                await asyncio.to_thread(_copy_states, old.store, new)
                await asyncio.to_thread(new.advance_version, old.store.version + 1)  # answers' version only grows
                await asyncio.to_thread(new.snapshot)
                await asyncio.to_thread(write_active_version, self.settings, self.target)
                self.live.serving = serving(new, self.encoder, self.settings)
            log.info("cut over to %s (%d images)", self.target, new.added_total())
        except Exception as exc:
            self.live.last_switch_error = f"{type(exc).__name__}: {exc}"
            log.exception("switch to %s failed; a new SwitchModel call resumes it", self.target)
            await asyncio.to_thread(new.close)
            await self.encoder.close()
            return
        finally:
            self.live.switch = None
        self.on_cutover(self.live.serving)
        await asyncio.sleep(RETIRE_AFTER_S)
        await asyncio.to_thread(old.store.close)
        await old.encoder.close()

    def _report(self, new: VectorStore) -> None:
        self.progress.done = new.added_total()

    async def _copy_chunk(self, new: VectorStore) -> bool:
        """Re-embed the next rows of the live store into `new`; False once it has caught up."""
        old = self.live.serving.store
        start = new.added_total()
        stop = min(start + EMBED_CHUNK, old.added_total())
        if start >= stop:
            return False
        rows = await asyncio.to_thread(old.records, start, stop)
        originals = await asyncio.to_thread(lambda: [self.blobs.get(r.content_hash) for r in rows])
        items = [ImageInput(o) for o in originals]
        vectors = await (embed_with_regions(self.encoder, items, self.limits) if new.regions_per_image else
                         embed_images(self.encoder, items, self.limits, local_decode=self.settings.decode_in_gateway))
        for row, vector in zip(rows, vectors, strict=True):
            if isinstance(vector, InvalidInput):  # accepted once, so only a changed limit can reject it now
                raise RuntimeError(f"cannot re-embed {row.image_id}: {vector}")
        images = [NewImage(r.image_id, r.owner_id, r.visibility, r.content_hash, *whole_and_regions(v))
                  for r, v in zip(rows, vectors, strict=True)]  # type: ignore[arg-type]
        await asyncio.to_thread(new.add, images)
        self._report(new)
        return True


def _copy_states(old: VectorStore, new: VectorStore) -> None:
    """Visibility and deletions as they are now in the live store (they changed during the re-embedding)."""
    by_visibility: dict[Visibility, list[str]] = {Visibility.PUBLIC: [], Visibility.PRIVATE: []}
    deleted = []
    for record in old.iter_records():
        by_visibility[record.visibility].append(record.image_id)
        if record.deleted:
            deleted.append(record.image_id)
    for visibility, ids in by_visibility.items():
        if ids:
            new.set_visibility(ids, visibility)
    if deleted:
        new.delete(deleted)


class SwitchState(Enum):
    STARTED = 1
    ALREADY_ACTIVE = 2
    ALREADY_RUNNING = 3


class ModelSwitcher:
    """Decides what a SwitchModel request does: start (or resume) a switch, or say why nothing is needed."""

    def __init__(self, live: Live, blobs: BlobStore, settings: Settings, limits: Limits) -> None:
        self.live, self.blobs, self.settings, self.limits = live, blobs, settings, limits

    async def request(self, version: str) -> SwitchState:
        if not version.isdigit():
            raise InvalidInput(f"must be a version number such as \"2\", got {version!r}", field="model_version")
        active = self.live.serving.encoder
        if version == active.version:
            return SwitchState.ALREADY_ACTIVE
        if (switch := self.live.switch) is not None:
            if switch.target != f"{self.settings.model_name}/{version}":
                raise FailedPrecondition(f"a switch to {switch.target} is running; wait for it (GetStats)",
                                         field="model_version")
            return SwitchState.ALREADY_RUNNING
        served = await active.served_versions()
        if version not in served:
            raise NotFound(f"Triton does not serve {self.settings.model_name} version {version} (served: "
                           f"{', '.join(served)}); publish it and reload the model first", field="model_version")
        encoder = EncoderClient(active.url, self.settings.model_name, version)
        ModelSwitch(self.live, self.blobs, self.settings, encoder, self.limits).start()
        return SwitchState.STARTED
