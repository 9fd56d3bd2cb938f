"""Stage 4: commit shards (Parquet embeddings + failures, then a done-marker) and load them into a VectorStore.

A shard is committed once every one of its manifest rows has come back (with an embedding or an error):
`embeddings/shard-N.parquet` and `failures/shard-N.parquet` are written to temporary names, fsync'd and renamed,
then `done/shard-N.json` is written the same way. A rerun skips shards with a marker and rewrites any other
shard from scratch, so each image lands in exactly one committed file: no duplicates, no gaps, even when the
driver is killed mid-write. Rows arriving twice (a retried task) are counted once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.embed.adapters import (
    EMBEDDING_DIM,
    REGION_BOXES,
    SIGNATURE_BYTES,
    EmbeddedImage,
    SignatureStore,
    VectorStore,
    Visibility,
    replace_durably,
    write_atomic,
)
from jobs.embed.reader import FAILURE_SCHEMA, Manifest

EMBEDDING_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)), ("content_hash", pa.string()),
    ("owner_id", pa.string()), ("visibility", pa.int8()), ("model_version", pa.string()), ("embed_actor", pa.string()),
    ("deleted", pa.bool_()), ("position", pa.int64()),
])
# Jobs that embed regions add a column of the REGION_BOXES embeddings, [R x dim] flattened, per image.
REGIONS_FIELD = pa.field("regions", pa.list_(pa.float32(), len(REGION_BOXES) * EMBEDDING_DIM))
SIGNATURE_FIELD = pa.field("signature", pa.list_(pa.int8(), SIGNATURE_BYTES))  # copy verification's pixel signature
TIMING_COLUMNS = ("read_s", "prepare_s", "prepare_cpu_s", "embed_s", "embed_cpu_s")


def _name(shard: int, suffix: str) -> str:
    return f"shard-{shard:05d}.{suffix}"


def done_shards(out: Path) -> set[int]:
    """Shards whose done-marker exists."""
    return {int(p.stem.split("-")[1]) for p in (out / "done").glob("shard-*.json")}


def _write_parquet_atomic(table: pa.Table, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    replace_durably(tmp, target)


@dataclass
class StageTimes:
    """Per-stage busy time summed over rows (seconds), and per-actor rows and seconds."""

    rows: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_COLUMNS, 0.0))
    actors: dict[str, list[float]] = field(default_factory=dict)  # name -> [rows, embed seconds]
    prepared_on: dict[str, int] = field(default_factory=dict)  # node IP -> rows prepared there

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.rows += len(batch["image_id"])
        for column in TIMING_COLUMNS:
            self.seconds[column] += float(np.sum(batch[column]))
        for node in batch["prepare_node"]:
            self.prepared_on[str(node)] = self.prepared_on.get(str(node), 0) + 1
        for actor, seconds in zip(batch["embed_actor"], batch["embed_s"], strict=True):
            entry = self.actors.setdefault(str(actor), [0, 0.0])
            entry[0] += 1
            entry[1] += float(seconds)


class ShardCommitter:
    """Collects result rows on the driver and commits each shard as soon as it is complete."""

    def __init__(self, out: Path, manifest: Manifest, model_version: str, pending: Iterable[int]) -> None:
        self.out, self.manifest, self.model_version = out, manifest, model_version
        for sub in ("embeddings", "failures", "done"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        self.pending = {shard: {} for shard in pending}  # shard -> {image_id: row}
        self.times = StageTimes()
        self.committed: list[int] = []

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.times.add(batch)
        for i, shard in enumerate(batch["shard"]):
            rows = self.pending.get(int(shard))
            if rows is None:  # a duplicate of a row whose shard is committed already
                continue
            rows[str(batch["image_id"][i])] = {key: batch[key][i] for key in (
                "image_id", "uri", "owner_id", "visibility", "content_hash", "embedding", "error", "embed_actor",
                "deleted", "position", "regions", "signature") if key in batch}
            if len(rows) == self.manifest.shard_rows[int(shard)]:
                self._commit(int(shard), self.pending.pop(int(shard)))

    def _commit(self, shard: int, rows: dict[str, dict]) -> None:
        ordered = sorted(rows.values(), key=lambda r: int(r["position"]))  # manifest order
        ok = [r for r in ordered if not r["error"]]
        failed = [r for r in ordered if r["error"]]
        columns = {
            "image_id": [str(r["image_id"]) for r in ok],
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([r["embedding"] for r in ok]) if ok else np.empty(0, np.float32)),
                EMBEDDING_DIM),
            "content_hash": [str(r["content_hash"]) for r in ok], "owner_id": [str(r["owner_id"]) for r in ok],
            "visibility": pa.array([int(r["visibility"]) for r in ok], pa.int8()),
            "model_version": [self.model_version] * len(ok), "embed_actor": [str(r["embed_actor"]) for r in ok],
            "deleted": [bool(r["deleted"]) for r in ok], "position": [int(r["position"]) for r in ok],
        }
        schema = EMBEDDING_SCHEMA
        if ok and "regions" in ok[0]:
            columns["regions"] = pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([np.ravel(r["regions"]) for r in ok])), REGIONS_FIELD.type.list_size)
            schema = schema.append(REGIONS_FIELD)
        if ok and "signature" in ok[0]:
            columns["signature"] = pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate([np.ravel(r["signature"]) for r in ok]).astype(np.int8)), SIGNATURE_BYTES)
            schema = schema.append(SIGNATURE_FIELD)
        embeddings = pa.Table.from_pydict(columns, schema=schema)
        failures = pa.Table.from_pylist([{"image_id": str(r["image_id"]), "uri": str(r["uri"]),
                                          "stage": str(r["error"]).split(":", 1)[0], "reason": str(r["error"])}
                                         for r in failed], schema=FAILURE_SCHEMA)
        _write_parquet_atomic(embeddings, self.out / "embeddings" / _name(shard, "parquet"))
        _write_parquet_atomic(failures, self.out / "failures" / _name(shard, "parquet"))
        write_atomic(self.out / "done" / _name(shard, "json"),
                     json.dumps({"rows": len(ordered), "embedded": len(ok), "failed": len(failed)}).encode())
        self.committed.append(shard)

    def incomplete(self) -> dict[int, int]:
        """Shards still waiting for rows when the stream ended: shard -> rows received (should be empty)."""
        return {shard: len(rows) for shard, rows in self.pending.items()}


def read_embeddings(out: Path, shard: int) -> pa.Table:
    return pq.read_table(out / "embeddings" / _name(shard, "parquet"))


def _images(table: pa.Table) -> list[EmbeddedImage]:
    flat = table.column("embedding").combine_chunks().flatten()
    vectors = np.asarray(flat, np.float32).reshape(-1, EMBEDDING_DIM)
    regions: list[np.ndarray | None] = [None] * len(vectors)
    if "regions" in table.column_names:  # shards of a job that embedded regions
        flat_regions = np.asarray(table.column("regions").combine_chunks().flatten(), np.float32)
        regions = list(flat_regions.reshape(len(vectors), REGIONS_FIELD.type.list_size // EMBEDDING_DIM, EMBEDDING_DIM))
    columns = [table.column(c).to_pylist() for c in ("image_id", "owner_id", "visibility", "content_hash")]
    return [EmbeddedImage(image_id, owner, Visibility(vis), digest, vectors[i], regions[i])
            for i, (image_id, owner, vis, digest) in enumerate(zip(*columns, strict=True))]


def _write_signatures(table: pa.Table, signatures: SignatureStore | None) -> None:
    """The rows' pixel signatures, before their images become searchable (shards of a job that computed them)."""
    if signatures is None or "signature" not in table.column_names or not table.num_rows:
        return
    rows = np.asarray(table.column("signature").combine_chunks().flatten(), np.int8).reshape(-1, SIGNATURE_BYTES)
    signatures.write(list(zip(table.column("content_hash").to_pylist(), rows, strict=True)))


