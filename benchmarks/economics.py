"""Index economics: RAM, disk and quality of the served compact index at 10M vectors, and on the real sets.

    python -m benchmarks.economics --n 10000000 --data /work/econ-data [--queries 300]   # ~1 h the first time
    python -m benchmarks.economics --real-only                                          # real sets, ~8 min

1. **Scale** (`--n`): n vectors with the structure of the served encoder's real embeddings
   (evaluation/real_structure.py, fitted on the train split's whole-image and region embeddings), written like
   the store's vector log (float32 rows). The index is the one `params_for(n)` serves, its codec trained on
   200k generated vectors disjoint from the corpus, then searched by the serving code (`VectorIndex.search`
   over the memory-mapped log), one query at a time, one thread:
   - recall@10 and nDCG@10 against exact search over all n (queries disjoint from both);
   - p50/p99 with every row the queries re-rank in the page cache (`warm`: the same queries ran once before)
     and with the log's pages evicted before every query (`cold`: every candidate row read from the disk); a
     node whose page cache holds part of its log lies in between;
   - the bytes read from the disk per cold query (/proc/self/io).
   - resident RAM of the loaded index (anonymous RSS, page cache not counted), the page cache the log
     occupies (fincore), and the bytes read from disk per query (4 KiB pages touched by the re-rank).
2. **Real sets** (`--real`): the held-out quality set (evaluation/quality.py: calib + test splits, every copy
   edit and the centre crop box) indexed with regions in a real `FaissVectorStore` whose whole-image and region
   indexes are compact, codecs trained on the train split (disjoint); every query searched through
   `store.search`; P@1 per edit and nDCG@10 against the exact ranking (`quality.similarity`: same scoring rule).
Writes benchmarks/results/economics.{json,md,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from benchmarks.held_out_search import held_out, quality, relevant_by_category, searched
from benchmarks.index_bench import recall_at
from evaluation.metrics import evaluate
from evaluation.quality import similarity
from evaluation.real_structure import RealStructure, describe, train_split_rows, write_rows
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.regions import REGION_BOXES
from server.embedding.contract import EMBEDDING_DIM as DIM
from server.store.faiss import search_tuning
from server.store.faiss.build import build_index
from server.store.faiss.index import VectorIndex
from server.store.faiss.params import RERANK_SIGMAS, compact_params, nlist_for, params_for
from server.store.faiss.store import FaissVectorStore
from server.store.faiss.vector_log import VectorLog, open_log

ROW_BYTES = DIM * 4


def rss_anon() -> int:
    """Anonymous resident memory of this process (heap, FAISS arrays): the page cache is not in it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


# RAM of a loaded index, measured in a fresh interpreter: in a process that built an index, the load reuses the
# heap the build freed and RSS barely moves.
RAM_PROBE = ("import sys, faiss\nfrom benchmarks.economics import rss_anon\nbefore = rss_anon()\n"
             "index = faiss.read_index(sys.argv[1])\nprint(rss_anon() - before)")


