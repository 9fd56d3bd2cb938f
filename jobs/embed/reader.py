"""Stage 1: the manifest (which images, split into fixed shards) and reading each image's bytes.

A manifest source is one of:
  DIR                    every image file under a directory tree; image ID = relative path without suffix
  FILE.csv / FILE.parquet  columns `image_id`, `uri` (+ optional `owner_id`, `visibility` 1 public / 2 private)
  catalog:encoder/N      every record of a catalog under --data-dir in add order, deleted ones included, bytes from
                         the blob store (model switch: the new catalog becomes a position-aligned prefix of the old
                         one, which the gateway's SwitchModel resumes from and cuts over)
  blobs:DIR              every blob of a content-addressed blob store; image ID = content hash

The manifest is frozen on the first run (`OUT/manifest/`, one Parquet file per shard, renamed into place as a
whole): a rerun works on exactly the same shards, which is what makes resuming exact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jobs.embed.adapters import Visibility, iter_catalog_records

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
MANIFEST_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("owner_id", pa.string()),
                             ("visibility", pa.int8()), ("deleted", pa.bool_()), ("position", pa.int64()),
                             ("shard", pa.int32())])
FAILURE_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("stage", pa.string()),
                            ("reason", pa.string())])


@dataclass(frozen=True)
class Manifest:
    """The frozen manifest of a job: shard files and their row counts."""

    root: Path
    source: str
    shard_rows: list[int]  # rows of each shard (the last one may be shorter)
    rejected: int  # manifest rows refused up front (duplicate IDs), in failures/manifest.parquet
    aligned: bool = False  # catalog source: row `position` = the record's add position in the source catalog

    @property
    def total(self) -> int:
        return sum(self.shard_rows)

    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}.parquet"


def _rows_from_directory(root: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not p.is_symlink())
    return [{"image_id": p.relative_to(root).with_suffix("").as_posix(), "uri": str(p.resolve())} for p in files]


def _rows_from_table(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    missing = {"image_id", "uri"} - set(table.column_names)
    if missing:
        raise ValueError(f"manifest {path} lacks the column(s) {sorted(missing)}")
    return table.to_pylist()


def _rows_from_catalog(data_dir: Path, model_version: str) -> list[dict[str, Any]]:
    blobs = data_dir / "blobs"
    return [{"image_id": r.image_id, "uri": str(blobs / r.content_hash[:2] / r.content_hash),
             "owner_id": r.owner_id, "visibility": int(r.visibility), "deleted": r.deleted, "position": r.internal_id}
            for r in iter_catalog_records(data_dir, model_version)]


def _rows_from_blobs(root: Path) -> list[dict[str, Any]]:
    return [{"image_id": p.name, "uri": str(p)} for p in sorted(root.glob("??/*")) if p.is_file()
            and not p.name.startswith(".")]


def list_source(source: str, data_dir: Path | None) -> list[dict[str, Any]]:
    """Rows (image_id, uri, owner_id?, visibility?) of a manifest source, in no particular order."""
    if source.startswith("catalog:"):
        if data_dir is None:
            raise ValueError("a catalog: manifest needs --data-dir")
        return _rows_from_catalog(data_dir, source.removeprefix("catalog:"))
    if source.startswith("blobs:"):
        return _rows_from_blobs(Path(source.removeprefix("blobs:")))
    path = Path(source)
    if path.is_dir():
        return _rows_from_directory(path)
    if path.suffix in (".csv", ".parquet"):
        return _rows_from_table(path)
    raise ValueError(f"manifest {source!r}: not a directory, .csv, .parquet, catalog:encoder/N or blobs:DIR")


def freeze_manifest(source: str, out: Path, shard_size: int, data_dir: Path | None = None) -> Manifest:
    """Build `OUT/manifest/` once (sorted by image ID, fixed shards); later calls reuse it as it is."""
    root = out / "manifest"
    index_path = root / "_index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        if index["source"] != source:
            raise ValueError(f"{out} holds a job over {index['source']!r}, not {source!r}: use another --out")
        return Manifest(root, index["source"], index["shard_rows"], index["rejected"], index.get("aligned", False))

    aligned = source.startswith("catalog:")
    rows = list_source(source, data_dir)
    rows.sort(key=(lambda r: r["position"]) if aligned else (lambda r: (str(r["image_id"]), str(r["uri"]))))
    unique, duplicates = [], []
    for row in rows:
        if unique and unique[-1]["image_id"] == str(row["image_id"]):
            duplicates.append({"image_id": str(row["image_id"]), "uri": str(row["uri"]), "stage": "manifest",
                               "reason": f"duplicate image_id (kept {unique[-1]['uri']})"})
            continue
        unique.append({"image_id": str(row["image_id"]), "uri": str(row["uri"]),
                       "owner_id": str(row.get("owner_id") or ""),
                       "visibility": int(row.get("visibility") or Visibility.PUBLIC),
                       "deleted": bool(row.get("deleted", False)), "position": int(row.get("position", len(unique)))})

    tmp = out / f".manifest.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shard_rows = []
    for shard, start in enumerate(range(0, len(unique), shard_size)):
        part = unique[start : start + shard_size]
        table = pa.Table.from_pylist([{**r, "shard": shard} for r in part], schema=MANIFEST_SCHEMA)
        pq.write_table(table, tmp / f"shard-{shard:05d}.parquet")
        shard_rows.append(len(part))
    (out / "failures").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(duplicates, schema=FAILURE_SCHEMA), out / "failures" / "manifest.parquet")
    (tmp / "_index.json").write_text(json.dumps({"source": source, "shard_rows": shard_rows, "aligned": aligned,
                                                 "rejected": len(duplicates), "created": time.time()}))
    os.replace(tmp, root)  # the manifest appears whole or not at all
    return Manifest(root, source, shard_rows, len(duplicates), aligned)


def expand_shard(batch: dict[str, np.ndarray], rows_per_batch: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage: a shard's path -> its manifest rows, in batches (a generator: rows stream on)."""
    for path in batch["path"]:
        table = pq.read_table(str(path))
        for start in range(0, table.num_rows, rows_per_batch):
            part = table.slice(start, rows_per_batch)
            yield {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}


def read_uri(uri: str) -> bytes:
    """A local path or file:// URI; other schemes (s3://, gs://, hdfs://) through pyarrow's filesystems."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://")).read_bytes()
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_bytes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: adds `data` (the file's bytes) and `error` (why it could not be read, else "")."""
    started = time.perf_counter()
    data, errors = [], []
    for uri in batch["uri"]:
        try:
            data.append(read_uri(str(uri)))
            errors.append("")
        except OSError as exc:
            data.append(b"")
            errors.append(f"read: {type(exc).__name__}: {exc}")
    batch["data"] = np.array(data, dtype=object)
    batch["error"] = np.array(errors, dtype=object)
    batch["read_s"] = np.full(len(errors), (time.perf_counter() - started) / max(1, len(errors)))
    return batch
