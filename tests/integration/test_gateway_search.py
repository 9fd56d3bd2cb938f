"""End to end over gRPC: real Triton, real gateway process, real photos."""

from __future__ import annotations

import io
import time
import zlib

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from clients.client import NewImage
from devkit.corpus import real_photos
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.core.regions import REGION_SCORE_PENALTY
from tests.photos import jpeg, open_photo, small_jpeg

CORPUS = ["skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
          "skimage/hubble_deep_field", "kleiber_by_lukas_baubkus", "the-mouse", "desert", "firstgeneration",
          "mate-nature-aqua", "mate-nature-twowings"]


@pytest.fixture(scope="module")
def indexed(gateway):
    """The shared gateway with a small real corpus under the `e2e/` prefix."""
    with gateway.client() as client:
        response = client.add_images(NewImage(f"e2e/{i}", small_jpeg(i, 400)) for i in CORPUS)
    assert all(r.status in (pb.AddImageResult.ADDED, pb.AddImageResult.ALREADY_EXISTS) for r in response.results), \
        response.results
    return gateway


def test_crop_of_a_photo_finds_the_photo_first(indexed):
    with indexed.client() as client:
        data = small_jpeg("skimage/astronaut", 800)
        response = client.search(data, crop=(0.3, 0.0, 0.75, 0.45), k=5)
    assert response.results[0].image_id == "e2e/skimage/astronaut"
    assert list(r.score for r in response.results) == sorted((r.score for r in response.results), reverse=True)


def test_indexed_regions_answer_crop_queries(indexed):
    """AddImages embedded each image's regions (server/core/regions.py) through Triton and the store searches them:
    the same bytes cropped to the centre quarter match that region exactly (scored cosine - penalty; a
    whole-image index scores it far lower), and an off-centre crop of a quarter of the picture still finds it first."""
    data = small_jpeg("skimage/coffee", 400)
    with indexed.client() as client:
        centre = client.search(data, crop=(0.25, 0.25, 0.75, 0.75), k=3)
        off_centre = client.search(data, crop=(0.05, 0.4, 0.55, 0.9), k=3)
        stats = client.stats()
    assert centre.results[0].image_id == "e2e/skimage/coffee"
    assert centre.results[0].score > 0.99 - REGION_SCORE_PENALTY
    assert off_centre.results[0].image_id == "e2e/skimage/coffee"
    assert stats.index_params["regions_per_image"] == "6"


@pytest.mark.parametrize("variant", ["resized", "jpeg_q30", "png"])
def test_modified_copy_is_found_at_rank_1(indexed, variant):
    image = open_photo("kleiber_by_lukas_baubkus")
    if variant == "resized":
        data = jpeg(image, 90, max_side=150)
    elif variant == "jpeg_q30":
        data = jpeg(image, 30, max_side=640)
    else:
        image.thumbnail((500, 500))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        data = buffer.getvalue()
    with indexed.client() as client:
        response = client.search(data, k=3)
    assert response.results[0].image_id == "e2e/kleiber_by_lukas_baubkus"
    assert response.request_id and response.model_version.startswith("encoder/")


def test_more_like_this_excludes_the_query_image(indexed):
    with indexed.client() as client:
        response = client.similar("e2e/skimage/coffee", k=5)
    ids = [r.image_id for r in response.results]
    assert len(ids) == 5 and "e2e/skimage/coffee" not in ids


def test_gif_first_frame_and_exif_orientation(indexed):
    image = open_photo("skimage/rocket")
    image.thumbnail((400, 400))
    frames = io.BytesIO()
    image.save(frames, "GIF", save_all=True, append_images=[Image.new("RGB", image.size, "black")])
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise: viewers must rotate it back
    image.rotate(90, expand=True).save(rotated, "JPEG", quality=90, exif=exif)
    with indexed.client() as client:
        assert client.search(frames.getvalue(), k=1).results[0].image_id == "e2e/skimage/rocket"
        upright = client.search(rotated.getvalue(), k=1).results[0]
    assert upright.image_id == "e2e/skimage/rocket" and upright.score > 0.9


