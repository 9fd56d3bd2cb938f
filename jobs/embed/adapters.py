"""Everything the embedding job takes from `server/`, in ONE place.

The job runs the gateway's own code (the same `prepare`, the same Triton client, the same catalog), so its
embeddings equal the gateway's. When the `server/` refactor lands (issue 12), repoint these imports only:

    server.imaging            -> server.embedding.imaging      (prepare, Limits)
    server.encoder            -> server.embedding.contract     (INPUT_SIZE, EMBEDDING_DIM) / .encoder (EncoderClient)
    server.config             -> server.core.config            (REPO_ROOT, ENCODER_MODEL_NAME)
    server.ingest.Catalog     -> server.store.faiss.FaissVectorStore (then `open_vector_store` returns it as is)
    server.blobs              -> server.store.blobs
    server.durable            -> server.store.durable (or wherever it lands)
    server.errors             -> server.core.errors            (InvalidInput)
    server.metadata           -> server.store.faiss / store.base (ImageRecord, the catalog's SQLite records)
    server.ingest             -> server.store.faiss             (catalog_dir, content_hash, read_active_version)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from server.blobs import BlobStore
from server.config import ENCODER_MODEL_NAME, REPO_ROOT
from server.durable import replace_durably, write_atomic
from server.encoder import EMBEDDING_DIM, INPUT_SIZE, EncoderClient
from server.errors import InvalidInput
from server.imaging import Limits, prepare
from server.ingest import Catalog, catalog_dir, content_hash, read_active_version
from server.ingest import NewImage as CatalogNewImage
from server.metadata import ImageRecord, SqliteMetadataStore
from server.metadata import Visibility as CatalogVisibility
from server.store.base import Changed, NewImage, VectorStore, Visibility

__all__ = [
    "EMBEDDING_DIM", "ENCODER_MODEL_NAME", "INPUT_SIZE", "REPO_ROOT", "BlobStore", "EncoderClient", "InvalidInput",
    "Limits", "NewImage", "VectorStore", "Visibility", "content_hash", "iter_catalog_records", "open_vector_store",
    "prepare", "read_active_version", "replace_durably", "write_atomic",
]


class _CatalogStore:
    """Today's FAISS `Catalog` seen through the part of the `VectorStore` protocol the job (add, close) and its
    tests (delete, get, vector) use."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.model_version, self.dim = catalog.model_version, catalog.dim

    def add(self, images: Sequence[NewImage]) -> list[bool]:
        """Durable on return; False for IDs the catalog holds already (idempotent reruns)."""
        return self._catalog.add([CatalogNewImage(i.image_id, i.owner_id, CatalogVisibility(int(i.visibility)),
                                                  i.content_hash, i.vector) for i in images], self.model_version)

    def delete(self, image_ids: Sequence[str]) -> Changed:
        count, not_found = self._catalog.delete(list(image_ids))
        return Changed(count, not_found)

    def get(self, image_id: str) -> ImageRecord | None:
        return self._catalog.store.get(image_id)

    def vector(self, image_id: str) -> np.ndarray | None:
        record = self._catalog.store.get(image_id)
        return None if record is None else self._catalog.vector_log.read(record.internal_id, record.internal_id + 1)[0]

    def added_total(self) -> int:
        return len(self._catalog.image_ids)

    def snapshot(self) -> None:
        self._catalog.snapshot()

    def close(self) -> None:
        self._catalog.close()


def open_vector_store(data_dir: Path, model_version: str) -> VectorStore:
    """The FAISS catalog of `model_version` (`encoder/N`) under `data_dir` (created if new)."""
    catalog = Catalog(catalog_dir(data_dir, model_version), EMBEDDING_DIM, model_version)
    return _CatalogStore(catalog)  # type: ignore[return-value]  # the job calls add/close only


def iter_catalog_records(data_dir: Path, model_version: str) -> Iterator[ImageRecord]:
    """Every record of a catalog (deleted ones included), read from its metadata only (no index load)."""
    path = catalog_dir(data_dir, model_version) / "metadata.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"no catalog of {model_version} under {data_dir} ({path})")
    store = SqliteMetadataStore(path)
    try:
        yield from store.iter_all()
    finally:
        store.close()
