"""Server interceptors: every VisualSearch RPC gets its metrics, and its domain errors become status codes here
(never in the servicer's methods). Unexpected errors are INTERNAL with a pointer to the log, never a crash."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.api.status import code_of
from server.core.errors import ServiceError
from server.core.metrics import GatewayMetrics

log = logging.getLogger("gateway")


class StatusAndMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, service_name: str, metrics: GatewayMetrics) -> None:
        self.prefix, self.metrics = f"/{service_name}/", metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler  # health and reflection keep their own behaviour
        name = details.method[len(self.prefix):]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(name, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(name, handler.stream_unary), handler.request_deserializer, handler.response_serializer)
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
                await context.abort(code, exc.message)
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
