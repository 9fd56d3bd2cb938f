"""The console in production mode, as an attacker on its port would try it: HTTPS only, nothing without a
sign-in, forged tokens refused, every call made with the operator's own token (the gateway's roles hold),
uploads over the gateway's limit refused before they are sent on."""

from __future__ import annotations

import http.cookiejar
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.client import NewImage
from console.app import ConsoleConfig
from devkit.launcher import ConsoleProcess, start_console
from devkit.tokens import mint
from server.core.config import free_port
from tests.fixtures.gateway import start_secured_gateway
from tests.photos import small_jpeg

LIMIT = 3_000_000  # large enough that a reset connection shows (300 kB fitted in the socket buffers)


@dataclass
class Secured:
    console: ConsoleProcess
    keys: Path

    def token(self, roles: list[str], kid: str = "k1") -> str:
        return mint((self.keys / f"{kid}.pem").read_bytes(), kid, "operator-1", roles, ["ops"])

    def browser(self) -> Browser:
        return Browser(self.console.url)


class Browser:
    """Cookies kept like a browser's; the console's header on every call, as its page sends it."""

    def __init__(self, base: str) -> None:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed test certificate
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  urllib.request.HTTPSHandler(context=context))

    def call(self, path: str, body: bytes | Iterator[bytes] | None = None, method: str | None = None,
             content_type: str = "application/json", headers: dict[str, str] | None = None
             ) -> tuple[int, dict | bytes]:
        request = urllib.request.Request(self.base + path, data=body, method=method or ("POST" if body else "GET"),
                                         headers={"X-VSearch-Console": "1", "Content-Type": content_type,
                                                  **(headers or {})})
        try:
            with self.opener.open(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if "json" in response.headers["Content-Type"] else raw
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def sign_in(self, token: str) -> tuple[int, dict | bytes]:
        return self.call("api/session", json.dumps({"token": token}).encode())


@pytest.fixture(scope="module")
def secured(triton_server, tmp_path_factory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("console-prod")
    gateway = start_secured_gateway(triton_server, root, metrics_port=0)
    admin = mint((root / "k1.pem").read_bytes(), "k1", "setup", ["admin"], [])
    with gateway.client(timeout_s=60, token=admin) as client:
        client.add_images([NewImage("ops/coffee", small_jpeg("skimage/coffee"), "ops"),
                           NewImage("ops/secret", small_jpeg("skimage/rocket"), "ops", private=True)])
    console = start_console(gateway.target, free_port(), root / "console.log", "--tls-cert", str(root / "tls.pem"),
                            "--tls-key", str(root / "tls.key"), "--gateway-ca", str(root / "tls.pem"),
                            "--max-image-bytes", str(LIMIT), https=True)
    yield Secured(console, root)
    console.stop()
    gateway.stop()


def test_nothing_is_answered_without_a_sign_in(secured):
    browser = secured.browser()
    for path in ("api/service", "api/slo", "api/thumbnail?id=ops/coffee"):
        status, body = browser.call(path)
        assert status == 401 and body["code"] == "UNAUTHENTICATED", (path, body)
    status, body = browser.call("api/search", small_jpeg("skimage/coffee"), content_type="application/octet-stream")
    assert status == 401


def test_forged_and_underprivileged_tokens_do_not_sign_in(secured):
    browser = secured.browser()
    status, body = browser.sign_in(secured.token(["admin"], kid="attacker"))
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    status, body = browser.sign_in(secured.token(["write"]))  # may write, may not search: no console session
    assert status == 403 and body["code"] == "PERMISSION_DENIED"
    assert browser.call("api/service")[0] == 401  # no cookie was set by either attempt


def test_an_operator_searches_with_its_own_token_and_sees_public_images_only(secured):
    browser = secured.browser()
    assert browser.sign_in(secured.token(["search"])) == (200, {"signed_in": True})
    status, session = browser.call("api/session")
    assert session == {"mode": "production", "signed_in": True, "subject": "operator-1"}
    status, service = browser.call("api/service")
    assert status == 200 and service["private_count"] == 0  # a search token is not told private counts
    status, answer = browser.call("api/search?k=5", small_jpeg("skimage/rocket"),
                                  content_type="application/octet-stream")
    assert status == 200 and [r["image_id"] for r in answer["results"]] == ["ops/coffee"]
    status, jpeg = browser.call("api/thumbnail?id=ops/coffee")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    status, body = browser.call("api/thumbnail?id=ops/secret")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body = browser.call("api/search", b"\xff" * (LIMIT + 1), content_type="application/octet-stream")
    assert status == 400 and body == {"code": "INVALID_ARGUMENT",
                                      "message": f"image_bytes: {LIMIT + 1} bytes is over the {LIMIT}-byte limit"}
    browser.call("api/session", method="DELETE")
    assert browser.call("api/service")[0] == 401


def test_oversized_uploads_are_answered_not_reset(secured):
    """The refusal reaches the client however the body is sent: a server that answers while the client is still
    sending, and closes, resets the connection (over TLS: 'EOF occurred in violation of protocol')."""
    browser = secured.browser()
    assert browser.sign_in(secured.token(["search"]))[0] == 200
    declared = {"code": "INVALID_ARGUMENT", "message": f"image_bytes: {2 * LIMIT} bytes is over the {LIMIT}-byte limit"}
    streamed = {"code": "INVALID_ARGUMENT", "message": f"image_bytes: over the {LIMIT}-byte limit"}
    for _ in range(10):
        assert browser.call("api/search", b"\xff" * (2 * LIMIT), content_type="application/octet-stream") == (
            400, declared)
        chunks = iter([b"\xff" * 65536] * (2 * LIMIT // 65536))  # no Content-Length: sent chunked
        assert browser.call("api/search", chunks, content_type="application/octet-stream",
                            headers={"Transfer-Encoding": "chunked"}) == (400, streamed)


def test_the_console_will_not_start_unsafely():
    with pytest.raises(ValueError, match="loopback only"):
        ConsoleConfig(gateway="127.0.0.1:1", host="0.0.0.0", insecure_local=True).check()
    with pytest.raises(ValueError, match="--tls-cert"):
        ConsoleConfig(gateway="127.0.0.1:1", host="0.0.0.0").check()
    with pytest.raises(ValueError, match="--gateway-ca"):
        ConsoleConfig(gateway="127.0.0.1:1", tls_cert_file="c.pem", tls_key_file="k.pem").check()
