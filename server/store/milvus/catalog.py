"""Reading a Milvus collection whole, page by page (model switch, migration): the `Catalog` side of the store.

Pages come in key order within a pass over the rows whose `seq` is above the pass's mark; the cursor of the
last page of a pass starts a new pass over what was added since the previous one began (less a margin for the
clocks of other gateways, which stamp `seq`; readers skip what they copied already: `known`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from server.store.base import EmbeddedImage, ImageRecord, Page, StoredRow, Visibility
from server.store.milvus.client import SCALARS, Connection

CLOCK_MARGIN_NS = 60 * 10**9


@dataclass(frozen=True)
class Cursor:
    since: int  # this pass reads rows with seq > since
    after: str | int | None  # ... and keys above this one
    pass_start: int  # when this pass began: the next one reads what was added after it


def region_rows(conn: Connection, images: Sequence[EmbeddedImage], keys: dict[str, str | int], per_image: int
                ) -> list[dict[str, Any]]:
    """The region collection's rows of `images` (`keys`: their rows' keys). An image added without regions (a job
    that embedded whole images only) gets its whole-image vector in every row, as in the embedded store: it is
    found as before."""
    rows = []
    for image in images:
        vectors = np.broadcast_to(image.vector, (per_image, image.vector.shape[0])) if image.regions is None \
            else image.regions
        rows += [{conn.region_key_field: conn.region_key(keys[image.image_id], r), "image_id": image.image_id,
                  "region": r,
                  "embedding": np.asarray(v, np.float32).tolist(), "visibility": int(image.visibility),
                  "deleted": False} for r, v in enumerate(vectors)]
    return rows


def record_of(row: dict[str, Any], model_version: str) -> ImageRecord:
    return ImageRecord(image_id=row["image_id"], internal_id=-1, owner_id=row["owner_id"],
                       visibility=Visibility(int(row["visibility"])), deleted=bool(row["deleted"]),
                       content_hash=row["content_hash"], model_version=model_version, added_at=float(row["added_at"]))


class MilvusCatalog:
    def __init__(self, conn: Connection, model_version: str, regions_per_image: int = 0) -> None:
        self.conn, self.model_version, self.regions_per_image = conn, model_version, regions_per_image

    def scan(self, cursor: object = None, limit: int = 1000) -> Page:
        at = cursor if isinstance(cursor, Cursor) else Cursor(since=-1, after=None, pass_start=time.time_ns())
        rows = self.conn.page(f"seq > {at.since}", SCALARS[1:], at.after, limit)
        records = [record_of(r, self.model_version) for r in rows]
        if len(rows) == limit:
            return Page(records, replace(at, after=rows[-1][self.conn.key_field]), done=False)
        following = Cursor(since=at.pass_start - CLOCK_MARGIN_NS, after=None, pass_start=time.time_ns())
        return Page(records, following, done=True)

    def known(self, image_ids: Sequence[str]) -> set[str]:
        return set(self.conn.rows(list(image_ids), ["image_id"]))

    def rows(self, records: Sequence[ImageRecord]) -> list[StoredRow]:
        found = self.conn.rows([r.image_id for r in records], ["embedding"])
        regions: dict[str, list[tuple[int, list[float]]]] = {}
        if self.regions_per_image:
            for row in self.conn.region_rows(list(found), ["embedding"]):
                regions.setdefault(row["image_id"], []).append((int(row["region"]), row["embedding"]))
        return [StoredRow(r, np.asarray(found[r.image_id]["embedding"], np.float32),
                          np.asarray([v for _, v in sorted(regions[r.image_id])], np.float32)
                          if r.image_id in regions else None)
                for r in records if r.image_id in found]

    def rows_per_image(self, image_ids: Sequence[str]) -> dict[str, int]:
        """Stored rows of each image, its whole row and its region rows (a copy checks them: migration)."""
        counts = dict.fromkeys(self.conn.rows(list(image_ids), ["image_id"]), 1)
        if self.regions_per_image:
            for row in self.conn.region_rows(list(counts), []):
                counts[row["image_id"]] += 1
        return counts
