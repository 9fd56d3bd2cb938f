"""Privacy as a security property: a randomized adversarial sequence against a reference model, over gRPC.

Thousands of mixed add / hide / show / delete / search operations; after every search: no private or
deleted image is ever returned, and k results come back whenever k eligible images exist.
"""

from __future__ import annotations

import random
import re
import time
import urllib.request

import grpc
import pytest
from PIL import Image

from clients.client import NewImage
from devkit.corpus import real_photos
from devkit.launcher import GatewayProcess
from protos.visual_search.v1 import visual_search_pb2 as pb
from tests.fixtures.gateway import start_gateway
from tests.photos import jpeg

OPERATIONS = 2400


def _tiles(count: int, seed: int) -> list[bytes]:
    """Small distinct real-photo tiles (random crops of the corpus at low resolution)."""
    rng = random.Random(seed)
    sources = [Image.open(p.path).convert("RGB") for p in real_photos()[::6]]
    for s in sources:
        s.thumbnail((512, 512))
    tiles = []
    for _ in range(count):
        image = rng.choice(sources)
        w, h = image.size
        size = rng.randint(min(w, h) // 3, min(w, h))
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        tiles.append(jpeg(image.crop((x, y, x + size, y + size)).resize((96, 96)), 85))
    return tiles


@pytest.mark.timeout(900)
def test_randomized_add_hide_delete_search_never_leaks(triton_server, tmp_path):
    """Against the compact index with regions (a flat threshold of 64 vectors): the filter is applied inside
    the code search and the re-rank only ever sees eligible candidates."""
    gateway = start_gateway(triton_server, tmp_path / "gateway", index_flat_threshold=64)
    try:
        leak_check(gateway)
        with gateway.client() as client:
            stats = client.stats()
        assert stats.index_params["rerank"] == stats.index_params["regions_rerank"] == "compact", stats
        recall_estimates_reach_stats_and_metrics(gateway)
    finally:
        gateway.stop()


def recall_estimates_reach_stats_and_metrics(gateway: GatewayProcess) -> None:
    """Both compact indexes measured their own recall (search_tuning.py, in the background): GetStats and the
    Prometheus gauge show the same figures."""
    keys = ("recall_at_10_estimate", "regions_recall_at_10_estimate")
    deadline = time.monotonic() + 60
    while True:
        with gateway.client() as client:
            params = client.stats().index_params
        if all(k in params for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(1)
    estimates = {k: float(params[k]) for k in keys}
    assert all(0.0 <= e <= 1.0 for e in estimates.values()), estimates
    deadline = time.monotonic() + 30
    while True:  # the gauges follow the stats within their refresh period
        exported = urllib.request.urlopen(gateway.metrics_url, timeout=5).read().decode()
        gauges = {rows: float(m.group(1)) for rows in ("images", "regions") if (m := re.search(
            rf'vsearch_index_recall_at_10_estimate{{rows="{rows}"}} (\S+)', exported))}
        if len(gauges) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert gauges == pytest.approx({"images": estimates[keys[0]], "regions": estimates[keys[1]]}, abs=1e-4)


def leak_check(fresh_gateway: GatewayProcess) -> None:
    rng = random.Random(20261124)
    tiles = _tiles(220, seed=1)
    state: dict[str, str] = {}  # reference model: image_id -> "public" | "private" | "deleted"
    counts = {"add": 0, "hide": 0, "show": 0, "delete": 0, "search": 0, "checked_results": 0}
    with fresh_gateway.client() as client:
        next_tile = 0
        for step in range(OPERATIONS):
            live = [i for i, s in state.items() if s != "deleted"]
            op = rng.choices(["add", "hide", "show", "delete", "search"], weights=[14, 12, 10, 6, 58])[0]
            if (op == "add" and next_tile < len(tiles)) or len(live) < 3:
                batch = []
                for _ in range(rng.randint(1, 4)):
                    if next_tile >= len(tiles):
                        break
                    image_id, private = f"img-{next_tile}", rng.random() < 0.3
                    batch.append(NewImage(image_id, tiles[next_tile], owner_id="u1", private=private))
                    state[image_id] = "private" if private else "public"
                    next_tile += 1
                if batch:
                    results = client.add_images(batch).results
                    assert all(r.status == pb.AddImageResult.ADDED for r in results), results
                    counts["add"] += 1
                    continue
                op = "search"
            if op in ("hide", "show", "delete") and live:
                targets = rng.sample(live, k=min(len(live), rng.randint(1, 3)))
                if op == "delete":
                    client.delete(targets)
                    state.update({t: "deleted" for t in targets})
                else:
                    client.set_visibility(targets, private=op == "hide")
                    state.update({t: "private" if op == "hide" else "public" for t in targets})
                counts[op] += 1
                continue
            # search: by ID of a public image (cheap, no re-embedding) or, now and then, by bytes of any image
            k = rng.choice([1, 3, 5, 10, 25, 60])
            public = [i for i, s in state.items() if s == "public"]
            by_id = public and rng.random() < 0.85
            if by_id:
                query_id = rng.choice(public)
                response = client.stub.Search(
                    pb.SearchRequest(image_id=query_id, k=k, include_duplicates=True), timeout=30)
                eligible = len(public) - 1
            else:
                query_id = None
                response = client.stub.Search(pb.SearchRequest(
                    image_bytes=tiles[rng.randrange(next_tile or 1)], k=k, include_duplicates=True), timeout=30)
                eligible = len(public)
            returned = [r.image_id for r in response.results]
            leaks = [i for i in returned if state.get(i) != "public"]
            assert not leaks, f"step {step}: returned non-public images {[(i, state.get(i)) for i in leaks]}"
            assert query_id not in returned
            assert len(set(returned)) == len(returned)
            assert len(returned) == min(k, eligible), f"step {step}: {len(returned)} of {min(k, eligible)}"
            counts["search"] += 1
            counts["checked_results"] += len(returned)
        # Private and deleted images are not even usable as "more like this" queries (no existence leak).
        for image_id, s in state.items():
            if s != "public":
                with pytest.raises(grpc.RpcError) as error:
                    client.similar(image_id, k=1)
                assert error.value.code() == grpc.StatusCode.NOT_FOUND
                break
    print("privacy operations:", counts)
    assert counts["search"] > 1000 and sum(counts.values()) - counts["checked_results"] >= 2000
