"""The model quality loop, small and for real: fine-tune a few steps, export as version 2, publish it to a
running Triton, re-embed side by side while the gateway keeps serving version 1, cut over, search, log
impressions and clicks, compute CTR. Also: the cut-over keeps writes made during the re-embedding, and the
served version survives a restart."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest

from clients.client import NewImage
from devkit.corpus import real_photos
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.core.config import MODEL_REPOSITORY, loopback_settings
from server.model_versions.registry import PROMOTION_FILE, publish, record_promotion, reload, versions
from server.store.interactions import InteractionLog
from server.triton.supervisor import TritonServer
from tests.fixtures.gateway import start_gateway
from tests.photos import small_jpeg
from training.finetune import FinetuneConfig, train

PHOTOS = ["skimage/astronaut", "skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/motorcycle_left",
          "desert", "the-mouse", "mate-nature-aqua", "kleiber_by_lukas_baubkus", "firstgeneration"]
FILLERS = len(PHOTOS[4:]) * len(range(100, 180, 4))
PRIVATE, DELETED, HIDDEN_DURING_SWITCH, ADDED_DURING_SWITCH = PHOTOS[1], PHOTOS[2], PHOTOS[3], "mate-nature-twowings"


@pytest.fixture(scope="module")
def loop_env(tmp_path_factory):
    """A model repository of its own (version 1 only), its Triton, and a gateway over a fresh data directory."""
    root = tmp_path_factory.mktemp("loop")
    repository = root / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, repository,
                    ignore=lambda d, names: [n for n in names if (n.isdigit() and n != "1") or n.startswith(".")
                                              or n == PROMOTION_FILE])
    with TritonServer(loopback_settings(model_repository=repository), log_path=root / "triton.log") as triton:
        gateway = start_gateway(triton, root / "data")
        yield repository, triton, gateway
        gateway.stop()


def _wait_for_model(client, version: str, timeout_s: float = 180.0) -> pb.GetStatsResponse:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = client.stats()
        if stats.model_version == version:
            return stats
        assert not stats.switch_error, stats.switch_error
        time.sleep(0.2)
    raise TimeoutError(f"still serving {client.stats().model_version}")


def test_finetune_publish_switch_search_and_ctr(loop_env, tmp_path):
    repository, triton, gateway = loop_env
    query = small_jpeg("skimage/astronaut", 300)
    with gateway.client() as client:
        client.add_images([NewImage(p, small_jpeg(p, 240), private=p == PRIVATE) for p in PHOTOS])
        # Enough other images that the re-embedding is still running when the writes below arrive.
        client.add_images(NewImage(f"filler/{p}/{size}", small_jpeg(p, size))
                          for p in PHOTOS[4:] for size in range(100, 180, 4))
        client.delete([DELETED])
        before = client.search(query, k=5)
        assert before.model_version == "encoder/1"

        # Train a few steps on the corpus, export it as the next version, and load it into the running Triton.
        small = sorted(real_photos(), key=lambda p: p.path.stat().st_size)[:6]
        checkpoint = train(FinetuneConfig(out=tmp_path / "ft", images=[p.path for p in small], steps=2,
                                          batch_size=4, seed=1, progress=False))
        assert publish(checkpoint, repository) == "2"
        assert versions(repository) == ["1", "2"]
        assert reload(triton.endpoint.grpc_url, admin_key=triton.settings.triton_admin_key) == ["1", "2"]

        started = client.switch_model("2")
        assert started.state == pb.SwitchModelResponse.STARTED and started.active_model_version == "encoder/1"
        # Writes during the re-embedding must survive the cut-over; searches keep being answered meanwhile.
        client.set_visibility([HIDDEN_DURING_SWITCH], private=True)
        added = client.add_images([NewImage(ADDED_DURING_SWITCH, small_jpeg(ADDED_DURING_SWITCH, 240))])
        assert added.results[0].status == pb.AddImageResult.ADDED
        during = client.search(query, k=5)
        progress = client.stats()
        assert progress.switching_to_model_version == "encoder/2", "the switch ended before the writes"
        assert during.model_version == "encoder/1" and during.results[0].image_id == "skimage/astronaut"
        assert 0 < progress.switch_total_count == len(PHOTOS) + FILLERS + 1
        stats = _wait_for_model(client, "encoder/2")
        assert stats.public_count == len(PHOTOS) + FILLERS - 3 + 1
        assert stats.private_count == 2 and stats.deleted_count == 1

        after = client.search(query, k=len(PHOTOS) + FILLERS + 1)
        assert after.model_version == "encoder/2"
        ids = [r.image_id for r in after.results]
        assert ids[0] == "skimage/astronaut"
        assert not {PRIVATE, DELETED, HIDDEN_DURING_SWITCH} & set(ids)
        assert ADDED_DURING_SWITCH in ids
        # New embeddings, not the old ones under a new label.
        old_scores = {r.image_id: r.score for r in before.results}
        assert any(abs(old_scores[r.image_id] - r.score) > 1e-3 for r in after.results if r.image_id in old_scores)
        assert client.switch_model("2").state == pb.SwitchModelResponse.ALREADY_ACTIVE

        clicked = after.results[1]
        items = [pb.Interaction(request_id=after.request_id, position=r.position, image_id=r.image_id,
                                kind=pb.Interaction.IMPRESSION) for r in after.results[:4]]
        items.append(pb.Interaction(request_id=after.request_id, position=clicked.position,
                                    image_id=clicked.image_id, kind=pb.Interaction.CLICK))
        assert client.log_interactions(items).accepted_count == 5
    log = InteractionLog(gateway.data_dir / "interactions.sqlite")
    report = log.ctr()
    log.close()
    assert report["overall"]["impressions"] == 4 and report["overall"]["clicks"] == 1
    assert report["by_position"]["1"]["ctr"] == 1.0 and report["by_position"]["0"]["ctr"] == 0.0


def test_switch_errors_name_the_problem(loop_env):
    _, _, gateway = loop_env
    with gateway.client() as client:
        for version, code, words in (("7", grpc.StatusCode.NOT_FOUND, "does not serve encoder version 7"),
                                     ("two", grpc.StatusCode.INVALID_ARGUMENT, "model_version")):
            with pytest.raises(grpc.RpcError) as error:
                client.switch_model(version)
            assert error.value.code() == code and words in error.value.details()


def test_the_served_version_survives_a_restart(loop_env):
    repository, triton, gateway = loop_env
    if "2" not in versions(repository):
        pytest.skip("needs the switch of the previous test")
    gateway.stop()
    restarted = start_gateway(triton, gateway.data_dir)
    try:
        with restarted.client() as client:
            assert client.stats().model_version == "encoder/2"
            response = client.search(small_jpeg("skimage/chelsea", 300), k=3)
            assert response.model_version == "encoder/2"
    finally:
        restarted.stop()


def test_a_new_data_directory_serves_the_promoted_version(loop_env, tmp_path):
    """What `make robust-encoder` does when the gate promotes: a fresh gateway (no model_version configured)
    starts on the promoted version; one that names a version keeps it."""
    repository, triton, _ = loop_env
    if "2" not in versions(repository):
        assert publish(None, repository) == "2"
        reload(triton.endpoint.grpc_url, admin_key=triton.settings.triton_admin_key)
    record_promotion("2", "promote: test", repository)
    try:
        for configured, expected in ((None, "encoder/2"), ("1", "encoder/1")):
            fresh = start_gateway(triton, tmp_path / f"data-{configured}",
                                  model_repository=repository, model_version=configured)
            try:
                with fresh.client() as client:
                    assert client.stats().model_version == expected
                    client.add_images([NewImage("skimage/astronaut", small_jpeg("skimage/astronaut", 240))])
                    assert client.search(small_jpeg("skimage/astronaut", 300), k=1).model_version == expected
            finally:
                fresh.stop()
    finally:
        (repository / "encoder" / PROMOTION_FILE).unlink()
