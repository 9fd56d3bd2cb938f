"""The storage seam: what the query and indexing paths need from a store of image embeddings.

A `VectorStore` holds the embeddings of ONE encoder version plus each image's record (owner, visibility,
deleted flag, content hash); its `Catalog` side reads it whole, page by page (model switch, migration). Backends:
`store/faiss` (embedded, the default) and `store/milvus` (a cluster); each backend's store object is both.
Every backend passes the same contract suite (tests/integration/test_store_contract.py).

Security properties every backend keeps:
- `search` returns only eligible images (public and not deleted), filtered INSIDE the ANN search, and returns
  exactly min(k, eligible images) results;
- a visibility change or delete is honoured by every search that starts after the call returns;
- `add` is durable when it returns (an acknowledged image survives a crash of the process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np


class Visibility(IntEnum):
    PUBLIC = 1
    PRIVATE = 2


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    internal_id: int  # position in the store's add order (FAISS id); backends without positions use -1
    owner_id: str
    visibility: Visibility
    deleted: bool
    content_hash: str
    model_version: str
    added_at: float

    @property
    def eligible(self) -> bool:
        """May this image appear in search results?"""
        return self.visibility == Visibility.PUBLIC and not self.deleted


@dataclass(frozen=True)
class EmbeddedImage:
    image_id: str
    owner_id: str
    visibility: Visibility
    content_hash: str
    vector: np.ndarray  # float32 [dim], unit norm
    regions: np.ndarray | None = None  # float32 [R, dim]: embeddings of REGION_BOXES (a store may not keep them)


@dataclass(frozen=True)
class Candidate:
    """One search result before duplicate collapse: its vector and hash let the query layer collapse copies."""

    image_id: str
    score: float
    content_hash: str
    vector: np.ndarray


@dataclass(frozen=True)
class Counts:
    public: int = 0
    private: int = 0
    deleted: int = 0

    @property
    def live(self) -> int:
        return self.public + self.private


@dataclass(frozen=True)
class Changed:
    """Outcome of a visibility change or delete: how many records changed, which IDs are unknown or deleted."""

    count: int
    not_found: list[str]


@dataclass(frozen=True)
class StoreStats:
    """What GetStats and the gauges show of a store; kept incrementally (cheap enough to read every second)."""

    counts: Counts
    rows: int  # images ever added, deleted ones included
    index_type: str
    index_params: dict[str, str]


class VectorStore(Protocol):
    """The serving seam: what the query and indexing paths need of the store of one encoder version."""

    model_version: str  # `encoder/N`: the only version whose embeddings this store accepts
    dim: int

    @property
    def regions_per_image(self) -> int:
        """Region vectors kept per image (0: whole images only): the indexing path embeds them when > 0, and
        `search` scores an image by its best match, the whole image or a region."""
        ...

    @property
    def version(self) -> int:
        """Grows with every change the store serves (answers carry it); persisted: never goes back, not even
        across restarts."""
        ...

    def add(self, images: Sequence[EmbeddedImage]) -> list[bool]:
        """Durably add; per item True (added) or False (the ID exists already, in any state)."""
        ...

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[Candidate]:
        """Top-k eligible images by inner product, best first, never `exclude`; min(k, eligible) results."""
        ...

    def get(self, image_id: str) -> ImageRecord | None: ...

    def vector(self, image_id: str) -> np.ndarray | None:
        """The stored embedding of an image (None if unknown)."""
        ...

    def set_visibility(self, image_ids: Sequence[str], visibility: Visibility) -> Changed: ...

    def delete(self, image_ids: Sequence[str]) -> Changed: ...

    def stats(self) -> StoreStats: ...

    def healthy(self) -> bool:
        """Can the store serve right now? (A server backend checks its connection; health follows it.)"""
        ...

    def snapshot(self, only_if_due: bool = False) -> None:
        """Persist what makes the next start fast (the FAISS index file; a flush on a server); `only_if_due`:
        only when enough changed since the last one (after every AddImages stream)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Page:
    """One page of a catalog scan: records in the backend's add order, and where the next page starts."""

    records: list[ImageRecord]
    cursor: object  # opaque; pass it to the next `scan` (also after `done`: it then returns what was added since)
    done: bool  # caught up: the store held no more records when this page was read


@dataclass(frozen=True)
class StoredRow:
    """A record with its stored embeddings, for copying a catalog into another store (migration)."""

    record: ImageRecord
    vector: np.ndarray
    regions: np.ndarray | None


class Catalog(Protocol):
    """Reading a whole store, page by page: for re-embedding (a model switch) and migration, never for serving.

    A scan with a cursor costs one page per call (no rescan); continuing from the cursor of a `done` page
    returns what was added since, so a reader can catch up under a write lock."""

    model_version: str

    def scan(self, cursor: object = None, limit: int = 1000) -> Page: ...

    def known(self, image_ids: Sequence[str]) -> set[str]:
        """Which of `image_ids` the store holds, in any state (a resumed copy skips them)."""
        ...

    def rows(self, records: Sequence[ImageRecord]) -> list[StoredRow]:
        """The stored embeddings of scanned records."""
        ...

    def advance_version(self, at_least: int) -> None:
        """Make `version` at least `at_least` (a new catalog taking over from an older one at a model switch)."""
        ...


class Store(VectorStore, Catalog, Protocol):
    """What a backend's store object is: served through `VectorStore`, read whole through `Catalog`."""