def load_into_store(out: Path, manifest: Manifest, store: VectorStore, signatures: SignatureStore | None = None
                    ) -> dict[str, int]:
    """Add every committed shard to the store, in shard order; idempotent (a rerun adds nothing twice).
    `signatures`: where the serving gateway reads pixel signatures (copy verification)."""
    if manifest.aligned:
        return _load_aligned(out, manifest, store, signatures)
    loaded_dir = out / "loaded" / store.model_version.replace("/", "-")
    loaded_dir.mkdir(parents=True, exist_ok=True)
    counts = {"added": 0, "already_present": 0, "shards_skipped": 0}
    for shard in range(len(manifest.shard_rows)):
        marker = loaded_dir / _name(shard, "json")
        if marker.exists():
            counts["shards_skipped"] += 1
            continue
        table = read_embeddings(out, shard)
        images = _images(table)
        _write_signatures(table, signatures)
        flags = store.add(images) if images else []
        deleted = [i.image_id for i, gone in zip(images, table.column("deleted").to_pylist(), strict=True) if gone]
        if deleted:
            store.delete(deleted)
        counts["added"] += sum(flags)
        counts["already_present"] += len(flags) - sum(flags)
        write_atomic(marker, json.dumps({"added": sum(flags), "rows": len(flags)}).encode())
    return counts


def _load_aligned(out: Path, manifest: Manifest, store: VectorStore, signatures: SignatureStore | None
                  ) -> dict[str, int]:
    """Catalog sources: row at add position p of the source lands at add position p of the target, so the target
    is a prefix of the source that the gateway's model switch resumes from. Loading stops at the first position
    without an embedding (a failed image): the switch re-embeds from there and reports the error itself.
    Deleted records are added and then marked deleted (positions stay aligned; they are never searchable)."""
    counts = {"added": 0, "present_before": store.stats().rows, "aligned_prefix_end": 0}
    for shard in range(len(manifest.shard_rows)):
        table = read_embeddings(out, shard)
        positions = table.column("position").to_pylist()
        start = store.stats().rows
        if positions and positions[-1] < start:
            continue  # loaded before
        keep = [i for i, p in enumerate(positions) if p >= start]
        contiguous = 0
        while contiguous < len(keep) and positions[keep[contiguous]] == start + contiguous:
            contiguous += 1
        part = table.take(pa.array(keep[:contiguous], type=pa.int64()))
        images = _images(part)
        _write_signatures(part, signatures)
        if images:
            flags = store.add(images)
            counts["added"] += sum(flags)
            deleted = [i.image_id for i, gone in zip(images, part.column("deleted").to_pylist(), strict=True) if gone]
            if deleted:
                store.delete(deleted)
        shard_end = manifest.shard_rows[shard] + sum(manifest.shard_rows[:shard])  # first position after the shard
        if store.stats().rows < shard_end:
            break  # a gap: an image of this shard failed
    counts["aligned_prefix_end"] = store.stats().rows
    return counts
