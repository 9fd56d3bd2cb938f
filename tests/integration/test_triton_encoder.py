"""The encoder on a real Triton: embeddings, crops, dynamic batching, errors, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from server.core.config import MODEL_REPOSITORY, loopback_settings
from server.core.errors import InvalidInput, Unavailable
from server.embedding import imaging
from server.embedding.contract import EMBEDDING_DIM, TRITON_GRPC_KEY_HEADER
from server.embedding.encoder import EncoderClient
from server.embedding.signature import pixel_signatures
from server.triton.supervisor import TritonServer
from tests.photos import photo


def client_of(triton: TritonServer, version: str | None = None) -> EncoderClient:
    """A client with the launcher's key: Triton serves inference to its holders only."""
    return EncoderClient(triton.endpoint.grpc_url, version=version, key=triton.settings.triton_admin_key)


def embed(triton: TritonServer, pixels: np.ndarray, version: str | None = "1") -> np.ndarray:
    """Pixels through Triton's encoder model, pinned to `version` (None: the newest it serves)."""
    async def run() -> np.ndarray:
        client = client_of(triton, version)
        try:
            return await client.embed(pixels, timeout_s=30)
        finally:
            await client.close()
    return asyncio.run(run())


def model_input(image_id: str, crop: imaging.CropBox | None = None) -> np.ndarray:
    return imaging.prepare(photo(image_id).path.read_bytes(), crop)


def test_real_photo_gives_unit_norm_embedding(triton_server):
    vectors = embed(triton_server, model_input("skimage/chelsea")[None])
    assert vectors.shape == (1, EMBEDDING_DIM) and vectors.dtype == np.float32
    assert abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-4


def test_two_crops_of_a_photo_are_closer_than_an_unrelated_photo(triton_server):
    crops = [imaging.CropBox(0.0, 0.0, 0.8, 0.8), imaging.CropBox(0.2, 0.2, 1.0, 1.0)]
    pixels = np.stack([model_input("skimage/astronaut", c) for c in crops] + [model_input("skimage/coffee")])
    a, b, other = embed(triton_server, pixels)
    assert a @ b > max(a @ other, b @ other) + 0.1


def _metric(text: str, name: str, model: str = "encoder") -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'model="{model}"' in line)


def test_dynamic_batching_merges_concurrent_requests(triton_server):
    def counts() -> tuple[float, float]:
        text = urllib.request.urlopen(triton_server.endpoint.metrics_url, timeout=5).read().decode()
        return _metric(text, "nv_inference_count"), _metric(text, "nv_inference_exec_count")

    time.sleep(1.5)  # Triton refreshes its metrics every second: the previous test's inferences must be counted
    before = counts()  # before this burst starts (a stale count once showed 51 = 48 + the 3 of the test before)
    pixels = model_input("skimage/rocket")[None]

    async def burst() -> None:
        client = client_of(triton_server)
        await asyncio.gather(*(client.embed(pixels, timeout_s=60) for _ in range(48)))
        await client.close()

    asyncio.run(burst())
    time.sleep(1.5)  # Triton refreshes its metrics every second (--metrics-interval-ms=1000)
    after = counts()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 48
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batching"


def key_header(triton: TritonServer) -> dict[str, str]:
    return {TRITON_GRPC_KEY_HEADER: triton.settings.triton_admin_key or ""}


@pytest.mark.parametrize("model", ["encoder", "image_encoder"])
def test_only_holders_of_the_launchers_key_can_embed(triton_server, model):
    """Anything else on the host that reaches Triton's port cannot embed around the gateway's authentication and
    admission: inference is a restricted protocol; health stays open."""
    client = triton_grpc.InferenceServerClient(triton_server.endpoint.grpc_url)
    if model == "encoder":
        tensor = triton_grpc.InferInput("pixels", [1, 224, 224, 3], "UINT8")
        tensor.set_data_from_numpy(model_input("skimage/rocket")[None])
        inputs = [tensor]
    else:
        image = triton_grpc.InferInput("image_bytes", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[photo("skimage/rocket").path.read_bytes()]], dtype=np.object_))
        box = triton_grpc.InferInput("crop", [1, 4], "FP32")
        box.set_data_from_numpy(np.array([[0.0, 0.0, 1.0, 1.0]], np.float32))
        inputs = [image, box]
    for headers in (None, {TRITON_GRPC_KEY_HEADER: "guessed"}):
        with pytest.raises(InferenceServerException, match=r"restricted|expecting header"):
            client.infer(model, inputs, headers=headers)
    assert client.is_model_ready(model)
    result = client.infer(model, inputs, headers=key_header(triton_server))
    assert result.as_numpy("embedding").shape == (1, 1280)


