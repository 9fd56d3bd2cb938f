"""Server interceptors: every VisualSearch RPC gets its metrics, and its domain errors become status codes here
(never in the servicer's methods). Unexpected errors are INTERNAL with a pointer to the log, never a crash.

Requests are parsed here too, not by grpc: grpc.aio answers a message its deserializer cannot parse with UNKNOWN
(unary) or INTERNAL (streams) and no hook exists to change that, so the handlers get raw bytes
(`request_deserializer=None`) and a malformed message becomes INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.api.status import code_of
from server.core.errors import InvalidInput, ServiceError
from server.core.metrics import GatewayMetrics

log = logging.getLogger("gateway")
MAX_DETAILS = 1000  # status details travel in trailers (8 KiB max by default): never echo unbounded input


def _parse(deserializer: Callable[[bytes], Any] | None, raw: Any) -> Any:
    if deserializer is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:
        raise InvalidInput(f"not a valid protobuf message of this RPC's request type ({type(exc).__name__})",
                           field="request") from exc


async def _parsed_stream(deserializer: Callable[[bytes], Any] | None, raw_items: Any) -> Any:
    async for raw in raw_items:
        yield _parse(deserializer, raw)


class StatusAndMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, service_name: str, metrics: GatewayMetrics) -> None:
        self.prefix, self.metrics = f"/{service_name}/", metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler  # health and reflection keep their own behaviour
        name = details.method[len(self.prefix):]
        parse = handler.request_deserializer
        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await behaviour(_parse(parse, raw), context)
            return grpc.unary_unary_rpc_method_handler(self._wrap(name, unary), None, handler.response_serializer)
        if handler.stream_unary is not None:
            stream_behaviour = handler.stream_unary

            async def stream(raw_items: Any, context: grpc.aio.ServicerContext) -> Any:
                return await stream_behaviour(_parsed_stream(parse, raw_items), context)
            return grpc.stream_unary_rpc_method_handler(self._wrap(name, stream), None, handler.response_serializer)
        return handler

    def _wrap(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        metrics = self.metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metrics.requests_in_flight.labels(name).inc()
            start, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except ServiceError as exc:
                code = code_of(exc)
                message = exc.message if len(exc.message) <= MAX_DETAILS else exc.message[:MAX_DETAILS] + "..."
                await context.abort(code, message)
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

        return observed
