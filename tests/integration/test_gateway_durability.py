"""Durability, duplicates, Triton outages and interaction logging through the real gateway."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clients.client import NewImage
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.store.interactions import InteractionLog
from tests.fixtures.gateway import start_gateway
from tests.photos import jpeg, open_photo, small_jpeg

PHOTOS = ["skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
          "kleiber_by_lukas_baubkus", "the-mouse", "desert"]


def test_kill9_after_acknowledged_adds_loses_nothing(triton_server, tmp_path):
    data_dir = tmp_path / "gw"
    first = start_gateway(triton_server, data_dir)
    with first.client() as client:
        acked = [r.image_id for r in client.add_images(NewImage(f"d/{p}", small_jpeg(p, 256)) for p in PHOTOS).results
                 if r.status == pb.AddImageResult.ADDED]
        client.set_visibility(["d/skimage/chelsea"], private=True)
        client.delete(["d/desert"])
    assert len(acked) == len(PHOTOS)
    first.kill9()  # no shutdown snapshot: everything must come back from the logs

    second = start_gateway(triton_server, data_dir)
    try:
        with second.client() as client:
            stats = client.stats()
            assert (stats.public_count, stats.private_count, stats.deleted_count) == (len(PHOTOS) - 2, 1, 1)
            for image_id in set(acked) - {"d/skimage/chelsea", "d/desert"}:
                hit = client.search(small_jpeg(image_id[2:], 256), k=1).results[0]
                assert hit.image_id == image_id
            returned = {r.image_id for r in client.similar("d/skimage/coffee", k=50).results}
            assert not returned & {"d/skimage/chelsea", "d/desert"}
            # and the restarted gateway keeps indexing after the replayed rows
            added = client.add_images([NewImage("d/ihc", small_jpeg("skimage/ihc", 256))]).results[0]
            assert added.status == pb.AddImageResult.ADDED
            assert client.search(small_jpeg("skimage/ihc", 256), k=1).results[0].image_id == "d/ihc"
    finally:
        second.stop()
    third = start_gateway(triton_server, data_dir)  # clean restart from the snapshot
    try:
        with third.client() as client:
            assert client.stats().image_count == len(PHOTOS)  # 9 added, 1 deleted
    finally:
        third.stop()


def test_duplicates_collapse_and_the_list_is_backfilled(fresh_gateway):
    cat = open_photo("skimage/chelsea")
    exact = small_jpeg("skimage/chelsea", 300)
    near = jpeg(cat, 85, max_side=280)
    others = PHOTOS[2:]
    with fresh_gateway.client() as client:
        client.add_images([NewImage("cat", exact), NewImage("cat-exact-copy", exact), NewImage("cat-resized", near),
                           *(NewImage(p, small_jpeg(p, 256)) for p in others)])
        k = 4
        collapsed = [r.image_id for r in client.search(exact, k=k).results]
        everything = [r.image_id for r in client.stub.Search(
            pb.SearchRequest(image_bytes=exact, k=k, include_duplicates=True), timeout=30).results]
    assert len(collapsed) == k, "backfilled to k from further candidates"
    assert collapsed[0] in {"cat", "cat-exact-copy"}
    assert len({"cat", "cat-exact-copy", "cat-resized"} & set(collapsed)) == 1
    assert {"cat", "cat-exact-copy", "cat-resized"} <= set(everything[:3])


def test_triton_down_gives_unavailable_then_recovers(private_triton, tmp_path):
    private_triton.start()
    gateway = start_gateway(private_triton, tmp_path / "gw")
    query = small_jpeg("skimage/rocket", 256)
    try:
        with gateway.client() as client:
            client.add_images([NewImage("rocket", query)])
            private_triton.stop()
            with pytest.raises(grpc.RpcError) as error:
                client.stub.Search(pb.SearchRequest(image_bytes=query), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "encoder" in error.value.details()
            # Search by ID needs no encoder: it keeps working while Triton is down.
            assert client.stub.Search(pb.SearchRequest(image_id="rocket"), timeout=10) is not None
            private_triton.start()
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert client.search(query, k=1, timeout_s=5).results[0].image_id == "rocket"
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
    finally:
        gateway.stop()


def test_log_interactions_is_durable_and_feeds_ctr(fresh_gateway):
    with fresh_gateway.client() as client:
        client.add_images(NewImage(p, small_jpeg(p, 200)) for p in PHOTOS[:5])
        response = client.similar(PHOTOS[0], k=3)
        when = Timestamp(seconds=1_700_000_000)
        items = [pb.Interaction(request_id=response.request_id, position=r.position, image_id=r.image_id,
                                kind=pb.Interaction.IMPRESSION, time=when) for r in response.results]
        items.append(pb.Interaction(request_id=response.request_id, position=1,
                                    image_id=response.results[1].image_id, kind=pb.Interaction.CLICK, time=when))
        assert client.log_interactions(items).accepted_count == 4
        with pytest.raises(grpc.RpcError) as error:
            client.log_interactions([pb.Interaction(request_id="r", image_id="x")])
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "interactions[0]" in error.value.details()
    fresh_gateway.kill9()
    log = InteractionLog(fresh_gateway.data_dir / "interactions.sqlite")
    report = log.ctr()
    assert report["overall"] == {"impressions": 3, "clicks": 1, "ctr": pytest.approx(1 / 3)}
    assert report["by_position"]["1"]["clicks"] == 1 and report["by_position"]["0"]["clicks"] == 0
    assert list(report["by_day"]) == ["2023-11-14"]
    assert log.click_pairs() == [(PHOTOS[0], response.results[1].image_id)]
