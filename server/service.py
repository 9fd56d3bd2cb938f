"""The gRPC gateway: protos in, domain calls, protos out. Errors become status codes in one place (`rpc`).

    python -m server.service --triton-url 127.0.0.1:8001 [--grpc-port 50051] [--metrics-port 9464] [--data-dir var]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from protos.visual_search.v1 import visual_search_pb2 as pb
from protos.visual_search.v1 import visual_search_pb2_grpc as pb_grpc
from server import imaging
from server.blobs import BlobStore
from server.config import Settings
from server.encoder import EMBEDDING_DIM, EncoderClient
from server.errors import FailedPrecondition, InvalidInput, NotFound, ServiceError
from server.ingest import Catalog, NewImage, catalog_dir, content_hash, read_active_version, write_active_version
from server.interactions import Interaction, InteractionLog
from server.metadata import Visibility
from server.metrics import GatewayMetrics
from server.reindex import Live, ModelSwitch, Serving
from server.search import Query, Searcher

log = logging.getLogger("gateway")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VisualSearch"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a 20 MiB image plus headroom; batches of them in AddImages streams
ADD_CHUNK = 32  # images embedded per Triton call while indexing
MAX_BATCH_QUERIES = 64
MAX_INTERACTIONS = 1000


def rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Metrics, and ServiceError -> gRPC status, for every RPC. Unexpected errors are INTERNAL, never a crash."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: VisualSearchServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics = self.metrics
        metrics.requests_in_flight.labels(name).inc()
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            code = exc.code
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name)
            await context.abort(code, f"internal error in {name}; the gateway log has the details")
        finally:
            metrics.requests_in_flight.labels(name).dec()
            metrics.request_latency.labels(name, code.name).observe(time.perf_counter() - start)
            if code != grpc.StatusCode.OK:
                metrics.errors.labels(name, code.name).inc()

    return wrapper


def _query(request: pb.SearchRequest) -> Query:
    kind = request.WhichOneof("query")
    crop = None
    if request.HasField("crop"):
        c = request.crop
        crop = imaging.CropBox(c.x_min, c.y_min, c.x_max, c.y_max)
    return Query(
        image_bytes=request.image_bytes if kind == "image_bytes" else None,
        image_id=request.image_id if kind == "image_id" else None,
        crop=crop, k=request.k,
        min_score=request.min_score if request.HasField("min_score") else None,
        include_duplicates=request.include_duplicates,
    )


class VisualSearchServicer(pb_grpc.VisualSearchServicer):
    def __init__(self, searcher: Searcher, live: Live, blobs: BlobStore, interactions: InteractionLog,
                 metrics: GatewayMetrics, settings: Settings) -> None:
        self.searcher, self.live, self.blobs = searcher, live, blobs
        self.interactions, self.metrics, self.settings = interactions, metrics, settings

    def _response(self, answer: Any) -> pb.SearchResponse:
        return pb.SearchResponse(
            results=[pb.SearchResult(image_id=h.image_id, score=h.score, position=i)
                     for i, h in enumerate(answer.hits)],
            model_version=answer.model_version, index_version=answer.index_version, request_id=answer.request_id)

    @rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        query = _query(request)
        answer = await self.searcher.search(query, context.time_remaining())
        if query.image_id is not None:
            await asyncio.to_thread(self.interactions.remember_query, answer.request_id, query.image_id)
        return self._response(answer)

    @rpc
    async def SearchBatch(self, request: pb.SearchBatchRequest, context: grpc.aio.ServicerContext
                          ) -> pb.SearchBatchResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH_QUERIES:
            raise InvalidInput(f"needs 1..{MAX_BATCH_QUERIES} queries, got {len(request.requests)}", field="requests")
        answers = await self.searcher.search_many([_query(r) for r in request.requests], context.time_remaining())
        return pb.SearchBatchResponse(responses=[self._response(a) for a in answers])

    @rpc
    async def AddImages(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> pb.AddImagesResponse:
        results: list[pb.AddImageResult] = []
        chunk: list[pb.AddImageRequest] = []
        async for item in request_iterator:
            chunk.append(item)
            if len(chunk) == ADD_CHUNK:
                results += await self._add_chunk(chunk, context.time_remaining())
                chunk = []
        if chunk:
            results += await self._add_chunk(chunk, context.time_remaining())
        labels = {pb.AddImageResult.ADDED: "added", pb.AddImageResult.ALREADY_EXISTS: "already_exists"}
        for r in results:
            self.metrics.images_added.labels(labels.get(r.status, "rejected")).inc()
        catalog = self.live.serving.catalog
        await asyncio.to_thread(catalog.snapshot_if_due)
        return pb.AddImagesResponse(results=results, index_version=catalog.index.version)

    async def _add_chunk(self, items: list[pb.AddImageRequest], timeout_s: float | None) -> list[pb.AddImageResult]:
        limits = self.searcher.limits
        results = [pb.AddImageResult(image_id=i.image_id) for i in items]

        def prepare(item: pb.AddImageRequest) -> np.ndarray:
            if not item.image_id or len(item.image_id.encode()) > 256:
                raise InvalidInput("must be 1..256 bytes of UTF-8", field="image_id")
            if item.visibility not in (pb.VISIBILITY_UNSPECIFIED, pb.VISIBILITY_PUBLIC, pb.VISIBILITY_PRIVATE):
                raise InvalidInput(f"unknown value {item.visibility}", field="visibility")
            return imaging.prepare(item.image_bytes, None, limits)

        def reject(n: int, exc: ServiceError) -> None:
            results[n].status = pb.AddImageResult.REJECTED
            results[n].error_code, results[n].error_message = exc.code.name, exc.message

        start = time.perf_counter()
        serving = self.live.serving
        todo = []
        for n, item in enumerate(items):
            if serving.catalog.store.get(item.image_id) is not None:
                results[n].status = pb.AddImageResult.ALREADY_EXISTS  # idempotent: skip the decode and embed
            else:
                todo.append(n)
        # Decode the chunk in parallel threads (PIL releases the GIL): serial decoding left a core idle.
        decoded = await asyncio.gather(*(asyncio.to_thread(prepare, items[n]) for n in todo), return_exceptions=True)
        pixels: dict[int, np.ndarray] = {}
        for n, outcome in zip(todo, decoded, strict=True):
            if isinstance(outcome, ServiceError):
                reject(n, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                pixels[n] = outcome
        self.metrics.stage_latency.labels("decode").observe(time.perf_counter() - start)
        if not pixels:
            return results
        order = list(pixels)
        batch = np.stack([pixels[n] for n in order])
        hashes = [content_hash(items[n].image_bytes) for n in order]
        try:
            start = time.perf_counter()
            vectors = await serving.encoder.embed(batch, timeout_s)
            self.metrics.stage_latency.labels("embed").observe(time.perf_counter() - start)
            start = time.perf_counter()
            # Originals first: a new model version re-embeds from them (server/reindex.py).
            await asyncio.to_thread(self.blobs.put_many, [(h, items[n].image_bytes) for h, n in zip(hashes, order,
                                                                                                   strict=True)])
            async with self.live.writes:
                if self.live.serving is not serving:  # a model cut-over happened meanwhile: embed for the new one
                    serving = self.live.serving
                    vectors = await serving.encoder.embed(batch, timeout_s)
                new = [NewImage(items[n].image_id, items[n].owner_id,
                                Visibility.PRIVATE if items[n].visibility == pb.VISIBILITY_PRIVATE
                                else Visibility.PUBLIC, h, vectors[j])
                       for j, (n, h) in enumerate(zip(order, hashes, strict=True))]
                added = await asyncio.to_thread(serving.catalog.add, new, serving.encoder.model_version)
            self.metrics.stage_latency.labels("persist").observe(time.perf_counter() - start)
        except ServiceError as exc:
            for n in order:
                reject(n, exc)
            return results
        for n, ok in zip(order, added, strict=True):
            results[n].status = pb.AddImageResult.ADDED if ok else pb.AddImageResult.ALREADY_EXISTS
        return results

    @rpc
    async def DeleteImages(self, request: pb.DeleteImagesRequest, context: grpc.aio.ServicerContext
                           ) -> pb.DeleteImagesResponse:
        async with self.live.writes:
            count, unknown = await asyncio.to_thread(self.live.serving.catalog.delete, list(request.image_ids))
        return pb.DeleteImagesResponse(deleted_count=count, not_found_ids=unknown)

    @rpc
    async def SetVisibility(self, request: pb.SetVisibilityRequest, context: grpc.aio.ServicerContext
                            ) -> pb.SetVisibilityResponse:
        mapping = {pb.VISIBILITY_PUBLIC: Visibility.PUBLIC, pb.VISIBILITY_PRIVATE: Visibility.PRIVATE}
        if request.visibility not in mapping:
            raise InvalidInput("must be VISIBILITY_PUBLIC or VISIBILITY_PRIVATE", field="visibility")
        async with self.live.writes:
            count, unknown = await asyncio.to_thread(
                self.live.serving.catalog.set_visibility, list(request.image_ids), mapping[request.visibility])
        return pb.SetVisibilityResponse(updated_count=count, not_found_ids=unknown)

    @rpc
    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        serving, switch = self.live.serving, self.live.switch
        counts = await asyncio.to_thread(serving.catalog.store.counts)
        factory, params = serving.catalog.index.describe()
        return pb.GetStatsResponse(
            image_count=counts["public"] + counts["private"], public_count=counts["public"],
            private_count=counts["private"], deleted_count=counts["deleted"], index_type=factory,
            index_params=params, embedding_dim=EMBEDDING_DIM, model_version=serving.encoder.model_version,
            index_version=serving.catalog.index.version, index_on_gpu=params.get("gpu") == "true",
            switching_to_model_version=switch.target if switch else "",
            switch_reembedded_count=switch.done if switch else 0, switch_total_count=switch.total if switch else 0,
            switch_error=self.live.last_switch_error)

    @rpc
    async def SwitchModel(self, request: pb.SwitchModelRequest, context: grpc.aio.ServicerContext
                          ) -> pb.SwitchModelResponse:
        version = request.model_version
        if not version.isdigit():
            raise InvalidInput(f"must be a version number such as \"2\", got {version!r}", field="model_version")
        active = self.live.serving.encoder
        state = pb.SwitchModelResponse.STARTED
        if version == active.version:
            state = pb.SwitchModelResponse.ALREADY_ACTIVE
        elif (switch := self.live.switch) is not None:
            if switch.encoder.version != version:
                raise FailedPrecondition(f"a switch to {switch.target} is running; wait for it (GetStats)",
                                         field="model_version")
            state = pb.SwitchModelResponse.ALREADY_RUNNING
        else:
            served = await active.served_versions()
            if version not in served:
                raise NotFound(f"Triton does not serve {self.settings.model_name} version {version} (served: "
                               f"{', '.join(served)}); publish it and reload the model first", field="model_version")
            encoder = EncoderClient(active.url, self.settings.model_name, version)
            ModelSwitch(self.live, self.blobs, self.settings.data_dir, encoder, self.searcher.limits).start()
        return pb.SwitchModelResponse(state=state, active_model_version=active.model_version)

    @rpc
    async def LogInteractions(self, request: pb.LogInteractionsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.LogInteractionsResponse:
        if not 1 <= len(request.interactions) <= MAX_INTERACTIONS:
            raise InvalidInput(f"needs 1..{MAX_INTERACTIONS} items, got {len(request.interactions)}",
                               field="interactions")
        items = []
        for n, i in enumerate(request.interactions):
            if i.kind not in (pb.Interaction.IMPRESSION, pb.Interaction.CLICK) or not i.request_id or not i.image_id:
                raise InvalidInput("needs request_id, image_id and kind IMPRESSION or CLICK",
                                   field=f"interactions[{n}]")
            when = i.time.ToSeconds() + i.time.nanos / 1e9 if i.HasField("time") else time.time()
            items.append(Interaction(i.request_id, i.position, i.image_id, int(i.kind), when))
        accepted = await asyncio.to_thread(self.interactions.record, items)
        return pb.LogInteractionsResponse(accepted_count=accepted)


class Gateway:
    """Wires catalog, encoder client, servicer, health, reflection and metrics into a grpc.aio server."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.live: Live | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        s = self.settings
        faiss.omp_set_num_threads(1)  # one query at a time: OpenMP fan-out only adds latency and steals Triton's CPU
        # Same for BLAS: OpenBLAS's worker thread busy-waits after every call; it burned ~10 ms of CPU per Search
        # (benchmarks/results/e2e.md, CPU per request) for vector products of a few dozen rows.
        threadpool_limits(1, user_api="blas")
        # A new data directory starts with the configured version; afterwards ACTIVE_MODEL decides (SwitchModel).
        active = read_active_version(s.data_dir) or f"{s.model_name}/{s.model_version}"
        encoder = EncoderClient(s.triton_url or f"127.0.0.1:{s.triton_grpc_port}", s.model_name,
                                active.rsplit("/", 1)[-1])
        catalog = await asyncio.to_thread(Catalog, catalog_dir(s.data_dir, active), EMBEDDING_DIM, active)
        await asyncio.to_thread(write_active_version, s.data_dir, active)
        self.live = Live(Serving(catalog, encoder))
        self.interactions = InteractionLog(s.data_dir / "interactions.sqlite")
        searcher = Searcher(self.live, s, self.metrics)
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        pb_grpc.add_VisualSearchServicer_to_server(
            VisualSearchServicer(searcher, self.live, BlobStore(s.data_dir / "blobs"), self.interactions, self.metrics,
                                 s), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        port = self.server.add_insecure_port(s.grpc_address)
        await self.server.start()
        if s.metrics_port:
            self.metrics.serve(s.metrics_port, s.grpc_host)
        self._tasks.append(asyncio.create_task(self._watch()))
        log.info("gateway listening on %s:%d (metrics :%d)", s.grpc_host, port, s.metrics_port)
        return port

    async def _watch(self) -> None:
        """Health follows Triton's readiness; gauges follow the catalog."""
        serving: bool | None = None
        while True:
            ready = await self.live.serving.encoder.is_ready()
            if ready != serving:
                status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ("", SERVICE_NAME):
                    await self.health.set(name, status)
                log.info("health: %s", "SERVING" if ready else
                         f"NOT_SERVING ({self.live.serving.encoder.model_version} not ready on Triton)")
                serving = ready
            self._update_gauges()
            await asyncio.sleep(1.0)

    def _update_gauges(self) -> None:
        serving = self.live.serving
        counts = serving.catalog.store.counts()
        for state, value in counts.items():
            self.metrics.images.labels(state).set(value)
        self.metrics.index_vectors.set(serving.catalog.index.ntotal)
        factory, _ = serving.catalog.index.describe()
        self.metrics.build_info.info({"model_version": serving.encoder.model_version, "index_type": factory,
                                      "index_version": str(serving.catalog.index.version)})

    async def stop(self, grace_s: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.live is not None:
            if self.live.switch is not None and self.live.switch.task is not None:
                self.live.switch.task.cancel()  # resumes at the next SwitchModel: the new catalog is durable
            serving = self.live.serving
            await asyncio.to_thread(serving.catalog.snapshot)
            serving.catalog.close()
            self.interactions.close()
            await serving.encoder.close()


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


def parse_settings(argv: list[str] | None = None) -> Settings:
    d = Settings.from_env()
    parser = argparse.ArgumentParser(description="Visual search gRPC gateway (needs a running Triton).")
    parser.add_argument("--triton-url", default=d.triton_url or f"127.0.0.1:{d.triton_grpc_port}",
                        help="Triton gRPC host:port")
    parser.add_argument("--grpc-host", default=d.grpc_host)
    parser.add_argument("--grpc-port", type=int, default=d.grpc_port)
    parser.add_argument("--metrics-port", type=int, default=d.metrics_port, help="0 disables the metrics endpoint")
    parser.add_argument("--data-dir", type=Path, default=d.data_dir)
    parser.add_argument("--duplicate-threshold", type=float, default=d.duplicate_threshold)
    args = parser.parse_args(argv)
    return Settings.from_env(triton_url=args.triton_url, grpc_host=args.grpc_host, grpc_port=args.grpc_port,
                             metrics_port=args.metrics_port, data_dir=args.data_dir,
                             duplicate_threshold=args.duplicate_threshold)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run_gateway(parse_settings(argv)))


if __name__ == "__main__":
    main()
