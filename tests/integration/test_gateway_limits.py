"""Limits through the real gateway: the pixel-heavy batch attack is refused before any decode, and the gateway keeps
serving others."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from protos.visual_search.v1 import visual_search_pb2 as pb
from tests.photos import small_jpeg


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """One colour, 7071 x 7071 (50 Mpixel, just under the limit): ~100 KB that decode to 150 MB."""
    buffer = io.BytesIO()
    Image.new("RGB", (7071, 7071), (200, 30, 30)).save(buffer, "PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def test_a_batch_of_64_huge_pngs_is_refused_before_decoding(gateway, huge_png):
    batch = pb.SearchBatchRequest(requests=[pb.SearchRequest(image_bytes=huge_png, k=5)] * 64)
    assert batch.ByteSize() < 64 * 1024 * 1024
    with gateway.client() as client:
        with pytest.raises(grpc.RpcError) as error:
            client.stub.SearchBatch(batch, timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch limit" in error.value.details() and "requests" in error.value.details()
        # and the gateway keeps serving others
        assert client.stub.Search(pb.SearchRequest(image_bytes=small_jpeg("skimage/coffee", 200), k=1), timeout=30)
