"""DiskANN (diskannpy), built and searched on rows benchmarks/index_side_by_side.py wrote; prints one JSON object.

    .venv-diskann/bin/python benchmarks/diskann_runner.py build|search WORKDIR '{"graph_degree": 64, ...}'

`search` runs in a fresh process so that its RAM figure is the loaded index's, not memory the build freed.

Runs in its own interpreter: diskannpy 0.7.0 requires numpy==1.25 exactly, the project pins 1.26.4 (what
nvidia-pytriton allows). So this file imports numpy, diskannpy and the standard library only (which is why
rss_anon and disk_reads repeat benchmarks/economics.py's).

diskannpy is imported inside the two steps, so the project's interpreter can import this module (the
architecture test imports every module).

WORKDIR holds corpus.npy (float32 unit rows), queries.npy and exact_ids.npy (the exact top 10 of each query).
Two things DiskANN 0.7.0 needs here, both found by running it:
- A disk node (the full-precision vector and its neighbour list) must fit in one 4 KB sector; a 1280-d float32
  vector is 5,120 B, and the load then hangs (microsoft/DiskANN#14 recommends compressed disk vectors above
  ~1,024 dimensions). So the vectors go to disk as int8 (the unit rows times one scale, L2 distance: on unit
  rows L2 ranks as the served inner product does; the disk index has no cosine). `int8_exact_recall_at_10` is
  what the int8 rows lose before any index. (The other way, a 1,024 B PQ code of the float rows on disk
  (`pq_disk_bytes`), found 0.93 at L = 80 on 5k test rows and loaded ~1.9 KB of pivots per vector: not kept.)
- `StaticDiskIndex(num_threads=1)` deadlocks in its loader on this machine; the index is opened with 2 threads
  and every query is issued alone from this thread, so a query runs on one core (beam_width reads in flight).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


def disk_reads() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes")


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / 10 for f, e in zip(found, exact, strict=True)]))


def as_int8(rows: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(rows * scale), -127, 127).astype(np.int8)


def inputs(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows and queries as DiskANN gets them: int8, one scale for all."""
    corpus, queries = np.load(workdir / "corpus.npy"), np.load(workdir / "queries.npy")
    scale = 127.0 / float(np.quantile(np.abs(corpus), 0.99999))  # a few outlying coordinates clip
    return as_int8(corpus, scale), as_int8(queries, scale)


def build(workdir: Path, config: dict) -> dict:
    import diskannpy

    data, queries = inputs(workdir)
    exact = np.load(workdir / "exact_ids.npy")
    n, dim = data.shape
    rows = data.astype(np.float32)
    top = np.argsort((rows**2).sum(1) - 2 * (queries.astype(np.float32) @ rows.T), axis=1)[:, :10]
    out: dict = {"engine": "diskann", "n": n, "dim": dim, **config, "disk_vectors": "int8",
                 "int8_exact_recall_at_10": round(recall(top, exact), 4)}
    index_dir = workdir / "diskann"
    shutil.rmtree(index_dir, ignore_errors=True)  # diskannpy refuses to build over an earlier index
    index_dir.mkdir()
    started = time.monotonic()
    diskannpy.build_disk_index(data, "l2", str(index_dir), complexity=config["build_complexity"],
                               graph_degree=config["graph_degree"],
                               search_memory_maximum=n * config["pq_bytes"] / 2**30,
                               build_memory_maximum=config.get("build_memory_gb", 8.0),
                               num_threads=os.cpu_count() or 1)
    out["build_s"] = round(time.monotonic() - started, 1)
    out["ram_pq_bytes_per_vector"] = round((index_dir / "ann_pq_compressed.bin").stat().st_size / n, 1)
    out["disk_bytes_per_vector"] = round(sum(f.stat().st_size for f in index_dir.glob("ann_disk.index*")) / n, 1)
    return out


def search(workdir: Path, config: dict) -> dict:
    import diskannpy

    _, queries = inputs(workdir)
    exact = np.load(workdir / "exact_ids.npy")
    n = int(np.load(workdir / "corpus.npy", mmap_mode="r").shape[0])
    out: dict = {}
    before = rss_anon()
    index = diskannpy.StaticDiskIndex(str(workdir / "diskann"), num_threads=2,
                                      num_nodes_to_cache=config.get("cache_nodes", 0))
    out["ram_bytes_per_vector"] = round((rss_anon() - before) / n, 1)
    for q in queries[:50]:  # code and scratch warm; DiskANN reads its nodes with O_DIRECT, never cached
        index.search(q, 10, config["search"][0], beam_width=config["beam_width"])
    out["sweep"] = []
    for complexity in config["search"]:
        latencies, found = [], []
        read_before = disk_reads()
        for q in queries:
            t = time.perf_counter()
            result = index.search(q, 10, complexity, beam_width=config["beam_width"])
            latencies.append((time.perf_counter() - t) * 1000)
            found.append(result.identifiers[:10])
        out["sweep"].append({"search_complexity": complexity, "recall_at_10": round(recall(np.stack(found), exact), 4),
                             "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                             "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                             "disk_bytes_per_query": int((disk_reads() - read_before) / len(queries))})
        print(json.dumps(out["sweep"][-1]), file=sys.stderr, flush=True)
    out["ram_bytes_per_vector_after_queries"] = round((rss_anon() - before) / n, 1)
    return out


if __name__ == "__main__":
    step = {"build": build, "search": search}[sys.argv[1]]
    print(json.dumps(step(Path(sys.argv[2]), json.loads(sys.argv[3]))))
