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

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusException

from server.store.base import Counts, NewImage, Visibility
from server.store.milvus.client import ELIGIBLE, T, _client, _guard, _in, collection_name
from server.store.milvus.config import MilvusIndexConfig
from server.store.milvus.reads import MilvusReads
from server.store.milvus.writes import MilvusWrites


class MilvusVectorStore(MilvusReads, MilvusWrites):
    """`VectorStore` over one Milvus collection (created and loaded on first use); thread-safe.

    Whole-image vectors only: region vectors (`NewImage.regions`) are not kept yet (they need a second
    collection whose rows follow every visibility change), so the indexing path does not embed them here."""

    regions_per_image = 0

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
        self._version = time.time_ns() // 1000  # µs: grows across restarts and gateways
        self._last_seq = 0
        self._counts: tuple[float, Counts] | None = None
        self._closed = False
        self.call_timeout_s = max(timeout_s, 120.0)  # set-up (create, load) waits for the server
        self._client = _client(uri, timeout_s, dedicated)  # dedicated: own connection and session
        self._ensure_collections()
        self.call_timeout_s = timeout_s

    # --- set-up -------------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if getattr(fn, "__self__", None) is self._client:
            kwargs.setdefault("timeout", self.call_timeout_s)
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
        """The time (µs) of this object's last change, or of its start: only grows, across restarts too."""
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
                self._bump()
            return result

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
