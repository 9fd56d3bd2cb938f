"""The gateway process: wires store, encoder client, servicer, interceptor, health, reflection and metrics.

    python -m server.api.app --triton-url 127.0.0.1:8001 [--grpc-port 50051] [--metrics-port 9464] [--data-dir var]

Every flag is a settings field (server/core/config.py); VSEARCH_<FIELD> environment variables work too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from protos.visual_search.v1 import visual_search_pb2 as pb
from protos.visual_search.v1 import visual_search_pb2_grpc as pb_grpc
from server.api.auth import INSECURE, JWT, Authorize, KeySet
from server.api.interceptors import StatusAndMetrics
from server.api.service import VisualSearchServicer
from server.core.config import Settings, add_arguments, from_args
from server.core.metrics import GatewayMetrics, MetricsTls
from server.embedding.contract import EMBEDDING_DIM
from server.embedding.embedder import triton_embedder
from server.embedding.imaging import Limits
from server.ingest.add import Indexer
from server.ingest.reindex import ModelSwitcher
from server.model_versions.feedback_calibration import CorpusRelevance
from server.model_versions.registry import default_version
from server.query.feedback import Feedback
from server.query.search import Searcher
from server.query.thumbnails import Thumbnails
from server.query.verification import Verifier
from server.runtime.admission import Admission
from server.runtime.callers import parse_shares
from server.runtime.serving import Live, serving
from server.store.blobs import BlobStore
from server.store.catalogs import open_store, read_active_version, write_active_version
from server.store.interactions import InteractionLog
from server.store.signatures import SignatureStore

log = logging.getLogger("gateway")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VisualSearch"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a 20 MiB image plus headroom; batches of them in AddImages streams
_HEALTH = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}


def access_keys(s: Settings) -> KeySet | None:
    """Production is secure by default: tokens over TLS, or the gateway refuses to start and says why."""
    if s.auth_mode == INSECURE:
        if s.grpc_host not in ("127.0.0.1", "::1", "localhost"):
            raise SystemExit(f"auth_mode {INSECURE} serves loopback only, not {s.grpc_host}")
        log.warning("*** INSECURE LOCAL MODE: no TLS, no authentication, every caller is admin. For demos and "
                    "tests on this machine only; production runs --auth-mode jwt (docs/OPERATIONS.md). ***")
        return None
    if s.auth_mode != JWT:
        raise SystemExit(f"auth_mode must be {JWT} or {INSECURE}, got {s.auth_mode!r}")
    if not s.jwt_keys_file or not (s.tls_cert_file and s.tls_key_file):
        raise SystemExit("auth_mode jwt needs --jwt-keys-file (a JWKS file of public keys) and --tls-cert-file/"
                         "--tls-key-file (tokens never travel in plaintext); see docs/OPERATIONS.md, or run "
                         f"--auth-mode {INSECURE} for a demo on this machine")
    return KeySet(Path(s.jwt_keys_file), s.jwt_issuer, s.jwt_audience)


def metrics_tls(s: Settings) -> MetricsTls | None:
    """How /metrics is served: in jwt mode only to scrapers with a client certificate (the metrics show private and
    deleted counts, which GetStats hides from readers); in insecure-local mode (loopback) as plain HTTP."""
    if s.auth_mode == INSECURE or not s.metrics_port:
        return None
    client_ca = s.metrics_client_ca_file or s.tls_client_ca_file
    if not client_ca:
        raise SystemExit("auth_mode jwt serves /metrics to scrapers with a client certificate only: set "
                         "--metrics-client-ca-file (the CA of Prometheus' client certificate; see "
                         "deploy/prometheus/prometheus.yml) or --metrics-port 0 to turn /metrics off")
    return MetricsTls(str(s.tls_cert_file), str(s.tls_key_file), client_ca)


def server_credentials(s: Settings) -> grpc.ServerCredentials:
    client_ca = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


class Gateway:
    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.live: Live | None = None
        self.relevance = CorpusRelevance()  # the served version's relevance curve, refitted on its feedback
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        s = self.settings
        faiss.omp_set_num_threads(1)  # one query at a time: OpenMP fan-out only adds latency and steals Triton's CPU
        # Same for BLAS: OpenBLAS's worker thread busy-waits after every call; it burned ~10 ms of CPU per Search
        # (benchmarks/results/e2e.md, CPU per request) for vector products of a few dozen rows.
        threadpool_limits(1, user_api="blas")
        # A new data directory starts with the configured or promoted version; afterwards ACTIVE_MODEL decides
        # (SwitchModel).
        active = await asyncio.to_thread(read_active_version, s) or f"{s.model_name}/{default_version(s)}"
        store = await asyncio.to_thread(open_store, s, active, EMBEDDING_DIM)
        await asyncio.to_thread(write_active_version, s, active)
        self.live = Live(serving(store, triton_embedder(s, active.rsplit("/", 1)[-1]), s))
        self.feedback = Feedback(InteractionLog(s.data_dir / "interactions.sqlite"))
        limits = Limits(s.max_image_bytes, s.max_image_pixels)
        blobs = BlobStore(s.blob_url or s.data_dir / "blobs")
        ingest = Admission("ingest", s.ingest_max_in_flight, 4 * s.max_image_pixels, None, share=s.admission_share,
                           on_shed=lambda caller: self.metrics.shed("ingest", caller))
        signatures = SignatureStore(blobs)
        searcher = Searcher(self.live, s, self.metrics, relevance=self.relevance, verifier=Verifier(signatures))
        servicer = VisualSearchServicer(
            searcher, Indexer(self.live, blobs, limits, self.metrics, ingest, signatures),
            ModelSwitcher(self.live, blobs, s),
            self.live, self.feedback, Thumbnails(self.live, blobs, limits, searcher.admission),
            parse_shares(s.admission_shares))
        keys = access_keys(s)
        scrape_tls = metrics_tls(s)
        self.server = grpc.aio.server(interceptors=[StatusAndMetrics(SERVICE_NAME, self.metrics),
                                                    Authorize(SERVICE_NAME, keys)], options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        pb_grpc.add_VisualSearchServicer_to_server(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        await self._set_health(False)
        if s.tls_cert_file and s.tls_key_file:
            port = self.server.add_secure_port(s.grpc_address, server_credentials(s))
        else:
            port = self.server.add_insecure_port(s.grpc_address)
        await self.server.start()
        if s.metrics_port:
            self.metrics.serve(s.metrics_port, s.grpc_host, scrape_tls)
        self._tasks.append(asyncio.create_task(self._watch()))
        if s.relevance_refit_s > 0:
            self._tasks.append(asyncio.create_task(self._refit_relevance(s.relevance_refit_s)))
        log.info("gateway listening on %s:%d (metrics :%d)", s.grpc_host, port, s.metrics_port)
        return port

    async def _set_health(self, ready: bool) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, _HEALTH[ready])

    async def _watch(self) -> None:
        """Health follows Triton's readiness and the store's; gauges follow the store (counts kept, not scanned);
        on a shared store the served version follows the live pointer another gateway may have moved."""
        was_ready: bool | None = None
        for tick in itertools.count():
            if self.settings.index_backend == "milvus" and tick % 5 == 0:
                await self._follow_live_version()
            live = self.live.serving
            encoder_ready = await live.embedder.is_ready()
            store_ready = await asyncio.to_thread(live.store.healthy)
            ready = encoder_ready and store_ready
            if ready != was_ready:
                await self._set_health(ready)
                why = [f"{live.embedder.model_version} not ready on Triton"] if not encoder_ready else []
                why += [] if store_ready else ["the vector store is unreachable"]
                log.info("health: %s", "SERVING" if ready else f"NOT_SERVING ({'; '.join(why)})")
                was_ready = ready
            try:
                await asyncio.to_thread(self._update_gauges)  # a server store answers counts over the network
            except Exception as exc:  # a store outage shows in health; the gauges wait for it to end
                log.debug("gauges not updated: %s", exc)
            await asyncio.sleep(1.0)

    async def _refit_relevance(self, every_s: float) -> None:
        """The served version's relevance curve, refitted from the impressions and clicks logged so far."""
        while True:
            await asyncio.sleep(every_s)
            live = self.live.serving
            try:
                await asyncio.to_thread(self.relevance.refit, self.feedback.log.judgements,
                                        live.embedder.model_version, live.calibration)
            except Exception:  # a refit that fails keeps the curve in use; the next one tries again
                log.exception("relevance refit failed")

    async def _follow_live_version(self) -> None:
        """Gateways over one Milvus are replicas: when another one cut over to a new model version (the alias
        moved), serve that version too, from its store and with its encoder version."""
        s, live = self.settings, self.live
        try:
            active = await asyncio.to_thread(read_active_version, s)
        except Exception:  # the store is down: health says so
            return
        old = live.serving
        if not active or active == old.embedder.model_version or live.switch is not None:
            return
        store = await asyncio.to_thread(open_store, s, active, EMBEDDING_DIM)
        async with live.writes:
            live.cut_over(serving(store, triton_embedder(s, active.rsplit("/", 1)[-1]), s))
        log.info("the live pointer moved: serving %s (was %s)", active, old.embedder.model_version)

    def _update_gauges(self) -> None:
        serving = self.live.serving
        stats = serving.store.stats()
        for state in ("public", "private", "deleted"):
            self.metrics.images.labels(state).set(getattr(stats.counts, state))
        self.metrics.set_index(stats.rows, stats.index_params)
        self.metrics.build_info.info({"model_version": serving.embedder.model_version, "index_type": stats.index_type,
                                      "index_version": str(serving.store.version)})

    async def stop(self, grace_s: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.live is not None:
            await self.live.close()
            self.feedback.close()


async def run_gateway(settings: Settings, ready_event: asyncio.Event | None = None,
                      stop_event: asyncio.Event | None = None) -> None:
    gateway = Gateway(settings)
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_event.set)
    await gateway.start()
    if ready_event is not None:
        ready_event.set()
    try:
        await stop_event.wait()
    finally:
        log.info("stopping gateway")
        await gateway.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Visual search gRPC gateway (needs a running Triton).")
    add_arguments(parser)
    settings = from_args(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run_gateway(settings))


if __name__ == "__main__":
    main()
