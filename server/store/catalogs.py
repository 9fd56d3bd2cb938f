"""Which store serves which encoder version: one store per version, and the durable pointer to the live one.

The backend is a setting (`index_backend`): `faiss` (embedded, the default) keeps one catalog directory per
version and names the served one in `<data_dir>/ACTIVE_MODEL`; `milvus` keeps one collection per version and
names the served one with a Milvus alias, so every gateway of a cluster reads the same pointer. Writing the
pointer is the cut-over point of a model switch. This module is the one place that picks the backend.
"""

from __future__ import annotations

from pathlib import Path

from server.core.config import Settings
from server.core.durable import write_atomic
from server.core.regions import REGION_BOXES
from server.store.base import Store

ACTIVE_MODEL_FILE = "ACTIVE_MODEL"
BACKENDS = ("faiss", "milvus")


def catalog_dir(data_dir: Path, model_version: str) -> Path:
    """Each encoder version has a catalog of its own: `<data_dir>/catalogs/encoder-2`."""
    return data_dir / "catalogs" / model_version.replace("/", "-")


def _milvus(settings: Settings) -> str:
    if not settings.milvus_uri:
        raise ValueError("index_backend milvus needs milvus_uri (e.g. http://127.0.0.1:19530)")
    return settings.milvus_uri


def read_active_version(settings: Settings) -> str | None:
    """The model version (`encoder/2`) whose store the gateways serve; None before the first start."""
    if settings.index_backend == "milvus":
        from server.store.milvus import live_model_version

        return live_model_version(_milvus(settings), alias=f"{settings.milvus_prefix}_live")
    path = settings.data_dir / ACTIVE_MODEL_FILE
    return path.read_text().strip() if path.exists() else None


def write_active_version(settings: Settings, model_version: str) -> None:
    """Atomic and durable: the cut-over point of a model switch (its store must exist already)."""
    if settings.index_backend == "milvus":
        from server.store.milvus import point_live_alias

        point_live_alias(_milvus(settings), model_version, settings.milvus_prefix, f"{settings.milvus_prefix}_live")
        return
    write_atomic(settings.data_dir / ACTIVE_MODEL_FILE, (model_version + "\n").encode())


def open_store(settings: Settings, model_version: str, dim: int) -> Store:
    """The store holding `model_version`'s embeddings (`dim` floats each), created empty if new."""
    if settings.index_backend not in BACKENDS:
        raise ValueError(f"index_backend must be one of {', '.join(BACKENDS)}, got {settings.index_backend!r}")
    if settings.index_backend == "milvus":
        from server.store.milvus import MilvusIndexConfig, MilvusVectorStore

        return MilvusVectorStore(_milvus(settings), model_version, dim,
                                 index=MilvusIndexConfig(kind=settings.milvus_index),
                                 collection_prefix=settings.milvus_prefix, timeout_s=settings.milvus_timeout_s,
                                 regions=len(REGION_BOXES) if settings.index_regions else 0)
    from server.store.faiss import FaissVectorStore

    return FaissVectorStore(catalog_dir(settings.data_dir, model_version), dim, model_version,
                            flat_threshold=settings.index_flat_threshold,
                            regions=len(REGION_BOXES) if settings.index_regions else 0)
