"""Visibility changes and deletes on Milvus: upserts, tombstones against lost deletes, read barriers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from server.store.base import Changed, Visibility
from server.store.milvus.client import ELIGIBLE, SCALARS, StoreUnavailable, _in


class MilvusWrites:
    """The write half of `MilvusVectorStore` (a mixin: it shares the store's client, lock and counts)."""

    def _bump(self) -> None:
        self._version = max(self._version + 1, time.time_ns() // 1000)

    def advance_version(self, at_least: int) -> None:
        self._version = max(self._version, at_least)

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
                self._bump()
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
                self._bump()
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
