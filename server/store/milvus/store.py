"""`VectorStore` on a Milvus server (2.3+, pymilvus 3): the embeddings and records of ONE encoder version.

Layout: one collection per encoder version (`vsearch_encoder_2`), with the image ID as primary key, the embedding,
visibility / deleted / content hash / owner / added time as scalar fields and `seq` (the add order). An alias
(`vsearch_live`) names the collection that serves: switching models is `point_live_alias` (atomic on the server).

Choices, each measured or documented (docs/milvus-scale.md has the numbers):
- Privacy inside the ANN search: `visibility == 1 and deleted == false` is the search's filter expression, so
  Milvus skips ineligible rows while it walks the index. IVF with a selective filter can still return fewer
  than k (the probed lists hold fewer eligible rows): `search` then widens nprobe (x8 per retry, up to nlist,
  i.e. every list) and, if still short of min(k, eligible), answers by an exact scan of the eligible rows.
- Index: HNSW by default (measured against IVF_PQ, see `MilvusIndexConfig.for_corpus`); IVF_PQ, IVF_FLAT, FLAT
  and the GPU kinds by configuration. Exact scores: candidates come back with their stored float vectors and
  are re-scored by exact inner product (for PQ kinds 8x k of them, what FAISS' `RFlat` does).
- Consistency: reads and searches at Session (read-your-writes for the gateway that wrote; measured 5-19 ms
  per search here), and every hide / delete ends with a barrier (`_barrier`): a Strong read of the changed
  rows, then Eventually reads until no changed row is eligible any more, i.e. until the query node serves the
  new state to every reader. Strong on every search cost 400-790 ms here (a Strong read waits for the query
  node's safe timestamp, which advances with the 200 ms time tick), far over the latency budget, while hides
  and deletes are rare. With one replica (standalone, tested with two store objects) every search that starts
  after a hide returned, through any gateway, honours it; with several in-memory replicas the barrier sees one
  of them and another may lag: pass `consistency="Strong"` there if that window matters more than latency.
- Durability: an insert/upsert/delete returns once the proxy has written it to the log broker (the WAL:
  rocksmq in standalone, Pulsar/Kafka in a cluster; milvus.io/docs/data_processing.md); data nodes persist it
  to segments later, and the docs advise relying on that automatic flush. So `add` does not flush; tested by
  SIGKILL of the server right after `add` returned.
- Deletes are soft (`deleted = true`): the ID keeps existing, `add` of it returns False like the FAISS store.
  Milvus 2.3 has no partial or conditional update, so a visibility change rewrites the whole row (upsert);
  to stop a concurrent visibility change in another gateway from undoing a delete, deletes also go to an
  insert-only tombstone collection that every visibility change checks after its upsert (see `_reapply_deletes`).
- Counts: three server-side `count(*)` queries, cached for `counts_ttl_s` and adjusted at once by this
  store's own writes: a gauge polled every second costs at most 3 queries per TTL, never a scan of our own.
- `seq` is unique and increasing per writing process (nanoseconds, bumped on ties), not dense across
  gateways: `internal_id` is -1 (no position), `added_total()` counts rows (deleted included) and
  `records(start, stop)` ranks rows by `seq` with one pass over (id, seq).

Only numpy, pymilvus and `server.store.base` are imported: errors leave as `StoreUnavailable` (a
`ConnectionError`) when the server cannot be reached, for the gateway to map to UNAVAILABLE.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from server.store.base import Candidate, Changed, Counts, ImageRecord, NewImage, Visibility

log = logging.getLogger(__name__)

LIVE_ALIAS = "vsearch_live"
ELIGIBLE = "visibility == 1 and deleted == false"
SCALARS = ["image_id", "owner_id", "visibility", "deleted", "content_hash", "added_at", "seq"]
MAX_TOPK = 16384  # Milvus' limit on limit (and on offset + limit of a query)
SEGMENT_BYTES = 512 * 2**20  # dataCoord.segment.maxSize: Milvus builds one index per sealed segment of this size
T = TypeVar("T")


class StoreUnavailable(ConnectionError):
    """Milvus cannot be reached (down, restarting, network): safe to retry; the gateway answers UNAVAILABLE."""


@dataclass(frozen=True)
class MilvusIndexConfig:
    """Index of the embedding field and how it is searched.

    kind: IVF_PQ (CPU default), IVF_FLAT, HNSW, FLAT; GPU_IVF_PQ / GPU_CAGRA for query nodes with GPUs (Milvus
    GPU image; same parameters as IVF_PQ, resp. graph degrees + itopk). Milvus builds the index per sealed
    segment (~512 MB of rows), so `for_corpus` sizes nlist from the rows of one segment, not the corpus.
    """

    kind: str = "HNSW"
    nlist: int = 1024
    nprobe: int = 64
    m: int = 0  # PQ sub-quantizers; 0: dim // 8 (8 dimensions per byte-sized code)
    nbits: int = 8
    hnsw_m: int = 16
    ef_construction: int = 200
    ef: int = 128
    graph_degree: int = 32  # GPU_CAGRA
    intermediate_graph_degree: int = 64
    itopk_size: int = 128
    refine_factor: int = 0  # candidates fetched per wanted result, re-scored exactly; 0: 8 for PQ kinds, else 1
    exact_fallback_max: int = 100_000  # largest eligible set answered by an exact scan when the ANN falls short

    @property
    def candidates_per_result(self) -> int:
        """PQ distances are approximate: fetch 8x and re-score; HNSW/IVF_FLAT/FLAT distances are exact already."""
        return self.refine_factor or (8 if "PQ" in self.kind else 1)

    @classmethod
    def for_corpus(cls, n: int, dim: int, kind: str = "HNSW") -> MilvusIndexConfig:
        """IVF kinds like the FAISS default: nlist ~ 4 sqrt(rows of a segment), nprobe = nlist / 16.

        The default kind is HNSW, not IVF_PQ, on measurement (benchmarks/results/milvus_index_choice.md, 20k x 1280
        on 2 shared cores): Milvus 2.3's IVF_PQ trained for 188 s (m = dim/2, 4 bits) to 382 s (m = dim/8, 8 bits)
        per 20k rows where HNSW took 29 s, and with 90% private it kept 10-recall@10 0.55 (80 candidates
        re-scored) to 0.88 (320) against HNSW's 0.94 with no re-rank at 4 ms. Milvus holds the raw vectors in the
        query nodes for either (it returns them), so IVF_PQ saved no memory; compact codes at scale are DISKANN's
        job (docs/milvus-scale.md)."""
        rows = max(1, min(n, SEGMENT_BYTES // (4 * dim + 64)))
        nlist = int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(rows)))))
        nlist = max(16, min(nlist, 65536, max(16, rows // 39)))  # k-means wants >= 39 points per list
        return cls(kind=kind, nlist=nlist, nprobe=max(8, nlist // 16))

    def pq_m(self, dim: int) -> int:
        want = self.m or max(1, dim // 8)
        return max(d for d in range(1, want + 1) if dim % d == 0)

    def index_params(self, dim: int) -> dict[str, Any]:
        """`create_index` arguments for the embedding field (metric IP: the embeddings are unit vectors)."""
        params: dict[str, Any]
        if self.kind in ("IVF_PQ", "GPU_IVF_PQ"):
            params = {"nlist": self.nlist, "m": self.pq_m(dim), "nbits": self.nbits}
        elif self.kind == "IVF_FLAT":
            params = {"nlist": self.nlist}
        elif self.kind == "HNSW":
            params = {"M": self.hnsw_m, "efConstruction": self.ef_construction}
        elif self.kind == "GPU_CAGRA":
            params = {"intermediate_graph_degree": self.intermediate_graph_degree, "graph_degree": self.graph_degree}
        elif self.kind == "FLAT":
            params = {}
        else:
            raise ValueError(f"unknown Milvus index kind {self.kind!r}")
        return {"index_type": self.kind, "metric_type": "IP", "params": params}

    def search_params(self, widen: int, limit: int) -> dict[str, Any]:
        """Search parameters at `widen` times the configured breadth."""
        if self.kind in ("IVF_PQ", "GPU_IVF_PQ", "IVF_FLAT"):
            params: dict[str, Any] = {"nprobe": min(self.nlist, self.nprobe * widen)}
        elif self.kind == "HNSW":
            params = {"ef": min(32768, max(4 * limit, self.ef * widen))}  # filtered graph walks need ef >> k
        elif self.kind == "GPU_CAGRA":
            params = {"itopk_size": max(limit, min(1024, self.itopk_size * widen))}
        else:
            params = {}
        return {"metric_type": "IP", "params": params}

    def exhausted(self, widen: int, limit: int) -> bool:
        """Would widening further change nothing (every list probed, or the graph search at its cap)?"""
        if self.kind in ("IVF_PQ", "GPU_IVF_PQ", "IVF_FLAT"):
            return self.nprobe * widen >= self.nlist
        if self.kind == "HNSW":
            return self.ef * widen >= 32768
        if self.kind == "GPU_CAGRA":
            return self.itopk_size * widen >= 1024
        return True


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


class MilvusVectorStore:
    """`VectorStore` over one Milvus collection (created and loaded on first use); thread-safe."""

    def __init__(self, uri: str, model_version: str, dim: int, index: MilvusIndexConfig | None = None,
                 collection_prefix: str = "vsearch", consistency: str = "Session", counts_ttl_s: float = 5.0,
                 timeout_s: float = 10.0, dedicated: bool = False) -> None:
        self.uri = uri
        self.model_version = model_version
        self.dim = dim
        self.index = index or MilvusIndexConfig()
        self.collection = collection_name(model_version, collection_prefix)
        self.tombstones = f"{self.collection}_tombstones"
        self.consistency = consistency
        self.counts_ttl_s = counts_ttl_s
        self._lock = threading.Lock()
        self._version = 0
        self._last_seq = 0
        self._counts: tuple[float, Counts] | None = None
        self._closed = False
        self._client = _client(uri, timeout_s, dedicated)  # dedicated: own connection and session
        self._ensure_collections()

    # --- set-up -------------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return _guard(self.uri, fn, *args, **kwargs)
        except MilvusException as exc:
            if "not loaded" not in str(exc):
                raise
        # a restarted Milvus reloads collections in the background: load them (waits) and try once more
        for name in (self.collection, self.tombstones):
            _guard(self.uri, self._client.load_collection, name)
        return _guard(self.uri, fn, *args, **kwargs)

    def _ensure_collections(self) -> None:
        c = self._client
        if not self._call(c.has_collection, self.collection):
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False, description=self.model_version)
            schema.add_field("image_id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field("visibility", DataType.INT8)
            schema.add_field("deleted", DataType.BOOL)
            schema.add_field("content_hash", DataType.VARCHAR, max_length=128)
            schema.add_field("owner_id", DataType.VARCHAR, max_length=512)
            schema.add_field("added_at", DataType.DOUBLE)
            schema.add_field("seq", DataType.INT64)
            index = c.prepare_index_params()
            spec = self.index.index_params(self.dim)
            index.add_index("embedding", index_type=spec["index_type"], metric_type="IP", params=spec["params"])
            self._call(c.create_collection, self.collection, schema=schema, index_params=index,
                       consistency_level=self.consistency)
        else:
            found = str(self._call(c.describe_collection, self.collection).get("description", ""))
            if found and found != self.model_version:
                raise ValueError(f"collection {self.collection} holds {found}, not {self.model_version}")
        if not self._call(c.has_collection, self.tombstones):
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("image_id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("marker", DataType.FLOAT_VECTOR, dim=2)  # Milvus 2.3 needs a vector field
            index = c.prepare_index_params()
            index.add_index("marker", index_type="FLAT", metric_type="L2", params={})
            self._call(c.create_collection, self.tombstones, schema=schema, index_params=index,
                       consistency_level="Strong")
        for name in (self.collection, self.tombstones):
            self._call(c.load_collection, name)

    # --- VectorStore ----------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Grows with every change made through this store object (other gateways' changes do not count)."""
        return self._version

    def _next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def _query(self, expr: str, fields: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"consistency_level": self.consistency}
        if limit is not None:
            kwargs["limit"] = limit
        return list(self._call(self._client.query, self.collection, filter=expr, output_fields=fields, **kwargs))

    def _rows(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1000):
            chunk = list(ids[start:start + 1000])
            for row in self._query(_in(chunk), fields):
                out[row["image_id"]] = row
        return out

    def add(self, images: Sequence[NewImage]) -> list[bool]:
        """Durable when it returns (the log broker holds the rows); False for IDs present in any state."""
        if not images:
            return []
        for image in images:
            if image.vector.shape != (self.dim,):
                raise ValueError(f"{image.image_id}: embedding has shape {image.vector.shape}, want ({self.dim},)")
        with self._lock:
            present = set(self._rows([i.image_id for i in images], ["image_id"]))
            result: list[bool] = []
            rows: list[dict[str, Any]] = []
            now = time.time()
            for image in images:
                if image.image_id in present:
                    result.append(False)
                    continue
                present.add(image.image_id)
                result.append(True)
                rows.append({"image_id": image.image_id, "embedding": np.asarray(image.vector, np.float32).tolist(),
                             "visibility": int(image.visibility), "deleted": False,
                             "content_hash": image.content_hash, "owner_id": image.owner_id, "added_at": now,
                             "seq": self._next_seq()})
            if rows:
                # upsert, not insert: Milvus does not enforce unique primary keys, and two gateways adding the
                # same ID at once must leave one row, not two
                for start in range(0, len(rows), 500):
                    self._call(self._client.upsert, self.collection, rows[start:start + 500])
                public = sum(r["visibility"] == Visibility.PUBLIC for r in rows)
                self._adjust(public=public, private=len(rows) - public)
                self._version += 1
            return result

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[Candidate]:
        """Top-k eligible images by exact inner product (ANN candidates re-scored), min(k, eligible) of them."""
        if k <= 0:
            return []
        query = np.asarray(vector, np.float32).reshape(-1)
        expr = ELIGIBLE if exclude is None else f"{ELIGIBLE} and image_id != {_literal(exclude)}"
        limit = min(MAX_TOPK, max(k, k * self.index.candidates_per_result))
        widen = self._start_widen(limit)
        hits = self._ann(query, expr, limit, widen)
        while len(hits) < k and not self.index.exhausted(widen, limit):
            widen *= 8
            hits = self._ann(query, expr, limit, widen)
        if len(hits) < k:
            eligible = self._count(expr)
            if len(hits) < min(k, eligible):
                if eligible > self.index.exact_fallback_max:
                    log.warning("filtered search found %d of %d eligible rows at full width", len(hits), eligible)
                else:
                    hits = self._exact_rows(expr)
        return self._rerank(query, hits, k)

    def _start_widen(self, limit: int) -> int:
        """Breadth for the first try from the eligible fraction (cached counts): probe enough lists to expect
        4x `limit` eligible rows, as FAISS' selector path does; the retries below handle what this misses."""
        if self.index.kind not in ("IVF_PQ", "GPU_IVF_PQ", "IVF_FLAT"):
            return 1
        counts = self.counts()
        total = counts.live + counts.deleted
        if counts.public <= 0 or total <= 0:
            return 1
        rows_per_list = counts.public / max(1, min(self.index.nlist, total))
        lists = 4 * limit / max(rows_per_list, 1e-9)
        return max(1, math.ceil(lists / self.index.nprobe))

    def _ann(self, query: np.ndarray, expr: str, limit: int, widen: int) -> list[dict[str, Any]]:
        found = self._call(self._client.search, self.collection, data=[query.tolist()], filter=expr, limit=limit,
                           output_fields=["embedding", "content_hash"], anns_field="embedding",
                           search_params=self.index.search_params(widen, limit), consistency_level=self.consistency)
        return [{"image_id": h["id"], **h["entity"]} for h in found[0]]

    def _exact_rows(self, expr: str) -> list[dict[str, Any]]:
        """Every row matching `expr` with its vector (the exact answer for very selective filters)."""
        return list(self._iterate(expr, ["embedding", "content_hash"]))

    def _iterate(self, expr: str, fields: list[str], batch: int = 1000) -> Iterator[dict[str, Any]]:
        """All rows matching expr, paged by primary key (no offset limit)."""
        last: str | None = None
        while True:
            page_expr = expr if last is None else f"({expr}) and image_id > {_literal(last)}"
            rows = self._query(page_expr, ["image_id", *fields], limit=batch)
            if not rows:
                return
            rows.sort(key=lambda r: r["image_id"])
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1]["image_id"]

    @staticmethod
    def _rerank(query: np.ndarray, hits: list[dict[str, Any]], k: int) -> list[Candidate]:
        if not hits:
            return []
        vectors = np.asarray([h["embedding"] for h in hits], dtype=np.float32)
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [Candidate(hits[i]["image_id"], float(scores[i]), hits[i]["content_hash"], vectors[i]) for i in order]

    def _count(self, expr: str) -> int:
        rows = self._query(expr, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def eligible_count(self) -> int:
        return self.counts().public

    def get(self, image_id: str) -> ImageRecord | None:
        row = self._rows([image_id], SCALARS).get(image_id)
        return self._record(row) if row else None

    def _record(self, row: dict[str, Any]) -> ImageRecord:
        return ImageRecord(image_id=row["image_id"], internal_id=-1, owner_id=row["owner_id"],
                           visibility=Visibility(int(row["visibility"])), deleted=bool(row["deleted"]),
                           content_hash=row["content_hash"], model_version=self.model_version,
                           added_at=float(row["added_at"]))

    def vector(self, image_id: str) -> np.ndarray | None:
        row = self._rows([image_id], ["embedding"]).get(image_id)
        return np.asarray(row["embedding"], dtype=np.float32) if row else None

    def set_visibility(self, image_ids: Sequence[str], visibility: Visibility) -> Changed:
        with self._lock:
            rows = self._rows(list(dict.fromkeys(image_ids)), [*SCALARS, "embedding"])
            not_found = [i for i in image_ids if i not in rows or rows[i]["deleted"]]
            changed = [r for r in rows.values() if not r["deleted"] and int(r["visibility"]) != int(visibility)]
            if changed:
                self._upsert([{**r, "visibility": int(visibility)} for r in changed])
                self._reapply_deletes(changed)
                self._barrier([r["image_id"] for r in changed], f"visibility == {int(visibility)}",
                              gone=visibility != Visibility.PUBLIC)
                sign = 1 if visibility == Visibility.PUBLIC else -1
                self._adjust(public=sign * len(changed), private=-sign * len(changed))
                self._version += 1
            return Changed(len(changed), not_found)

    def delete(self, image_ids: Sequence[str]) -> Changed:
        with self._lock:
            rows = self._rows(list(dict.fromkeys(image_ids)), [*SCALARS, "embedding"])
            not_found = [i for i in image_ids if i not in rows or rows[i]["deleted"]]
            changed = [r for r in rows.values() if not r["deleted"]]
            if changed:
                # the tombstone first: a concurrent visibility change that rewrites the row after our upsert
                # finds it and deletes again (see _reapply_deletes)
                self._call(self._client.upsert, self.tombstones,
                           [{"image_id": r["image_id"], "marker": [0.0, 0.0]} for r in changed])
                self._upsert([{**r, "deleted": True} for r in changed])
                self._barrier([r["image_id"] for r in changed], "deleted == true", gone=True)
                public = sum(int(r["visibility"]) == Visibility.PUBLIC for r in changed)
                self._adjust(public=-public, private=public - len(changed), deleted=len(changed))
                self._version += 1
            return Changed(len(changed), not_found)

    def _upsert(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), 500):
            self._call(self._client.upsert, self.collection, rows[start:start + 500])

    def _barrier(self, ids: list[str], state: str, gone: bool = False, timeout_s: float = 10.0) -> None:
        """Return once a Strong read sees every row of `ids` in `state`, and (gone=True: a hide or delete) once a
        read at Eventually, what other gateways get, no longer finds any of them eligible. An upsert is a
        delete of the old row (in a sealed segment) plus an insert (in a growing one): the second check makes
        sure the delete is applied too, not only the insert visible (cheap: one more query per hide)."""
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            rows = self._call(self._client.query, self.collection, filter=f"{_in(chunk)} and {state}",
                              output_fields=["count(*)"], consistency_level="Strong")
            seen = int(rows[0]["count(*)"]) if rows else 0
            if seen != len(chunk):
                raise RuntimeError(f"Milvus shows {seen} of {len(chunk)} rows in state {state} after the write")
            deadline = time.monotonic() + timeout_s
            while gone:
                rows = self._call(self._client.query, self.collection, filter=f"{_in(chunk)} and {ELIGIBLE}",
                                  output_fields=["count(*)"], consistency_level="Eventually")
                if not rows or int(rows[0]["count(*)"]) == 0:
                    break
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"Milvus still serves {rows[0]['count(*)']} hidden rows after {timeout_s} s")
                time.sleep(0.005)

    def _reapply_deletes(self, rewritten: list[dict[str, Any]]) -> None:
        """A delete from another gateway between our read and our upsert would be undone by the upsert (Milvus
        2.3 cannot update conditionally). Deletes write their tombstone before their upsert, so either its upsert
        comes after ours (it wins) or its tombstone is visible now (Strong read) and we delete again."""
        ids = [r["image_id"] for r in rewritten]
        dead = {row["image_id"] for row in self._call(self._client.query, self.tombstones, filter=_in(ids),
                                                       output_fields=["image_id"], consistency_level="Strong")}
        if dead:
            self._upsert([{**r, "deleted": True} for r in rewritten if r["image_id"] in dead])

    def _adjust(self, public: int = 0, private: int = 0, deleted: int = 0) -> None:
        if self._counts is not None:
            at, c = self._counts
            self._counts = (at, replace(c, public=c.public + public, private=c.private + private,
                                        deleted=c.deleted + deleted))

    def counts(self) -> Counts:
        """Cached for counts_ttl_s (3 server-side count(*) queries per refresh), own writes applied at once."""
        cached = self._counts
        if cached is not None and time.monotonic() - cached[0] < self.counts_ttl_s:
            return cached[1]
        with self._lock:
            fresh = Counts(public=self._count(ELIGIBLE),
                           private=self._count("visibility == 2 and deleted == false"),
                           deleted=self._count("deleted == true"))
            self._counts = (time.monotonic(), fresh)
        return fresh

    def describe(self) -> tuple[str, dict[str, str]]:
        spec = self.index.index_params(self.dim)
        params = {k: str(v) for k, v in spec["params"].items()}
        params.update(collection=self.collection, consistency=self.consistency, metric="IP",
                      search=str(self.index.search_params(1, 0)["params"]),
                      candidates_per_result=str(self.index.candidates_per_result))
        return f"milvus:{spec['index_type']}", params

    def added_total(self) -> int:
        c = self.counts()
        return c.live + c.deleted

    def records(self, start: int, stop: int) -> list[ImageRecord]:
        """Records at ranks [start, stop) of `seq` (one pass over every row's id and seq, then a fetch)."""
        order = sorted(self._iterate("seq >= 0", ["seq"]), key=lambda r: (r["seq"], r["image_id"]))
        ids = [r["image_id"] for r in order[max(0, start):max(0, stop)]]
        rows = self._rows(ids, SCALARS)
        return [self._record(rows[i]) for i in ids if i in rows]

    def iter_records(self) -> Iterator[ImageRecord]:
        for row in self._iterate("seq >= 0", SCALARS[1:]):
            yield self._record(row)

    def snapshot(self) -> None:
        """Seal and persist the growing segments (Milvus flushes by itself too; a flush makes a restart fast)."""
        self._call(self._client.flush, self.collection)

    def snapshot_if_due(self) -> bool:
        return False  # Milvus persists segments on its own (dataNode.segment.syncPeriod)

    def wait_indexed(self, timeout_s: float = 600.0) -> None:
        """Flush, then wait until every sealed row is indexed (tests and benchmarks: the ANN index is in use)."""
        self.snapshot()
        deadline = time.monotonic() + timeout_s
        total = self.added_total()
        while time.monotonic() < deadline:
            info = self._call(self._client.describe_index, self.collection, "embedding")
            built = int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
                info.get("total_rows", 0))
            # the query node swaps a sealed segment for its indexed version asynchronously ("handoff")
            segments = self._call(self._client._get_connection().get_query_segment_info, self.collection)
            served = sum(int(seg.num_rows) for seg in segments if seg.index_name or int(seg.num_rows) < 1024)
            if built and served >= total:
                return
            time.sleep(1.0)
        raise TimeoutError(f"index of {self.collection} not served in {timeout_s} s: {info}")

    def drop(self) -> None:
        """Drop both collections (tests, and a model version retired); works on a closed store too."""
        client = _client(self.uri, 10.0) if self._closed else self._client
        for name in (self.collection, self.tombstones):
            self._call(client.drop_collection, name)
        if self._closed:
            client.close()

    def close(self) -> None:
        self._closed = True
        self._client.close()
