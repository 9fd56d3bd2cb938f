"""The Milvus backend of `VectorStore`: one collection per encoder version, an alias naming the live one."""

from server.store.milvus.store import (
    LIVE_ALIAS,
    MilvusIndexConfig,
    MilvusVectorStore,
    StoreUnavailable,
    collection_name,
    live_model_version,
    point_live_alias,
)

__all__ = [
    "LIVE_ALIAS",
    "MilvusIndexConfig",
    "MilvusVectorStore",
    "StoreUnavailable",
    "collection_name",
    "live_model_version",
    "point_live_alias",
]