def loaded_ram(index_path: Path) -> int:
    done = subprocess.run([sys.executable, "-c", RAM_PROBE, str(index_path)], check=True, stdout=subprocess.PIPE,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    return int(done.stdout.split()[-1])


def page_cache_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (POSIX_FADV_DONTNEED: no privileges needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def exact_top(rows: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products over all rows (streamed in chunks from the memory map)."""
    return exact_top_of(((start, rows[start:start + 200_000]) for start in range(0, len(rows), 200_000)), queries, k)


def exact_top_of(blocks: Iterable[tuple[int, np.ndarray]], queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products over (first row id, rows) blocks, with progress."""
    return search_tuning.exact_top_of(tqdm(blocks, desc="exact search", unit="block", mininterval=30), queries, k)


def ndcg_vs_exact(got: np.ndarray, exact_ids: np.ndarray, exact_scores: np.ndarray, k: int = 10) -> float:
    """nDCG@k of a ranking with the exact top-k's similarities as gains (1.0: the exact order)."""
    gains = dict(zip(exact_ids[:k].tolist(), exact_scores[:k].tolist(), strict=True))
    discounts = 1 / np.log2(np.arange(2, k + 2))
    dcg = sum(gains.get(int(i), 0.0) * d for i, d in zip(got[:k], discounts, strict=False))
    return float(dcg / np.sum(exact_scores[:k] * discounts))


def disk_reads() -> int:
    """Bytes this process has had read from the disk (not from the page cache)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def timed_pass(index: VectorIndex, queries: np.ndarray, log: Path | None, k: int = 10
               ) -> tuple[list[float], np.ndarray]:
    """One query at a time; `log`: evict its pages before every query (cold)."""
    latencies, found = [], []
    for q in queries:
        if log is not None:
            evict(log)
        started = time.perf_counter()
        _, ids = index.search(q[None], k)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    return latencies, np.stack(found)


# (nprobe, k_factor, rerank_sigmas) around the served setting; sigmas None: every candidate re-ranked (before)
SCALE_SWEEP = ((8, 40, RERANK_SIGMAS), (16, 40, RERANK_SIGMAS), (32, 40, RERANK_SIGMAS), (48, 40, 3.0),
               (48, 40, RERANK_SIGMAS), (48, 40, 5.0), (48, 40, None), (48, 20, None), (64, 40, RERANK_SIGMAS),
               (48, 60, RERANK_SIGMAS))


def scale(n: int, data: Path, nq: int, version: str) -> dict:
    model = RealStructure.fit(train_split_rows(version))
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"rows-{n}.f16"  # float16, as the store's vector log
    with tqdm(total=n, desc="generate rows", unit="row", mininterval=30) as bar:
        rows = write_rows(log, n, model, seed=9, progress=bar.update)
    params = params_for(n, DIM)
    index_path = data / f"index-{n}-{re.sub(r'[^A-Za-z0-9]+', '_', params.factory)}.faiss"
    build_path = index_path.with_suffix(".json")
    if not index_path.exists():
        training = model.sample(200_000, np.random.default_rng(7))  # disjoint from the corpus
        started = time.monotonic()
        with tqdm(total=n, desc=f"build {params.factory}", unit="row", mininterval=30) as bar:
            built = build_index(params, DIM, rows, training=training, progress=bar.update)
        faiss.write_index(built, str(index_path))
        build_path.write_text(json.dumps({"build_s": round(time.monotonic() - started, 1)}))
        del built
    queries = model.sample(nq, np.random.default_rng(11))
    truth_path = data / f"exact-{n}-{nq}.npz"
    if not truth_path.exists():  # over the float32 rows (the log's are rounded): generated again, block by block
        blocks = zip(itertools.count(0, 100_000), model.chunks(n, seed=9), strict=False)
        np.savez(truth_path, *exact_top_of(blocks, queries, 10))
    truth = np.load(truth_path)
    exact_scores, exact_ids = truth["arr_0"], truth["arr_1"]

    faiss.omp_set_num_threads(1)
    vector_log = VectorLog(log, DIM)  # the store's reader of the log: one pread per row, no readahead
    index = VectorIndex(DIM, stored=vector_log.view, rebuild_in_background=False, read_rows=vector_log.read_rows)
    started = time.monotonic()
    index.load(index_path)  # measures the served depth on this corpus, as a store does (nothing saved beside it)
    tuning = {"tune_s": round(time.monotonic() - started, 1),
              "recall_at_10_estimate": float(index.describe()[1]["recall_at_10_estimate"])}
    params = index.params  # the measured depth (search_tuning.py), what a store over this catalog serves
    index_ram = loaded_ram(index_path)
    timed_pass(index, queries, None)  # the same queries once before: every row they re-rank is in the page cache
    read_before = index.rows_reranked
    warm, found = timed_pass(index, queries, None)
    rows_per_query = (index.rows_reranked - read_before) / nq
    read_before = disk_reads()
    cold, _ = timed_pass(index, queries, log)
    disk_per_query = (disk_reads() - read_before) / nq
    recall = recall_at(exact_ids, found, 10)
    ndcg = float(np.mean([ndcg_vs_exact(f, e, s) for f, e, s in zip(found, exact_ids, exact_scores, strict=True)]))
    sweep = []
    for nprobe, k_factor, sigmas in SCALE_SWEEP:
        index.params = replace(params, nprobe=nprobe, k_factor=k_factor, rerank_sigmas=sigmas)
        timed_pass(index, queries, None)  # its rows in the page cache, as for the served setting's warm pass
        read_before = index.rows_reranked
        latencies, got = timed_pass(index, queries, None)
        sweep.append({"nprobe": nprobe, "k_factor": k_factor, "rerank_sigmas": "all" if sigmas is None else sigmas,
                      "rows_reranked_per_query": round((index.rows_reranked - read_before) / nq, 1),
                      "recall_at_10": round(recall_at(exact_ids, got, 10), 4),
            "warm_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "warm_p99_ms": round(float(np.percentile(latencies, 99)), 2)})
        print(sweep[-1], flush=True)
    index.params = params
    return {
        "n": n, "factory": params.factory, "nprobe": params.nprobe, "k_factor": params.k_factor, **tuning,
        "build_s": json.loads(build_path.read_text())["build_s"] if build_path.exists() else None,
        "index_file_bytes_per_vector": round(index_path.stat().st_size / n, 1),
        "ram_bytes_per_vector": round(index_ram / n, 1),
        "recall_at_10": round(recall, 4), "ndcg10_vs_exact": round(ndcg, 4),
        **{f"{name}_p{p}_ms": round(float(np.percentile(values, p)), 2)
           for name, values in (("warm", warm), ("cold", cold)) for p in (50, 99)},
        "rows_reranked_per_query": round(rows_per_query, 1),
        "disk_bytes_per_query": int(disk_per_query),
        "log_bytes": log.stat().st_size, "log_page_cache_bytes_after_warm_pass": page_cache_bytes(log),
        "sweep_warm": sweep, "queries": nq,
        "vectors": describe(np.asarray(rows[:9240])), "fit_rows": describe(model.anchors),
        "latencies_ms": {"warm": [round(x, 3) for x in warm], "cold": [round(x, 3) for x in cold]},
    }


DATA = Path("var/economics")  # the generated corpus, its index and exact top 10 (cached: ~1 h to make at 10M)
REGIONS_PER_IMAGE = len(REGION_BOXES)
BITMAP_BYTES_PER_IMAGE = (1 + REGIONS_PER_IMAGE) / 8  # eligibility: one bit per row (whole image + regions)


def real_sets(version: str, seed: int = 16) -> dict:
    """The held-out quality set through a real store with compact whole-image and region indexes."""
    held = held_out(version, seed)
    gallery, queries, members = held.gallery, held.queries, held.members
    exact = similarity(queries, gallery, held.regions)
    training = train_split_rows(version, seed)  # disjoint: the train split
    out: dict = {"gallery": len(gallery), "queries": len(queries), "regions_per_image": len(REGION_BOXES)}

    def searches(store: FaissVectorStore, name: str) -> tuple[list[list[int]], list[list[int]]]:
        found = searched(held, lambda q, k, exclude: store.search(q, k, exclude), name)
        store.close()
        return found

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        store = FaissVectorStore(directory, DIM, version, flat_threshold=10**9, regions=len(REGION_BOXES))
        store.add(held.images())
        # Control: the same store with exact (Flat) indexes. What it loses against `similarity` is the store's
        # merge rule (a bounded number of region rows per query), not the codes.
        flat_ranked, flat_by_category = searches(store, "flat store")
        for log_name, snapshot in (("vectors", "index.faiss"), ("regions", "regions.faiss")):
            vector_log = open_log(directory, log_name, DIM)
            rows = vector_log.read(0, vector_log.rows())
            vector_log.close()
            params = compact_params(nlist_for(len(rows)), DIM)
            faiss.write_index(build_index(params, DIM, rows, training=training), str(directory / snapshot))
            out[f"{snapshot}_factory"] = params.factory
        store = FaissVectorStore(directory, DIM, version, flat_threshold=1, rebuild_in_background=False)
        assert store.stats().index_params["rerank"] == "compact", store.stats()
        ranked, by_category = searches(store, "compact store")
    exact_top = np.argsort(-exact, axis=1)[:, :10]
    per_edit: dict[str, dict[str, list[float]]] = {}
    for (source, edit), got, e_ids, row in zip(held.prep.copy_queries, ranked, exact_top, exact, strict=True):
        m = per_edit.setdefault(edit, {"compact": [], "exact": [], "ndcg": []})
        m["compact"].append(float(got[0] == source))
        m["exact"].append(float(e_ids[0] == source))
        m["ndcg"].append(ndcg_vs_exact(np.array(got), e_ids, row[e_ids]))
    out["per_edit"] = {edit: {"p1_compact": round(float(np.mean(m["compact"])), 4),
                              "p1_exact": round(float(np.mean(m["exact"])), 4),
                              "ndcg10_vs_exact": round(float(np.mean(m["ndcg"])), 4), "queries": len(m["ndcg"])}
                       for edit, m in per_edit.items()}
    out["ndcg10_vs_exact"] = round(float(np.mean([v for m in per_edit.values() for v in m["ndcg"]])), 4)
    out["flat_store_ndcg10_vs_exact"] = round(float(np.mean([ndcg_vs_exact(np.array(got), e, row[e]) for got, e, row
                                                             in zip(flat_ranked, exact_top, exact, strict=True)])), 4)
    flat = quality(held, flat_ranked, flat_by_category)
    out["flat_store_p1"] = {edit: flat[f"p1_{edit}"] for edit in per_edit}
    category_exact = similarity(gallery[members], gallery, held.regions)
    category_exact[np.arange(len(members)), members] = -np.inf  # leave-one-out
    exact_ranked = np.argsort(-category_exact, axis=1)[:, :10]
    relevant = relevant_by_category(held)
    out["category"] = {
        "queries": len(members),
        "map10_exact": round(evaluate([list(r) for r in exact_ranked], relevant, (10,))["map@10"], 4),
        "map10_compact": round(evaluate(by_category, relevant, (10,))["map@10"], 4),
        "map10_flat_store": flat["category_map10"],
        "flat_store_ndcg10_vs_exact": round(float(np.mean([ndcg_vs_exact(np.array(got), e, row[e]) for got, e, row
                                                           in zip(flat_by_category, exact_ranked, category_exact,
                                                                  strict=True)])), 4),
        "ndcg10_vs_exact": round(float(np.mean([ndcg_vs_exact(np.array(got), e, row[e]) for got, e, row in zip(
            by_category, exact_ranked, category_exact, strict=True)])), 4)}
    return out


def plot(result: dict) -> None:
    s = result.get("scale")
    if not s:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in s["latencies_ms"].items():
        ax.plot(np.sort(values), np.linspace(0, 1, len(values)), label=f"{name} page cache")
    ax.axvline(10, color="grey", linestyle=":", label="goal p99 10 ms")
    ax.set_xscale("log")
    ax.set_xlabel("one store search, ms (1 thread)")
    ax.set_ylabel("share of queries")
    ax.set_title(f"{s['factory']} at {s['n']:,} vectors: recall@10 {s['recall_at_10']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "economics.png", dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--version", default="2")
    parser.add_argument("--real-only", action="store_true")
    parser.add_argument("--scale-only", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="rewrite the goals and tables from the JSON")
    args = parser.parse_args(argv)
    path = RESULTS / "economics.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    if args.report_only:
        result["goals"] = goals(result)
        write_results("economics", result, markdown(result))
        return result
    result["run"] = run_info(**{k: str(v) for k, v in vars(args).items()})
    if not args.real_only:
        result["scale"] = s = scale(args.n, args.data, args.queries, args.version)
        # The store keeps nothing else per image in RAM: IDs and hashes of hits are read from SQLite per search.
        result["ram_bytes_per_image"] = round((1 + REGIONS_PER_IMAGE) * s["ram_bytes_per_vector"]
                                              + BITMAP_BYTES_PER_IMAGE, 1)
    if not args.scale_only:
        result["real"] = real_sets(args.version)
    result["goals"] = goals(result)
    write_results("economics", result, markdown(result))
    plot(result)
    return result


def goals(result: dict) -> dict:
    """The issue's goal figures, from this benchmark's parts and the regions benchmark (indexing rates)."""
    s, r = result.get("scale", {}), result.get("real", {})
    regions = json.loads((RESULTS / "regions.json").read_text()) if (RESULTS / "regions.json").exists() else {}
    rates = {row["index_regions"]: row["indexing_images_per_s"] for row in regions.get("services", [])
             if row.get("regions_from") != "one pass"}  # the served regions: encoded views
    edits = r.get("per_edit", {})
    return {
        "ram_bytes_per_image": result.get("ram_bytes_per_image"), "ram_bytes_per_vector": s.get("ram_bytes_per_vector"),
        "ndcg10_vs_exact_real_sets": r.get("ndcg10_vs_exact"),
        "ndcg10_vs_exact_categories": r.get("category", {}).get("ndcg10_vs_exact"),
        "recall_at_10": s.get("recall_at_10"), "n": s.get("n"),
        "store_search_p99_ms": s.get("warm_p99_ms"), "store_search_p99_ms_cold": s.get("cold_p99_ms"),
        "indexing_with_regions_over_whole_only": round(rates[True] / rates[False], 3) if len(rates) == 2 else None,
        "indexing_one_pass_regions_over_whole_only": regions.get("one_pass_over_whole_only"),  # not served
        "crop_box_centre_p1": edits.get("centre-crop-box", {}).get("p1_compact"),
        "crop_box_centre_p1_exact": edits.get("centre-crop-box", {}).get("p1_exact"),
        "crop50_p1": edits.get("crop-50", {}).get("p1_compact"),
        "crop50_p1_exact": edits.get("crop-50", {}).get("p1_exact"),
        "disk_bytes_per_query": s.get("disk_bytes_per_query"),
    }


def markdown(result: dict) -> str:
    lines = ["# Index economics", "", f"`python -m benchmarks.economics` — commit {result['run']['git_commit']}.", ""]
    if g := result.get("goals"):
        lines += ["## Goals (issue 26)", "", markdown_table([{"metric": k, "measured": v} for k, v in g.items()],
                                                            ["metric", "measured"]), ""]
    if s := result.get("scale"):
        lines += [f"## {s['n']:,} vectors with the structure of real embeddings", "",
                  markdown_table([{k: v for k, v in s.items() if not isinstance(v, dict)}],
                                 ["factory", "nprobe", "k_factor", "recall_at_10", "ndcg10_vs_exact",
                                  "ram_bytes_per_vector", "index_file_bytes_per_vector", "warm_p50_ms", "warm_p99_ms",
                                  "cold_p50_ms", "cold_p99_ms", "rows_reranked_per_query", "disk_bytes_per_query",
                                  "build_s"]), "",
                  "The served depth (`nprobe`, `k_factor`) is the one the index measured on this corpus when it "
                  f"loaded (server/store/faiss/search_tuning.py: estimated recall@10 {s.get('recall_at_10_estimate')}, "
                  f"{s.get('tune_s')} s).", "",
                  f"Vector log {s['log_bytes'] / 2**30:.1f} GiB on disk, "
                  f"{s['log_page_cache_bytes_after_warm_pass'] / 2**30:.2f} GiB of it in the page cache after the "
                  f"timed passes. RAM per image with its 6 region rows: {result.get('ram_bytes_per_image')} B "
                  "(7 rows of codes and ids, and 7 bits of eligibility; image IDs and hashes stay in SQLite).", "",
                  "Other search parameters on the same index (page cache warm):", "",
                  markdown_table(s["sweep_warm"], ["nprobe", "k_factor", "rerank_sigmas", "rows_reranked_per_query",
                                                   "recall_at_10", "warm_p50_ms", "warm_p99_ms"]),
                  ""]
    if r := result.get("real"):
        rows = [{"edit": e, **m} for e, m in r["per_edit"].items()]
        lines += ["## Held-out quality set through a compact store (whole images + regions)", "",
                  f"{r['gallery']} images, {r['queries']} copy queries; nDCG@10 vs exact {r['ndcg10_vs_exact']} "
                  f"(the same store with exact Flat indexes: {r.get('flat_store_ndcg10_vs_exact')}).", "",
                  markdown_table(rows, ["edit", "p1_exact", "p1_compact", "ndcg10_vs_exact", "queries"])]
        if "category" in r:
            lines += ["", "Category retrieval (each held-out image of a category with >= 3 images queries the rest):",
                      "", markdown_table([r["category"]], ["queries", "map10_exact", "map10_flat_store",
                                                           "map10_compact", "ndcg10_vs_exact",
                                                           "flat_store_ndcg10_vs_exact"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
