"""Limits through the real gateway: the pixel-heavy batch attack and the decode bomb are refused before any decode,
and the gateway keeps serving others; a caller over its share is refused while another keeps its own."""

from __future__ import annotations

import concurrent.futures
import io
import ssl
import threading
import time
import urllib.request

import grpc
import pytest
from PIL import Image

from clients.client import NewImage
from devkit.bombs import progressive_scan_bomb
from devkit.tokens import client_cert, keygen, mint, selfsigned
from protos.visual_search.v1 import visual_search_pb2 as pb
from tests.fixtures.gateway import start_gateway
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


def test_a_decode_bomb_is_refused_before_it_is_decoded(gateway):
    """The attack of issue 25: 160 KB of progressive JPEG whose 20,010 scans would each cost a pass over 16 Mpx."""
    bomb = progressive_scan_bomb(4000, 20_000)
    with gateway.client() as client:
        with pytest.raises(grpc.RpcError) as error:
            client.search(bomb, k=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "20010 scans is over the 256-scan limit" in error.value.details()
        assert client.search(small_jpeg("skimage/coffee", 200), k=1)


@pytest.fixture(scope="module")
def tenants(triton_server, tmp_path_factory):
    """A production-mode gateway (TLS, tokens) with two callers, and no latency budget: nothing is refused for
    time, so every refusal below is fairness."""
    root = tmp_path_factory.mktemp("tenants")
    keygen("k1", root / "k1.pem", root / "jwks.json")
    selfsigned(root / "tls.pem", root / "tls.key")
    gateway = start_gateway(triton_server, root / "data", auth_mode="jwt", jwt_keys_file=str(root / "jwks.json"),
                            tls_cert_file=str(root / "tls.pem"), tls_key_file=str(root / "tls.key"),
                            metrics_client_ca_file=str(root / "tls.pem"), admission_latency_budget_ms=0.0)
    tokens = {who: mint((root / "k1.pem").read_bytes(), "k1", who, ["search"]) for who in ("noisy", "polite")}
    admin = mint((root / "k1.pem").read_bytes(), "k1", "indexer", ["admin"])
    with gateway.client(timeout_s=60, token=admin) as client:
        client.add_images([NewImage(f"t/{n}", small_jpeg(p, 300)) for n, p in enumerate(
            ("skimage/coffee", "skimage/rocket", "skimage/chelsea", "desert"))])
    yield gateway, tokens, root
    gateway.stop()


def _burst(gateway, token: str, query: bytes, calls: int) -> list[str]:
    """`calls` searches sent at the same moment on connected channels; their status names (and messages)."""
    clients = [gateway.client(timeout_s=60, token=token) for _ in range(calls)]
    start = threading.Barrier(calls)

    def one(client) -> str:
        start.wait()
        try:
            client.search(query, k=3)
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    try:
        with concurrent.futures.ThreadPoolExecutor(calls) as pool:
            return list(pool.map(one, clients))
    finally:
        for client in clients:
            client.close()


def _heavy_png() -> bytes:
    """A photo as a 2500 x 2500 PNG: no reduced-scale decode for PNG, so each search holds its slot a while."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(small_jpeg("skimage/astronaut", 512))).resize((2500, 2500)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_caller_over_its_share_is_refused_while_the_other_keeps_its_own(tenants):
    gateway, tokens, root = tenants
    heavy = _heavy_png()
    alone = _burst(gateway, tokens["noisy"], heavy, 4)
    assert alone == ["OK"] * 4, alone  # alone, a caller may use the whole stage
    polite_statuses: list[str] = []
    stop = threading.Event()

    def polite() -> None:
        with gateway.client(timeout_s=60, token=tokens["polite"]) as client:
            while not stop.is_set():
                try:
                    client.search(small_jpeg("skimage/coffee", 300), k=3)
                    polite_statuses.append("OK")
                except grpc.RpcError as exc:
                    polite_statuses.append(exc.code().name)
    worker = threading.Thread(target=polite)
    worker.start()
    try:
        time.sleep(0.5)  # the polite caller is active from here on
        noisy = [status for _ in range(5) for status in _burst(gateway, tokens["noisy"], heavy, 4)]
    finally:
        stop.set()
        worker.join(60)
    refused = [s for s in noisy if s.startswith("RESOURCE_EXHAUSTED")]
    assert refused and all("holds its share" in s and "retry after" in s for s in refused), noisy
    assert polite_statuses and set(polite_statuses) == {"OK"}, polite_statuses
    context = ssl.create_default_context(cafile=str(root / "tls.pem"))
    client_cert(root / "tls.pem", root / "tls.key", "scraper", root / "scraper.pem", root / "scraper.key")
    context.load_cert_chain(str(root / "scraper.pem"), str(root / "scraper.key"))
    metrics = urllib.request.urlopen(f"https://127.0.0.1:{gateway.settings.metrics_port}/metrics", timeout=10,
                                     context=context).read().decode()
    shed = [line for line in metrics.splitlines() if line.startswith("vsearch_admission_shed_total")]
    assert f'vsearch_admission_shed_total{{caller="noisy",stage="search"}} {float(len(refused))}' in shed, shed
    assert 'caller="polite"' not in metrics
