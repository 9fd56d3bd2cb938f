"""The catalog and the AddImages path: durable before acknowledged, searchable once acknowledged.

On disk (data_dir):
  vectors.f32      append-only log of embeddings, row i = internal id i (fsync'd before metadata commit)
  metadata.sqlite  image records (WAL, synchronous=FULL); a row exists only once its vector is durable
  index.faiss      last index snapshot (atomic write + rename); rows after its ntotal are replayed on start

Recovery: rows of vectors.f32 beyond the metadata count were never acknowledged and are truncated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.durable import write_atomic
from server.filters import Eligibility
from server.index import FLAT_THRESHOLD, VectorIndex
from server.metadata import ImageRecord, SqliteMetadataStore, Visibility, now

log = logging.getLogger("ingest")
ACTIVE_MODEL_FILE = "ACTIVE_MODEL"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class NewImage:
    image_id: str
    owner_id: str
    visibility: Visibility
    content_hash: str
    vector: np.ndarray  # float32 [dim], unit norm


class VectorLog:
    """Append-only float32 rows with fsync: the write-ahead log of embeddings."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = path, dim
        self._row_bytes = dim * 4
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the catalog's lifetime

    def rows(self) -> int:
        return os.path.getsize(self.path) // self._row_bytes

    def truncate(self, rows: int) -> None:
        self._file.flush()
        os.truncate(self.path, rows * self._row_bytes)

    def append(self, vectors: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())

    def view(self) -> np.ndarray:
        """All rows, memory-mapped (read-only)."""
        rows = self.rows()
        if rows == 0:
            return np.empty((0, self.dim), np.float32)
        return np.memmap(self.path, dtype="<f4", mode="r", shape=(rows, self.dim))

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.view()[start:stop], dtype=np.float32)

    def close(self) -> None:
        self._file.close()


def catalog_dir(data_dir: Path, model_version: str) -> Path:
    """Each encoder version has a catalog of its own: `<data_dir>/catalogs/encoder-2`."""
    return data_dir / "catalogs" / model_version.replace("/", "-")


def read_active_version(data_dir: Path) -> str | None:
    """The model version (`encoder/2`) whose catalog the gateway serves; None for a new data directory."""
    path = data_dir / ACTIVE_MODEL_FILE
    return path.read_text().strip() if path.exists() else None


def write_active_version(data_dir: Path, model_version: str) -> None:
    """Atomic and durable: the cut-over point of a model switch."""
    write_atomic(data_dir / ACTIVE_MODEL_FILE, (model_version + "\n").encode())


class Catalog:
    """Index + metadata + eligibility of one encoder version, kept in step. Writes are serialized; reads are
    lock-free. Embeddings of another version are refused: vectors of two models are not comparable."""

    def __init__(self, data_dir: Path, dim: int, model_version: str, flat_threshold: int = FLAT_THRESHOLD) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir, self.dim, self.model_version = data_dir, dim, model_version
        self.store = SqliteMetadataStore(data_dir / "metadata.sqlite")
        self.vector_log = VectorLog(data_dir / "vectors.f32", dim)
        self.index = VectorIndex(dim, flat_threshold, stored=self.vector_log.view)
        self.eligibility = Eligibility()
        self.image_ids: list[str] = []  # internal id -> external id (hot path: no DB lookups)
        self.hashes: list[str] = []  # internal id -> content hash (duplicate collapse)
        self._write_lock = threading.Lock()
        self._adds_since_snapshot = 0
        self._recover()

    @property
    def snapshot_path(self) -> Path:
        return self.data_dir / "index.faiss"

    def _recover(self) -> None:
        records = list(self.store.iter_all())
        committed = len(records)
        if self.vector_log.rows() > committed:
            log.warning("dropping %d unacknowledged vector rows", self.vector_log.rows() - committed)
            self.vector_log.truncate(committed)
        if self.vector_log.rows() < committed:
            raise RuntimeError(f"vector log has {self.vector_log.rows()} rows but metadata has {committed}")
        if self.snapshot_path.exists():
            self.index.load(self.snapshot_path)
            if self.index.ntotal > committed:  # cannot happen: snapshots only hold acknowledged rows
                raise RuntimeError("index snapshot is ahead of the metadata")
        replay = committed - self.index.ntotal
        if replay:
            log.info("replaying %d vectors after the snapshot", replay)
            self.index.add(self.index.ntotal, self.vector_log.read(self.index.ntotal, committed))
        for r in records:
            self.image_ids.append(r.image_id)
            self.hashes.append(r.content_hash)
            self.eligibility.set(r.internal_id, r.eligible)
        log.info("catalog ready: %d images (%s)", committed, self.index.describe()[0])

    def add(self, images: list[NewImage], model_version: str) -> list[bool]:
        """Durably add new images; returns per item True (added) or False (ID already known)."""
        if model_version != self.model_version:
            raise ValueError(f"embeddings of {model_version} cannot join the catalog of {self.model_version}")
        with self._write_lock:
            added_flags, fresh, seen = [], [], set()
            for image in images:
                is_new = image.image_id not in seen and self.store.get(image.image_id) is None
                seen.add(image.image_id)
                added_flags.append(is_new)
                if is_new:
                    fresh.append(image)
            if not fresh:
                return added_flags
            first = self.index.ntotal
            vectors = np.stack([i.vector for i in fresh]).astype(np.float32)
            self.vector_log.append(vectors)
            records = [ImageRecord(i.image_id, first + n, i.owner_id, i.visibility, False, i.content_hash,
                                   model_version, now()) for n, i in enumerate(fresh)]
            try:
                self.store.insert(records)
            except BaseException:
                self.vector_log.truncate(first)
                raise
            # Durable from here on; now make it searchable.
            self.index.add(first, vectors)
            for r in records:
                self.image_ids.append(r.image_id)
                self.hashes.append(r.content_hash)
                self.eligibility.set(r.internal_id, r.eligible)
            self._adds_since_snapshot += len(records)
            return added_flags

    def set_visibility(self, image_ids: list[str], visibility: Visibility) -> tuple[int, list[str]]:
        with self._write_lock:
            changed = self.store.set_visibility(image_ids, visibility)
            for r in changed:
                self.eligibility.set(r.internal_id, r.eligible)
            return len(changed), self._unknown(image_ids)

    def delete(self, image_ids: list[str]) -> tuple[int, list[str]]:
        with self._write_lock:
            unknown = self._unknown(image_ids)
            deleted = self.store.mark_deleted(image_ids)
            for r in deleted:
                self.eligibility.set(r.internal_id, False)
            return len(deleted), unknown

    def _unknown(self, image_ids: list[str]) -> list[str]:
        return [i for i in image_ids if (r := self.store.get(i)) is None or r.deleted]

    def get_visible(self, image_id: str) -> ImageRecord | None:
        """The record if the image may be shown (and so used as a query); None otherwise."""
        record = self.store.get(image_id)
        return record if record is not None and record.eligible else None

    def snapshot_if_due(self, every: int = 1000) -> bool:
        if self._adds_since_snapshot < every:
            return False
        self.snapshot()
        return True

    def snapshot(self) -> None:
        with self._write_lock:
            self._adds_since_snapshot = 0
        self.index.save(self.snapshot_path)

    def close(self) -> None:
        self.vector_log.close()
        self.store.close()
