"""The served compact index side by side with DiskANN, the index a user would pick instead, on REAL embeddings.

    python -m benchmarks.index_side_by_side [--version 3] [--query-share 0.05]

The bar (developers' guide): DiskANN keeps ~160 B of RAM per 1280-d vector at 10-recall@10 0.95 with p99 ~2 ms
on one core. Both indexes are built and searched here, on the same rows and queries, on this machine:
- **Rows**: the served encoder's whole-image and 6 region embeddings of the package images of four domains
  (benchmarks/real_recall.py `real_set`: ~68k corpus rows; each left-out image queries with its whole-image row
  and one region row). Real vectors, because generated ones overstate what an IVF finds (real_recall.md).
- **Compact IVF** (server/store/faiss): `compact_params` at the list count this n gets and at 4,096 (what 1M-10M
  rows get), swept over nprobe, and the first of them again over a float32 log (before 2026-12-07; served:
  float16 rows); the exact re-rank reads rows from the vector log with the store's reader, only
  those whose code score may still make the top 10 (rerank.py; `all`: every candidate, as before). Warm: the
  queries' rows in the page cache. Cold: the log evicted before every query (every re-ranked row from disk).
- **DiskANN** (diskannpy 0.7.0, benchmarks/diskann_runner.py in `.venv-diskann`): PQ codes of `pq_bytes` in
  RAM (160 B: the bar), graph and vectors on disk read with O_DIRECT (so always from the disk, like the IVF's
  cold pass), swept over the search list size L.
One query at a time, one thread each (FAISS omp 1; DiskANN's query runs on the calling thread).
Writes benchmarks/results/index_side_by_side.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import ScalarFormatter

from benchmarks.economics import disk_reads, exact_top, loaded_ram, timed_pass
from benchmarks.index_bench import recall_at
from benchmarks.real_recall import compact_index, real_set
from evaluation.real_structure import CACHE
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.embedding.contract import EMBEDDING_DIM as DIM
from server.store.faiss.index import VectorIndex
from server.store.faiss.params import (
    COMPACT_K_FACTOR,
    COMPACT_NPROBE,
    RERANK_SIGMAS,
    IndexParams,
    compact_params,
    nlist_for,
)
from server.store.faiss.vector_log import DTYPES, VectorLog

ROOT = Path(__file__).resolve().parents[1]
DISKANN_VENV = ROOT / ".venv-diskann"
DISKANN_PACKAGES = ("diskannpy==0.7.0", "numpy==1.25.0")
NPROBES = (8, 16, 24, 32, 48, 64, 96)
GATEWAY_FETCH = 30  # the store search behind a k = 10 request (server/query/search.py: verification depth)
DISKANN_CONFIG = {"graph_degree": 64, "build_complexity": 100, "pq_bytes": 160, "beam_width": 4,
                  "search": [10, 20, 30, 40, 60, 80, 120, 160]}


def diskann_python() -> Path:
    """The interpreter with diskannpy, created on first use (its numpy pin conflicts with the project's)."""
    python = DISKANN_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {DISKANN_VENV} ({' '.join(DISKANN_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DISKANN_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *DISKANN_PACKAGES], check=True)
    return python


def run_diskann(corpus: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, workdir: Path,
                config: dict) -> dict:
    np.save(workdir / "corpus.npy", corpus)
    np.save(workdir / "queries.npy", queries)
    np.save(workdir / "exact_ids.npy", exact_ids)
    print(f"DiskANN {config} on {len(corpus)} rows (build: minutes)", flush=True)
    out = {}
    for step in ("build", "search"):  # search in a fresh process: its RAM is the loaded index's
        done = subprocess.run([str(diskann_python()), str(ROOT / "benchmarks" / "diskann_runner.py"), step,
                               str(workdir), json.dumps(config)], check=True, stdout=subprocess.PIPE, text=True)
        out |= json.loads(done.stdout.strip().splitlines()[-1])
    return out


def run_compact(corpus: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, workdir: Path,
                nlist: int, log_suffix: str = ".f16") -> dict:
    """The store's compact index over a vector log of the corpus (`.f16`: float16 rows, as the store keeps them;
    `.f32`: float32, as before): RAM, build, and the nprobe sweep warm + cold."""
    log_path = workdir / f"rows{log_suffix}"
    if not log_path.exists():
        corpus.astype(DTYPES[log_suffix]).tofile(log_path)
    params = compact_params(nlist, DIM)
    vector_log = VectorLog(log_path, DIM)
    index_path = workdir / f"compact-{nlist}.faiss"
    index, build_s = compact_index(corpus, params, vector_log, index_path)
    out = {"engine": "compact IVF", "factory": params.factory, "nlist": nlist, "n": len(corpus),
           "build_s": round(build_s, 1), "ram_bytes_per_vector": round(loaded_ram(index_path) / len(corpus), 1),
           "log_row_bytes": DIM * DTYPES[log_suffix].itemsize, "sweep": []}
    for nprobe, sigmas in [(nprobe, RERANK_SIGMAS) for nprobe in NPROBES] + [(COMPACT_NPROBE, None)]:
        index.params = replace(params, nprobe=nprobe, k_factor=COMPACT_K_FACTOR, rerank_sigmas=sigmas)
        timed_pass(index, queries, None)  # page cache warm for this setting's rows
        rows_before = index.rows_reranked
        warm, found = timed_pass(index, queries, None)
        rows_read = (index.rows_reranked - rows_before) / len(queries)
        read_before = disk_reads()
        cold, _ = timed_pass(index, queries, log_path)
        out["sweep"].append({
            "nprobe": nprobe, "k_factor": COMPACT_K_FACTOR, "rerank_sigmas": "all" if sigmas is None else sigmas,
            "rows_reranked_per_query": round(rows_read, 1),
            "recall_at_10": round(recall_at(exact_ids, found, 10), 4),
            "warm_p50_ms": round(float(np.percentile(warm, 50)), 2),
            "warm_p99_ms": round(float(np.percentile(warm, 99)), 2),
            "cold_p50_ms": round(float(np.percentile(cold, 50)), 2),
            "cold_p99_ms": round(float(np.percentile(cold, 99)), 2),
            "disk_bytes_per_query": int((disk_reads() - read_before) / len(queries))})
        print(out["sweep"][-1], flush=True)
    out["gateway_fetch"] = [fetch_of_30(index, params, queries, exact_ids, sigmas)
                            for sigmas in (RERANK_SIGMAS, 3.0, None)]
    vector_log.close()
    return out


def fetch_of_30(index: VectorIndex, params: IndexParams, queries: np.ndarray, exact_ids: np.ndarray,
                sigmas: float | None) -> dict:
    """A store search of k = 30, what the gateway asks for a k = 10 request (verification depth): rows read, and
    the recall of its first 10. Page cache warm."""
    index.params = replace(params, nprobe=COMPACT_NPROBE, k_factor=COMPACT_K_FACTOR, rerank_sigmas=sigmas)
    timed_pass(index, queries, None, GATEWAY_FETCH)  # page cache warm for this setting's rows
    rows_before = index.rows_reranked
    latencies, found = timed_pass(index, queries, None, GATEWAY_FETCH)
    row = {"k": GATEWAY_FETCH, "nprobe": COMPACT_NPROBE, "rerank_sigmas": "all" if sigmas is None else sigmas,
           "rows_reranked_per_query": round((index.rows_reranked - rows_before) / len(queries), 1),
           "recall_at_10": round(recall_at(exact_ids, found, 10), 4),
           "warm_p50_ms": round(float(np.percentile(latencies, 50)), 2),
           "warm_p99_ms": round(float(np.percentile(latencies, 99)), 2)}
    print(row, flush=True)
    return row


def at_recall(engine: dict, target: float, latency: str) -> dict | None:
    """The fastest setting (by `latency`) of an engine's sweep reaching the recall target."""
    reaching = [s for s in engine["sweep"] if s["recall_at_10"] >= target and s.get("rerank_sigmas") != "all"]
    return min(reaching, key=lambda s: s[latency]) if reaching else None


def plot(engines: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for engine in engines:
        if engine["engine"] == "diskann":
            series = [("p99_ms", f"DiskANN R{engine['graph_degree']}, {engine['ram_pq_bytes_per_vector']:.0f} B "
                                 "PQ in RAM (disk reads)", "s-")]
        else:
            rows = "float16" if engine["log_row_bytes"] == DIM * 2 else "float32"
            series = [("warm_p99_ms", f"compact IVF{engine['nlist']} ({rows} rows), warm page cache", "o-"),
                      ("cold_p99_ms", f"compact IVF{engine['nlist']} ({rows} rows), rows from disk", "o--")]
        points = [s for s in engine["sweep"] if s.get("rerank_sigmas") != "all"]
        for key, label, style in series:
            ax.plot([s[key] for s in points], [s["recall_at_10"] for s in points], style, label=label)
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
    ax.axvline(2.0, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("p99 latency of one query, one core (ms)")
    ax.set_ylabel("10-recall@10 vs exact")
    ax.set_title("Real embeddings: compact IVF (served) vs DiskANN")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict, command: str) -> str:
    engines = result["engines"]
    summary = []
    for e in engines:
        name = e["engine"] + (f" IVF{e['nlist']}, {e['log_row_bytes']} B rows" if e["engine"] != "diskann"
                               else f" R{e['graph_degree']}")
        keys = ("p99_ms",) if e["engine"] == "diskann" else ("warm_p99_ms", "cold_p99_ms")
        for key in keys:
            best = at_recall(e, 0.95, key)
            summary.append({"index": name, "latency": key, "ram_bytes_per_vector": e["ram_bytes_per_vector"],
                            "setting": (best or {}).get("nprobe", (best or {}).get("search_complexity", "-")),
                            "recall_at_10": (best or {}).get("recall_at_10", "-"),
                            "p99_ms": (best or {}).get(key, "-"), "build_s": e["build_s"]})
    text = ["# Index side by side: served compact IVF vs DiskANN on real embeddings", "", f"`{command}`", "",
            __doc__.split("\n\n", 2)[2].split("Writes")[0].strip(), "",
            f"{result['n']} corpus rows, {result['queries']} queries, dim {DIM}. Served: nprobe {COMPACT_NPROBE}, "
            f"k_factor {COMPACT_K_FACTOR}.", "",
            "## Fastest setting at 10-recall@10 >= 0.95", "",
            markdown_table(summary, ["index", "latency", "setting", "recall_at_10", "p99_ms",
                                     "ram_bytes_per_vector", "build_s"]), ""]
    for e in engines:
        if e["engine"] == "diskann":
            text += [f"## DiskANN (R {e['graph_degree']}, build L {e['build_complexity']}, beam width "
                     f"{e['beam_width']}, disk vectors {e['disk_vectors']})", "",
                     f"RAM {e['ram_bytes_per_vector']} B per vector after load "
                     f"({e['ram_pq_bytes_per_vector']} B of it PQ codes; "
                     f"{e['ram_bytes_per_vector_after_queries']} B after the queries), disk "
                     f"{e['disk_bytes_per_vector']} B per vector, build {e['build_s']} s"
                     + (f"; exact search over the int8 rows alone: recall {e['int8_exact_recall_at_10']}"
                        if "int8_exact_recall_at_10" in e else "") + ".", "",
                     markdown_table(e["sweep"], ["search_complexity", "recall_at_10", "p50_ms", "p99_ms",
                                                 "disk_bytes_per_query"]), ""]
        else:
            text += [f"## Compact IVF: {e['factory']}, {e['log_row_bytes']} B rows on disk", "",
                     f"RAM {e['ram_bytes_per_vector']} B per vector (codes, ids, lists, centroid graph), the rows "
                     f"{e['log_row_bytes']} B each on disk in the vector log, build {e['build_s']} s.", "",
                     markdown_table(e["sweep"], ["nprobe", "k_factor", "rerank_sigmas", "rows_reranked_per_query",
                                                 "recall_at_10", "warm_p50_ms", "warm_p99_ms", "cold_p50_ms",
                                                 "cold_p99_ms", "disk_bytes_per_query"]), "",
                     f"The store search behind a k = 10 request asks for {GATEWAY_FETCH} (its first 10 scored):", "",
                     markdown_table(e["gateway_fetch"], list(e["gateway_fetch"][0])), ""]
    text += ["![side by side](index_side_by_side.png)", ""]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="3")
    parser.add_argument("--query-share", type=float, default=0.05)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    corpus, queries = real_set(args.version, args.query_share)
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, exact_ids = exact_top(corpus, queries, 10)
    engines = []
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for nlist in sorted({nlist_for(len(corpus)), 4096}):
            engines.append(run_compact(corpus, queries, exact_ids, Path(tmp), nlist))
        # before the float16 logs: the served list count over float32 rows
        engines.append(run_compact(corpus, queries, exact_ids, Path(tmp), nlist_for(len(corpus)), ".f32"))
        engines.append(run_diskann(corpus, queries, exact_ids, Path(tmp), DISKANN_CONFIG))
    result = {"run": run_info(version=args.version, query_share=args.query_share),
              "n": len(corpus), "queries": len(queries), "engines": engines}
    plot(engines, RESULTS / "index_side_by_side.png")
    command = "python -m benchmarks.index_side_by_side" + (f" --version {args.version}" if args.version != "3" else "")
    write_results("index_side_by_side", result, markdown(result, command))
    return result


if __name__ == "__main__":
    main()
