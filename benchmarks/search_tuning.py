"""Does the index's own estimate of its recall hold for queries it never saw? The search tuning, measured.

    python -m benchmarks.search_tuning [--version 3] [--scale-n 10000000]

The compact index measures how many lists to probe (and how deep to re-rank) on a sample of its own stored rows
(server/store/faiss/search_tuning.py). This checks that choice against queries from images the index never saw:
- **Real rows** (benchmarks/real_recall.py `real_set`: ~72k whole-image and region rows of the package images of
  four domains; each left-out image queries with its whole-image row and one region row), at the list count this
  n gets and at 4,096 (what 1M-10M rows get).
- **The same rows as a store indexes them**: the whole-image rows alone (queried by the left-out images' whole
  rows) and the region rows alone (6 per image, left out together; queried by the left-out images' region rows).
- **Their generated twin** (evaluation/real_structure.py, same n): vectors whose neighbours sit in fewer lists.
- With `--scale-n N`: the N generated rows of `benchmarks.economics` (its cache under var/economics, built by
  `python -m benchmarks.economics --scale-only`) and its 300 held-out queries.
For every depth the tuning measured: its estimate and the held-out queries' 10-recall@10; the depth it chose and
the held-out recall there; warm p50 / p99 of one query at the chosen depth and at the fixed one served before
(48 lists, 40x). One thread. Writes benchmarks/results/search_tuning.{json,md,png}.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.economics import DATA, exact_top, timed_pass
from benchmarks.index_bench import recall_at
from benchmarks.real_recall import ROWS_PER_IMAGE, compact_index, real_set
from evaluation.real_structure import CACHE, RealStructure, train_split_rows
from reporting.results import RESULTS, markdown_table, run_info, save_recall_plot, write_results
from server.embedding.contract import EMBEDDING_DIM as DIM
from server.store.faiss.index import VectorIndex
from server.store.faiss.params import COMPACT_K_FACTOR, compact_params, nlist_for, params_for
from server.store.faiss.search_tuning import TARGET_RECALL, measure
from server.store.faiss.vector_log import VectorLog

BEFORE = (48, COMPACT_K_FACTOR)  # the fixed depth served before the tuning


def evaluate(index: VectorIndex, stored: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, label: str,
             group: int) -> dict:
    """Tune (every depth of the ladder measured; `group`: rows per image), then the held-out recall at each
    measured depth."""
    params = index.params
    nlist = index.nlist
    started = time.monotonic()
    tuning = measure(lambda q, k, nprobe, k_factor: index.search(q, k, depth=(nprobe, k_factor))[1], stored, nlist,
                     COMPACT_K_FACTOR, group, whole_curve=True)
    tune_s = time.monotonic() - started
    curve = []
    for nprobe, k_factor, estimate in tuning.curve:
        _, found = index.search(queries, 10, depth=(nprobe, k_factor))
        curve.append({"nprobe": nprobe, "k_factor": k_factor, "estimate": estimate,
                      "held_out": round(recall_at(exact_ids, found, 10), 4)})
        print(label, curve[-1], flush=True)
    latency = {}
    for name, (nprobe, k_factor) in (("chosen", (tuning.nprobe, tuning.k_factor)), ("before", BEFORE)):
        index.params = replace(params, nprobe=nprobe, k_factor=k_factor)
        timed_pass(index, queries, None)  # the page cache warm for this depth's rows
        warm, found = timed_pass(index, queries, None)
        latency[name] = {"recall_at_10": round(recall_at(exact_ids, found, 10), 4),
                         "warm_p50_ms": round(float(np.percentile(warm, 50)), 2),
                         "warm_p99_ms": round(float(np.percentile(warm, 99)), 2)}
    index.params = params
    flat = {f"{name}_{key}": value for name, values in latency.items() for key, value in values.items()}
    return {"vectors": label, "n": len(stored), "nlist": nlist, "queries": len(queries),
            "chosen_nprobe": tuning.nprobe, "chosen_k_factor": tuning.k_factor, "estimate": tuning.recall_at_10,
            **flat, "tune_s": round(tune_s, 1), "curve": curve}


def small_sets(version: str, share: float) -> list[dict]:
    corpus, queries = real_set(version, share)
    model = RealStructure.fit(train_split_rows(version))
    per_image = corpus.reshape(-1, ROWS_PER_IMAGE, DIM)
    whole_queries, region_queries = np.split(queries, 2)  # each left-out image's whole row, then a region row
    # (label, corpus rows, queries, rows per image kept together: a query's image is left out of its estimate,
    # list counts). "real": every row of an image in one index, as real_recall.md measured it; then the two
    # indexes a store keeps: whole-image rows, and region rows (6 per image). Generated rows are independent.
    sets = [("real", corpus, queries, ROWS_PER_IMAGE, (nlist_for(len(corpus)), 4096)),
            ("real whole-image rows", np.ascontiguousarray(per_image[:, 0]), whole_queries, 1, ()),
            ("real region rows", np.ascontiguousarray(per_image[:, 1:].reshape(-1, DIM)), region_queries,
             ROWS_PER_IMAGE - 1, ()),
            ("generated", model.sample(len(corpus), np.random.default_rng(9)),
             model.sample(len(queries), np.random.default_rng(11)), 1, (nlist_for(len(corpus)), 4096))]
    out = []
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for label, rows, qs, group, nlists in sets:
            log_path = Path(tmp) / f"{label.replace(' ', '-')}.f16"
            rows.astype("<f2").tofile(log_path)
            vector_log = VectorLog(log_path, DIM)
            _, exact_ids = exact_top(rows, qs, 10)
            for nlist in sorted(set(nlists) or {nlist_for(len(rows))}):
                index, _ = compact_index(rows, compact_params(nlist, DIM), vector_log,
                                         Path(tmp) / f"{label.replace(' ', '-')}-{nlist}.faiss", tune=False)
                out.append(evaluate(index, vector_log.view(), qs, exact_ids, label, group))
            vector_log.close()
    return out


def at_scale(n: int, version: str, nq: int = 300) -> dict:
    """The economics benchmark's cached corpus, index and exact top 10 of its held-out queries."""
    params = params_for(n, DIM)
    index_path = DATA / f"index-{n}-{re.sub(r'[^A-Za-z0-9]+', '_', params.factory)}.faiss"
    log_path, truth_path = DATA / f"rows-{n}.f16", DATA / f"exact-{n}-{nq}.npz"
    for path in (index_path, log_path, truth_path):
        if not path.exists():
            raise SystemExit(f"{path} missing: run python -m benchmarks.economics --scale-only --n {n} first")
    queries = RealStructure.fit(train_split_rows(version)).sample(nq, np.random.default_rng(11))
    vector_log = VectorLog(log_path, DIM)
    index = VectorIndex(DIM, stored=vector_log.view, rebuild_in_background=False, read_rows=vector_log.read_rows,
                        tune=False)
    index.load(index_path)
    out = evaluate(index, vector_log.view(), queries, np.load(truth_path)["arr_1"], "generated", 1)
    vector_log.close()
    return out


