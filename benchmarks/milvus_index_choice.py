"""Which index should MilvusVectorStore default to? IVF_PQ (4-bit, m = dim/2, like FAISS' default) vs HNSW on a
real Milvus server, 20k x 1280 synthetic embeddings, 50 queries, with and without 90% private, at 1x / 8x / 32x
candidates re-scored exactly.

    python -m benchmarks.milvus_index_choice

Prints one line per configuration (results recorded in benchmarks/results/milvus_index_choice.md).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.milvus_bench import exact_truth, summarize
from devkit.milvus_server import MilvusServer
from evaluation.vectors import synthetic_dataset
from server.store.base import EmbeddedImage, Visibility
from server.store.milvus import MilvusIndexConfig, MilvusVectorStore


def main() -> None:
    n = 20_000
    xb, xq = synthetic_dataset(n, 50)
    public = np.zeros(n, bool)
    public[np.random.default_rng(0).choice(n, n // 10, replace=False)] = True
    truth_all, truth_public = exact_truth(xb, xq, None), exact_truth(xb, xq, public)
    server = MilvusServer(Path(tempfile.mkdtemp(prefix="milvus-index-choice-"))).start()
    try:
        for config in (MilvusIndexConfig(kind="IVF_PQ", nlist=512, nprobe=32, m=640, nbits=4),
                       MilvusIndexConfig(kind="HNSW", ef=64)):
            store = MilvusVectorStore(server.uri, "encoder/1", 1280, config, collection_prefix=config.kind.lower())
            for s in range(0, n, 1000):
                store.add([EmbeddedImage(f"i{j}", "o", Visibility.PUBLIC if public[j] else Visibility.PRIVATE, "h",
                                         xb[j]) for j in range(s, min(n, s + 1000))])
            start = time.time()
            store.wait_indexed()
            print(config.kind, "build + hand-off s", round(time.time() - start, 1), flush=True)
            for factor in (1, 8, 32):
                store.index = dataclasses.replace(config, refine_factor=factor)
                for label, truth in (("all public", truth_all), ("90% private", truth_public)):
                    times, got = [], []
                    for q in xq:
                        t = time.perf_counter()
                        if label == "all public":
                            ranked = store._rerank(q, store._ann(q, "", 10 * factor, 1), 10)
                        else:
                            ranked = store.search(q, 10)
                        times.append(time.perf_counter() - t)
                        got.append([int(c.image_id[1:]) for c in ranked])
                    print(config.kind, f"{factor}x candidates", label, summarize(times, got, truth), flush=True)
            store.drop()
            store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
