"""Serving another encoder version: re-embed every image into a catalog beside the live one, then cut over.

The gateway serves one `Serving` pair (a store and the encoder version that produced its vectors) and
replaces it as a single reference (server/runtime/serving.py). A switch streams the live store's catalog page by
page (a cursor: no rescan), re-embedding each original from the blob store; what the new store holds already is
skipped, so a failed switch resumes where it stopped. Searches, adds, deletes and visibility changes keep going to
the live store meanwhile. The cut-over holds `writes` (the lock every store write takes): it copies what was
added since, applies the live visibility and deletions to the new store, records the new version durably
(ACTIVE_MODEL) and hands the pair to `Live.cut_over`.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

from server.core.config import Settings
from server.core.errors import FailedPrecondition, InvalidInput, NotFound
from server.embedding.contract import EMBED_CHUNK
from server.embedding.embedder import Embedder, ImageInput, triton_embedder
from server.runtime.serving import Live, SwitchProgress, serving
from server.store.base import EmbeddedImage, ImageRecord, Store, Visibility
from server.store.blobs import BlobStore
from server.store.catalogs import open_store, write_active_version
from server.store.signatures import SignatureStore

log = logging.getLogger("reindex")
SCAN_PAGE = 256  # records read from the live store per catalog page


class ModelSwitch:
    def __init__(self, live: Live, blobs: BlobStore, settings: Settings, embedder: Embedder) -> None:
        self.live, self.blobs, self.settings, self.embedder = live, blobs, settings, embedder
        self.progress = SwitchProgress(embedder.model_version)

    @property
    def target(self) -> str:
        return self.embedder.model_version

    def start(self) -> None:
        self.live.switch = self.progress
        self.live.last_switch_error = ""
        self.progress.task = asyncio.create_task(self._run(), name=f"switch-to-{self.target}")

    async def _run(self) -> None:
        new = await asyncio.to_thread(open_store, self.settings, self.target, self.live.serving.store.dim)
        try:
            log.info("switching to %s: %d of %d images already re-embedded", self.target, new.stats().rows,
                     self.live.serving.store.stats().rows)
            cursor = await self._catch_up(new, None)
            async with self.live.writes:
                await self._catch_up(new, cursor)  # what was added meanwhile
                old = self.live.serving
                await asyncio.to_thread(_copy_states, old.store, new)
                await asyncio.to_thread(new.advance_version, old.store.version + 1)  # answers' version only grows
                await asyncio.to_thread(new.snapshot)
                await asyncio.to_thread(write_active_version, self.settings, self.target)
                self.live.cut_over(serving(new, self.embedder, self.settings))
            log.info("cut over to %s (%d images)", self.target, new.stats().rows)
        except Exception as exc:
            self.live.last_switch_error = f"{type(exc).__name__}: {exc}"
            log.exception("switch to %s failed; a new SwitchModel call resumes it", self.target)
            await asyncio.to_thread(new.close)
            await self.embedder.close()
        finally:
            self.live.switch = None

    async def _catch_up(self, new: Store, cursor: object) -> object:
        """Re-embed the live store's pages from `cursor` until it is caught up; returns where to continue."""
        while True:
            page = await asyncio.to_thread(self.live.serving.store.scan, cursor, SCAN_PAGE)
            await self._copy(new, page.records)
            self.progress.done += len(page.records)
            cursor = page.cursor
            if page.done:
                return cursor

    async def _copy(self, new: Store, records: list[ImageRecord]) -> None:
        """Re-embed the records `new` lacks (deleted ones too: their IDs must stay taken) and add them."""
        known = await asyncio.to_thread(new.known, [r.image_id for r in records])
        todo = [r for r in records if r.image_id not in known]
        for start in range(0, len(todo), EMBED_CHUNK):
            rows = todo[start:start + EMBED_CHUNK]
            originals = await asyncio.to_thread(lambda rows=rows: [self.blobs.get(r.content_hash) for r in rows])
            outcomes = await self.embedder.embed([ImageInput(o) for o in originals], new.regions_per_image > 0)
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, InvalidInput):  # accepted once, so only a changed limit can reject it now
                    raise RuntimeError(f"cannot re-embed {row.image_id}: {outcome}")
            # Images indexed before pixel signatures existed get theirs here (the same for every version).
            await asyncio.to_thread(SignatureStore(self.blobs).write, [
                (r.content_hash, e.signature) for r, e in zip(rows, outcomes, strict=True)
                if e.signature is not None])  # type: ignore[union-attr]
            await asyncio.to_thread(new.add, [
                EmbeddedImage(r.image_id, r.owner_id, r.visibility, r.content_hash, e.vector, e.regions)
                for r, e in zip(rows, outcomes, strict=True)])  # type: ignore[union-attr]


def _copy_states(old: Store, new: Store) -> None:
    """Visibility and deletions as they are now in the live store (they changed during the re-embedding)."""
    by_visibility: dict[Visibility, list[str]] = {Visibility.PUBLIC: [], Visibility.PRIVATE: []}
    deleted, cursor, done = [], None, False
    while not done:
        page = old.scan(cursor, SCAN_PAGE)
        cursor, done = page.cursor, page.done
        for record in page.records:
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

    def __init__(self, live: Live, blobs: BlobStore, settings: Settings) -> None:
        self.live, self.blobs, self.settings = live, blobs, settings

    async def request(self, version: str) -> SwitchState:
        if not version.isdigit():
            raise InvalidInput(f"must be a version number such as \"2\", got {version!r}", field="model_version")
        active = self.live.serving.embedder
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
        ModelSwitch(self.live, self.blobs, self.settings, triton_embedder(self.settings, version)).start()
        return SwitchState.STARTED
