"""The relevance curve follows the served corpus: refitted from the impressions and clicks the gateway logged,
from trusted callers only (the `feedback` role): an attacker with a search token cannot move what everyone sees."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

from clients.client import NewImage, VisualSearchClient
from devkit.tokens import mint
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.store.interactions import InteractionLog
from tests.fixtures.gateway import start_secured_gateway
from tests.photos import small_jpeg

PHOTOS = ["skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
          "kleiber_by_lukas_baubkus", "the-mouse", "desert"]
WHEN = Timestamp(seconds=1_700_000_000)


def _relevance(client: VisualSearchClient) -> list[float]:
    return [r.relevance for r in client.similar(f"shop/{PHOTOS[0]}", k=20).results]


def _click_everything(client: VisualSearchClient, rounds: int = 3) -> int:
    """A surface whose users find every result relevant: every result shown and clicked. Returns how many."""
    shown = 0
    for _ in range(rounds):
        for photo in PHOTOS:
            response = client.similar(f"shop/{photo}", k=20)
            for kind in (pb.Interaction.IMPRESSION, pb.Interaction.CLICK):
                items = [pb.Interaction(request_id=response.request_id, position=r.position, image_id=r.image_id,
                                        kind=kind, time=WHEN) for r in response.results]
                assert client.log_interactions(items).accepted_count == len(items)
            shown += len(response.results)
    return shown


def test_only_trusted_clicks_refit_the_relevance_every_caller_sees(triton_server, tmp_path):
    gateway = start_secured_gateway(triton_server, tmp_path, relevance_refit_s=1.0, metrics_port=0)

    def client(sub: str, roles: list[str]) -> VisualSearchClient:
        return gateway.client(timeout_s=30, token=mint((tmp_path / "k1.pem").read_bytes(), "k1", sub, roles,
                                                       ["shop"]))
    try:
        with client("shop-indexer", ["write"]) as writer:
            writer.add_images(NewImage(f"shop/{p}", small_jpeg(p, 200), "shop") for p in PHOTOS)
        with client("mallory", ["search"]) as attacker, client("frontend", ["search", "feedback"]) as frontend:
            before = _relevance(frontend)
            assert sum(before) / len(before) < 0.8  # room to move
            _click_everything(attacker)
            time.sleep(3.5)  # three refit periods
            assert _relevance(frontend) == before, "a search-only caller's clicks moved the relevance curve"
            shown = _click_everything(frontend)
            deadline = time.monotonic() + 30
            while sum(after := _relevance(attacker)) / len(after) < sum(before) / len(before) + 0.1:
                assert time.monotonic() < deadline, f"relevance stayed at {after} (before {before})"
                time.sleep(0.5)
    finally:
        gateway.stop()
    scores, labels = InteractionLog(tmp_path / "data" / "interactions.sqlite").judgements("encoder/1")
    assert len(scores) == shown and labels.all()  # the frontend's judgements, none of mallory's
