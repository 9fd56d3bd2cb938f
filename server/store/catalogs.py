"""Which store serves which encoder version: one catalog per version, and the durable pointer to the live one.

`<data_dir>/ACTIVE_MODEL` names the served version (`encoder/2`); writing it is the cut-over point of a model
switch. `open_store` is the one place that picks the backend from the settings.
"""

from __future__ import annotations

from pathlib import Path

from server.core.config import Settings
from server.core.durable import write_atomic
from server.store.base import VectorStore

ACTIVE_MODEL_FILE = "ACTIVE_MODEL"


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


def open_store(settings: Settings, model_version: str, dim: int) -> VectorStore:
    """The store holding `model_version`'s embeddings (`dim` floats each), created empty if new."""
    from server.store.faiss import FaissVectorStore

    return FaissVectorStore(catalog_dir(settings.data_dir, model_version), dim, model_version)
