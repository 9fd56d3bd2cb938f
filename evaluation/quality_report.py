"""quality.json, quality.md and the plots for `python -m evaluation.quality`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from reporting.results import markdown_table

# result key suffix, what the index holds (and the search does), column tag
INDEXES = (("", "whole + regions", ""), ("_whole", "whole image only", " whole"),
           ("_verified", "whole + regions, copy verification (served)", " verified"),
           ("_whole_verified", "whole image only, copy verification", " whole verified"))


def _copy_table(results: list[dict]) -> str:
    edits = list(results[0]["copy"])
    columns = [(f"v{r['version']} {m}{tag}", r, suffix, m)
               for r in results for suffix, _, tag in INDEXES for m in ("p@1", "mrr") if f"copy{suffix}" in r]
    rows = [{"edit": e, **{name: r[f"copy{suffix}"][e][m] for name, r, suffix, m in columns}} for e in edits]
    return markdown_table(rows, ["edit"] + [name for name, *_ in columns])


def _by_index_table(results: list[dict], key: str, columns: list[str]) -> str:
    rows = [{"version": r["version"], "index": kind, **r[f"{key}{suffix}"]} for r in results
            for suffix, kind, _ in INDEXES if r.get(f"{key}{suffix}")]
    return markdown_table(rows, ["version", "index", *columns])


def _category_table(results: list[dict]) -> str:
    rows = [{"version": r["version"], "index": kind, "set": s, **v} for r in results for suffix, kind, _ in INDEXES
            if f"category{suffix}" in r for s, v in r[f"category{suffix}"].items()]
    return markdown_table(rows, ["version", "index", "set", "queries", "gallery", "categories", "p@1", "p@10",
                                 "map@10",
                                 "ndcg@10", "p@10 collapse off", "p@10 collapse fixed-0.87",
                                 "p@10 collapse calibrated"])


def _difference_table(results: list[dict]) -> str:
    rows = [{"version": r["version"], "set": name, **row} for r in results[1:]
            for name, row in r["category_vs_first"].items()]
    return markdown_table(rows, ["version", "set", "queries", "difference", "ci95 low", "ci95 high",
                                 "queries better", "queries worse"])


def _duplicate_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        d = r["duplicates"]
        for name in ("calibrated", "fixed-0.87"):
            rows.append({"version": r["version"], "rule": name, "threshold": d[name]["threshold"],
                         "precision": d[name]["precision"], "recall": d[name]["recall"],
                         **{f"recall {e}": v for e, v in d[name]["recall_by_edit"].items()}})
    edits = list(results[0]["duplicates"]["calibrated"]["recall_by_edit"])
    columns = ["version", "rule", "threshold", "precision", "recall"] + [f"recall {e}" for e in edits]
    return markdown_table(rows, columns)


def _relevance_table(results: list[dict]) -> str:
    rows = [{"version": r["version"], **{k: r["relevance"][k] for k in ("ece", "ece_calib", "brier", "base_rate",
                                                                      "calib_pairs", "test_pairs")}} for r in results]
    return markdown_table(rows, ["version", "ece", "ece_calib", "brier", "base_rate", "calib_pairs", "test_pairs"])


def plot(results: list[dict], out: Path) -> None:
    edits = list(results[0]["copy"])
    bars = [(r, suffix, kind) for r in results for suffix, kind, _ in INDEXES if f"copy{suffix}" in r]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(bars)
    for n, (r, suffix, kind) in enumerate(bars):
        ax.bar([i + n * width for i in range(len(edits))], [r[f"copy{suffix}"][e]["p@1"] for e in edits], width,
               label=f"encoder/{r['version']}, {kind}")
    ax.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(edits))], edits, rotation=30, ha="right")
    ax.axhline(0.97, color="grey", linestyle="--", linewidth=1, label="goal 0.97")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("P@1 (original found first)")
    ax.set_title("Copy detection on held-out package images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "quality_copy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for r in results:
        bins = r["relevance"]["reliability"]
        axes[0].plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                     label=f"encoder/{r['version']} (ece {r['relevance']['ece']})")
        curve = r["duplicates"]["curve"]
        axes[1].plot([c["threshold"] for c in curve], [c["precision"] for c in curve],
                     label=f"v{r['version']} precision")
        axes[1].plot([c["threshold"] for c in curve], [c["recall"] for c in curve], linestyle=":",
                     label=f"v{r['version']} recall")
        axes[1].axvline(r["duplicates"]["threshold"], linewidth=0.8, color=axes[1].lines[-1].get_color())
    axes[0].set(xlabel="calibrated relevance (held-out test pairs)", ylabel="observed share relevant",
                title="Reliability diagram")
    axes[0].legend()
    axes[1].set(xlabel="near-duplicate threshold (cosine)", ylabel="on test pairs", ylim=(0, 1.02),
                title="Copy vs same-category pairs")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality_calibration.png", dpi=110)
    plt.close(fig)


def write(results: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    plot(results, out)
    text = [
        "# Retrieval quality on held-out package images", "",
        f"Command: `{meta['command']}` ({meta['seconds']} s on the shared 2-core machine). Seed {meta['seed']}; "
        f"gallery {meta['gallery']} held-out images (Tux Paint stamps + Noto emoji, `calib` + `test` splits of "
        f"evaluation/quality_sets.py, never used by training); {meta['copy_queries']} copy queries.", "",
        "## Copy detection: P@1 and MRR per edit (query = edited copy, relevant = its original)", "",
        "`vN p@1`: the default catalog, which indexes each image whole and as 6 regions (server/core/regions.py) "
        "and scores an image by its best match; `vN p@1 whole`: an index of whole images only (`index_regions` "
        "off, the Milvus backend); `vN p@1 verified`: the default catalog with the served search's copy "
        "verification (server/query/verification.py); `vN p@1 whole verified`: whole images only with that "
        "verification (one row per image, crops found by their thumbnails alone: issue 26's one-pass design). "
        "Queries are embedded once either way.", "",
        _copy_table(results), "", "![copy](quality_copy.png)", "",
        "## GCompris details: a small detail cut-out (~72 px) finds its full painting / landmark", "",
        "Queries: the detail images of GCompris' `details` activity (gcompris-qt-data, read from its Qt .rcc "
        "bundle); relevant: the full scene; gallery: the scenes + the held-out gallery above.", "",
        _by_index_table(results, "details", ["queries", "scenes", "gallery", "p@1", "recall@10", "mrr",
                                             "p@1 among scenes only"]), "",
        "## Wallpapers at several resolutions: a smaller size finds the largest one", "",
        "Queries: every smaller file of each Plasma wallpaper shipped as two or more distinct files "
        "(plasma-workspace-wallpapers: a ~400x250 thumbnail, often a portrait crop such as 1080x1920); relevant: "
        "the full-size file of the same picture; gallery: the full-size files + the demo corpus's other real "
        "photos. Not held out: the demo corpus photos are in the fine-tuning set.", "",
        _by_index_table(results, "resolutions", ["queries", "pictures", "gallery", "p@1", "mrr"]), "",
        "## Category retrieval (leave-one-out; same folder / subgroup = relevant)", "",
        "`p@10 collapse X`: P@10 after the gateway's near-duplicate collapse (with backfill) at threshold X.", "",
        _category_table(results), "",
        *([f"mAP@10 of each version minus encoder/{results[0]['version']}'s over the same queries (regions on), "
           "with a paired bootstrap 95% interval: an interval that holds 0 is a difference this set cannot tell "
           "from noise.", "", _difference_table(results), ""] if len(results) > 1 else []),
        "## Near-duplicate decision (`cosine > threshold` = copy)", "",
        "Threshold fitted on `calib` pairs for precision >= 0.99; precision/recall on `test` pairs (copies = an "
        "original and one edit of it; not-copies = two distinct images of one category, incl. same-style emoji). "
        "The highest-scoring not-copies are mirror images of each other (◀/▶, </>, leftward/rightward hands: a "
        "`flip` copy by this set's own definition), tricolour flags and clock faces a few pixels apart, so "
        "precision 0.99 is only reached where almost nothing else collapses.",
        "", _duplicate_table(results), "",
        "## Calibrated relevance", "",
        f"{results[0]['relevance']['definition']}. Isotonic fit on `calib` queries; ECE (15 bins) on `test` "
        "queries.", "", _relevance_table(results), "", "![calibration](quality_calibration.png)", "",
    ]
    (out / "quality.md").write_text("\n".join(text))
    print("\n".join(text))
