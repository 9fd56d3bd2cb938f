"""Visibility changes and deletes on Milvus: upserts, tombstones against lost deletes, read barriers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from server.store.base import Changed, Visibility
from server.store.milvus.client import ELIGIBLE, SCALARS, Connection, StoreUnavailable, _in

REGION_STATE = ["visibility", "deleted"]
Adjust = Callable[[int, int, int], None]  # (public, private, deleted) changes, applied to the cached counts


class StateChanges:
    """Hide, show and delete images of one collection (all of an image's rows: the whole image's and its regions').
    The caller holds the store's write lock."""

    def __init__(self, conn: Connection, adjust: Adjust, regions_per_image: int = 0) -> None:
        self.conn, self.adjust, self.regions_per_image = conn, adjust, regions_per_image

    def set_visibility(self, image_ids: Sequence[str], visibility: Visibility) -> Changed:
        rows = self.conn.rows(list(dict.fromkeys(image_ids)), [*SCALARS, "embedding"])
        not_found = [i for i in image_ids if i not in rows or rows[i]["deleted"]]
        changed = [r for r in rows.values() if not r["deleted"] and int(r["visibility"]) != int(visibility)]
        if changed:
            self.conn.upsert([{**r, "visibility": int(visibility)} for r in changed])
            self._rewrite_regions(changed, {"visibility": int(visibility)})
            self._reapply_deletes(changed)
            self._barrier([r["image_id"] for r in changed], f"visibility == {int(visibility)}",
                          gone=visibility != Visibility.PUBLIC)
            sign = 1 if visibility == Visibility.PUBLIC else -1
            self.adjust(sign * len(changed), -sign * len(changed), 0)
        return Changed(len(changed), not_found)

    def delete(self, image_ids: Sequence[str]) -> Changed:
        rows = self.conn.rows(list(dict.fromkeys(image_ids)), [*SCALARS, "embedding"])
        not_found = [i for i in image_ids if i not in rows or rows[i]["deleted"]]
        changed = [r for r in rows.values() if not r["deleted"]]
        if changed:
            # the tombstone first: a concurrent visibility change that rewrites the row after our upsert
            # finds it and deletes again (see _reapply_deletes)
            c = self.conn
            c.call(c.client.upsert, c.tombstones, [{c.key_field: r[c.key_field], "image_id": r["image_id"],
                                                    "marker": [0.0, 0.0]} for r in changed])
            self.conn.upsert([{**r, "deleted": True} for r in changed])
            self._rewrite_regions(changed, {"deleted": True})
            self._barrier([r["image_id"] for r in changed], "deleted == true", gone=True)
            public = sum(int(r["visibility"]) == Visibility.PUBLIC for r in changed)
            self.adjust(-public, public - len(changed), len(changed))
        return Changed(len(changed), not_found)

    def _rewrite_regions(self, images: list[dict[str, Any]], change: dict[str, Any]) -> None:
        """Give the region rows of `images` the same change (Milvus 2.3: a rewrite of each whole row)."""
        if self.regions_per_image:
            rows = self.conn.region_rows([r["image_id"] for r in images],
                                         [self.conn.region_key_field, "embedding", *REGION_STATE])
            self.conn.upsert([{**r, **change} for r in rows], self.conn.regions)

    def _barrier(self, ids: list[str], state: str, gone: bool = False, timeout_s: float = 10.0) -> None:
        """Return once a Strong read sees every row of `ids` in `state`, and (gone=True: a hide or delete) once a
        read at Eventually, what other gateways get, no longer finds any of them eligible. An upsert is a
        delete of the old row (in a sealed segment) plus an insert (in a growing one): the second check makes
        sure the delete is applied too, not only the insert visible (cheap: one more query per hide)."""
        collections = [(self.conn.collection, 1)]
        if self.regions_per_image:  # the region rows of the images: the same barrier
            collections.append((self.conn.regions, self.regions_per_image))
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            for collection, per_image in collections:
                seen = self.conn.count(f"{_in(chunk)} and {state}", consistency="Strong", collection=collection)
                if seen != len(chunk) * per_image:
                    raise RuntimeError(f"Milvus shows {seen} of {len(chunk) * per_image} rows of {collection} in "
                                       f"state {state} after the write")
            deadline = time.monotonic() + timeout_s
            while gone:
                left = sum(self.conn.count(f"{_in(chunk)} and {ELIGIBLE}", consistency="Eventually",
                                           collection=collection) for collection, _ in collections)
                if left == 0:
                    break
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"Milvus still serves {left} hidden rows after {timeout_s} s")
                time.sleep(0.005)

    def _reapply_deletes(self, rewritten: list[dict[str, Any]]) -> None:
        """A delete from another gateway between our read and our upsert would be undone by the upsert (Milvus
        2.3 cannot update conditionally). Deletes write their tombstone before their upsert, so either its upsert
        comes after ours (it wins) or its tombstone is visible now (Strong read) and we delete again."""
        c = self.conn
        dead = {row["image_id"] for row in c.call(c.client.query, c.tombstones,
                                                   filter=_in([r["image_id"] for r in rewritten]),
                                                   output_fields=["image_id"], consistency_level="Strong")}
        if dead:
            again = [r for r in rewritten if r["image_id"] in dead]
            self.conn.upsert([{**r, "deleted": True} for r in again])
            self._rewrite_regions(again, {"deleted": True})
