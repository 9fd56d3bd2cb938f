"""The embedded FAISS backend of `VectorStore` (the default: no server to run)."""

from server.store.faiss.store import FaissVectorStore

__all__ = ["FaissVectorStore"]
