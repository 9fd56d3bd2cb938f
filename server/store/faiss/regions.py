"""Region rows of the embedded store: R embeddings of sub-regions per image, searched beside the whole images.

A catalog created with regions (`regions.json`: rows per image) keeps them in their own write-ahead log and
index (`regions.f16`, `regions.faiss`): row = internal id * R + r, so a row names its image without a lookup.
Rows are written before the image's record commits (like the whole-image vector), and the rows of
unacknowledged images are truncated on start. Their eligibility bitmap mirrors the images' (R bits per image),
so private and deleted images' regions are filtered inside the ANN search; the store re-checks every hit
against the images' own bitmap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from server.core.durable import replace_durably
from server.core.regions import REGION_SCORE_PENALTY, region_score
from server.store.faiss.eligibility import Eligibility
from server.store.faiss.index import VectorIndex
from server.store.faiss.vector_log import VectorLog, open_log

META_NAME = "regions.json"
LOG_NAME = "regions"  # regions.f16 (regions.f32 before the conversion)
SNAPSHOT_NAME = "regions.faiss"


class RegionRows:
    def __init__(self, data_dir: Path, dim: int, per_image: int, flat_threshold: int,
                 rebuild_in_background: bool) -> None:
        self.per_image, self.dim = per_image, dim
        self.snapshot_path = data_dir / SNAPSHOT_NAME
        self._log = open_log(data_dir, LOG_NAME, dim)
        self._index = VectorIndex(dim, flat_threshold, rebuild_in_background, stored=self._log.view,
                                  read_rows=self._log.read_rows, rows_per_image=per_image)
        self._eligibility = Eligibility()

    @staticmethod
    def created_with(data_dir: Path) -> int | None:
        """Region rows per image the catalog was created with (None: without regions). A catalog keeps the
        choice it was created with: its older images have no region rows to add later."""
        path = data_dir / META_NAME
        return int(json.loads(path.read_text())["per_image"]) if path.exists() else None

    @staticmethod
    def create(data_dir: Path, per_image: int) -> int:
        tmp = data_dir / (META_NAME + ".tmp")
        tmp.write_text(json.dumps({"per_image": per_image}))
        replace_durably(tmp, data_dir / META_NAME)
        return per_image

    def recover(self, committed_images: int) -> None:
        """Drop rows of images never acknowledged, load the snapshot, replay the rows after it."""
        rows = committed_images * self.per_image
        if self._log.rows() > rows:
            self._log.truncate(rows)
        if self._log.rows() < rows:
            raise RuntimeError(f"region log has {self._log.rows()} rows, {committed_images} images need {rows}")
        if self.snapshot_path.exists():
            self._index.load(self.snapshot_path)
            if self._index.ntotal > rows:
                raise RuntimeError("region index snapshot is ahead of the metadata")
        if self._index.ntotal < rows:
            self._index.add(self._index.ntotal, self._log.read(self._index.ntotal, rows))

    def rows_for(self, vectors: np.ndarray, regions: list[np.ndarray | None]) -> np.ndarray:
        """float32 [n * R, dim]; an image added without regions (a job that embedded whole images only) gets its
        whole-image vector in every row: it is found as before, and its rows stay positional."""
        out = [np.broadcast_to(v, (self.per_image, self.dim)) if r is None else np.asarray(r).reshape(-1, self.dim)
               for v, r in zip(vectors, regions, strict=True)]
        for rows in out:
            if rows.shape[0] != self.per_image:
                raise ValueError(f"expected {self.per_image} region vectors per image, got {rows.shape[0]}")
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def append_log(self, rows: np.ndarray) -> None:
        self._log.append(rows)

    def truncate_log(self, images: int) -> None:
        self._log.truncate(images * self.per_image)

    def add(self, first_image: int, rows: np.ndarray) -> None:
        self._index.add(first_image * self.per_image, rows)

    def set(self, internal_id: int, eligible: bool) -> None:
        for r in range(self.per_image):
            self._eligibility.set(internal_id * self.per_image + r, eligible)

    def search(self, vector: np.ndarray, k: int, skip: int | None, floor: float | None = None) -> dict[int, float]:
        """Best region score per image among the top 2k + R rows (`region_score`). The whole-image
        search already guarantees min(k, eligible) results; the region rows only add and re-score images, so
        they need not cover k distinct images (asking for (k + 1) x R rows made the IVF re-rank search 10x
        slower than the whole-image one: benchmarks/results/regions.md). `floor`: the k-th whole-image score; a
        region scoring under it changes nothing, so the compact index re-reads only rows that may beat it."""
        selector, _keepalive, eligible = self._eligibility.snapshot()
        if eligible == 0:
            return {}
        scores, rows = self._index.search(vector[None], min(2 * k + self.per_image, eligible), selector,
                                          floor=None if floor is None else floor + REGION_SCORE_PENALTY)
        best: dict[int, float] = {}
        for row, score in zip(rows[0], scores[0], strict=True):
            image = int(row) // self.per_image
            if row >= 0 and image != skip and image not in best:  # rows come best first
                best[image] = region_score(float(score))
        return best

    def describe(self) -> dict[str, str]:
        """The region index's type, where its re-rank reads (params.IndexParams.layout) and its measured recall."""
        kind, params = self._index.describe()
        out = {"regions_index": kind, "regions_rerank": params["rerank"]}
        if "recall_at_10_estimate" in params:
            out["regions_recall_at_10_estimate"] = params["recall_at_10_estimate"]
        return out

    def rows_of(self, images: np.ndarray) -> list[np.ndarray]:
        """The region rows of each of these images, float32 [R, dim] each, from the log."""
        view = self._log.view()
        return [np.array(view[int(i) * self.per_image:(int(i) + 1) * self.per_image], dtype=np.float32)
                for i in images]

    @property
    def log(self) -> VectorLog:
        return self._log

    def snapshot(self) -> None:
        self._index.save(self.snapshot_path)

    def close(self) -> None:
        self._log.close()