def test_fresh_image_is_searchable_on_ack(indexed):
    data = small_jpeg("skimage/ihc", 300)  # not in CORPUS, so not collapsed as someone's near-duplicate
    with indexed.client() as client:
        client.add_images([NewImage("e2e/fresh-ihc", jpeg(Image.open(io.BytesIO(data)), 70))])
        acked = time.perf_counter()
        ids = [r.image_id for r in client.search(data, k=5, timeout_s=5).results]
        delay = time.perf_counter() - acked
    assert ids[0] == "e2e/fresh-ihc", "an acknowledged image must be searchable by the very next request"
    print(f"freshness: first search after the ack answered in {delay * 1000:.1f} ms and found the image")


def _bomb() -> bytes:
    """A tiny PNG header claiming 100k x 100k pixels (10 gigapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


ERROR_CASES = {
    "undecodable": (pb.SearchRequest(image_bytes=b"definitely not an image"), "INVALID_ARGUMENT", "image_bytes"),
    "empty": (pb.SearchRequest(image_bytes=b""), "INVALID_ARGUMENT", "image_bytes"),
    "over_byte_limit": (pb.SearchRequest(image_bytes=b"\xff" * (21 * 1024 * 1024)), "INVALID_ARGUMENT", "image_bytes"),
    "decompression_bomb": (pb.SearchRequest(image_bytes=_bomb()), "INVALID_ARGUMENT", "pixel"),
    "crop_outside": (pb.SearchRequest(image_bytes=b"x", crop=pb.CropBox(x_min=0.5, y_min=0, x_max=1.5, y_max=1)),
                     "INVALID_ARGUMENT", "crop"),
    "crop_empty": (pb.SearchRequest(image_bytes=b"x", crop=pb.CropBox(x_min=0.5, y_min=0.2, x_max=0.5, y_max=0.9)),
                   "INVALID_ARGUMENT", "crop"),
    "k_too_large": (pb.SearchRequest(image_id="e2e/skimage/coffee", k=1001), "INVALID_ARGUMENT", "k"),
    "no_query": (pb.SearchRequest(), "INVALID_ARGUMENT", "query"),
    "unknown_id": (pb.SearchRequest(image_id="e2e/no-such-image"), "NOT_FOUND", "image_id"),
    "huge_id": (pb.SearchRequest(image_id="x" * 20_000), "INVALID_ARGUMENT", "image_id"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_gets_precise_status_and_the_server_keeps_serving(indexed, case):
    request, code, field = ERROR_CASES[case]
    if case.startswith("crop"):
        request.image_bytes = small_jpeg("skimage/coffee", 200)
    with indexed.client() as client:
        with pytest.raises(grpc.RpcError) as error:
            client.stub.Search(request, timeout=30)
        assert error.value.code().name == code
        assert field in error.value.details() and len(error.value.details()) <= 1003
        assert client.similar("e2e/skimage/coffee", k=3).results  # and the next request succeeds


def test_deadline_is_honoured(indexed):
    with indexed.client() as client:
        with pytest.raises(grpc.RpcError) as error:
            client.stub.Search(pb.SearchRequest(image_bytes=small_jpeg("skimage/chelsea", 2000)), timeout=0.001)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.similar("e2e/skimage/coffee", k=1).results


def test_add_images_rejects_bad_items_individually(indexed):
    good = small_jpeg("skimage/chelsea", 200)
    with indexed.client() as client:
        response = client.add_images([NewImage("e2e/ok-cat", good), NewImage("e2e/broken", b"nope"),
                                      NewImage("", good), NewImage("e2e/ok-cat", good)])
    statuses = [r.status for r in response.results]
    assert statuses[0] in (pb.AddImageResult.ADDED, pb.AddImageResult.ALREADY_EXISTS)
    assert statuses[1] == statuses[2] == pb.AddImageResult.REJECTED
    assert "image_bytes" in response.results[1].error_message and "image_id" in response.results[2].error_message
    assert statuses[3] == pb.AddImageResult.ALREADY_EXISTS


def test_search_batch_answers_in_order(indexed):
    requests = [pb.SearchRequest(image_id=f"e2e/{i}", k=2) for i in ("skimage/coffee", "desert", "the-mouse")]
    with indexed.client() as client:
        responses = client.stub.SearchBatch(pb.SearchBatchRequest(requests=requests), timeout=30).responses
        assert len(responses) == 3 and all(len(r.results) == 2 for r in responses)
        with pytest.raises(grpc.RpcError) as error:
            client.stub.SearchBatch(pb.SearchBatchRequest(requests=[*requests, pb.SearchRequest(image_id="e2e/nope")]),
                                    timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "requests[3]" in error.value.details()


def test_health_and_reflection(indexed):
    assert indexed.health() == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(indexed.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert "visual_search.v1.VisualSearch" in names and "grpc.health.v1.Health" in names


def test_stats_report_the_index(indexed):
    with indexed.client() as client:
        stats = client.stats()
    assert stats.image_count >= len(CORPUS) and stats.embedding_dim == 1280
    assert stats.index_type == "Flat" and stats.model_version == "encoder/1"


def test_corpus_has_real_photos():
    sources = {p.source for p in real_photos()}
    assert "scikit-image" in sources and len(real_photos()) > 100, sources


TRUNCATED = b"\x0a\x05ab"  # field 1, length 5, but only 2 bytes follow: no protobuf parser accepts it


@pytest.mark.parametrize("method", ["Search", "SearchBatch", "DeleteImages"])
def test_malformed_protobuf_is_invalid_argument(indexed, method):
    with grpc.insecure_channel(indexed.target) as channel:
        call = channel.unary_unary(f"/visual_search.v1.VisualSearch/{method}")
        with pytest.raises(grpc.RpcError) as error:
            call(TRUNCATED, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert "protobuf" in error.value.details()


def test_malformed_protobuf_in_a_stream_is_invalid_argument(indexed):
    with grpc.insecure_channel(indexed.target) as channel:
        call = channel.stream_unary("/visual_search.v1.VisualSearch/AddImages")
        with pytest.raises(grpc.RpcError) as error:
            call(iter([TRUNCATED]), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()


def test_long_ids_in_writes_are_refused_without_echo(indexed):
    with indexed.client() as client, pytest.raises(grpc.RpcError) as error:
        client.stub.DeleteImages(pb.DeleteImagesRequest(image_ids=["e2e/ok", "y" * 50_000]), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image_ids[1]" in error.value.details() and "yyyy" not in error.value.details()


def test_results_carry_the_versions_calibrated_relevance_and_callers_filter_on_it(indexed):
    """encoder/1 ships a calibration (model_repository/encoder/1/calibration.json): every result gets a
    probability of relevance, monotone in the score, and min_relevance drops what is below it."""
    query = small_jpeg("skimage/chelsea", 300)
    with indexed.client() as client:
        everything = client.search(query, k=8).results
        relevance = [r.relevance for r in everything]
        assert all(r.HasField("relevance") and 0.0 <= r.relevance <= 1.0 for r in everything)
        assert relevance == sorted(relevance, reverse=True)
        assert everything[0].image_id == "e2e/skimage/chelsea" and relevance[0] > relevance[-1]
        cut = (relevance[0] + relevance[-1]) / 2
        kept = client.stub.Search(pb.SearchRequest(image_bytes=query, k=8, min_relevance=cut), timeout=30).results
        assert [r.image_id for r in kept] == [r.image_id for r in everything if r.relevance >= cut]
        with pytest.raises(grpc.RpcError) as bad:
            client.stub.Search(pb.SearchRequest(image_bytes=query, k=8, min_relevance=1.5), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_relevance" in bad.value.details()
