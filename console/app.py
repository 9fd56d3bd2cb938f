"""`vsearch console`: the operators' web page (Starlette on uvicorn). Search by image with a drawn crop box, results
with thumbnails, "more like this", the service's state and a live SLO chart.

Everything it shows comes through the gateway's gRPC API (console/calls.py) with the signed-in operator's token,
so the gateway's rules hold as they do for any caller: a `search` token cannot hide or delete, a private or
deleted image has no thumbnail. Security of the page itself:
- production mode serves HTTPS only and needs a sign-in (the operator's token, kept in an HttpOnly, Secure,
  SameSite=Strict cookie); `insecure-local` mode (the demo) binds loopback only and signs nobody in;
- every state-changing call needs the `X-VSearch-Console` header and a same-origin `Origin` (a cross-site page
  can send neither without a CORS preflight this app never answers);
- the page renders text with `textContent` only, under a Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console.calls import CallFailed, Gateway, SearchOptions
from console.slo import PrometheusQueries, ScrapedMetrics

STATIC = Path(__file__).parent / "static"
COOKIE = "vsearch_session"
CSRF_HEADER = "x-vsearch-console"
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
               "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True)
class ConsoleConfig:
    gateway: str  # host:port of the gateway's gRPC API
    host: str = "127.0.0.1"
    port: int = 8080
    insecure_local: bool = False  # the demo: loopback, plain HTTP, no sign-in
    gateway_ca_file: str | None = None  # PEM of the gateway's CA: TLS to the gateway (production)
    tls_cert_file: str | None = None  # the console's own HTTPS certificate and key (production)
    tls_key_file: str | None = None
    metrics_url: str | None = None  # the gateway's /metrics, scraped for the SLO panel
    prometheus_url: str | None = None  # or a Prometheus server that scrapes it
    max_image_bytes: int = 20 * 2**20  # the gateway's upload limit, applied before anything is sent on
    slo_window_s: float = 30.0  # each SLO point covers this much time

    def check(self) -> None:
        if self.insecure_local:
            if not ipaddress.ip_address(self.host).is_loopback:
                raise ValueError(f"insecure-local mode serves loopback only, not {self.host}")
            return
        if not (self.tls_cert_file and self.tls_key_file):
            raise ValueError("production mode needs --tls-cert and --tls-key (or --insecure-local on loopback)")
        if not self.gateway_ca_file:
            raise ValueError("production mode sends operators' tokens to the gateway over TLS only: --gateway-ca")

    @property
    def url(self) -> str:
        return f"{'http' if self.insecure_local else 'https'}://{self.host}:{self.port}/"


def error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=HTTP_STATUS.get(code, 502))


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            expected = f"{request.url.scheme}://{request.url.netloc}"
            if request.headers.get(CSRF_HEADER) != "1" or (origin is not None and origin != expected):
                return error("PERMISSION_DENIED", "cross-site request refused: calls come from the console's page")
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"  # a hidden image's thumbnail is not kept anywhere
        return response


def _float(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise CallFailed("INVALID_ARGUMENT", f"{name}: not a number: {value[:40]!r}") from exc


def _options(request: Request) -> SearchOptions:
    try:
        k = int(request.query_params.get("k") or 0)
    except ValueError as exc:
        raise CallFailed("INVALID_ARGUMENT", "k: not an integer") from exc
    return SearchOptions(k=k, include_duplicates=request.query_params.get("include_duplicates") == "true",
                         min_score=_float(request, "min_score"), min_relevance=_float(request, "min_relevance"))


def create_app(config: ConsoleConfig, gateway: Gateway | None = None) -> Starlette:
    config.check()
    if gateway is None:
        ca = Path(config.gateway_ca_file).read_bytes() if config.gateway_ca_file else None
        gateway = Gateway(config.gateway, root_certificates=ca)
    slo: ScrapedMetrics | PrometheusQueries | None = None
    if config.prometheus_url:
        slo = PrometheusQueries(config.prometheus_url, window_s=config.slo_window_s)
    elif config.metrics_url:
        slo = ScrapedMetrics(config.metrics_url, window_s=config.slo_window_s)

    def token_of(request: Request) -> str | None:
        if config.insecure_local:
            return None
        token = request.cookies.get(COOKIE)
        if not token:
            raise CallFailed("UNAUTHENTICATED", "sign in with your operator token first")
        return token

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except CallFailed as exc:
                return error(exc.code, exc.message)
        return run

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def session(request: Request) -> Response:
        if request.method == "GET":
            token = None if config.insecure_local else request.cookies.get(COOKIE)
            subject = jwt.decode(token, options={"verify_signature": False}).get("sub") if token else None
            return JSONResponse({"mode": "insecure-local" if config.insecure_local else "production",
                                 "signed_in": config.insecure_local or token is not None, "subject": subject})
        response = JSONResponse({"signed_in": False})
        if request.method == "DELETE" or config.insecure_local:
            response.delete_cookie(COOKIE, path="/")
            return response
        try:
            token = str((await request.json())["token"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise CallFailed("INVALID_ARGUMENT", "send {\"token\": \"...\"}") from exc
        await run_in_threadpool(gateway.stats, token)  # the gateway verifies it: a bad token fails here
        response = JSONResponse({"signed_in": True})
        response.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict", path="/")
        return response

    async def read_upload(request: Request) -> bytes:
        """The upload, or INVALID_ARGUMENT once it is over the limit. An oversized body is still read (and
        dropped) up to twice the limit before the answer goes out: a server that answers and closes while the
        client is still sending resets the connection, and over TLS the client then sees a broken connection
        instead of the reason (nginx's lingering close). A body declared larger than that is refused unread."""
        limit = config.max_image_bytes
        declared = request.headers.get("content-length")
        refusal = None
        if declared and declared.isdigit() and int(declared) > limit:
            refusal = CallFailed("INVALID_ARGUMENT", f"image_bytes: {declared} bytes is over the {limit}-byte limit")
            if int(declared) > 2 * limit:
                raise refusal
        body, received = bytearray(), 0
        async for chunk in request.stream():
            received += len(chunk)
            if refusal is None and received > limit:
                refusal = CallFailed("INVALID_ARGUMENT", f"image_bytes: over the {limit}-byte limit")
            if refusal is None:
                body += chunk
            elif received > 2 * limit:
                break
        if refusal is not None:
            raise refusal
        return bytes(body)

    async def search(request: Request) -> Response:
        token, options = token_of(request), _options(request)
        corners = [_float(request, name) for name in ("x_min", "y_min", "x_max", "y_max")]
        crop = None if any(c is None for c in corners) else tuple(corners)
        image = await read_upload(request)
        return JSONResponse(await run_in_threadpool(gateway.search, image, crop, options, token))

    async def similar(request: Request) -> Response:
        token, options = token_of(request), _options(request)
        image_id = request.query_params.get("image_id", "")
        return JSONResponse(await run_in_threadpool(gateway.similar, image_id, options, token))

    async def thumbnail(request: Request) -> Response:
        token = token_of(request)
        try:
            side = int(request.query_params.get("side") or 0)
        except ValueError as exc:
            raise CallFailed("INVALID_ARGUMENT", "side: not an integer") from exc
        jpeg = await run_in_threadpool(gateway.thumbnail, request.query_params.get("id", ""), side, token)
        return Response(jpeg, media_type="image/jpeg")

    async def service(request: Request) -> Response:
        stats = await run_in_threadpool(gateway.stats, token_of(request))
        series = await run_in_threadpool(slo.series) if slo else []
        last = series[-1] if series else {}
        stats["admission"] = {"in_flight": last.get("in_flight"), "shed_per_s": last.get("shed_per_s"),
                              "state": "shedding" if (last.get("shed_per_s") or 0) > 0 else "admitting"}
        return JSONResponse(stats)

    async def slo_series(request: Request) -> Response:
        token_of(request)
        if slo is None:
            return JSONResponse({"source": None, "series": [], "error": "no metrics source configured"})
        series = await run_in_threadpool(slo.series)
        source = config.prometheus_url or config.metrics_url
        return JSONResponse({"source": source, "window_s": slo.window_s, "series": series, "error": slo.last_error})

    routes = [
        Route("/", index),
        Route("/api/session", guarded(session), methods=["GET", "POST", "DELETE"]),
        Route("/api/search", guarded(search), methods=["POST"]),
        Route("/api/similar", guarded(similar), methods=["POST"]),
        Route("/api/thumbnail", guarded(thumbnail)),
        Route("/api/service", guarded(service)),
        Route("/api/slo", guarded(slo_series)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if slo is not None:
            slo.start()
        try:
            yield
        finally:
            if slo is not None:
                slo.stop()
            gateway.close()

    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], lifespan=lifespan)
    app.state.config = config
    return app


def describe(config: ConsoleConfig) -> str:
    return json.dumps({"url": config.url, "gateway": config.gateway, "mode": "insecure-local" if config.insecure_local
                       else "production", "slo": config.prometheus_url or config.metrics_url})
