"""Milvus plumbing: constants, the unavailable error, guarded calls, collection names and the live alias."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pymilvus import MilvusClient, MilvusException

from server.core.errors import Unavailable

log = logging.getLogger(__name__)

LIVE_ALIAS = "vsearch_live"
ELIGIBLE = "visibility == 1 and deleted == false"
SCALARS = ["image_id", "owner_id", "visibility", "deleted", "content_hash", "added_at", "seq"]
MAX_TOPK = 16384  # Milvus' limit on limit (and on offset + limit of a query)
SEGMENT_BYTES = 512 * 2**20  # dataCoord.segment.maxSize: Milvus builds one index per sealed segment of this size
T = TypeVar("T")


class StoreUnavailable(Unavailable, ConnectionError):
    """Milvus cannot be reached (down, restarting, network): safe to retry; the gateway answers UNAVAILABLE."""


def collection_name(model_version: str, prefix: str = "vsearch") -> str:
    """`encoder/2` -> `vsearch_encoder_2` (Milvus names: letters, digits, underscores)."""
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', model_version)}"


def _literal(text: str) -> str:
    """A string literal for a Milvus filter expression."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _in(ids: Sequence[str]) -> str:
    return f"image_id in [{', '.join(_literal(i) for i in ids)}]"


def _is_unavailable(exc: BaseException) -> bool:
    """Connection-level failure (server down or unreachable) as opposed to a bad request."""
    if type(exc).__module__.startswith("grpc"):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("fail connecting", "unavailable", "connection refused", "deadline",
                                   "failed to connect", "not ready", "timeout", "stopped"))


def _guard(where: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except (MilvusException, OSError) as exc:
        if isinstance(exc, MilvusException) and not _is_unavailable(exc):
            raise
        raise StoreUnavailable(f"Milvus at {where} is unavailable: {exc}") from exc
    except Exception as exc:
        if _is_unavailable(exc):
            raise StoreUnavailable(f"Milvus at {where} is unavailable: {exc}") from exc
        raise


def _client(uri: str, timeout_s: float, dedicated: bool = False) -> MilvusClient:
    return _guard(uri, MilvusClient, uri=uri, timeout=timeout_s, dedicated=dedicated)


def point_live_alias(uri: str, model_version: str, prefix: str = "vsearch", alias: str = LIVE_ALIAS) -> None:
    """Make `alias` name the collection of `model_version` (one atomic switch on the server)."""
    client = _client(uri, 10.0)
    try:
        target = collection_name(model_version, prefix)
        if not _guard(uri, client.has_collection, target):
            raise ValueError(f"no collection {target} for {model_version}")
        if alias in _guard(uri, client.list_aliases).get("aliases", []):
            _guard(uri, client.alter_alias, collection_name=target, alias=alias)
        else:
            _guard(uri, client.create_alias, collection_name=target, alias=alias)
    finally:
        client.close()


def live_model_version(uri: str, alias: str = LIVE_ALIAS) -> str | None:
    """The encoder version whose collection `alias` names (None if the alias does not exist)."""
    client = _client(uri, 10.0)
    try:
        if alias not in _guard(uri, client.list_aliases).get("aliases", []):
            return None
        target = _guard(uri, client.describe_alias, alias=alias)["collection_name"]
        return str(_guard(uri, client.describe_collection, target)["description"]) or None
    finally:
        client.close()
