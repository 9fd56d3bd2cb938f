"""How large a corpus one 24 GiB host serves at 10-recall@10 >= 0.95: build, recall, latency, memory per vector.

    python -m benchmarks.scale_bench [--n 10000000] [--factory ...]

The corpus is generated in chunks (never held whole: 10M x 1280 float32 would be 51 GB) from the same
low-intrinsic-dimension model as faiss's SyntheticDataset, with the real photo embeddings' dimension.
Exact ground truth for the queries is computed chunk by chunk while the index is filled. The index keeps
IVF-PQ 4-bit fast-scan codes plus an 8-bit scalar-quantized copy for the re-rank (an exact float copy,
RFlat, would not fit at this scale); the coarse quantizer is an HNSW graph so assigning 10M vectors to
lists is tractable on 2 cores. Writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import resource
import time

import faiss
import numpy as np
from tqdm import tqdm

from benchmarks.index_bench import DIM, recall_at
from reporting.results import markdown_table, run_info, write_results

CHUNK = 100_000  # ~1.5 GB of transient buffers per chunk: keeps the 10M run inside 24 GiB
QUERIES = 200
LATENT = 10  # intrinsic dimension, as faiss.contrib.datasets.SyntheticDataset (and index_bench) use


class Generator:
    """Vectors x = tanh(A z) + noise, normalized: a fixed random map of a 10-d latent, as in SyntheticDataset."""

    def __init__(self, seed: int = 1234) -> None:
        rng = np.random.default_rng(seed)
        self.map = rng.standard_normal((LATENT, DIM)).astype(np.float32) / np.sqrt(LATENT)
        self.seed = seed

    def chunk(self, index: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        latent = rng.standard_normal((size, LATENT), dtype=np.float32)
        x = np.tanh(latent @ self.map) + 0.1 * rng.standard_normal((size, DIM), dtype=np.float32)
        faiss.normalize_L2(x)
        return x


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--factory", default=None, help="default: IVF{~sqrt n}_HNSW32,PQ640x4fs,Refine(SQ8)")
    parser.add_argument("--train", type=int, default=None, help="training vectors (default 40 per list)")
    args = parser.parse_args(argv)
    n = args.n
    nlist = 2 ** round(math.log2(math.sqrt(n)))  # fewer lists than the gateway's 4 sqrt(n): k-means must finish
    factory = args.factory or f"IVF{nlist}_HNSW32,PQ{DIM // 2}x4fs,Refine(SQ8)"
    faiss.omp_set_num_threads(2)
    gen = Generator()
    queries = gen.chunk(2**31, QUERIES)  # a stream of its own: neither training nor database vectors
    base_rss = current_rss_bytes()

    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    train = args.train or 40 * nlist
    print(f"training {factory} on {train:,} vectors ...", flush=True)
    index.train(gen.chunk(0, train))
    train_s = time.perf_counter() - start

    # Reserve the re-rank codes once: growing a std::vector by doubling would briefly hold 3x its size.
    refine_codes = faiss.downcast_index(index.refine_index).codes
    refine_codes.resize(n * faiss.downcast_index(index.refine_index).code_size)
    refine_codes.resize(0)  # keeps the capacity
    # Fill the index chunk by chunk, keeping the exact top-10 of every query as we go.
    best_scores = np.full((QUERIES, 10), -np.inf, dtype=np.float32)
    best_ids = np.full((QUERIES, 10), -1, dtype=np.int64)
    start = time.perf_counter()
    for c in tqdm(range(math.ceil(n / CHUNK)), desc=f"adding {n:,} vectors", unit="chunk"):
        size = min(CHUNK, n - c * CHUNK)
        x = gen.chunk(c + 1, size)
        index.add(x)
        scores = queries @ x.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + c * CHUNK], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(merged_scores, order, 1), np.take_along_axis(merged_ids, order, 1)
    add_s = time.perf_counter() - start
    del x, scores
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed chunk buffers back, so RSS counts the index only
    index_bytes = current_rss_bytes() - base_rss

    faiss.omp_set_num_threads(1)
    rows = []
    for nprobe in (nlist // 32, nlist // 16, nlist // 8):
        for k_factor in (16, 32):
            # The HNSW coarse quantizer must explore at least nprobe centroids to return nprobe lists.
            ivf = faiss.SearchParametersIVF(nprobe=nprobe,
                                            quantizer_params=faiss.SearchParametersHNSW(efSearch=2 * nprobe))
            params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=ivf)
            ids, times = [], []
            for q in queries:
                t = time.perf_counter()
                _, i = index.search(q[None], 10, params=params)
                times.append(time.perf_counter() - t)
                ids.append(i[0])
            rows.append({"nprobe": nprobe, "k_factor": k_factor,
                         "recall_at_10": round(recall_at(best_ids, np.array(ids), 10), 4),
                         "ms_per_query": round(1000 * float(np.mean(times)), 3),
                         "p99_ms": round(1000 * float(np.percentile(times, 99)), 3)})
            tqdm.write(str(rows[-1]))
    meeting = [r for r in rows if r["recall_at_10"] >= 0.95]
    summary = {"n": n, "factory": factory, "train_s": round(train_s, 1), "add_s": round(add_s, 1),
               "index_resident_gib": round(index_bytes / 2**30, 2),
               "resident_bytes_per_vector": round(index_bytes / n, 1), "peak_rss_gib": round(rss_gib(), 2),
               "meets_recall_goal": bool(meeting),
               "fastest_setting_meeting_goal": min(meeting, key=lambda r: r["ms_per_query"]) if meeting else None}
    info = run_info(**summary)
    md = [f"# Scale benchmark ({n:,} x {DIM})", "",
          f"`python -m benchmarks.scale_bench --n {n}` — commit {info['git_commit']}, {info['cpu_count']} CPUs. "
          f"Index `{factory}`; training {summary['train_s']} s, adding {summary['add_s']} s (2 threads); "
          f"resident index memory {summary['index_resident_gib']} GiB = "
          f"{summary['resident_bytes_per_vector']} bytes per vector (peak RSS {summary['peak_rss_gib']} GiB). "
          f"Recall against exact search over all {n:,} vectors, {QUERIES} queries, one at a time, 1 thread.", "",
          markdown_table(rows, ["nprobe", "k_factor", "recall_at_10", "ms_per_query", "p99_ms"])]
    write_results("scale", {**info, "rows": rows}, "\n".join(md))
    return summary


if __name__ == "__main__":
    main()
