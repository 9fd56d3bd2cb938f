"""Copy verification end to end: pixel signatures computed by Triton's image model when an image is added, stored
beside the originals, read by the gateway when a search's best candidates tie. Two real gateways on one Triton,
the same images, verification on and off: the difference between their answers is verification's doing."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from PIL import ImageDraw, ImageOps
from prometheus_client.parser import text_string_to_metric_families

from clients.client import NewImage
from devkit.launcher import GatewayProcess
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.query.verification import SERVED, WEIGHT
from tests.fixtures.gateway import start_gateway
from tests.photos import jpeg, open_photo

SOURCE = "skimage/chelsea"
OTHERS = ["skimage/astronaut", "skimage/coffee", "skimage/rocket", "desert", "the-mouse"]


def _look_alike() -> bytes:
    """The source with one detail painted over: the embedding barely moves, the pixels do."""
    image = open_photo(SOURCE).convert("RGB")
    image.thumbnail((400, 400))
    w, h = image.size
    ImageDraw.Draw(image).ellipse((int(0.55 * w), int(0.2 * h), int(0.8 * w), int(0.45 * h)), fill=(20, 20, 20))
    return jpeg(image)


def _images() -> list[NewImage]:
    source = jpeg(open_photo(SOURCE), max_side=400)
    return ([NewImage("source", source, owner_id="u1"), NewImage("look-alike", _look_alike(), owner_id="u1"),
             NewImage("private-copy", source, owner_id="u2", private=True),
             NewImage("deleted-copy", source, owner_id="u2")]
            + [NewImage(f"other/{name}", jpeg(open_photo(name), max_side=400)) for name in OTHERS])


@pytest.fixture(scope="module")
def gateways(triton_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayProcess]]:
    started = {}
    try:
        for mode, on in (("on", True), ("off", False)):
            started[mode] = start_gateway(triton_server, tmp_path_factory.mktemp(f"verify-{mode}"),
                                          copy_verification=on)
            with started[mode].client() as client:
                added = client.add_images(_images())
                assert all(r.status == pb.AddImageResult.ADDED for r in added.results), added.results
                assert client.delete(["deleted-copy"]).deleted_count == 1
        yield started
    finally:
        for process in started.values():
            process.stop()


def _search(gateway: GatewayProcess, data: bytes) -> dict[str, float]:
    with gateway.client() as client:
        response = client.search(data, k=10)
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    return {r.image_id: r.score for r in response.results}


@pytest.mark.parametrize("edit", ["jpeg-q20", "grayscale", "downscale-40"])
def test_a_copy_gains_over_its_look_alike_only_with_verification(gateways, edit):
    image = open_photo(SOURCE).convert("RGB")
    image.thumbnail((400, 400))
    if edit == "grayscale":
        image = ImageOps.grayscale(image)
    elif edit == "downscale-40":
        image = image.resize((int(image.width * 0.4), int(image.height * 0.4)))
    data = jpeg(image, quality=20 if edit == "jpeg-q20" else 90)
    on, off = _search(gateways["on"], data), _search(gateways["off"], data)
    assert set(on) == set(off)  # verification re-scores what the store found, it adds nothing
    assert not {"private-copy", "deleted-copy"} & set(on)
    assert next(iter(on)) == "source"
    source_gain = on["source"] - off["source"]
    assert source_gain > 0.02  # its signature was stored at AddImages and read at Search
    look_alike_gain = on["look-alike"] - off["look-alike"]
    assert look_alike_gain < WEIGHT - 1e-3  # one detail differs: less than full agreement
    assert on["source"] == pytest.approx(1.0) or source_gain > look_alike_gain  # capped at 1, or the larger gain
    assert all(on[i] == pytest.approx(off[i], abs=1e-6) for i in on if i.startswith("other/"))  # not tied: as is


def test_a_search_by_id_verifies_with_the_stored_signature(gateways):
    """More-like-this of the look-alike: the source (the same picture but one detail) gains; unrelated images
    do not. The private and deleted byte-identical copies of the source stay out."""
    answers = {}
    for mode, gateway in gateways.items():
        with gateway.client() as client:
            answers[mode] = {r.image_id: r.score for r in client.similar("look-alike", k=10).results}
    assert answers["on"]["source"] > answers["off"]["source"]
    assert not {"private-copy", "deleted-copy", "look-alike"} & set(answers["on"])


def _verified_searches(gateway: GatewayProcess) -> dict[str, float]:
    text = urllib.request.urlopen(gateway.metrics_url, timeout=10).read().decode()
    return {s.labels["depth"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "vsearch_verified_searches_total"}


def test_a_query_of_few_pixels_is_verified_deeper(gateways):
    """The gateway reads the query's shorter side from its header and its crop box: an icon-sized copy, or a small
    box drawn on a large picture, is verified deeper (rule 7); a large query is not."""
    image = open_photo(SOURCE).convert("RGB")
    image.thumbnail((400, 400))
    icon = image.copy()
    icon.thumbnail((SERVED.small_side, SERVED.small_side))
    side = min(image.size)
    small_box = (0.1, 0.1, 0.1 + 0.8 * SERVED.small_side / image.width, 0.1 + 0.8 * SERVED.small_side / image.height)
    queries = [(jpeg(image), None, "usual"), (jpeg(icon), None, "small_query"), (jpeg(image), small_box, "small_query"),
               (jpeg(image), (0.0, 0.0, 1.0, 1.0), "usual")]
    assert side > SERVED.small_side
    with gateways["on"].client() as client:
        for data, crop, depth in queries:
            before = _verified_searches(gateways["on"])
            response = client.search(data, crop=crop, k=5)
            after = _verified_searches(gateways["on"])
            assert {d: after[d] - before[d] for d in after} == {d: float(d == depth) for d in after}, (crop, depth)
            if crop is None:
                assert response.results[0].image_id == "source"
