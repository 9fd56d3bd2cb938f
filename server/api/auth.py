"""Who may do what: bearer tokens (JWT, verified against a JWKS file of public keys) checked by an interceptor.

Roles: `search` (Search, SearchBatch, GetThumbnail, LogInteractions, GetStats without private counts), `write`
(AddImages, DeleteImages, SetVisibility for the owners the token names), `feedback` (with `search`: the
interactions this caller logs are trusted to refit the served relevance curve, which every caller sees; give it
to the surface that logs real users' clicks, not to every searcher), `admin` (everything, every owner,
SwitchModel, private counts). The verified caller is put in a context variable for the servicer (`current_caller()`).
`insecure-local` mode (loopback only, announced loudly) treats every caller as admin: `make demo` and tests.
Key rotation: add the new public key to the JWKS file, sign new tokens with it, remove the old key once the
tokens it signed have expired; the file is re-read when it changes (docs/OPERATIONS.md).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt

from server.core.errors import PermissionDenied, ServiceError, Unauthenticated
from server.core.ids import owner_id_problem

log = logging.getLogger("gateway.auth")
INSECURE, JWT = "insecure-local", "jwt"
SEARCH, WRITE, FEEDBACK, ADMIN = "search", "write", "feedback", "admin"
NEEDS = {"Search": SEARCH, "SearchBatch": SEARCH, "LogInteractions": SEARCH, "GetStats": SEARCH, "GetThumbnail": SEARCH,
         "AddImages": WRITE, "DeleteImages": WRITE, "SetVisibility": WRITE, "SwitchModel": ADMIN}
LEEWAY_S = 30


@dataclass(frozen=True)
class Caller:
    subject: str
    roles: frozenset[str]
    owners: frozenset[str] = field(default_factory=frozenset)

    @property
    def admin(self) -> bool:
        return ADMIN in self.roles

    def may(self, role: str) -> bool:
        return self.admin or role in self.roles

    def owns(self, owner_id: str) -> bool:
        return self.admin or owner_id in self.owners


LOCAL_ADMIN = Caller("insecure-local", frozenset({ADMIN}))
NOBODY = Caller("anonymous", frozenset())  # fail closed: code reached without the interceptor may do nothing
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=NOBODY)


def current_caller() -> Caller:
    return _CALLER.get()


class KeySet:
    """Public keys by key ID, from a JWKS file; re-read when the file changes (checked every few seconds)."""

    def __init__(self, path: Path, issuer: str | None, audience: str | None) -> None:
        self.path, self.issuer, self.audience = path, issuer, audience
        self._keys: dict[str, jwt.PyJWK] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        """A corrupt file raises (the caller keeps the keys loaded before); a valid file with no keys means every
        key was retired: no token is valid any more (fail closed)."""
        stat = os.stat(self.path)
        if (stat.st_mtime, stat.st_size) == self._stamp:
            return
        document = json.loads(self.path.read_text())
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError(f"{self.path}: not a JWKS document (needs a 'keys' list)")
        keys = jwt.PyJWKSet.from_dict(document).keys if document["keys"] else []
        if any(not k.key_id for k in keys):
            raise ValueError(f"{self.path}: every key needs a 'kid'")
        self._keys, self._stamp = {k.key_id: k for k in keys}, (stat.st_mtime, stat.st_size)
        if not keys:
            log.error("*** %s holds no keys: every key was retired, so NO token is accepted until a key is added "
                      "(every call gets UNAUTHENTICATED) ***", self.path)
            return
        log.info("token keys loaded from %s: %s", self.path, ", ".join(sorted(self._keys)))

    def reload(self) -> None:
        """Re-read the file if it changed; a corrupt one keeps the keys loaded before (logged)."""
        self._checked = time.monotonic()
        try:
            self._load()
        except (OSError, ValueError, jwt.PyJWTError):  # json.JSONDecodeError is a ValueError
            log.exception("cannot re-read %s; keeping the keys loaded before", self.path)

    def verify(self, token: str) -> Caller:
        if time.monotonic() - self._checked > 5:
            self.reload()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed bearer token ({exc})") from None
        key = self._keys.get(kid or "")
        if key is None:
            raise Unauthenticated(f"token key ID {str(kid)[:40]!r} is not a configured key (rotated out?)")
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=self.audience,
                                issuer=self.issuer, leeway=LEEWAY_S,
                                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired; get a new one") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token rejected: {exc}") from None
        roles, owners = claims.get("roles", []), claims.get("owners", [])
        if not isinstance(roles, list) or not isinstance(owners, list):
            raise Unauthenticated("token claims 'roles' and 'owners' must be lists")
        if any(owner_id_problem(str(o)) for o in owners):
            raise Unauthenticated("token names an owner ID that cannot exist (owner IDs never contain '/'); get a "
                                  "new token")
        return Caller(str(claims["sub"]), frozenset(map(str, roles)), frozenset(map(str, owners)))


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise Unauthenticated("no credentials: send 'authorization: Bearer <token>' metadata")


class Authorize(grpc.aio.ServerInterceptor):
    """Verifies the caller of every VisualSearch RPC and checks its role; health and reflection stay open."""

    def __init__(self, service_name: str, keys: KeySet | None) -> None:
        self.prefix, self.keys = f"/{service_name}/", keys

    def caller(self, method: str, metadata: Any) -> Caller:
        if self.keys is None:
            return LOCAL_ADMIN
        caller = self.keys.verify(_bearer(metadata))
        needed = NEEDS.get(method, ADMIN)
        if not caller.may(needed):
            raise PermissionDenied(f"{method} needs the '{needed}' role; the token of {caller.subject!r} has "
                                   f"{sorted(caller.roles) or 'none'}")
        return caller

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        try:  # from the call's metadata alone, before a byte of the request body is read
            caller = self.caller(details.method[len(self.prefix):], details.invocation_metadata)
        except ServiceError as refused:
            return _refusal(refused, handler.response_serializer)
        return _run_as(caller, handler)


def _refusal(error: ServiceError, serializer: Callable[..., bytes] | None) -> grpc.RpcMethodHandler:
    """A client-streaming handler that fails at once: grpc reads a streaming request only when the handler asks
    for it, so an unauthenticated caller's body (up to 64 MiB) is never received in full, nor parsed."""
    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        raise error
    return grpc.stream_unary_rpc_method_handler(refuse, None, serializer)


def _run_as(caller: Caller, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler, run with `caller` as `current_caller()`."""
    for kind, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                       ("stream_unary", grpc.stream_unary_rpc_method_handler)):
        inner = getattr(handler, kind)
        if inner is not None:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext, inner: Any = inner) -> Any:
                _CALLER.set(caller)
                return await inner(request, context)
            return make(behaviour, handler.request_deserializer, handler.response_serializer)
    return handler
