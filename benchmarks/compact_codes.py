"""Billion-scale codes on REAL image embeddings: bytes per vector held in RAM vs ranking quality.

    python -m benchmarks.compact_codes [--max-stamps 800]

Embeddings: the project's ONNX encoder (model_repository/encoder/1/model.onnx, ONNX Runtime, inputs from
`server.embedding.imaging.prepare`) over real images from Debian packages: the Tux Paint stamps (category folders =
labels), the wallpapers and the built-in copy-detection evaluation set (graded edits and crops of the
wallpapers, evaluation/dataset.py). Two evaluation sets, one corpus:
- `copy`: the built-in set's queries (edited copies / crops), graded relevance 1-5;
- `stamps`: every stamp of a category with >= 5 stamps queries the rest (relevance 1 = same category).
Each codec is trained on the corpus itself (in-sample: optimistic for codes; there is nothing else real to
train on here). For each: RAM bytes per vector, 10-recall@10 against exact search over the corpus (every
corpus vector as a query), and nDCG@10 on both sets relative to exact search (goal: <= 128 B and >= 0.98x).
"Re-rank" variants search the codes for 100 candidates and re-score them with the float vectors read from
SSD / memory-mapped (not counted in RAM). Writes benchmarks/results/compact_codes.{json,md,png}.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from evaluation.dataset import builtin_set
from evaluation.metrics import ndcg_at_k
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.embedding import imaging
from server.embedding.onnx_encoder import OnnxEncoder

MODEL = Path(__file__).resolve().parent.parent / "model_repository/encoder/1/model.onnx"
STAMPS = Path("/usr/share/tuxpaint/stamps")
CODECS = {  # name: (factory, metric, RAM bytes per vector)
    "PQ128x8": ("PQ128", faiss.METRIC_INNER_PRODUCT, 128),
    "OPQ64_256,PQ64x8": ("OPQ64_256,PQ64", faiss.METRIC_L2, 64),
    "PCA256,PQ64x8": ("PCA256,PQ64", faiss.METRIC_L2, 64),
    "PCA256,SQ4": ("PCA256,SQ4", faiss.METRIC_L2, 128),
    "PCA512,PQ128x8": ("PCA512,PQ128", faiss.METRIC_L2, 128),
    "SQ8 (full dim)": ("SQ8", faiss.METRIC_INNER_PRODUCT, 1280),
}
RERANK = 100


def embed(encoder: OnnxEncoder, images: list[tuple[bytes, imaging.CropBox | None]]) -> np.ndarray:
    pixels = np.stack([imaging.prepare(data, crop, imaging.Limits(max_pixels=10**9)) for data, crop in images])
    x = encoder.run(pixels).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def png_on_white(path: Path) -> bytes:
    """Tux Paint stamps are cut-outs with transparency: composite them on white like a product photo."""
    image = Image.open(path).convert("RGBA")
    canvas = Image.new("RGB", image.size, "white")
    canvas.paste(image, mask=image.split()[3])
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def ndcg(rankings: list[list[str]], relevances: list[dict[str, int]]) -> float:
    return float(np.mean([ndcg_at_k(r, rel, 10) for r, rel in zip(rankings, relevances, strict=True)]))


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-stamps", type=int, default=800)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    session = OnnxEncoder(MODEL, threads=2)

    eval_set = builtin_set()
    stamp_files = sorted(STAMPS.rglob("*.png"))[: args.max_stamps]
    ids = list(eval_set.corpus) + [f"stamp/{p.relative_to(STAMPS)}" for p in stamp_files]
    payloads = [(data, None) for data in eval_set.corpus.values()] + [(png_on_white(p), None) for p in stamp_files]
    print(f"embedding {len(payloads)} corpus images", flush=True)
    xb = embed(session, payloads)
    copy_queries = embed(session, [(q.image, imaging.CropBox(*q.crop) if q.crop else None)
                                   for q in eval_set.queries])
    copy_rel = [q.relevance for q in eval_set.queries]
    category = {i: str(Path(i).parent) for i in ids if i.startswith("stamp/")}
    members: dict[str, list[str]] = {}
    for i, c in category.items():
        members.setdefault(c, []).append(i)
    stamp_q = [i for i in category if len(members[category[i]]) >= 5]
    position = {i: n for n, i in enumerate(ids)}
    stamp_queries = xb[[position[i] for i in stamp_q]]
    stamp_rel = [{j: 1 for j in members[category[i]] if j != i} for i in stamp_q]

    exact = faiss.IndexFlatIP(xb.shape[1])
    exact.add(xb)

    def ranked(index: faiss.Index, queries: np.ndarray, exclude: list[str] | None, rerank: bool) -> list[list[str]]:
        k = RERANK if rerank else 11
        _, found = index.search(queries, k)
        out = []
        for n, row in enumerate(found):
            cand = [int(c) for c in row if c >= 0]
            if rerank:
                cand = sorted(cand, key=lambda c: -float(xb[c] @ queries[n]))
            names = [ids[c] for c in cand if exclude is None or ids[c] != exclude[n]]
            out.append(names[:10])
        return out

    truth_ids = [[position[i] for i in r] for r in ranked(exact, xb, ids, False)]
    rows = []
    exact_copy = ndcg(ranked(exact, copy_queries, None, False), copy_rel)
    exact_stamps = ndcg(ranked(exact, stamp_queries, stamp_q, False), stamp_rel)
    rows.append({"codec": "Flat (exact float32)", "ram_bytes_per_vector": 5120, "recall_10_at_10": 1.0,
                 "ndcg10_copy": round(exact_copy, 4), "ndcg10_stamps": round(exact_stamps, 4),
                 "ndcg10_copy_vs_exact": 1.0, "ndcg10_stamps_vs_exact": 1.0})
    for name, (factory, metric, nbytes) in CODECS.items():
        index = faiss.index_factory(xb.shape[1], factory, metric)
        index.train(xb)
        index.add(xb)
        for rerank in (False, True):
            got = ranked(index, xb, ids, rerank)
            recall = float(np.mean([len({position[g] for g in r} & set(t)) / 10
                                    for r, t in zip(got, truth_ids, strict=True)]))
            c = ndcg(ranked(index, copy_queries, None, rerank), copy_rel)
            s = ndcg(ranked(index, stamp_queries, stamp_q, rerank), stamp_rel)
            row = {"codec": name + (f" + re-rank {RERANK} from SSD" if rerank else ""),
                   "ram_bytes_per_vector": nbytes, "recall_10_at_10": round(recall, 4),
                   "ndcg10_copy": round(c, 4), "ndcg10_stamps": round(s, 4),
                   "ndcg10_copy_vs_exact": round(c / exact_copy, 4),
                   "ndcg10_stamps_vs_exact": round(s / exact_stamps, 4)}
            rows.append(row)
            print(row, flush=True)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for rerank, marker in ((False, "o"), (True, "s")):
        pts = [r for r in rows[1:] if ("re-rank" in r["codec"]) == rerank]
        ax.scatter([r["ram_bytes_per_vector"] for r in pts],
                   [min(r["ndcg10_copy_vs_exact"], r["ndcg10_stamps_vs_exact"]) for r in pts], marker=marker,
                   label="codes + re-rank from SSD" if rerank else "codes only")
        for r in pts:
            ax.annotate(r["codec"].split(" +")[0], (r["ram_bytes_per_vector"],
                        min(r["ndcg10_copy_vs_exact"], r["ndcg10_stamps_vs_exact"])), fontsize=7)
    ax.axhline(0.98, color="red", linestyle="--", linewidth=1, label="goal: 0.98 x exact")
    ax.axvline(128, color="grey", linestyle=":", linewidth=1, label="128 B")
    ax.set(xscale="log", xlabel="RAM bytes per vector", ylabel="nDCG@10 / exact (worse of the two sets)",
           title=f"Compact codes on {len(xb):,} real embeddings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "compact_codes.png", dpi=110)
    info = run_info(corpus=len(xb), copy_queries=len(copy_rel), stamp_queries=len(stamp_q), rerank=RERANK)
    info["total_s"] = round(time.perf_counter() - started, 1)
    md = [f"# Compact codes on real embeddings ({len(xb):,} images, 1280-d)", "",
          f"`python -m benchmarks.compact_codes` — commit {info['git_commit']}, {info['total_s']} s. Corpus: "
          f"{len(eval_set.corpus)} wallpapers + graded edited copies (evaluation/dataset.py) and "
          f"{len(stamp_files)} Tux Paint stamps, embedded by the ONNX encoder. nDCG@10 on {len(copy_rel)} copy/crop "
          f"queries (graded) and {len(stamp_q)} stamp queries (same category = relevant), relative to exact "
          "search; 10-recall@10 against exact search over every corpus vector. Codecs trained in-sample. "
          f"Re-rank: {RERANK} candidates from the codes re-scored with float vectors read from SSD (RAM = codes).",
          "", markdown_table(rows, ["codec", "ram_bytes_per_vector", "recall_10_at_10", "ndcg10_copy",
                                    "ndcg10_stamps", "ndcg10_copy_vs_exact", "ndcg10_stamps_vs_exact"]), "",
          "![compact codes](compact_codes.png)"]
    data = {**info, "rows": rows}
    write_results("compact_codes", data, "\n".join(md))
    return data


if __name__ == "__main__":
    main()
