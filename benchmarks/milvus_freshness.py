"""Freshness across gateways on Milvus: how long after an add is acknowledged through one gateway's store does
another gateway's store (its own connection, never wrote) find it by search?

    python -m benchmarks.milvus_freshness [--adds 30]

Searches read at Session consistency (read-your-writes for the writer; docs/milvus-scale.md); hides and deletes
end with a barrier, so this delay applies to adds only. Writes benchmarks/results/milvus_freshness.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from devkit.milvus_server import MilvusServer
from reporting.results import markdown_table, run_info, write_results
from server.store.base import EmbeddedImage, Visibility
from server.store.milvus import MilvusVectorStore


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adds", type=int, default=30)
    args = parser.parse_args(argv)
    delays = []
    with tempfile.TemporaryDirectory(prefix="vsearch-fresh-") as tmp:
        server = MilvusServer(Path(tmp)).start()  # the production time tick (200 ms)
        try:
            writer = MilvusVectorStore(server.uri, "encoder/1", 64, dedicated=True)
            reader = MilvusVectorStore(server.uri, "encoder/1", 64, dedicated=True)
            rng = np.random.default_rng(0)
            for i in range(args.adds):
                vector = rng.standard_normal(64).astype(np.float32)
                vector /= np.linalg.norm(vector)
                writer.add([EmbeddedImage(f"x{i}", "bench", Visibility.PUBLIC, f"h{i}", vector)])
                start = time.perf_counter()
                while [h.image_id for h in reader.search(vector, 1)] != [f"x{i}"]:
                    time.sleep(0.005)
                delays.append(1000 * (time.perf_counter() - start))
        finally:
            server.stop()
    ms = np.array(delays)
    row = {"adds": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
           "p90_ms": round(float(np.percentile(ms, 90)), 1), "max_ms": round(float(ms.max()), 1)}
    info = run_info(**vars(args))
    data = {**info, **row, "delays_ms": [round(d, 1) for d in delays]}
    write_results("milvus_freshness", data, "\n".join([
        "# Freshness of adds across gateways (Milvus)", "",
        f"`python -m benchmarks.milvus_freshness` — commit {info['git_commit']}, load average at start "
        f"{info['load_average_at_start']:.2f}. A second store object (its own connection) searches until it finds "
        "each add acknowledged by the first; Session consistency, time tick 200 ms (Milvus default).", "",
        markdown_table([row], list(row)),
    ]))
    return data


if __name__ == "__main__":
    main()
