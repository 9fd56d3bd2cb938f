"""heldout_domains.json, .md and .png for `python -m evaluation.heldout_domains`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from reporting.results import markdown_table


def _copy_table(results: dict[str, list[dict]]) -> str:
    edits = list(next(iter(results.values()))[0]["copy"])
    rows = [{"domain": d, "version": r["version"], "index": "whole + regions",
             **{e: r["copy"][e]["p@1"] for e in edits}, "min": r["copy_p1_min"]}
            for d, rs in results.items() for r in rs]
    rows += [{"domain": d, "version": r["version"], "index": "whole + regions, copy verification (served)",
              **{e: r["copy_verified"][e]["p@1"] for e in edits}, "min": r["copy_verified_p1_min"]}
             for d, rs in results.items() for r in rs if "copy_verified" in r]
    rows += [{"domain": d, "version": r["version"], "index": "whole only, copy verification (one row per image)",
              **{e: r["copy_whole_verified"][e]["p@1"] for e in edits},
              "min": min(v["p@1"] for v in r["copy_whole_verified"].values())}
             for d, rs in results.items() for r in rs if "copy_whole_verified" in r]
    rows += [{"domain": d, "version": r["version"], "index": "whole + regions, qe n=3",
              **{e: r["copy_qe"][e]["p@1"] for e in edits}, "min": min(v["p@1"] for v in r["copy_qe"].values())}
             for d, rs in results.items() for r in rs]
    return markdown_table(rows, ["domain", "version", "index", *edits, "min"])


def _category_table(results: dict[str, list[dict]]) -> str:
    rows = [{"domain": d, "version": r["version"], "re-ranking": name, **v} for d, rs in results.items() for r in rs
            for name, v in r["category"].items()]
    return markdown_table(rows, ["domain", "version", "re-ranking", "queries", "p@1", "p@10", "map@10",
                                 "batch_ms_per_query"])


def _calibration_table(results: dict[str, list[dict]]) -> str:
    sizes = sorted({n for rs in results.values() for r in rs for n in r["calibration"].get("ece_by_judgements", {})},
                   key=int)
    rows = [{"domain": d, "version": r["version"], **r["calibration"],
             **{f"refit on {n}": r["calibration"]["ece_by_judgements"].get(n, "") for n in sizes}}
            for d, rs in results.items() for r in rs if r["calibration"]]
    return markdown_table(rows, ["domain", "version", "pairs", "base_rate", "ece", "ece_shipped_on_eval_half",
                                 *[f"refit on {n}" for n in sizes], "ece_team_fit_raw", "ece_team_fit_normalised"])


def _plot(results: dict[str, list[dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (domain, rs) in zip(axes[0], results.items(), strict=True):
        names = list(rs[0]["category"])
        width = 0.8 / len(rs)
        for i, r in enumerate(rs):
            ax.bar([j + i * width for j in range(len(names))], [r["category"][n]["map@10"] for n in names], width,
                   label=f"encoder/{r['version']}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right")
        ax.set_title(f"{domain}: category mAP@10 by re-ranking")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FEEDBACK_GOAL_JUDGEMENTS = "1000"  # the refit's ECE is reported after this many judged results


def goals(results: dict[str, list[dict]]) -> dict[str, float | None]:
    """Issue 28's figures for the served (last) version, worst over the held-out domains."""
    from evaluation.heldout_domains import VERIFIED  # (that module imports this one in its main)

    served = [rs[-1] for rs in results.values()]
    refit = [r["calibration"].get("ece_by_judgements", {}).get(FEEDBACK_GOAL_JUDGEMENTS) for r in served]
    return {"version": served[0]["version"],
            # the served search verifies copies (server/query/verification.py); the embedding alone beside it
            "heldout_domain_copy_p1_min": min(r.get("copy_verified_p1_min", r["copy_p1_min"]) for r in served),
            "heldout_domain_copy_p1_min_embedding_only": min(r["copy_p1_min"] for r in served),
            "heldout_domain_map10": min(r["category"].get(VERIFIED, r["category"]["none"])["map@10"] for r in served),
            "heldout_domain_map10_embedding_only": min(r["category"]["none"]["map@10"] for r in served),
            "heldout_domain_map10_best_reranking": min(max(v["map@10"] for v in r["category"].values())
                                                       for r in served),
            "heldout_domain_ece_shipped_curve": max(r["calibration"]["ece"] for r in served),
            f"heldout_domain_ece_after_{FEEDBACK_GOAL_JUDGEMENTS}_judgements": None if None in refit else max(refit)}


def write(results: dict[str, list[dict]], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = goals(results)
    (out / "heldout_domains.json").write_text(json.dumps({"meta": meta, "goals": summary, "domains": results},
                                                         indent=1) + "\n")
    _plot(results, out / "heldout_domains.png")
    sizes = ", ".join(f"{d}: {rs[0]['gallery']} images in {rs[0]['categories']} categories"
                      for d, rs in results.items())
    text = [
        "# Held-out domains: quality on images nothing was trained, calibrated or gated on", "",
        f"Command: `{meta['command']}` ({meta['seconds']} s). Seed {meta['seed']}; at most {meta['per_category']} "
        f"images per category; {sizes}. Every image indexed whole + 6 regions, scored as the store scores.", "",
        "## Goals (issue 28; served version, worst domain)", "",
        markdown_table([{"metric": k, "measured": v} for k, v in summary.items()], ["metric", "measured"]), "",
        "## Copy detection: P@1 per edit (query = edited copy, relevant = its original)", "", _copy_table(results), "",
        "## Category retrieval (leave-one-out) with re-ranking", "",
        "`qe n=N`: alpha-QE (alpha 3) over the top N results' whole-image vectors, searched again; `dba n=N`: every "
        "indexed whole-image vector augmented with its top N neighbours (alpha 3).", "",
        _category_table(results), "", "![held-out domains](heldout_domains.png)", "",
        "## Calibration: the shipped relevance curve (fitted on the team's sets) on these domains", "",
        "Judged pairs: the top-20 results of every copy query and of every gallery image as a query "
        "(relevant = same source image or same category). `ece`: the shipped curve on all of them. `refit on N`: "
        "the curve the gateway refits from feedback (server/model_versions/feedback_calibration.py, the shipped "
        "curve as a prior worth 0-400 judgements, chosen by cross-validation on the judgements themselves) "
        "after N judged results of half the queries, measured on the other half (`ece_shipped_on_eval_half` is "
        "where it starts); mean of 3 draws. The clicks are SIMULATED from "
        "the judged pairs (a judged result = an impression, clicked when relevant): no real clicks exist here, "
        "and real ones carry position bias. `ece_team_fit_raw` / `ece_team_fit_normalised`: a curve fitted on the "
        "team's `calib` images (Tux Paint + Noto emoji querying each other) on raw cosines / on each cosine minus "
        "the query's 20th best (score normalisation by the neighbourhood), applied to this domain.", "",
        _calibration_table(results), ""]
    (out / "heldout_domains.md").write_text("\n".join(text))
    print(f"wrote {out / 'heldout_domains.md'}")