def plot(results: list[dict], path: Path) -> None:
    cols = min(4, len(results))
    rows = -(-len(results) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), sharey=True, squeeze=False)
    axes = grid.ravel()[:len(results)]
    for ax in grid.ravel()[len(results):]:
        ax.set_visible(False)
    for ax, r in zip(axes, results, strict=True):
        probes = [c for c in r["curve"] if c["k_factor"] == COMPACT_K_FACTOR]
        ax.plot([c["nprobe"] for c in probes], [c["estimate"] for c in probes], "o-", label="estimate (stored rows)")
        ax.plot([c["nprobe"] for c in probes], [c["held_out"] for c in probes], "s--", label="held-out queries")
        ax.axvline(r["chosen_nprobe"], color="green", linewidth=0.8, label=f"chosen: {r['chosen_nprobe']} lists")
        ax.axhline(TARGET_RECALL, color="grey", linestyle=":", linewidth=0.8)
        ax.axhline(0.95, color="red", linestyle=":", linewidth=0.8)
        ax.set_title(f"{r['vectors']}, {r['n']:,} rows, {r['nlist']} lists", fontsize=9)
        ax.legend(fontsize=7)
    save_recall_plot(fig, axes, path, "lists probed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="3", help="the encoder version of the real rows (served: 3)")
    parser.add_argument("--query-share", type=float, default=0.05)
    parser.add_argument("--scale-n", type=int, default=0, help="also the economics benchmark's N generated rows")
    parser.add_argument("--scale-version", default="2", help="the version the economics corpus was generated from")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    results = small_sets(args.version, args.query_share)
    if args.scale_n:
        results.append(at_scale(args.scale_n, args.scale_version))
    plot(results, RESULTS / "search_tuning.png")
    columns = ["vectors", "n", "nlist", "queries", "chosen_nprobe", "chosen_k_factor", "estimate",
               "chosen_recall_at_10", "chosen_warm_p50_ms", "chosen_warm_p99_ms", "before_recall_at_10",
               "before_warm_p50_ms", "before_warm_p99_ms", "tune_s"]
    curves = [{"vectors": r["vectors"], "n": r["n"], "nlist": r["nlist"], **c} for r in results for c in r["curve"]]
    text = [
        "# Search tuning: the index's estimate of its recall against queries it never saw", "",
        f"`python -m benchmarks.search_tuning --version {args.version}"
        + (f" --scale-n {args.scale_n} --scale-version {args.scale_version}`" if args.scale_n else "`"), "",
        f"The tuning (server/store/faiss/search_tuning.py) takes the fewest lists whose estimated 10-recall@10 "
        f"reaches {TARGET_RECALL} on 200 of the index's own rows. `chosen_recall_at_10`: the recall of queries from "
        "images the index never saw at that depth; `before`: at the fixed 48 lists, 40x re-rank served before. "
        "Warm p50 / p99: one query at a time, one thread, its rows in the page cache.", "",
        markdown_table(results, columns), "", "Every depth measured:", "",
        markdown_table(curves, ["vectors", "n", "nlist", "nprobe", "k_factor", "estimate", "held_out"]), "",
        "![tuning](search_tuning.png)", ""]
    run = run_info(version=args.version, query_share=args.query_share, scale_n=args.scale_n,
                   scale_version=args.scale_version)
    write_results("search_tuning", {"run": run, "results": results}, "\n".join(text))


if __name__ == "__main__":
    main()
