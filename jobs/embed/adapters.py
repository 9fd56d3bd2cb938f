"""Everything the embedding job takes from `server/`, in ONE place (import-linter holds the rest of `jobs` to it).

The job runs the gateway's own code (the same `prepare`, the same Triton client, the same stores), so its
embeddings equal the gateway's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from server.core.config import REPO_ROOT, Settings
from server.core.durable import replace_durably, write_atomic
from server.core.errors import InvalidInput
from server.core.regions import REGION_BOXES
from server.embedding.contract import EMBEDDING_DIM, INPUT_SIZE
from server.embedding.contract import MODEL_NAME as ENCODER_MODEL_NAME
from server.embedding.encoder import EncoderClient
from server.embedding.imaging import Limits, prepare, prepare_views, region_views
from server.embedding.onnx_encoder import OnnxEncoder
from server.embedding.signature import SIGNATURE_BYTES, pixel_signatures
from server.ingest.add import content_hash
from server.store import catalogs
from server.store.base import Changed, EmbeddedImage, ImageRecord, VectorStore, Visibility
from server.store.blobs import BlobStore
from server.store.catalogs import catalog_dir
from server.store.metadata import SqliteMetadataStore
from server.store.signatures import SignatureStore

__all__ = [
    "EMBEDDING_DIM",
    "ENCODER_MODEL_NAME",
    "INPUT_SIZE",
    "REGION_BOXES",
    "REPO_ROOT",
    "SIGNATURE_BYTES",
    "BlobStore",
    "Changed",
    "EmbeddedImage",
    "EncoderClient",
    "InvalidInput",
    "Limits",
    "OnnxEncoder",
    "SignatureStore",
    "VectorStore",
    "Visibility",
    "content_hash",
    "iter_catalog_records",
    "open_vector_store",
    "pixel_signatures",
    "prepare",
    "prepare_views",
    "read_active_version",
    "region_views",
    "replace_durably",
    "signature_store",
    "write_atomic",
]


def read_active_version(data_dir: Path) -> str | None:
    """The version the gateway over `data_dir` serves (the job refuses to load into that store)."""
    return catalogs.read_active_version(Settings(data_dir=data_dir))


def open_vector_store(data_dir: Path, model_version: str, regions: bool = True) -> VectorStore:
    """The store of `model_version` (`encoder/N`) under `data_dir`; created if new, with region rows when the job
    embeds regions. An existing catalog keeps what it was created with: images a `--no-regions` job adds to a
    catalog with regions get their whole-image vector in every region row (found as in a whole-image index)."""
    return catalogs.open_store(Settings(data_dir=data_dir, index_regions=regions), model_version, EMBEDDING_DIM)


def signature_store(data_dir: Path) -> SignatureStore:
    """Where the gateway serving `data_dir` reads the pixel signatures (beside its originals)."""
    return SignatureStore(BlobStore(Settings(data_dir=data_dir).blob_url or data_dir / "blobs"))


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
