"""The relevance curve follows the served corpus: refitted from the impressions and clicks the gateway logged."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

from clients.client import NewImage
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.store.interactions import InteractionLog
from tests.fixtures.gateway import start_gateway
from tests.photos import small_jpeg

PHOTOS = ["skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
          "kleiber_by_lukas_baubkus", "the-mouse", "desert"]


def _mean_relevance(response: pb.SearchResponse) -> float:
    return sum(r.relevance for r in response.results) / len(response.results)


def test_clicks_on_every_result_raise_the_relevance_the_gateway_returns(triton_server, tmp_path):
    gateway = start_gateway(triton_server, tmp_path / "gw", relevance_refit_s=1.0)
    try:
        with gateway.client() as client:
            client.add_images(NewImage(p, small_jpeg(p, 200)) for p in PHOTOS)
            before = _mean_relevance(client.similar(PHOTOS[0], k=20))
            when = Timestamp(seconds=1_700_000_000)
            shown = 0
            for _ in range(3):  # a corpus whose users find every result relevant: all shown, all clicked
                for photo in PHOTOS:
                    response = client.similar(photo, k=20)
                    for kind in (pb.Interaction.IMPRESSION, pb.Interaction.CLICK):
                        items = [pb.Interaction(request_id=response.request_id, position=r.position,
                                                image_id=r.image_id, kind=kind, time=when) for r in response.results]
                        assert client.log_interactions(items).accepted_count == len(items)
                    shown += len(response.results)
            deadline = time.monotonic() + 30
            while (after := _mean_relevance(client.similar(PHOTOS[0], k=20))) < before + 0.1:
                assert time.monotonic() < deadline, f"relevance stayed at {after:.3f} (before {before:.3f})"
                time.sleep(0.5)
    finally:
        gateway.stop()
    scores, labels = InteractionLog(gateway.data_dir / "interactions.sqlite").judgements("encoder/1")
    assert len(scores) == shown and labels.all()
