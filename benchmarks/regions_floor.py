"""What the re-rank's bounds save in a store search with regions on the compact layout (issue 26): store searches
at k = 60 (the gateway's first fetch for k = 20). Served: every re-rank reads only the candidates that may still
make its top k (server/store/faiss/rerank.py), and the region rows' re-rank also only rows that may beat the k-th
whole-image match (the floor). Against the same store with the floor alone, and re-ranking every candidate.

    python -m benchmarks.regions_floor [--images 30000]

Vectors with the structure of the served encoder's embeddings (evaluation/real_structure.py): whole images sampled
from the model, each region 0.8 x its image + 0.6 x another sample (normalised; cosine to its image ~0.8, as
encoded regions are); probes: half generic queries sampled apart, half region rows (crops: the queries a floor must
not lose). One thread, page cache warm. Reports p50/p99, region rows re-read per search, and how often the two
answer the same (identical top-60 lists, same first result, mean overlap) for the served search and the one
re-reading every candidate.
Writes benchmarks/results/regions_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from evaluation.real_structure import RealStructure, train_split_rows
from reporting.results import markdown_table, run_info, write_results
from server.core.regions import REGION_BOXES
from server.embedding.contract import EMBEDDING_DIM as DIM
from server.store.base import EmbeddedImage, Visibility
from server.store.faiss import regions as region_rows
from server.store.faiss.store import FaissVectorStore

K, R = 60, len(REGION_BOXES)


def fill(store: FaissVectorStore, model: RealStructure, n: int, rng: np.random.Generator) -> np.ndarray:
    """Adds n images; returns the last batch's region rows (crop probes)."""
    parts = np.empty(0)
    for start in tqdm(range(0, n, 2000), desc="fill", unit="batch"):
        whole = model.sample(2000, rng)
        parts = 0.8 * whole[:, None] + 0.6 * model.sample(2000 * R, rng).reshape(2000, R, DIM)
        parts /= np.linalg.norm(parts, axis=2, keepdims=True)
        store.add([EmbeddedImage(f"img{start + i}", "bench", Visibility.PUBLIC, str(start + i), whole[i], parts[i])
                   for i in range(2000)])
    return parts


def timed(store: FaissVectorStore, probes: np.ndarray) -> tuple[dict[str, float], list[list[str]]]:
    for q in probes[:20]:
        store.search(q, K)  # warm
    index, whole = store._regions._index, store._index
    before, whole_before, times, answers = index.rows_reranked, whole.rows_reranked, [], []
    for q in probes:
        started = time.perf_counter()
        answers.append([c.image_id for c in store.search(q, K)])
        times.append(time.perf_counter() - started)
    ms = 1000 * np.asarray(times)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "region_rows_reread_per_search": round((index.rows_reranked - before) / len(probes), 1),
            "whole_image_rows_reread_per_search": round((whole.rows_reranked - whole_before) / len(probes), 1)}, answers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--probes", type=int, default=300)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    model = RealStructure.fit(train_split_rows("2"))
    search_with_floor = region_rows.RegionRows.search
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FaissVectorStore(Path(tmp), DIM, "encoder/2", rebuild_in_background=False, regions=R)
        crops = fill(store, model, args.images, np.random.default_rng(0))[: args.probes // 2, 1]
        probes = np.concatenate([model.sample(args.probes - len(crops), np.random.default_rng(5)), crops])
        layout = store.stats().index_params["regions_rerank"]
        answers = {}
        indexes = (store._index, store._regions._index)
        served = [index.params for index in indexes]
        depth = {name: f"{p.nprobe} of {index.nlist} lists, {p.k_factor}x" for name, index, p in
                 zip(("images", "regions"), indexes, served, strict=True)}  # as the indexes measured it
        for name, floor, bound in (("k-th bound and floor (served)", True, True),
                                   ("floor only (until 2026-12-07)", True, False),
                                   ("every candidate re-read", False, False)):
            region_rows.RegionRows.search = search_with_floor if floor else (  # type: ignore[method-assign]
                lambda self, vector, k, skip, floor=None: search_with_floor(self, vector, k, skip, None))
            for index, params in zip(indexes, served, strict=True):
                index.params = params if bound else replace(params, rerank_sigmas=None)
            result, answers[name] = timed(store, probes)
            rows.append({"region search": name, **result})
        region_rows.RegionRows.search = search_with_floor  # type: ignore[method-assign]
        store.close()
    a, _, b = answers.values()
    agreement = {"identical_top60": round(float(np.mean([x == y for x, y in zip(a, b, strict=True)])), 4),
                 "same_first": round(float(np.mean([x[0] == y[0] for x, y in zip(a, b, strict=True)])), 4),
                 "overlap_top60": round(float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b, strict=True)])),
                                        4)}
    data = {**run_info(images=args.images, probes=args.probes, k=K), "layout": layout, "depth": depth,
            "rows": rows, "agreement": agreement}
    md = ["# Store search with regions: rows re-read (compact layout, k = 60)", "",
          f"`python -m benchmarks.regions_floor --images {args.images}`: {args.images:,} images x (1 + {R}) rows, "
          f"region re-rank `{layout}`, {args.probes} probes (half crops), one thread, page cache warm. Commit "
          f"{data['git_commit']}. Search depth, as each index measured it on its rows (search_tuning.py): "
          f"{depth}.", "", markdown_table(rows, list(rows[0])), "",
          f"Served against every candidate re-read, same answers: {agreement}"]
    write_results("regions_floor", data, "\n".join(md))
    print("\n".join(md))
    return data


if __name__ == "__main__":
    main()
