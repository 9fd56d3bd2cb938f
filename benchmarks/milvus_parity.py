"""Milvus mode at parity with FAISS mode (issue 27): the same held-out answers, and what a row costs at scale.

    python -m benchmarks.milvus_parity --quality [--version 2]        # ~10 min: quality parity, one command
    python -m benchmarks.milvus_parity --scale --rows 1000000          # hours: 1M rows on a real server

1. **Quality** (`--quality`): the held-out quality set (benchmarks/held_out_search.py: every copy edit's P@1, the
   centre crop box's, category mAP@10) searched through FAISS mode (a `FaissVectorStore` as the gateway opens it:
   served defaults, regions) and through Milvus mode (a `MilvusVectorStore` with regions on a real Milvus server,
   the served index kind, and the compact disk-backed kind of part 3), one query at a time through `search`.
   `quality_gap_max` is the largest |FAISS - Milvus| over those metrics.
2. **Scale** (`--scale`): see `scale()`.
Writes benchmarks/results/milvus_parity.{json,md}; each part keeps the other's last results.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.held_out_search import HeldOut, held_out, quality, searched
from devkit.milvus_server import MilvusServer
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.config import FLAT_THRESHOLD, Settings
from server.core.regions import REGION_BOXES
from server.embedding.contract import EMBEDDING_DIM as DIM
from server.store.faiss.store import FaissVectorStore
from server.store.milvus import MilvusIndexConfig, MilvusVectorStore

NAME = "milvus_parity"
# Milvus kinds compared with FAISS mode: the served default, and the compact one with the raw vectors on disk
QUALITY_KINDS = (Settings().milvus_index, "IVF_PQ")


def milvus_answers(held: HeldOut, server: MilvusServer, version: str, kind: str) -> dict[str, float]:
    index = MilvusIndexConfig.for_corpus(len(held.gallery) * (1 + len(REGION_BOXES)), DIM, kind)
    store = MilvusVectorStore(server.uri, version, DIM, index, collection_prefix=f"parity_{kind.lower()}",
                              regions=len(REGION_BOXES), timeout_s=60.0)
    try:
        images = held.images()
        for start in range(0, len(images), 100):
            store.add(images[start:start + 100])
        started = time.perf_counter()
        store.wait_indexed(timeout_s=3600)
        indexed_s = time.perf_counter() - started
        result = quality(held, *searched(held, lambda q, k, exclude: store.search(q, k, exclude), f"milvus {kind}"))
        return {**result, "index_s": round(indexed_s, 1), "index": f"{kind} {index.index_params(DIM)['params']}"}
    finally:
        store.close()


def quality_parity(version: str, seed: int) -> dict:
    held = held_out(version, seed)
    with tempfile.TemporaryDirectory() as tmp:
        faiss_store = FaissVectorStore(Path(tmp) / "faiss", DIM, version, flat_threshold=FLAT_THRESHOLD,
                                       regions=len(REGION_BOXES))
        faiss_store.add(held.images())
        faiss_mode = quality(held, *searched(held, lambda q, k, exclude: faiss_store.search(q, k, exclude), "faiss"))
        faiss_index = faiss_store.stats().index_type
        faiss_store.close()
        server = MilvusServer(Path(tmp) / "milvus").start()
        try:
            milvus = {kind: milvus_answers(held, server, version, kind) for kind in QUALITY_KINDS}
        finally:
            server.stop()
    metrics = list(faiss_mode)
    gaps = {k: max(abs(faiss_mode[m] - answers[m]) for m in metrics) for k, answers in milvus.items()}
    return {"gallery": len(held.gallery), "copy_queries": len(held.queries), "category_queries": len(held.members),
            "faiss": faiss_mode, "faiss_index": faiss_index, "milvus": milvus, "gap_max_by_kind": gaps,
            "quality_gap_max": gaps[QUALITY_KINDS[0]]}


def quality_markdown(q: dict) -> list[str]:
    kinds = list(q["milvus"])
    columns = ["metric", "FAISS mode", *[f"Milvus {k}" for k in kinds], *[f"gap {k}" for k in kinds]]
    rows = [{"metric": m, "FAISS mode": v, **{f"Milvus {k}": q["milvus"][k][m] for k in kinds},
             **{f"gap {k}": round(q["milvus"][k][m] - v, 4) for k in kinds}} for m, v in q["faiss"].items()]
    return [f"## Quality: Milvus mode against FAISS mode on the held-out set ({q['gallery']} images with "
            f"{len(REGION_BOXES)} regions each, {q['copy_queries']} copy queries, {q['category_queries']} category "
            "queries)", "",
            markdown_table(rows, columns), "",
            f"`quality_gap_max` (served kind {kinds[0]}): **{q['quality_gap_max']}**; by kind: {q['gap_max_by_kind']}",
            "", f"Indexes: FAISS {q['faiss_index']}; " + "; ".join(f"Milvus {k}: {q['milvus'][k]['index']}"
                                                                   for k in kinds)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--version", default="2")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    path = RESULTS / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if args.quality:
        data["quality"] = {**quality_parity(f"encoder/{args.version}", args.seed),
                           "run": run_info(version=args.version, seed=args.seed)}
    data["goals"] = {"quality_gap_max": data.get("quality", {}).get("quality_gap_max")}
    md = ["# Milvus mode at parity with FAISS mode (issue 27)", "",
          "`python -m benchmarks.milvus_parity --quality` (quality), `--scale --rows 1000000` (scale).", ""]
    if "quality" in data:
        md += quality_markdown(data["quality"])
    write_results(NAME, data, "\n".join(md))
    return data


if __name__ == "__main__":
    main()
