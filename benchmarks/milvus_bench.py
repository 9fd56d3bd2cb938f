"""Embedded FAISS (the default `VectorIndex`) vs a real Milvus server (`MilvusVectorStore` default index).

    python -m benchmarks.milvus_bench [--n 100000] [--queries 200]

Same vectors for both: faiss's SyntheticDataset at the embedding dimension (1280, low intrinsic dimension like
real embeddings; `evaluation.vectors.synthetic_dataset`). For each backend: 10-recall@10 against exact
inner-product search, p50/p99 ms per query and QPS (one query at a time from one client: QPS = 1 / mean), with
every image public and with 90% private (the filter inside the ANN search; truth = exact top-10 among the public
ones). Milvus runs as a real standalone server started like the tests do (tests/fixtures/milvus.py, production
time tick) on the same 2 cores as the client; its collection holds 10% public rows: the "all public" run
searches it without the filter (the same exact re-rank as the store), the 90%-private run through
`MilvusVectorStore.search`. Also: ingest rate, index build + hand-off time, Milvus' resident memory, the
latency of Strong / Session / Eventually reads and whether a second client still sees an image right after
the hide call returned.
Writes benchmarks/results/milvus.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from pymilvus import MilvusClient

from benchmarks.index_bench import build
from devkit.milvus_server import MilvusServer
from evaluation.vectors import DIM, synthetic_dataset
from reporting.results import markdown_table, run_info, write_results
from server.store.base import EmbeddedImage, Visibility
from server.store.faiss.params import params_for
from server.store.milvus import MilvusIndexConfig, MilvusVectorStore


def summarize(times: list[float], got: list[list[int]], truth: np.ndarray) -> dict[str, float]:
    recall = float(np.mean([len(set(g[:10]) & set(t[:10])) / 10 for g, t in zip(got, truth, strict=True)]))
    ms = 1000 * np.asarray(times)
    return {"recall_at_10": round(recall, 4), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "qps": round(1000 / float(ms.mean()), 1)}


def exact_truth(xb: np.ndarray, xq: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    base = xb if eligible is None else xb[eligible]
    index = faiss.IndexFlatIP(DIM)
    index.add(base)
    _, ids = index.search(xq, 10)
    return ids if eligible is None else np.flatnonzero(eligible)[ids]


def bench_faiss(xb: np.ndarray, xq: np.ndarray, public: np.ndarray, truth_all: np.ndarray,
                truth_public: np.ndarray) -> list[dict[str, object]]:
    faiss.omp_set_num_threads(1)  # the gateway searches one query at a time on one thread
    params = params_for(len(xb), DIM, rows_on_disk=False)
    index, build_s, bpv = build(params, xb)
    selector = faiss.IDSelectorBatch(np.flatnonzero(public).astype(np.int64))
    rows = []
    for label, sel, truth in (("all public", None, truth_all), ("90% private", selector, truth_public)):
        times, got = [], []
        for q in xq:
            t = time.perf_counter()
            _, ids = index.search(q[None], 10, selector=sel)
            times.append(time.perf_counter() - t)
            got.append([int(i) for i in ids[0]])
        rows.append({"backend": "FAISS embedded", "index": params.factory, "corpus": label,
                     "search": f"nprobe {params.nprobe}, k_factor {params.k_factor}", **summarize(times, got, truth),
                     "build_s": round(build_s, 1), "bytes_per_vector": round(bpv, 1)})
        print(rows[-1], flush=True)
    return rows


def rss_bytes(pids: list[int], field: str = "VmRSS") -> int:
    """Sum of one /proc/<pid>/status memory field (VmRSS: all resident; RssAnon: heap only, no page cache)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def bench_milvus(xb: np.ndarray, xq: np.ndarray, public: np.ndarray, truth_all: np.ndarray,
                 truth_public: np.ndarray, workdir: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    server = MilvusServer(workdir / "milvus").start()
    extra: dict[str, object] = {"server_start_s": round(server.start_seconds, 1)}
    try:
        rss_empty = rss_bytes(server.pids())
        index = MilvusIndexConfig.for_corpus(len(xb), DIM)
        store = MilvusVectorStore(server.uri, "encoder/1", DIM, index)
        start = time.perf_counter()
        for s in range(0, len(xb), 1000):
            store.add([EmbeddedImage(f"i{i}", "o", Visibility.PUBLIC if public[i] else Visibility.PRIVATE, f"h{i}",
                                     xb[i]) for i in range(s, min(len(xb), s + 1000))])
        extra["ingest_rows_per_s"] = round(len(xb) / (time.perf_counter() - start), 1)
        start = time.perf_counter()
        store.wait_indexed(timeout_s=3600)
        extra["index_build_and_handoff_s"] = round(time.perf_counter() - start, 1)
        extra["milvus_rss_bytes_per_vector"] = round((rss_bytes(server.pids()) - rss_empty) / len(xb), 1)
        stats = store.stats()
        kind, params = stats.index_type, stats.index_params
        rows = []
        # all public: the same collection searched without the privacy filter (same widening + exact re-rank)
        times, got = [], []
        limit = 10 * index.candidates_per_result
        for q in xq:
            t = time.perf_counter()
            hits = store._ann(q, "", limit, 1)
            ranked = store._rerank(q, hits, 10)
            times.append(time.perf_counter() - t)
            got.append([int(c.image_id[1:]) for c in ranked])
        rows.append({"backend": "Milvus server", "index": kind, "corpus": "all public",
                     "search": f"{params['search']}, {limit} candidates re-scored", **summarize(times, got, truth_all),
                     "build_s": extra["index_build_and_handoff_s"],
                     "bytes_per_vector": extra["milvus_rss_bytes_per_vector"]})
        print(rows[-1], flush=True)
        times, got = [], []
        for q in xq:
            t = time.perf_counter()
            ranked = store.search(q, 10)
            times.append(time.perf_counter() - t)
            got.append([int(c.image_id[1:]) for c in ranked])
            assert all(public[g] for g in got[-1]), "private image returned"
        rows.append({"backend": "Milvus server", "index": kind, "corpus": "90% private",
                     "search": "filter in the ANN search, widened from the eligible fraction",
                     **summarize(times, got, truth_public), "build_s": extra["index_build_and_handoff_s"],
                     "bytes_per_vector": extra["milvus_rss_bytes_per_vector"]})
        print(rows[-1], flush=True)
        extra.update(consistency_and_freshness(store, server.uri, xq))
        store.close()
    finally:
        server.stop()
    extra["server_stop_s"] = round(server.stop_seconds, 1)
    return rows, extra


def consistency_and_freshness(store: MilvusVectorStore, uri: str, xq: np.ndarray) -> dict[str, object]:
    """Read latency per consistency level, and how long until a second client (another gateway) sees a hide."""
    out: dict[str, object] = {}
    saved = store.consistency
    for level in ("Strong", "Bounded", "Session", "Eventually"):
        store.consistency = level
        times = []
        for q in xq[:20]:
            t = time.perf_counter()
            store._ann(q, "visibility == 1 and deleted == false", 80, 1)
            times.append(time.perf_counter() - t)
        out[f"search_p50_ms_{level}"] = round(1000 * float(np.median(times)), 2)
    store.consistency = saved
    other = MilvusClient(uri=uri, dedicated=True)  # another gateway: own connection, never wrote (no session)
    stale, hide_ms = 0, []
    hides = 20
    for q in xq[:hides]:
        target = store.search(q, 1)[0].image_id
        t = time.perf_counter()
        store.set_visibility([target], Visibility.PRIVATE)  # ends with the store's barrier
        hide_ms.append(1000 * (time.perf_counter() - t))
        for _ in range(3):  # the other client reads at once, at Eventually: what the query node serves
            hits = other.search(store.collection, data=[q.tolist()], filter="visibility == 1 and deleted == false",
                                limit=1, search_params=store.index.search_params(1, 1),
                                consistency_level="Eventually")[0]
            stale += bool(hits and hits[0]["id"] == target)
    other.close()
    out["hide_call_ms_p50"] = round(float(np.median(hide_ms)), 1)
    out["other_client_stale_reads_after_hide"] = f"{stale} of {3 * hides}"
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"generating {args.n} x {DIM}", flush=True)
    xb, xq = synthetic_dataset(args.n, args.queries)
    public = np.zeros(args.n, bool)
    public[np.random.default_rng(0).choice(args.n, args.n // 10, replace=False)] = True
    faiss.omp_set_num_threads(2)
    truth_all, truth_public = exact_truth(xb, xq, None), exact_truth(xb, xq, public)
    rows = bench_faiss(xb, xq, public, truth_all, truth_public)
    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
        milvus_rows, extra = bench_milvus(xb, xq, public, truth_all, truth_public, Path(tmp))
    rows += milvus_rows
    info = run_info(n=args.n, dim=DIM, queries=args.queries, **extra)
    info["total_s"] = round(time.perf_counter() - started, 1)
    md = [f"# Embedded FAISS vs Milvus server ({args.n:,} x {DIM})", "",
          f"`python -m benchmarks.milvus_bench --n {args.n}` — commit {info['git_commit']}, {info['cpu_count']} "
          f"CPUs (load average {info['load_average_at_start']:.1f} at start: other engineers' runs share them), "
          f"{info['total_s']} s in all. One query at a time from one client; recall = 10-recall@10 against exact "
          "search (90% private: exact top-10 among the public images); Milvus standalone 2.3.5 on the same cores.",
          "", markdown_table(rows, ["backend", "index", "corpus", "search", "recall_at_10", "p50_ms", "p99_ms", "qps",
                                    "build_s", "bytes_per_vector"]), "",
          "FAISS bytes/vector: the serialized index; Milvus: growth of the server's resident memory after loading "
          "the indexed collection (raw vectors are kept too: Milvus returns them for the exact re-rank).", "",
          "| measurement | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in extra.items()]
    data = {**info, "rows": rows}
    write_results("milvus", data, "\n".join(md))
    return data


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
