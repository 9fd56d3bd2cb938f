"""`VectorStore` on a Milvus server (2.3+, pymilvus 3): the embeddings and records of ONE encoder version.

Layout: one collection per encoder version (`vsearch_encoder_2`), with an INT64 key (`client.Connection`), the image
ID, the embedding, visibility / deleted / content hash / owner / added time and `seq` (the add order). An alias
(`vsearch_live`) names the collection that serves: switching models is `point_live_alias` (atomic on the server).
A version created with regions keeps its images' region rows in `<collection>_regions` (see `MilvusVectorStore`).

Choices, each measured or documented (docs/milvus-scale.md has the numbers):
- Privacy inside the ANN search: `visibility == 1 and deleted == false` is the search's filter expression, so
  Milvus skips ineligible rows while it walks the index. IVF with a selective filter can still return fewer
  than k (the probed lists hold fewer eligible rows): `search` then widens nprobe (x8 per retry, up to nlist,
  i.e. every list) and, if still short of min(k, eligible), answers by an exact scan of the eligible rows.
- Index: IVF_SQ8 by default (measured, see `MilvusIndexConfig.for_corpus`); HNSW, IVF_PQ, IVF_FLAT, FLAT
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
  gateways: `internal_id` is -1 (no position); the catalog scans by image ID in passes over `seq` marks.

The store is composed of its parts, each over one shared `Connection`: `FilteredSearch` (search.py),
`StateChanges` (writes.py) and `MilvusCatalog` (catalog.py); this module creates the collections, adds, and keeps
the counts. Only numpy, pymilvus and `server.store.base` are imported: errors leave as `StoreUnavailable` (a
`ConnectionError`) when the server cannot be reached, for the gateway to map to UNAVAILABLE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.store import base
from server.store.base import Candidate, Changed, Counts, EmbeddedImage, StoreStats, Visibility
from server.store.milvus.catalog import MilvusCatalog, record_of, region_rows
from server.store.milvus.client import ELIGIBLE, SCALARS, Connection, collection_name
from server.store.milvus.config import MilvusIndexConfig
from server.store.milvus.schema import drop_collections, ensure_collections, wait_indexed
from server.store.milvus.search import FilteredSearch
from server.store.milvus.writes import StateChanges


class MilvusVectorStore:
    """`VectorStore` and `Catalog` over one Milvus collection (created and loaded on first use); thread-safe.

    With `regions` > 0 a NEW version's images also keep that many region rows (server/core/regions.py) in a
    collection beside (`<collection>_regions`, one row per region: a key made of the image's and the region number,
    the image ID, the region, its vector, visibility and deleted), searched beside the whole images and merged per
    image by the embedded store's rule; every visibility change and delete rewrites all of an image's rows before its
    barrier. A version keeps the choice it was created with."""

    def __init__(self, uri: str, model_version: str, dim: int, index: MilvusIndexConfig | None = None,
                 collection_prefix: str = "vsearch", consistency: str = "Session", counts_ttl_s: float = 5.0,
                 timeout_s: float = 10.0, dedicated: bool = False, regions: int = 0) -> None:
        self.uri, self.model_version, self.dim = uri, model_version, dim
        self.index = index or MilvusIndexConfig()
        self.collection = collection_name(model_version, collection_prefix)
        self.consistency, self.counts_ttl_s = consistency, counts_ttl_s
        self._lock = threading.Lock()
        self._version = time.time_ns() // 1000  # µs: grows across restarts and gateways
        self._last_seq = 0
        self._counts: tuple[float, Counts] | None = None
        # set-up (create, load) waits for the server; every later call has the configured deadline
        self._conn = Connection(uri, self.collection, consistency, max(timeout_s, 120.0), dedicated)
        self._regions = ensure_collections(self._conn, model_version, dim, self.index, consistency, regions)
        self._conn.timeout_s = timeout_s
        self._search = FilteredSearch(self._conn, self.index, self.counts, self._regions)
        self._changes = StateChanges(self._conn, self._adjust, self._regions)
        self._catalog = MilvusCatalog(self._conn, model_version, self._regions)

    @property
    def regions_per_image(self) -> int:
        return self._regions

    @property
    def tombstones(self) -> str:
        return self._conn.tombstones

    # --- VectorStore ----------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The time (µs) of this object's last change, or of its start: only grows, across restarts too."""
        return self._version

    def _bump(self) -> None:
        self._version = max(self._version + 1, time.time_ns() // 1000)

    def _next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def add(self, images: Sequence[EmbeddedImage]) -> list[bool]:
        """Durable when it returns (the log broker holds the rows); False for IDs present in any state."""
        if not images:
            return []
        for image in images:
            if image.vector.shape != (self.dim,):
                raise ValueError(f"{image.image_id}: embedding has shape {image.vector.shape}, want ({self.dim},)")
            if self._regions and image.regions is not None and image.regions.shape != (self._regions, self.dim):
                raise ValueError(f"{image.image_id}: expected {self._regions} region vectors per image of "
                                 f"{self.dim} floats, got shape {image.regions.shape}")
        with self._lock:
            present = set(self._conn.rows([i.image_id for i in images], ["image_id"]))
            keys = self._conn.free_keys(list(dict.fromkeys(i.image_id for i in images if i.image_id not in present)))
            result: list[bool] = []
            rows: list[dict[str, Any]] = []
            now = time.time()
            for image in images:
                if image.image_id in present:
                    result.append(False)
                    continue
                present.add(image.image_id)
                result.append(True)
                rows.append({self._conn.key_field: keys[image.image_id], "image_id": image.image_id,
                             "embedding": np.asarray(image.vector, np.float32).tolist(), "deleted": False,
                             "visibility": int(image.visibility), "content_hash": image.content_hash,
                             "owner_id": image.owner_id, "added_at": now, "seq": self._next_seq()})
            if rows:
                if self._regions:  # first: an image's whole row is what makes it exist (`add` after a crash redoes)
                    added = [i for i, new in zip(images, result, strict=True) if new]
                    self._conn.upsert(region_rows(self._conn, added, keys, self._regions), self._conn.regions)
                # upsert, not insert: Milvus does not enforce unique primary keys, and two gateways adding the
                # same ID at once must leave one row, not two
                self._conn.upsert(rows)
                public = sum(r["visibility"] == Visibility.PUBLIC for r in rows)
                self._adjust(public, len(rows) - public, 0)
                self._bump()
            return result

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[Candidate]:
        return self._search.search(vector, k, exclude)

    def get(self, image_id: str) -> base.ImageRecord | None:
        row = self._conn.rows([image_id], SCALARS).get(image_id)
        return record_of(row, self.model_version) if row else None

    def vector(self, image_id: str) -> np.ndarray | None:
        row = self._conn.rows([image_id], ["embedding"]).get(image_id)
        return np.asarray(row["embedding"], dtype=np.float32) if row else None

    def set_visibility(self, image_ids: Sequence[str], visibility: Visibility) -> Changed:
        with self._lock:
            changed = self._changes.set_visibility(image_ids, visibility)
            if changed.count:
                self._bump()
            return changed

    def delete(self, image_ids: Sequence[str]) -> Changed:
        with self._lock:
            changed = self._changes.delete(image_ids)
            if changed.count:
                self._bump()
            return changed

    def counts(self) -> Counts:
        """Cached for counts_ttl_s (3 server-side count(*) queries per refresh), own writes applied at once."""
        cached = self._counts
        if cached is not None and time.monotonic() - cached[0] < self.counts_ttl_s:
            return cached[1]
        with self._lock:
            fresh = Counts(public=self._conn.count(ELIGIBLE),
                           private=self._conn.count("visibility == 2 and deleted == false"),
                           deleted=self._conn.count("deleted == true"))
            self._counts = (time.monotonic(), fresh)
        return fresh

    def _adjust(self, public: int, private: int, deleted: int) -> None:
        if self._counts is not None:
            at, c = self._counts
            self._counts = (at, Counts(c.public + public, c.private + private, c.deleted + deleted))

    def stats(self) -> StoreStats:
        counts = self.counts()
        spec = self.index.index_params(self.dim)
        params = {k: str(v) for k, v in spec["params"].items()}
        params.update(collection=self.collection, consistency=self.consistency, metric="IP",
                      regions_per_image=str(self._regions),
                      search=str(self.index.search_params(1, 0)["params"]),
                      candidates_per_result=str(self.index.candidates_per_result))
        return StoreStats(counts, counts.live + counts.deleted, f"milvus:{spec['index_type']}", params)

    def healthy(self) -> bool:
        """The collection is loaded and answers (after a Milvus restart it reloads first; the gateway's health
        check asks every second and stays NOT_SERVING until then)."""
        try:
            state = self._conn.call(self._conn.client.get_load_state, self.collection).get("state")
            return str(state).rsplit(".", 1)[-1] == "Loaded"
        except Exception:
            return False

    def snapshot(self, only_if_due: bool = False) -> None:
        """Seal and persist the growing segments; Milvus does it by itself too (dataNode.segment.syncPeriod), so
        nothing is ever due; an explicit flush makes a restart fast."""
        if not only_if_due:
            for name in self._conn.loaded:
                self._conn.call(self._conn.client.flush, name)

    # --- Catalog --------------------------------------------------------------------------------------------

    def scan(self, cursor: object = None, limit: int = 1000) -> base.Page:
        return self._catalog.scan(cursor, limit)

    def known(self, image_ids: Sequence[str]) -> set[str]:
        return self._catalog.known(image_ids)

    def rows(self, records: Sequence[base.ImageRecord]) -> list[base.StoredRow]:
        return self._catalog.rows(records)

    def rows_per_image(self, image_ids: Sequence[str]) -> dict[str, int]:
        return self._catalog.rows_per_image(image_ids)

    def advance_version(self, at_least: int) -> None:
        self._version = max(self._version, at_least)

    # --- tests, benchmarks and retired versions ----------------------------------------------------------------

    def wait_indexed(self, timeout_s: float = 600.0) -> None:
        """Flush, then wait until every row is indexed and served so (tests and benchmarks: the ANN index is used)."""
        self.snapshot()
        wait_indexed(self._conn, self.stats().rows, timeout_s)
        if self._regions:
            wait_indexed(self._conn, self.stats().rows * self._regions, timeout_s, self._conn.regions)

    def drop(self) -> None:
        """Drop both collections (tests, and a model version retired); works on a closed store too."""
        drop_collections(self.uri, self.collection, self.tombstones, self._conn.regions)

    def close(self) -> None:
        self._search.close()
        self._conn.close()
