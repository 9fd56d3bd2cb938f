"""The Milvus store's INT64 keys against a REAL Milvus server with memory-mapped segments (tests/fixtures/milvus.py;
devkit/milvus_server.py maps them by default, as deploy/milvus does).

Milvus 2.3.5 with mmap on found 1 of 100 sealed rows looked up by a VARCHAR primary key (the store's key before):
a hide barrier or `get` that misses rows is a privacy hole. The rows are now keyed by a 59-bit hash of the image
ID; these tests check every lookup on sealed, indexed, memory-mapped rows, keys that collide, and that collections
created with the VARCHAR key before keep working."""

from __future__ import annotations

import numpy as np
from pymilvus import DataType, MilvusClient

from server.store.base import EmbeddedImage, Visibility
from server.store.milvus import MilvusIndexConfig, MilvusVectorStore, client, collection_name
from tests.integration.test_milvus_store import unit_vectors

PUBLIC, PRIVATE = Visibility.PUBLIC, Visibility.PRIVATE


def embedded(ids: list[str], vectors: np.ndarray, public: np.ndarray, regions: np.ndarray | None = None
             ) -> list[EmbeddedImage]:
    return [EmbeddedImage(image_id, f"owner-{image_id}", PUBLIC if public[i] else PRIVATE, f"hash-{image_id}",
                          vectors[i], None if regions is None else regions[i]) for i, image_id in enumerate(ids)]


def scanned(store: MilvusVectorStore, limit: int) -> list[str]:
    """Every image ID a whole catalog scan reads, page by page."""
    page, seen = store.scan(None, limit), []
    while True:
        seen += [r.image_id for r in page.records]
        if page.done:
            return seen
        page = store.scan(page.cursor, limit)


def test_every_lookup_finds_sealed_memory_mapped_rows(make_store, milvus_server) -> None:
    """On the served kind (IVF_SQ8; HNSW's sealed rows: test_milvus_store's second-gateway test). Also: the vectors
    a search returns are the stored floats, not the SQ8 codes (the exact re-rank and the duplicate collapse use
    them)."""
    n = 3000
    vectors, regions = unit_vectors(n, 32, seed=1), unit_vectors(2 * n, 32, seed=2).reshape(n, 2, 32)
    ids = [f"img-{i}" for i in range(n)]
    public = np.arange(n) % 3 != 0
    store = make_store(regions=2, index=MilvusIndexConfig.for_corpus(n, 32))
    assert store.add(embedded(ids, vectors, public, regions)) == [True] * n
    store.wait_indexed(timeout_s=300)  # sealed and indexed: what Milvus memory-maps
    mapped, _ = milvus_server.mapped_bytes()
    assert mapped >= n * 32 * 4, f"the server maps {mapped} bytes of segment files: is mmap on?"
    asked = ids[::30]
    assert store.known(asked) == set(asked)
    assert store.rows_per_image(asked) == dict.fromkeys(asked, 3)
    for image_id in asked[:20]:
        record = store.get(image_id)
        assert record is not None and record.image_id == image_id and record.owner_id == f"owner-{image_id}"
    for i in range(1, n, 300):
        top = store.search(vectors[i], 3)[0]
        assert top.image_id == ids[i] and np.allclose(top.vector, vectors[i], atol=1e-6)
        assert store.search(regions[i, 1], 1)[0].image_id == ids[i]
    hide = [ids[i] for i in range(1, n, 30) if public[i]]
    assert store.set_visibility(hide, PRIVATE).count == len(hide)  # the barrier reads every row of them
    for i in range(1, n, 30):
        for probe in (vectors[i], regions[i, 0]):
            assert ids[i] not in {c.image_id for c in store.search(probe, 10)}
    assert sorted(scanned(store, 1000)) == sorted(ids)


def test_colliding_keys_are_probed_and_each_image_keeps_its_rows(make_store, monkeypatch) -> None:
    """59-bit hashes collide (~9,000 times among 10^11 IDs): a weak hash (the ID's length) makes every ID here
    collide, within one add and with stored rows. No image may overwrite another's rows."""
    monkeypatch.setattr(client, "image_key", lambda image_id, probe=0: (len(image_id) + probe) % (1 << 59))
    vectors, regions = unit_vectors(6, 32, seed=3), unit_vectors(12, 32, seed=4).reshape(6, 2, 32)
    ids = ["a1", "b1", "c1", "d1", "e1", "f1"]
    store = make_store(regions=2)
    assert store.add(embedded(ids[:3], vectors[:3], np.ones(3, bool), regions[:3])) == [True] * 3
    assert store.add(embedded(ids[3:], vectors[3:], np.ones(3, bool), regions[3:])) == [True] * 3
    assert store.add(embedded(["b1"], vectors[1:2], np.ones(1, bool))) == [False]
    assert store.rows_per_image(ids) == dict.fromkeys(ids, 3)
    for i, image_id in enumerate(ids):
        assert store.search(vectors[i], 1)[0].image_id == image_id
        assert store.search(regions[i, 0], 1)[0].image_id == image_id
        assert store.get(image_id).owner_id == f"owner-{image_id}"
    assert store.set_visibility(["c1"], PRIVATE).count == 1 and store.delete(["e1"]).count == 1
    for i, image_id in enumerate(ids):
        found = {c.image_id for c in store.search(regions[i, 1], 6)}
        assert (image_id in found) == (image_id not in ("c1", "e1"))
    assert store.stats().counts.public == 4


def legacy_collection(uri: str, prefix: str, dim: int) -> None:
    """The layout of collections created before the INT64 keys: the image ID (VARCHAR) as primary key."""
    c = MilvusClient(uri=uri)
    schema = c.create_schema(auto_id=False, enable_dynamic_field=False, description="encoder/1")
    schema.add_field("image_id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("visibility", DataType.INT8)
    schema.add_field("deleted", DataType.BOOL)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=128)
    schema.add_field("owner_id", DataType.VARCHAR, max_length=512)
    schema.add_field("added_at", DataType.DOUBLE)
    schema.add_field("seq", DataType.INT64)
    index = c.prepare_index_params()
    index.add_index("embedding", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
    c.create_collection(collection_name("encoder/1", prefix), schema=schema, index_params=index,
                        consistency_level="Session")
    c.close()


def test_a_collection_keyed_by_image_id_keeps_working(milvus_server, prefix) -> None:
    legacy_collection(milvus_server.uri, prefix, 32)
    vectors = unit_vectors(1500, 32, seed=5)
    ids = [f"old-{i}" for i in range(1500)]
    store = MilvusVectorStore(milvus_server.uri, "encoder/1", 32, collection_prefix=prefix)
    try:
        assert store.add(embedded(ids, vectors, np.ones(1500, bool))) == [True] * 1500
        assert store.search(vectors[7], 1)[0].image_id == "old-7"
        assert store.set_visibility(["old-7"], PRIVATE).count == 1 and store.delete(["old-8"]).count == 1
        assert {"old-7", "old-8"}.isdisjoint(c.image_id for c in store.search(vectors[7], 20))
        assert sorted(scanned(store, 600)) == sorted(ids)
    finally:
        store.drop()
        store.close()
