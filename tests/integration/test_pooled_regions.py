"""An encoder version whose graph pools the regions from the image's own pass, served by a real Triton.

The repository holds version 1 as shipped and version 2 = version 1 + the pooled regions output
(training/export_onnx.py: add_region_output). Indexing with version 2 costs one encoder input per image, through
Triton's image model (bytes) and through the encoder model (pixels decoded in the gateway); version 1 still
encodes its 6 region views.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from server.core.config import MODEL_REPOSITORY, loopback_settings
from server.embedding import imaging
from server.embedding.contract import TRITON_GRPC_KEY_HEADER
from server.embedding.embedder import ImageInput, LocalDecodeEmbedder, RemoteDecodeEmbedder
from server.embedding.encoder import EncoderClient
from server.embedding.onnx_encoder import OnnxEncoder
from server.triton.supervisor import TritonServer
from tests.photos import photo
from training.export_onnx import add_region_output

CROP = imaging.CropBox(0.1, 0.05, 0.95, 0.9)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(MODEL_REPOSITORY / "image_encoder", repo / "image_encoder", ignore=skip)
    (repo / "encoder").mkdir()
    shutil.copy(MODEL_REPOSITORY / "encoder" / "config.pbtxt", repo / "encoder" / "config.pbtxt")
    for version in ("1", "2"):
        shutil.copytree(MODEL_REPOSITORY / "encoder" / "1", repo / "encoder" / version, ignore=skip)
    add_region_output(repo / "encoder" / "2" / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    settings = dataclasses.replace(loopback_settings(), model_repository=repository)
    with TritonServer(settings, log_path=tmp_path_factory.mktemp("triton") / "triton.log") as server:
        yield server


def _encoder_inputs(triton: TritonServer, version: str) -> int:
    """Images the encoder model has run for `version` (Triton's own statistics)."""
    client = triton_grpc.InferenceServerClient(triton.endpoint.grpc_url)
    try:
        stats = client.get_inference_statistics("encoder", version, as_json=True,
                                                headers={TRITON_GRPC_KEY_HEADER: triton.settings.triton_admin_key})
        return int(stats["model_stats"][0].get("inference_count", 0))
    finally:
        client.close()


async def _settled_inputs(triton: TritonServer, version: str, quiet_s: float = 0.3) -> int:
    """The encoder's inference count once it has stopped changing for `quiet_s` (statistics land after answers)."""
    count = _encoder_inputs(triton, version)
    while True:
        await asyncio.sleep(quiet_s)
        again = _encoder_inputs(triton, version)
        if again == count:
            return count
        count = again


def _index(triton: TritonServer, version: str, items: list[ImageInput], local: bool) -> tuple[list, int]:
    """The items' embeddings with regions, and how many encoder inputs indexing them took."""
    async def run() -> tuple[list, int]:
        client = EncoderClient(triton.endpoint.grpc_url, version=version, key=triton.settings.triton_admin_key)
        try:
            await client.pools_regions()  # asked once per client (one blank image): not part of the count
            before = await _settled_inputs(triton, version)  # Triton may count the blank image a moment later
            embedder = (LocalDecodeEmbedder if local else RemoteDecodeEmbedder)(client, imaging.Limits())
            outcomes = await embedder.embed(items, regions=True, timeout_s=60)
            return outcomes, await _settled_inputs(triton, version) - before
        finally:
            await client.close()
    return asyncio.run(run())


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.sum(got * want, axis=-1)


@pytest.mark.parametrize("local", [False, True], ids=["bytes-to-triton", "decoded-in-gateway"])
def test_pooled_version_indexes_each_image_with_one_encoder_input(triton, repository, local):
    datas = [photo(i).path.read_bytes() for i in ("skimage/astronaut", "skimage/coffee", "skimage/rocket")]
    items = [ImageInput(d, CROP if n == 0 else None) for n, d in enumerate(datas)]
    pixels = np.stack([imaging.prepare(i.data, i.crop) for i in items])
    want_whole, want_regions = OnnxEncoder(repository / "encoder" / "2" / "model.onnx").run_with_regions(pixels)
    outcomes, inputs = _index(triton, "2", items, local)
    assert inputs == len(items)  # one encoder input per image, its regions included
    for outcome, whole, regions in zip(outcomes, want_whole, want_regions, strict=True):
        assert _cosines(outcome.vector, whole) >= 0.9999
        assert outcome.regions.shape == regions.shape and _cosines(outcome.regions, regions).min() >= 0.9999
    # the regions are not the whole image again: each box is its own vector
    assert _cosines(outcomes[0].regions, outcomes[0].vector).max() < 0.999


@pytest.mark.parametrize("local", [False, True], ids=["bytes-to-triton", "decoded-in-gateway"])
def test_a_version_without_pooled_regions_still_encodes_its_region_views(triton, local):
    data = photo("skimage/chelsea").path.read_bytes()
    views = imaging.prepare_views(data, imaging.region_views(CROP))
    want = OnnxEncoder(MODEL_REPOSITORY / "encoder" / "1" / "model.onnx").run(views)
    [outcome], inputs = _index(triton, "1", [ImageInput(data, CROP)], local)
    assert inputs == len(views)  # the image and its 6 region views
    assert _cosines(outcome.vector, want[0]) >= 0.9999 and _cosines(outcome.regions, want[1:]).min() >= 0.9999


def test_asking_a_version_without_pooled_regions_for_them_is_refused_with_the_reason(triton):
    """The client learns which versions pool their regions from the answers (Triton lists the output for every
    version); one that does not is asked for its views, never silently given none."""
    async def run() -> tuple[bool, bool, str]:
        old = EncoderClient(triton.endpoint.grpc_url, version="1", key=triton.settings.triton_admin_key)
        new = EncoderClient(triton.endpoint.grpc_url, version="2", key=triton.settings.triton_admin_key)
        try:
            try:
                await old.embed_with_regions(np.zeros((1, 224, 224, 3), np.uint8))
                message = ""
            except ValueError as exc:
                message = str(exc)
            return await old.pools_regions(), await new.pools_regions(), message
        finally:
            await old.close()
            await new.close()
    old_pools, new_pools, message = asyncio.run(run())
    assert (old_pools, new_pools) == (False, True)
    assert "encoder/1 has no pooled regions output" in message
