"""Stateless gateways over one real Milvus server: what one gateway writes, every other serves at once.

Two gateway processes (own data directories, one shared blob store) over the session's Milvus server and the
session's Triton: an image added through one is found through the other; a hide or delete through one is
honoured by the other from the next search on; kill -9 of a gateway loses no acknowledged image; Milvus
stopped under load gives UNAVAILABLE with a clear message and NOT_SERVING health, and the gateway recovers
when Milvus is back, without a restart.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from pymilvus import MilvusClient

from clients.client import NewImage
from devkit.launcher import GatewayProcess
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.store.base import Visibility
from server.store.milvus.client import REGION_BITS, image_key
from tests.fixtures.gateway import start_gateway
from tests.photos import small_jpeg

pytestmark = pytest.mark.slow
PHOTOS = ["skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
          "skimage/hubble_deep_field", "skimage/retina", "skimage/ihc", "skimage/color", "desert", "altai-1080x1920",
          "2004default"]


def milvus_gateway(triton_server, milvus_uri: str, root: Path, name: str, prefix: str) -> GatewayProcess:
    return start_gateway(triton_server, root / name, index_backend="milvus", milvus_uri=milvus_uri,
                         milvus_prefix=prefix, blob_url=str(root / "shared-blobs"))


@pytest.fixture
def two_gateways(triton_server, milvus_server, tmp_path):
    prefix = f"gw_{uuid.uuid4().hex[:8]}"
    first = milvus_gateway(triton_server, milvus_server.uri, tmp_path, "a", prefix)
    second = milvus_gateway(triton_server, milvus_server.uri, tmp_path, "b", prefix)
    yield first, second
    first.stop()
    second.stop()


def eventually(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ids(response) -> list[str]:
    return [r.image_id for r in response.results]


def test_written_through_one_gateway_served_by_the_other(two_gateways):
    first, second = two_gateways
    photos = PHOTOS[:6]
    with first.client() as a, second.client() as b:
        added = a.add_images(NewImage(p, small_jpeg(p, 256)) for p in photos)
        assert all(r.status == r.ADDED for r in added.results)
        # Searches read at Session consistency: the writer reads its own writes at once, another gateway within
        # a time tick or so (adds are not barriered; hides and deletes are, below).
        assert eventually(lambda: ids(b.search(small_jpeg(photos[2], 200), k=3))[:1] == [photos[2]])
        assert photos[1] in ids(b.similar(photos[0], k=5))  # by ID: the vector lives in Milvus, not in a gateway
        assert b.stats().model_version == a.stats().model_version == "encoder/1"

        a.set_visibility([photos[2]], private=True)  # hidden through the first ...
        assert photos[2] not in ids(b.search(small_jpeg(photos[2], 200), k=6))  # ... gone through the second at once
        b.delete([photos[3]])
        assert photos[3] not in ids(a.search(small_jpeg(photos[3], 200), k=6))
        again = b.add_images([NewImage(photos[3], small_jpeg(photos[3], 256))])
        assert again.results[0].status == again.results[0].ALREADY_EXISTS  # deleted stays deleted


def test_kill_9_of_a_gateway_loses_no_acknowledged_image(two_gateways):
    first, second = two_gateways
    photos = PHOTOS[6:12]
    with first.client() as a:
        acked = [r.image_id for r in a.add_images(NewImage(p, small_jpeg(p, 256)) for p in photos).results
                 if r.status == r.ADDED]
    first.kill9()
    assert acked == photos
    with second.client() as b:
        for photo in acked:
            assert eventually(lambda p=photo: ids(b.search(small_jpeg(p, 200), k=1)) == [p])


def test_milvus_down_gives_unavailable_and_not_serving_then_recovers(triton_server, private_milvus, tmp_path):
    milvus = private_milvus()
    gateway = milvus_gateway(triton_server, milvus.uri, tmp_path, "g", "outage")
    photo = PHOTOS[0]
    try:
        with gateway.client(timeout_s=60) as client:
            client.add_images([NewImage(photo, small_jpeg(photo, 256))])
            assert ids(client.search(small_jpeg(photo, 200), k=1)) == [photo]
            milvus.kill()
            with pytest.raises(grpc.RpcError) as down:
                client.search(small_jpeg(photo, 200), k=1)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Milvus" in down.value.details() and "unavailable" in down.value.details()
            with pytest.raises(grpc.RpcError) as refused:  # nothing acknowledged while the store is away
                client.add_images([NewImage(PHOTOS[1], small_jpeg(PHOTOS[1], 256))])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            gateway.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING, timeout_s=30)
            milvus.start()
            gateway.wait_serving(timeout_s=120)  # the same gateway process, not restarted

            def found() -> bool:  # right after the restart a search may still time out: UNAVAILABLE, retryable
                try:
                    return ids(client.search(small_jpeg(photo, 200), k=1)) == [photo]
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    return False

            assert eventually(found, timeout_s=60)  # acknowledged before the SIGKILL: still there
            added = client.add_images([NewImage(PHOTOS[1], small_jpeg(PHOTOS[1], 256))]).results[0]
            assert added.status == pb.AddImageResult.ADDED  # the same process indexes again
    finally:
        gateway.stop()


def test_migration_copies_a_faiss_catalog_with_regions_into_milvus_resumably(milvus_server, tmp_path, monkeypatch):
    import cli.migrate
    from cli.migrate import migrate, migrate_catalog
    from server.core.config import Settings
    from server.core.regions import REGION_BOXES
    from server.store.base import EmbeddedImage
    from server.store.catalogs import open_store, read_active_version, write_active_version
    from tests.unit.test_store_contract import stand_in_vector

    def region_vectors(i: int) -> np.ndarray:
        return np.stack([stand_in_vector(f"m{i}#{r}") for r in range(len(REGION_BOXES))])

    prefix = f"mig_{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp_path / "data", milvus_prefix=prefix)
    on_milvus = settings.with_overrides(index_backend="milvus", milvus_uri=milvus_server.uri)
    faiss_store = open_store(settings, "encoder/1", 64)
    assert faiss_store.regions_per_image == len(REGION_BOXES)
    faiss_store.add([EmbeddedImage(f"m{i}", "owner", Visibility.PRIVATE if i % 4 == 0 else Visibility.PUBLIC,
                                   f"h{i}", stand_in_vector(f"m{i}"), region_vectors(i)) for i in range(300)])
    faiss_store.delete(["m1", "m2"])
    write_active_version(settings, "encoder/1")

    # interrupted after its first page of 100: what it copied is complete, the rerun copies the rest
    monkeypatch.setattr(cli.migrate, "CHUNK", 100)
    target = open_store(on_milvus, "encoder/1", 64)
    pages = []

    def interrupt(n: int) -> None:
        pages.append(n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(faiss_store, target, interrupt)
    assert pages == [100] and target.stats().rows == 100
    target.close()
    faiss_store.close()
    done = migrate_catalog(settings, milvus_server.uri, dim=64)
    assert done["records"] == 300
    assert read_active_version(on_milvus) == "encoder/1"
    milvus_store = open_store(on_milvus, "encoder/1", 64)
    try:
        assert milvus_store.regions_per_image == len(REGION_BOXES)
        counts = milvus_store.stats().counts
        assert (counts.public, counts.private, counts.deleted) == (223, 75, 2)
        assert [c.image_id for c in milvus_store.search(stand_in_vector("m5"), 1)] == ["m5"]
        assert [c.image_id for c in milvus_store.search(region_vectors(5)[3], 1)] == ["m5"]  # through a region
        stored = region_vectors(7).astype(np.float16).astype(np.float32)  # what the FAISS catalog kept
        np.testing.assert_allclose(milvus_store.rows([milvus_store.get("m7")])[0].regions, stored, atol=1e-6)
        for probe in (stand_in_vector("m1"), *region_vectors(1)):  # deleted before the move: all its rows
            assert "m1" not in [c.image_id for c in milvus_store.search(probe, 50)]
        assert migrate_catalog(settings, milvus_server.uri, dim=64)["records"] == 300  # a rerun changes nothing
        assert milvus_store.stats().counts.deleted == 2
        # an image that lost a region row in the target is found by the per-image check of the next run
        client = MilvusClient(uri=milvus_server.uri)
        regions = f"{prefix}_encoder_1_regions"
        client.delete(regions, ids=[image_key("m9") << REGION_BITS | 2])  # its region 2
        # another client's delete: served to a new connection's reads once the query node applied it
        assert eventually(lambda: client.query(regions, filter='image_id == "m9"', output_fields=["count(*)"],
                                               consistency_level="Eventually")[0]["count(*)"] == 5, timeout_s=30)
        client.close()
        with pytest.raises(RuntimeError, match="not copied whole"):
            migrate_catalog(settings, milvus_server.uri, dim=64)
    finally:
        milvus_store.close()
