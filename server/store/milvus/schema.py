"""The collections of one encoder version: created on first use (schema, index, tombstones) and loaded; waiting for
the index to be served (tests, benchmarks); dropping them (a retired version)."""

from __future__ import annotations

import time

from pymilvus import DataType

from server.store.milvus.client import Connection, _client, _guard
from server.store.milvus.config import MilvusIndexConfig

REGIONS_NOTE = "region rows per image: "


def ensure_collections(conn: Connection, model_version: str, dim: int, index_config: MilvusIndexConfig,
                       consistency: str, regions: int = 0) -> int:
    """Create what is missing, refuse a collection of another version, load them; returns the region rows per image
    the version's collections keep. Like a FAISS catalog, a collection keeps the choice it was created with (its
    images have no region rows to add later): the region collection is created before the images' collection, so a
    crash between the two leaves a version that is created again with its regions."""
    c, call = conn.client, conn.call
    if not call(c.has_collection, conn.collection):
        if regions and not call(c.has_collection, conn.regions):
            _create_region_collection(conn, model_version, dim, index_config, consistency, regions)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False, description=model_version)
        schema.add_field("key", DataType.INT64, is_primary=True)
        schema.add_field("image_id", DataType.VARCHAR, max_length=512)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("visibility", DataType.INT8)
        schema.add_field("deleted", DataType.BOOL)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=128)
        schema.add_field("owner_id", DataType.VARCHAR, max_length=512)
        schema.add_field("added_at", DataType.DOUBLE)
        schema.add_field("seq", DataType.INT64)
        index = c.prepare_index_params()
        spec = index_config.index_params(dim)
        index.add_index("embedding", index_type=spec["index_type"], metric_type="IP", params=spec["params"])
        call(c.create_collection, conn.collection, schema=schema, index_params=index,
             consistency_level=consistency)
    else:
        found = str(call(c.describe_collection, conn.collection).get("description", ""))
        if found and found != model_version:
            raise ValueError(f"collection {conn.collection} holds {found}, not {model_version}")
    conn.key_field = _primary_key(conn, conn.collection)
    if not call(c.has_collection, conn.tombstones):
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        if not conn.legacy_keys:
            schema.add_field("key", DataType.INT64, is_primary=True)
        schema.add_field("image_id", DataType.VARCHAR, is_primary=conn.legacy_keys, max_length=512)
        schema.add_field("marker", DataType.FLOAT_VECTOR, dim=2)  # Milvus 2.3 needs a vector field
        index = c.prepare_index_params()
        index.add_index("marker", index_type="FLAT", metric_type="L2", params={})
        call(c.create_collection, conn.tombstones, schema=schema, index_params=index, consistency_level="Strong")
    kept = 0
    if call(c.has_collection, conn.regions):
        kept = int(str(call(c.describe_collection, conn.regions).get("description", "")).rsplit(REGIONS_NOTE, 1)[1])
        conn.region_key_field = _primary_key(conn, conn.regions)
        conn.loaded.append(conn.regions)
    for name in conn.loaded:
        call(c.load_collection, name)
    return kept


def _primary_key(conn: Connection, collection: str) -> str:
    """The name of `collection`'s primary key field (`key`; `image_id` / `row_id` in collections of before)."""
    fields = conn.call(conn.client.describe_collection, collection)["fields"]
    return next(f["name"] for f in fields if f.get("is_primary"))


def _create_region_collection(conn: Connection, model_version: str, dim: int, index_config: MilvusIndexConfig,
                              consistency: str, regions: int) -> None:
    """Region rows (`key`: `Connection.region_key`): only what search and the privacy filter read, and what a
    rewrite (a hide: Milvus 2.3 has no partial update) must carry."""
    c = conn.client
    schema = c.create_schema(auto_id=False, enable_dynamic_field=False,
                             description=f"{model_version}; {REGIONS_NOTE}{regions}")
    schema.add_field("key", DataType.INT64, is_primary=True)
    schema.add_field("image_id", DataType.VARCHAR, max_length=512)
    schema.add_field("region", DataType.INT8)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("visibility", DataType.INT8)
    schema.add_field("deleted", DataType.BOOL)
    index = c.prepare_index_params()
    spec = index_config.index_params(dim)
    index.add_index("embedding", index_type=spec["index_type"], metric_type="IP", params=spec["params"])
    conn.call(c.create_collection, conn.regions, schema=schema, index_params=index, consistency_level=consistency)


def wait_indexed(conn: Connection, rows: int, timeout_s: float, collection: str | None = None) -> None:
    """Wait until every sealed row is indexed and the query node serves the indexed segments."""
    name = collection or conn.collection
    deadline = time.monotonic() + timeout_s
    c, call = conn.client, conn.call
    while time.monotonic() < deadline:
        info = call(c.describe_index, name, "embedding")
        built = int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
            info.get("total_rows", 0))
        # the query node swaps a sealed segment for its indexed version asynchronously ("handoff")
        segments = call(c._get_connection().get_query_segment_info, name)
        served = sum(int(seg.num_rows) for seg in segments if seg.index_name or int(seg.num_rows) < 1024)
        if built and served >= rows:
            return
        time.sleep(1.0)
    raise TimeoutError(f"index of {name} not served in {timeout_s} s: {info}")


def drop_collections(uri: str, *names: str) -> None:
    client = _client(uri, 10.0)
    try:
        for name in names:
            if _guard(uri, client.has_collection, name):
                _guard(uri, client.drop_collection, name)
    finally:
        client.close()
