"""GetThumbnail and marked duplicates through the real gateway: a thumbnail exists exactly for what Search may
return, and a hide or delete holds even for a thumbnail served (and cached) a moment before."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from clients.client import NewImage
from protos.visual_search.v1 import visual_search_pb2 as pb
from tests.photos import jpeg, open_photo, small_jpeg


def _thumbnail(client, image_id: str, max_side: int = 0) -> pb.GetThumbnailResponse:
    return client.stub.GetThumbnail(pb.GetThumbnailRequest(image_id=image_id, max_side=max_side), timeout=30)


def _refused(client, image_id: str, max_side: int = 0) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        _thumbnail(client, image_id, max_side)
    return caught.value.code(), caught.value.details()


def test_a_thumbnail_exists_only_while_search_may_return_the_image(fresh_gateway):
    big = jpeg(open_photo("skimage/astronaut"), 90)  # 512x512
    with fresh_gateway.client(timeout_s=60) as client:
        client.add_images([NewImage("t/public", big, "t"), NewImage("t/private", small_jpeg("skimage/rocket"), "t",
                                                                      private=True),
                           NewImage("t/deleted", small_jpeg("skimage/coffee"), "t"),
                           NewImage("t/hidden-later", small_jpeg("skimage/chelsea"), "t")])
        client.delete(["t/deleted"])

        got = _thumbnail(client, "t/public", 128)
        image = Image.open(io.BytesIO(got.jpeg))
        assert image.format == "JPEG" and max(image.size) == 128 == max(got.width, got.height)
        assert _thumbnail(client, "t/public").width == 256  # the default side

        # Private, deleted and unknown IDs: the same answer, so a caller learns nothing about which exist.
        answers = {image_id: _refused(client, image_id) for image_id in ("t/private", "t/deleted", "t/never-added")}
        assert {code for code, _ in answers.values()} == {grpc.StatusCode.NOT_FOUND}
        assert {details.replace(image_id, "ID") for image_id, (_, details) in answers.items()} == {
            "image_id: no visible indexed image 'ID'"}

        assert _thumbnail(client, "t/hidden-later").jpeg  # served, and now in the gateway's cache
        client.set_visibility(["t/hidden-later"], private=True)
        assert _refused(client, "t/hidden-later")[0] == grpc.StatusCode.NOT_FOUND
        client.set_visibility(["t/hidden-later"], private=False)
        assert _thumbnail(client, "t/hidden-later").jpeg

        for side in (1, 15, 513, 10_000):
            code, details = _refused(client, "t/public", side)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("max_side:"), (side, details)
        assert fresh_gateway.health() == 1


def test_a_search_that_keeps_duplicates_marks_them(fresh_gateway):
    photo = small_jpeg("skimage/chelsea", 320)
    with fresh_gateway.client(timeout_s=60) as client:
        client.add_images([NewImage("d/first", photo, "d"), NewImage("d/copy", photo, "d"),
                           NewImage("d/other", small_jpeg("skimage/rocket"), "d")])
        kept = client.stub.Search(pb.SearchRequest(image_bytes=photo, k=3), timeout=30)
        shown = client.stub.Search(pb.SearchRequest(image_bytes=photo, k=3, include_duplicates=True), timeout=30)
    assert [r.image_id for r in kept.results if r.image_id.startswith("d/")][:1] == [shown.results[0].image_id]
    marks = {r.image_id: r.duplicate_of if r.HasField("duplicate_of") else None for r in shown.results}
    first = shown.results[0].image_id
    copy = ({"d/first", "d/copy"} - {first}).pop()
    assert marks[first] is None and marks[copy] == first and marks["d/other"] is None
    assert not any(r.HasField("duplicate_of") for r in kept.results)
    assert copy not in {r.image_id for r in kept.results}