@pytest.mark.parametrize(("dtype", "shape"), [("FP32", [1, 224, 224, 3]), ("UINT8", [1, 100, 224, 3])])
def test_triton_rejects_wrong_dtype_or_shape_precisely(triton_server, dtype, shape):
    client = triton_grpc.InferenceServerClient(triton_server.endpoint.grpc_url)
    tensor = triton_grpc.InferInput("pixels", shape, dtype)
    tensor.set_data_from_numpy(np.zeros(shape, np.float32 if dtype == "FP32" else np.uint8))
    with pytest.raises(InferenceServerException) as error:
        client.infer("encoder", [tensor], headers=key_header(triton_server))
    assert "INVALID_ARG" in str(error.value.status())
    assert ("data-type" in error.value.message() or "shape" in error.value.message())


def test_client_validates_before_sending(triton_server):
    with pytest.raises(InvalidInput, match="uint8"):
        embed(triton_server, np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(InvalidInput, match="shape"):
        embed(triton_server, np.zeros((1, 224, 3), np.uint8))


def test_unavailable_when_triton_is_down_then_reconnects(private_triton):
    pixels = model_input("skimage/coffee")[None]

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        client = client_of(private_triton)
        private_triton.start()
        first = await client.embed(pixels, timeout_s=30)
        private_triton.stop()
        with pytest.raises(Unavailable, match="unavailable"):
            await client.embed(pixels, timeout_s=5)
        private_triton.start()  # same ports: the same client must reconnect by itself
        deadline = time.monotonic() + 10
        while not await client.is_ready() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        second = await client.embed(pixels, timeout_s=30)
        await client.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert float(first[0] @ second[0]) > 0.9999


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_stop_leaves_no_process(private_triton):
    private_triton.start()
    pid = private_triton.pid
    stubs = _children(pid)
    assert stubs, "the Python backend should run a stub process"
    private_triton.stop()
    assert all(_wait_gone(p) for p in [pid, *stubs])


def test_triton_dies_with_its_parent(tmp_path):
    """kill -9 of the launching process must not leave tritonserver (or its stubs) behind."""
    s = loopback_settings()
    code = (
        "import time; from server.core.config import Settings; from server.triton.supervisor import TritonServer\n"
        f"t = TritonServer(Settings(triton_http_port={s.triton_http_port}, triton_grpc_port={s.triton_grpc_port}, "
        f"triton_metrics_port={s.triton_metrics_port})).start()\n"
        "print(t.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        triton_pid = int(parent.stdout.readline())
        stubs = _children(triton_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(triton_pid), "tritonserver outlived its parent"
        assert all(_wait_gone(p) for p in stubs)
    finally:
        parent.kill()


def _embed_images(triton: TritonServer, items: list[tuple[bytes, imaging.CropBox | None]],
                  version: str | None = "1", output: int = 0) -> list:
    """Per item the image model's `output` (0: embedding, 2: pixel signature) or the exception it raised."""
    async def run() -> list:
        client = client_of(triton, version)
        try:
            outcomes = await asyncio.gather(*(client.embed_image(data, crop, timeout_s=60) for data, crop in items),
                                            return_exceptions=True)
            return [o if isinstance(o, BaseException) else o[output] for o in outcomes]
        finally:
            await client.close()
    return asyncio.run(run())


def test_image_model_decodes_inside_triton_exactly_like_the_gateway(triton_server):
    """Bytes + crop to Triton's image model give the embedding of the gateway's own preprocessing."""
    items = [(photo(i).path.read_bytes(), crop) for i in ("skimage/astronaut", "skimage/chelsea", "skimage/coffee")
             for crop in (None, imaging.CropBox(0.3, 0.0, 0.75, 0.45))]
    remote = _embed_images(triton_server, items)
    local = embed(triton_server, np.stack([imaging.prepare(d, c) for d, c in items]))
    for got, want in zip(remote, local, strict=True):
        assert float(got @ want) >= 0.9999
    signatures = _embed_images(triton_server, items, output=2)
    want = pixel_signatures(np.stack([imaging.prepare(d, c) for d, c in items]))
    np.testing.assert_array_equal(np.stack(signatures), want)  # the same pixels, the same function
    assert len({s.tobytes() for s in signatures}) == len(items)


def test_a_bad_image_fails_only_its_own_request_with_the_field_named(triton_server):
    good = photo("skimage/rocket").path.read_bytes()
    truncated = good[: len(good) // 3]
    outcomes = _embed_images(triton_server, [
        (good, None), (b"GIF89a not really", None), (good, None), (truncated, None),
        (good, imaging.CropBox(0.1, 0.1, 0.2, 0.2)), (b"", None)])
    assert [isinstance(o, np.ndarray) for o in outcomes] == [True, False, True, False, True, False]
    for bad in (outcomes[1], outcomes[3], outcomes[5]):
        assert isinstance(bad, InvalidInput) and bad.message.startswith("image_bytes: ")


def test_image_model_embeds_with_the_requested_encoder_version(triton_server):
    """Every shipped version is served (1: the pretrained model; 2: the copy-robust one, float16 weights), and the
    image model embeds with the version the request names, the newest when it names none."""
    data = photo("skimage/chelsea").path.read_bytes()
    pixels = imaging.prepare(data)[None]
    served = sorted(p.name for p in (MODEL_REPOSITORY / "encoder").iterdir() if p.name.isdigit())
    assert served[:2] == ["1", "2"]
    by_version = {v: _embed_images(triton_server, [(data, None)], v)[0] for v in served}
    for version, vector in by_version.items():
        assert float(vector @ embed(triton_server, pixels, version)[0]) >= 0.9999
    assert float(by_version["1"] @ by_version["2"]) < 0.999  # two different models
    newest = _embed_images(triton_server, [(data, None)], None)[0]
    assert float(newest @ by_version[served[-1]]) >= 0.9999
    missing = _embed_images(triton_server, [(data, None)], "99")[0]
    assert isinstance(missing, Unavailable | InvalidInput) and "99" in str(missing)


def test_a_request_still_queued_at_its_deadline_is_dropped_not_decoded(triton_server):
    """The caller's deadline reaches Triton's queue (the client's `timeout`, allowed by the models' queue policy):
    work whose caller has gone is never decoded or embedded. A 1-microsecond deadline has passed by the time the
    scheduler looks at the request."""
    def executed() -> float:
        time.sleep(1.5)  # Triton refreshes its metrics every second
        text = urllib.request.urlopen(triton_server.endpoint.metrics_url, timeout=5).read().decode()
        return _metric(text, "nv_inference_count", "image_encoder")

    client = triton_grpc.InferenceServerClient(triton_server.endpoint.grpc_url)
    image = triton_grpc.InferInput("image_bytes", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[photo("skimage/rocket").path.read_bytes()]], dtype=np.object_))
    box = triton_grpc.InferInput("crop", [1, 4], "FP32")
    box.set_data_from_numpy(np.array([[0.0, 0.0, 1.0, 1.0]], np.float32))
    outputs = [triton_grpc.InferRequestedOutput("embedding")]
    before = executed()
    for _ in range(10):
        with pytest.raises(InferenceServerException, match=r"(?i)timeout|time out|expired"):
            client.infer("image_encoder", [image, box], outputs=outputs, timeout=1, headers=key_header(triton_server))
    assert executed() == before
    ok = client.infer("image_encoder", [image, box], outputs=outputs, timeout=30_000_000,
                      headers=key_header(triton_server))
    assert ok.as_numpy("embedding").shape == (1, 1280) and executed() == before + 1
