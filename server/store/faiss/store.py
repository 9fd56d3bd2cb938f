"""The embedded `VectorStore`: FAISS index + SQLite records + eligibility bitmap of one encoder version.

On disk (one directory per encoder version, `<data_dir>/catalogs/encoder-N`):
  vectors.f16      append-only float16 log of embeddings, row i = internal id i (fsync'd before the records commit)
  metadata.sqlite  image records (WAL, synchronous=FULL); a row exists only once its vector is durable
  index.faiss      last index snapshot (atomic write + rename); rows after its ntotal are replayed on start
  regions.*        the same for the region rows of a catalog created with regions (regions.py)

Recovery: rows of the vector log beyond the record count were never acknowledged and are truncated. Writes are
serialized by one lock; searches are lock-free.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from server.store.base import (
    Candidate,
    Changed,
    Counts,
    EmbeddedImage,
    ImageRecord,
    Page,
    StoredRow,
    StoreStats,
    Visibility,
)
from server.store.faiss.eligibility import Eligibility
from server.store.faiss.index import VectorIndex
from server.store.faiss.params import FLAT_THRESHOLD
from server.store.faiss.regions import RegionRows
from server.store.faiss.vector_log import convert_logs, open_log
from server.store.metadata import SqliteMetadataStore, now

log = logging.getLogger("store.faiss")
SNAPSHOT_EVERY = 1000  # adds between index snapshots (replay after a crash stays short)


class FaissVectorStore:
    """`VectorStore` and `Catalog` of one catalog directory. Embeddings of another encoder version are refused:
    vectors of two models are not comparable. The catalog's add order is the internal ids' order."""

    def __init__(self, data_dir: Path, dim: int, model_version: str, flat_threshold: int = FLAT_THRESHOLD,
                 rebuild_in_background: bool = True, regions: int = 0) -> None:
        """`regions`: region vectors per image for a NEW catalog (0: whole images only); an existing catalog keeps
        what it was created with."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir, self.dim, self.model_version = data_dir, dim, model_version
        self.snapshot_path = data_dir / "index.faiss"
        self._records = SqliteMetadataStore(data_dir / "metadata.sqlite")
        self._regions: RegionRows | None = None
        per_image = RegionRows.created_with(data_dir)
        if per_image is None and regions and not self._records.get_many([0]):  # a new (empty) catalog
            per_image = RegionRows.create(data_dir, regions)
        if per_image:
            self._regions = RegionRows(data_dir, dim, per_image, flat_threshold, rebuild_in_background)
        self._vector_log = open_log(data_dir, "vectors", dim)
        self._index = VectorIndex(dim, flat_threshold, rebuild_in_background, stored=self._vector_log.view,
                                  on_rebuilt=self._rebuilt, read_rows=self._vector_log.read_rows)
        self._eligibility = Eligibility()
        self._counts = {Visibility.PUBLIC: 0, Visibility.PRIVATE: 0, "deleted": 0}
        self._write_lock, self._adds_since_snapshot = threading.Lock(), 0
        self._recover()
        convert_logs([self._vector_log, *(g.log for g in [self._regions] if g)], self._write_lock,  # earlier float32
                     rebuild_in_background)

    def _rebuilt(self) -> None:
        """A rebuild or a conversion: a new version; the next due snapshot persists it (under the index's lock)."""
        self._records.bump_version()
        self._adds_since_snapshot = SNAPSHOT_EVERY

    @property
    def regions_per_image(self) -> int:
        """Region vectors this catalog keeps per image (0: whole images only)."""
        return 0 if self._regions is None else self._regions.per_image

    @property
    def version(self) -> int:
        """Grows with every add, visibility change, delete and index rebuild; persisted, so never goes back."""
        return self._records.version

    def advance_version(self, at_least: int) -> None:
        self._records.advance_version(at_least)

    def _recover(self) -> None:
        self._records.refuse_nested_owners()
        committed = self._records.count()
        if self._vector_log.rows() > committed:
            log.warning("dropping %d unacknowledged vector rows", self._vector_log.rows() - committed)
            self._vector_log.truncate(committed)
        if self._vector_log.rows() < committed:
            raise RuntimeError(f"vector log has {self._vector_log.rows()} rows but metadata has {committed}")
        if self.snapshot_path.exists():
            self._index.load(self.snapshot_path)
            if self._index.ntotal > committed:  # cannot happen: snapshots only hold acknowledged rows
                raise RuntimeError("index snapshot is ahead of the metadata")
        replay = committed - self._index.ntotal
        if replay:
            log.info("replaying %d vectors after the snapshot", replay)
            self._index.add(self._index.ntotal, self._vector_log.read(self._index.ntotal, committed))
        if self._regions is not None:
            self._regions.recover(committed)
        self._track(self._records.iter_all())
        log.info("store ready: %d images (%s)", committed, self._index.describe()[0])

    def _track(self, records: Iterable[ImageRecord]) -> None:
        """Make added records searchable and counted (ids are positions, so they arrive in order)."""
        for r in records:
            self._set_eligible(r.internal_id, r.eligible)
            self._counts["deleted" if r.deleted else r.visibility] += 1

    def _set_eligible(self, internal_id: int, eligible: bool) -> None:
        self._eligibility.set(internal_id, eligible)
        if self._regions is not None:
            self._regions.set(internal_id, eligible)

    def add(self, images: Sequence[EmbeddedImage], model_version: str | None = None) -> list[bool]:
        if model_version is not None and model_version != self.model_version:
            raise ValueError(f"embeddings of {model_version} cannot join the store of {self.model_version}")
        with self._write_lock:
            added_flags, fresh, seen = [], [], set()
            for image in images:
                is_new = image.image_id not in seen and self._records.get(image.image_id) is None
                seen.add(image.image_id)
                added_flags.append(is_new)
                if is_new:
                    fresh.append(image)
            if not fresh:
                return added_flags
            first = self._index.ntotal
            vectors = np.stack([i.vector for i in fresh]).astype(np.float32)
            region_rows = None if self._regions is None else self._regions.rows_for(vectors, [i.regions for i in fresh])
            self._vector_log.append(vectors)
            if self._regions is not None:
                self._regions.append_log(region_rows)
            records = [ImageRecord(i.image_id, first + n, i.owner_id, i.visibility, False, i.content_hash,
                                   self.model_version, now()) for n, i in enumerate(fresh)]
            try:
                self._records.insert(records)
            except BaseException:
                self._vector_log.truncate(first)
                if self._regions is not None:
                    self._regions.truncate_log(first)
                raise
            # Durable from here on; now make it searchable.
            self._index.add(first, vectors)
            if self._regions is not None:
                self._regions.add(first, region_rows)
            self._track(records)
            self._adds_since_snapshot += len(records)
            return added_flags

    def set_visibility(self, image_ids: Sequence[str], visibility: Visibility) -> Changed:
        with self._write_lock:
            changed = self._records.set_visibility(list(image_ids), visibility)
            for r in changed:  # live images whose visibility flipped
                self._set_eligible(r.internal_id, r.eligible)
                self._counts[r.visibility] += 1
                self._counts[Visibility.PRIVATE if r.visibility == Visibility.PUBLIC else Visibility.PUBLIC] -= 1
            return Changed(len(changed), self._unknown(image_ids))

    def delete(self, image_ids: Sequence[str]) -> Changed:
        with self._write_lock:
            unknown = self._unknown(image_ids)
            deleted = self._records.mark_deleted(list(image_ids))
            for r in deleted:
                self._set_eligible(r.internal_id, False)
                self._counts[r.visibility] -= 1
                self._counts["deleted"] += 1
            return Changed(len(deleted), unknown)

    def _unknown(self, image_ids: Sequence[str]) -> list[str]:
        return [i for i in image_ids if (r := self._records.get(i)) is None or r.deleted]

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[Candidate]:
        skip = record.internal_id if exclude is not None and (record := self._records.get(exclude)) else None
        selector, _keepalive, eligible = self._eligibility.snapshot(skip)
        if eligible == 0:
            return []
        k = min(k, eligible)
        scores, ids = self._index.search(vector[None], k, selector)
        best = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and i != skip}
        if self._regions is not None:  # an image scores its best match: the whole image or one of its regions
            floor = float(scores[0, k - 1]) if ids.shape[1] == k and ids[0, k - 1] >= 0 else None
            for i, s in self._regions.search(vector, k, skip, floor).items():
                if s > best.get(i, -np.inf):
                    best[i] = s
        # Re-check eligibility after the search: a hide acknowledged while it ran must still be honoured.
        found = sorted(((i, s) for i, s in best.items() if self._eligibility.is_eligible(i)),
                       key=lambda hit: -hit[1])[:k]
        vectors = self._index.reconstruct(np.array([i for i, _ in found], dtype=np.int64))
        names = self._records.names([i for i, _ in found])  # not kept in RAM (~200 B per image as str)
        return [Candidate(names[i][0], s, names[i][1], v) for (i, s), v in zip(found, vectors, strict=True)]

    def get(self, image_id: str) -> ImageRecord | None:
        return self._records.get(image_id)

    def vector(self, image_id: str) -> np.ndarray | None:
        record = self._records.get(image_id)
        return None if record is None else self._index.reconstruct(np.array([record.internal_id]))[0]

    def stats(self) -> StoreStats:
        c = self._counts
        kind, params = self._index.describe()
        params = {**params, "regions_per_image": str(self.regions_per_image)}
        if self._regions is not None:
            params |= self._regions.describe()
        return StoreStats(Counts(public=c[Visibility.PUBLIC], private=c[Visibility.PRIVATE], deleted=c["deleted"]),
                          self._index.ntotal, kind, params)

    def healthy(self) -> bool:
        return True  # in-process: serving whenever the gateway is

    def snapshot(self, only_if_due: bool = False) -> None:
        with self._write_lock:
            if only_if_due and self._adds_since_snapshot < SNAPSHOT_EVERY:
                return
            self._adds_since_snapshot = 0
        self._index.save(self.snapshot_path)
        if self._regions is not None:
            self._regions.snapshot()

    def scan(self, cursor: object = None, limit: int = 1000) -> Page:
        """Records at internal ids [cursor, cursor + limit): add order; later adds come after the last page."""
        start = cursor if isinstance(cursor, int) else 0
        stop = min(start + limit, self._index.ntotal)
        found = self._records.get_many(range(start, stop))
        records = [found[i] for i in range(start, stop)]
        return Page(records, stop if records else start, done=stop >= self._index.ntotal)

    def known(self, image_ids: Sequence[str]) -> set[str]:
        return self._records.known(image_ids)

    def rows(self, records: Sequence[ImageRecord]) -> list[StoredRow]:
        ids = np.array([r.internal_id for r in records], dtype=np.int64)
        vectors = self._index.reconstruct(ids)
        regions = [None] * len(records) if self._regions is None else self._regions.rows_of(ids)
        return [StoredRow(r, v, g) for r, v, g in zip(records, vectors, regions, strict=True)]

    def close(self) -> None:
        with self._write_lock:  # (an add in flight finishes; a log conversion stops)
            self._vector_log.close()
            if self._regions is not None:
                self._regions.close()
            self._records.close()
