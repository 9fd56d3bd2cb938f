"""Serving another encoder version: re-embed every image into a catalog beside the live one, then cut over.

The gateway serves one `Serving` pair (a catalog and the encoder version that produced its vectors) and
replaces it as a single reference, so a request that read it once never mixes two models. A switch copies
the live catalog row by row (internal ids stay aligned, so the new catalog is a prefix of the live one and a
failed switch resumes where it stopped), re-embedding each original from the blob store. Searches, adds,
deletes and visibility changes keep going to the live catalog meanwhile. The cut-over holds `writes` (the
lock every catalog write takes): it copies the last rows, applies the live visibility and deletions to the
new catalog, records the new version durably (ACTIVE_MODEL) and swaps the pair.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server import imaging
from server.blobs import BlobStore
from server.encoder import EncoderClient
from server.ingest import Catalog, NewImage, catalog_dir, write_active_version
from server.metadata import Visibility

log = logging.getLogger("reindex")
CHUNK = 32
RETIRE_AFTER_S = 30.0  # the old catalog stays open this long for searches that started before the cut-over


@dataclass(frozen=True)
class Serving:
    catalog: Catalog
    encoder: EncoderClient


class Live:
    """What the gateway serves now, the lock all catalog writes hold, and the model switch in progress."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.writes = asyncio.Lock()
        self.switch: ModelSwitch | None = None
        self.last_switch_error = ""


class ModelSwitch:
    def __init__(self, live: Live, blobs: BlobStore, data_dir: Path, encoder: EncoderClient,
                 limits: imaging.Limits, on_cutover: Callable[[Serving], None] = lambda _: None) -> None:
        self.live, self.blobs, self.data_dir, self.encoder = live, blobs, data_dir, encoder
        self.limits, self.on_cutover = limits, on_cutover
        self.done = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        return self.encoder.model_version

    @property
    def total(self) -> int:
        return self.live.serving.catalog.index.ntotal

    def start(self) -> None:
        self.live.switch = self
        self.live.last_switch_error = ""
        self.task = asyncio.create_task(self._run(), name=f"switch-to-{self.target}")

    async def _run(self) -> None:
        new = await asyncio.to_thread(Catalog, catalog_dir(self.data_dir, self.target), self.live.serving.catalog.dim,
                                      self.target)
        self.done = new.index.ntotal
        try:
            log.info("switching to %s: %d of %d images already re-embedded", self.target, new.index.ntotal,
                     self.total)
            while await self._copy_chunk(new):
                pass
            async with self.live.writes:
                while await self._copy_chunk(new):
                    pass
                old = self.live.serving
                await asyncio.to_thread(_copy_states, old.catalog, new)
                await asyncio.to_thread(new.snapshot)
                await asyncio.to_thread(write_active_version, self.data_dir, self.target)
                self.live.serving = Serving(new, self.encoder)
            log.info("cut over to %s (%d images)", self.target, new.index.ntotal)
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
        await asyncio.to_thread(old.catalog.close)
        await old.encoder.close()

    async def _copy_chunk(self, new: Catalog) -> bool:
        """Re-embed the next rows of the live catalog into `new`; False once it has caught up."""
        old = self.live.serving.catalog
        start = new.index.ntotal
        stop = min(start + CHUNK, old.index.ntotal)
        if start >= stop:
            return False
        records = await asyncio.to_thread(old.store.get_many, range(start, stop))
        rows = [records[i] for i in range(start, stop)]
        pixels = await asyncio.gather(*(
            asyncio.to_thread(lambda h=r.content_hash: imaging.prepare(self.blobs.get(h), None, self.limits))
            for r in rows))
        vectors = await self.encoder.embed(np.stack(pixels))
        images = [NewImage(r.image_id, r.owner_id, r.visibility, r.content_hash, v)
                  for r, v in zip(rows, vectors, strict=True)]
        await asyncio.to_thread(new.add, images, self.target)
        self.done = new.index.ntotal
        return True


def _copy_states(old: Catalog, new: Catalog) -> None:
    """Visibility and deletions as they are now in the live catalog (they changed during the re-embedding)."""
    by_visibility: dict[Visibility, list[str]] = {Visibility.PUBLIC: [], Visibility.PRIVATE: []}
    deleted = []
    for record in old.store.iter_all():
        by_visibility[record.visibility].append(record.image_id)
        if record.deleted:
            deleted.append(record.image_id)
    for visibility, ids in by_visibility.items():
        if ids:
            new.set_visibility(ids, visibility)
    if deleted:
        new.delete(deleted)
