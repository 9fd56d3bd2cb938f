"""Milvus plumbing: constants, the unavailable error, guarded calls, the connection every part of the store shares,
collection names and the live alias."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from pymilvus import MilvusClient, MilvusException
from pymilvus.client.utils import SciPyHelper

from server.core.errors import Unavailable

log = logging.getLogger(__name__)

# pymilvus checks at the first search whether scipy.sparse exists by executing a fresh copy of it outside the import
# lock. Two first searches at once (the gateway searches image and region rows in threads) can then meet a scipy
# submodule half imported: INTERNAL "partially initialized module 'scipy.sparse._bsr'" (CI, 2026-12-07). The check
# runs once here, at import, before any search thread exists.
SciPyHelper.is_scipy_sparse(None)

LIVE_ALIAS = "vsearch_live"
ELIGIBLE = "visibility == 1 and deleted == false"
SCALARS = ["image_id", "owner_id", "visibility", "deleted", "content_hash", "added_at", "seq"]
MAX_TOPK = 16384  # Milvus' limit on limit (and on offset + limit of a query)
SEGMENT_BYTES = 512 * 2**20  # dataCoord.segment.maxSize: Milvus builds one index per sealed segment of this size
KEY_BITS = 59  # an image row's INT64 key: 59 bits of a hash of its ID ...
REGION_BITS = 4  # ... and a region row's: the image's key and the region number (up to 16 regions)
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


def image_key(image_id: str, probe: int = 0) -> int:
    """The INT64 primary key of an image's row: 59 bits of the BLAKE2b hash of its ID, plus `probe` for an ID whose
    hash another image's row already holds (`Connection.free_keys`)."""
    digest = int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "big")
    return ((digest >> (64 - KEY_BITS)) + probe) % (1 << KEY_BITS)


def _key_literal(key: str | int) -> str:
    return _literal(key) if isinstance(key, str) else str(int(key))


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


