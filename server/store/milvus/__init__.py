"""The Milvus backend of `VectorStore`: one collection per encoder version, an alias naming the live one."""

from server.store.milvus.client import (
    LIVE_ALIAS,
    StoreUnavailable,
    collection_name,
    live_model_version,
    point_live_alias,
)
from server.store.milvus.config import MilvusIndexConfig
from server.store.milvus.store import MilvusVectorStore

__all__ = [
    "LIVE_ALIAS",
    "MilvusIndexConfig",
    "MilvusVectorStore",
    "StoreUnavailable",
    "collection_name",
    "live_model_version",
    "point_live_alias",
]