class Connection:
    """One client of one collection (and its tombstones), shared by the parts of a store: every call has a deadline,
    and a call that finds the collection not loaded (Milvus restarted) loads it and tries once more.

    Primary keys: INT64 (`key`: `image_key` of the image ID; a region row's, `region_key`), the image ID a VARCHAR
    field. Milvus 2.3.5 with memory-mapped segments misses rows looked up by a VARCHAR primary key (measured,
    docs/milvus-scale.md), and keeping the floats out of the query node's heap needs mmap. Collections created
    before (`image_id` / `row_id` VARCHAR keys) keep working: `key_field` and `region_key_field` name the keys the
    collections were created with (schema.ensure_collections)."""

    def __init__(self, uri: str, collection: str, consistency: str, timeout_s: float, dedicated: bool) -> None:
        self.uri, self.collection, self.consistency = uri, collection, consistency
        self.tombstones = f"{collection}_tombstones"
        self.regions = f"{collection}_regions"  # region rows (regions.py); absent in a collection created without
        self.loaded = [collection, self.tombstones]  # what a restarted server must load again
        self.timeout_s = timeout_s
        self.key_field, self.region_key_field = "key", "key"
        self.client = _client(uri, timeout_s, dedicated)  # dedicated: own connection and session

    @property
    def legacy_keys(self) -> bool:
        """A collection keyed by the image ID (VARCHAR), created before the INT64 keys."""
        return self.key_field == "image_id"

    def region_key(self, key: str | int, region: int) -> str | int:
        """The key of region `region` of the image whose row has key `key`."""
        return f"{key}#{region}" if self.legacy_keys else int(key) << REGION_BITS | region

    def free_keys(self, ids: Sequence[str]) -> dict[str, str | int]:
        """Keys for new images `ids`: `image_key`, probing the next key while another image's row (stored, or new
        in this batch) holds it. A hash collision of 59 bits is rare (~n^2 / 2^60: ~9,000 among 10^11 IDs); two
        gateways adding two colliding IDs within one read's staleness could still both take a key (not handled)."""
        if self.legacy_keys:
            return {i: i for i in ids}
        keys: dict[str, str | int] = {}
        used: set[int] = set()
        probes = dict.fromkeys(ids, 0)
        pending = list(ids)
        while pending:
            wanted = {i: image_key(i, probes[i]) for i in pending}
            taken: dict[int, str] = {}
            values = list(wanted.values())
            for start in range(0, len(values), 1000):
                expr = f"key in [{', '.join(map(str, values[start:start + 1000]))}]"
                taken.update((int(r["key"]), r["image_id"]) for r in self.query(expr, ["key", "image_id"]))
            pending = []
            for image_id, key in wanted.items():
                holder = taken.get(key, image_id)
                if holder != image_id or key in used:
                    probes[image_id] += 1
                    pending.append(image_id)
                else:
                    keys[image_id] = key
                    used.add(key)
        return keys

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if getattr(fn, "__self__", None) is self.client:
            kwargs.setdefault("timeout", self.timeout_s)
        try:
            return _guard(self.uri, fn, *args, **kwargs)
        except MilvusException as exc:
            if "not loaded" not in str(exc):
                raise
        for name in self.loaded:  # a restarted Milvus reloads in the background: wait
            _guard(self.uri, self.client.load_collection, name)
        return _guard(self.uri, fn, *args, **kwargs)

    def query(self, expr: str, fields: list[str], limit: int | None = None, consistency: str | None = None,
              collection: str | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"consistency_level": consistency or self.consistency}
        if limit is not None:
            kwargs["limit"] = limit
        return list(self.call(self.client.query, collection or self.collection, filter=expr, output_fields=fields,
                              **kwargs))

    def rows(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The rows of `ids` that exist, by image ID (with their key and image ID besides `fields`)."""
        out: dict[str, dict[str, Any]] = {}
        fields = list(dict.fromkeys([self.key_field, "image_id", *fields]))
        for start in range(0, len(ids), 1000):
            for row in self.query(_in(list(ids[start:start + 1000])), fields):
                out[row["image_id"]] = row
        return out

    def region_rows(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """Every region row of the images `ids` (with `image_id` and `region` besides `fields`)."""
        out: list[dict[str, Any]] = []
        step = 100 if fields else 1000  # ~6 rows per image, 5 KB per 1280-d vector: answers of a few MB
        for start in range(0, len(ids), step):
            out += self.query(_in(list(ids[start:start + step])), ["image_id", "region", *fields],
                              collection=self.regions)
        return out

    def count(self, expr: str, consistency: str | None = None, collection: str | None = None) -> int:
        rows = self.query(expr, ["count(*)"], consistency=consistency, collection=collection)
        return int(rows[0]["count(*)"]) if rows else 0

    def upsert(self, rows: list[dict[str, Any]], collection: str | None = None) -> None:
        """In batches of 500 rows. Upsert, not insert: Milvus does not enforce unique primary keys."""
        for start in range(0, len(rows), 500):
            self.call(self.client.upsert, collection or self.collection, rows[start:start + 500])

    def page(self, expr: str, fields: list[str], after: str | int | None, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rows matching `expr` with keys above `after`, in key order (Milvus returns a limited
        query's rows in primary-key order, which pymilvus' query iterator relies on too)."""
        key = self.key_field
        page_expr = expr if after is None else f"({expr}) and {key} > {_key_literal(after)}"
        rows = self.query(page_expr, list(dict.fromkeys([key, "image_id", *fields])), limit=limit)
        rows.sort(key=lambda r: r[key])
        return rows

    def iterate(self, expr: str, fields: list[str], batch: int = 1000) -> Iterator[dict[str, Any]]:
        """All rows matching `expr`, paged by primary key (no offset limit)."""
        after: str | int | None = None
        while rows := self.page(expr, fields, after, batch):
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1][self.key_field]

    def close(self) -> None:
        self.client.close()


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
