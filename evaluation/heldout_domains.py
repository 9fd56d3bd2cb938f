"""Quality on image domains nothing was trained, calibrated or gated on, and what re-ranking buys there.

    python -m evaluation.heldout_domains --versions 1 2 [--per-category 30] [--copy-sources 150]

Domains (evaluation/quality_sets.py): Open Clip Art drawings (`openclipart`, category = folder), EmojiOne's
emoji artwork (`emojione`, category = subgroup; another art style than the Noto emoji of the team's sets),
Battle for Wesnoth's painted portraits and story landscapes (`wesnoth`, category = race), its unit sprites
(`wesnoth-units`: 72 px pixel art, category = faction) and FreedroidRPG's inventory icons (`freedroid-items`:
rendered 3-D objects of 64-128 px, category = item group), Freeciv's national flags (`freeciv-flags`: 44 x 30 px,
category = continent group), Neverball's level screenshots (`neverball`: renders of 3-D scenes, category = level
set) and Pingus' level pieces (`pingus`: painted terrain and objects, category = theme). The later ones came after
encoder/3 was chosen on the first two. A domain is sealed until one choice has been made without it, then measured
with that choice once: `wesnoth-units` measured the first copy-verification rule, `freedroid-items` the second,
`freeciv-flags` the third, `neverball` and `pingus` the fourth (docs/QUALITY.md, 'Copy verification'). Each
image is indexed as the store indexes it (whole + REGION_BOXES, scored by
server/core/regions.py); per domain:
- copy detection: P@1 of every edit of evaluation/edits.py (and the centre crop box) on `copy-sources` images;
- category retrieval, leave-one-out: mAP@10 / P@10, plain and with each re-ranking of `RERANKINGS`:
  alpha-QE (the query plus its top-n results' whole-image vectors weighted by score^alpha, searched again),
  DBA (every indexed whole-image vector replaced by itself plus its top-n neighbours, weighted the same way),
  k-reciprocal re-ranking (evaluation/k_reciprocal.py; k2 = 6, lambda = 0.3);
- calibration: ECE of the version's shipped relevance curve (fitted on the team's sets) on this domain's
  judged top-20 results (relevant = the query's source image or the same category), and of the curve the
  gateway refits from the corpus's own feedback, by the number of judged results it has seen; and the other
  route, score normalisation: a curve fitted on the team's `calib` images on raw scores against one fitted on
  each score minus the query's 20th best (its neighbourhood's level), both measured on this domain.
Writes heldout_domains.json / .md / .png under benchmarks/results.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaluation.calibrate import expected_calibration_error, isotonic_fit, reliability
from evaluation.edits import encode
from evaluation.k_reciprocal import k_reciprocal_distance
from evaluation.metrics import evaluate
from evaluation.quality import (
    RESULTS,
    Prepared,
    VersionEmbedder,
    _rankings,
    copy_detection,
    copy_queries,
    indexing_views,
    judged,
    similarity,
    verified_rankings,
)
from evaluation.quality_sets import (
    DEFAULT_SEED,
    LabelledImage,
    emojione_images,
    freeciv_flag_images,
    freedroid_item_images,
    labelled_images,
    neverball_images,
    of_split,
    openclipart_images,
    pingus_ground_images,
    wesnoth_images,
    wesnoth_unit_images,
)
from server.core.config import MODEL_REPOSITORY
from server.core.errors import InvalidInput
from server.model_versions.calibration import load_calibration
from server.model_versions.feedback_calibration import refit

DOMAINS = {"openclipart": openclipart_images, "emojione": emojione_images, "wesnoth": wesnoth_images,
           "wesnoth-units": wesnoth_unit_images, "freedroid-items": freedroid_item_images,
           "freeciv-flags": freeciv_flag_images, "neverball": neverball_images, "pingus": pingus_ground_images}
FEEDBACK_SIZES = (100, 300, 1000, 3000, 10000)  # judged results the refit sees
FEEDBACK_REPEATS = 3


@dataclass(frozen=True)
class Reranking:
    name: str
    kind: str  # "none" | "qe" | "dba" | "dba+qe" | "k-reciprocal" (n = k1) | "verified" (the served search)
    n: int = 0
    alpha: float = 3.0


VERIFIED = "copy verification (served)"  # server/query/verification.py on the plain ranking
RERANKINGS = (Reranking("none", "none"), Reranking("qe n=3", "qe", 3), Reranking("qe n=5", "qe", 5),
              Reranking("qe n=10", "qe", 10), Reranking("dba n=3", "dba", 3), Reranking("dba n=5", "dba", 5),
              Reranking("dba+qe n=3", "dba+qe", 3), Reranking("k-reciprocal k1=20", "k-reciprocal", 20),
              Reranking("k-reciprocal k1=10", "k-reciprocal", 10), Reranking(VERIFIED, "verified"))


def domain_gallery(images: list[LabelledImage], per_category: int, seed: int) -> list[LabelledImage]:
    """At most `per_category` images of each category with >= 3 (seeded), without byte-identical pictures."""
    by_category: dict[str, list[LabelledImage]] = defaultdict(list)
    for image in images:
        by_category[image.category].append(image)
    rng = np.random.default_rng(seed)
    chosen = []
    for category in sorted(by_category):
        members = by_category[category]
        if len(members) >= 3:
            picks = rng.choice(len(members), min(per_category, len(members)), replace=False)
            chosen += [members[i] for i in sorted(picks)]
    return chosen


def build_domain(source: str, per_category: int, copy_sources: int, seed: int) -> Prepared:
    images = domain_gallery(DOMAINS[source](), per_category, seed)
    gallery, pixels, region_pixels, originals, seen = [], [], [], [], set()
    for item in tqdm(images, desc=f"{source} gallery", unit="img"):
        try:
            image = item.load()
        except InvalidInput as exc:  # a handful of Open Clip Art PNGs are over 100 Mpx: left out, as the
            tqdm.write(f"left out {item.image_id}: {exc}", file=sys.stderr)  # gateway would refuse them
            continue
        whole, views = indexing_views(encode(image), True)
        # Two pictures the encoder sees as the same input are one image to the service (Pingus has six blank
        # pieces of different sizes): a copy of one would tie with the others, and P@1 would count a coin toss.
        digest = hashlib.sha256(whole.tobytes()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        gallery.append(item)
        originals.append(image)
        pixels.append(whole)
        region_pixels += views
    sources = sorted(np.random.default_rng(seed).choice(len(gallery), min(copy_sources, len(gallery)),
                                                        replace=False).tolist())
    queries, query_pixels, sides = copy_queries(gallery, originals, sources, seed, f"{source} copies")
    return Prepared(gallery, np.stack(pixels), queries, query_pixels, sides, np.stack(region_pixels))


def expand(queries: np.ndarray, sims: np.ndarray, vectors: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """alpha-QE: each query plus its top-n results' vectors weighted by max(score, 0)^alpha, L2-normalised."""
    top = _rankings(sims, n)
    weights = np.maximum(np.take_along_axis(sims, top, axis=1), 0) ** alpha
    out = queries + np.einsum("qn,qnd->qd", weights, vectors[top])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def augment_database(vectors: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """DBA: every vector plus its top-n neighbours (itself excluded) weighted by max(score, 0)^alpha."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return expand(vectors, sims, vectors, n, alpha)


def category_queries(prep: Prepared) -> tuple[list[int], list[dict[int, int]]]:
    """Leave-one-out category retrieval: the images of categories with >= 3 members, and for each the others of
    its category (itself excluded) as relevant."""
    counts = Counter(g.category for g in prep.gallery)
    queries = [i for i, g in enumerate(prep.gallery) if counts[g.category] >= 3]
    relevances = [{j: 1 for j, g in enumerate(prep.gallery) if g.category == prep.gallery[q].category and j != q}
                  for q in queries]
    return queries, relevances


def category_rerankings(prep: Prepared, gallery: np.ndarray, regions: np.ndarray) -> dict[str, dict]:
    """Leave-one-out category retrieval (images of categories with >= 3 members query the rest) per re-ranking."""
    queries, relevances = category_queries(prep)
    out = {}
    all_pairs = similarity(gallery, gallery, regions)  # k-reciprocal: every image's neighbourhood is in the distance
    for rerank in RERANKINGS:
        started = time.perf_counter()
        database = augment_database(gallery, rerank.n, rerank.alpha) if "dba" in rerank.kind else gallery
        query_vectors = database[queries]  # a DBA deployment would augment the query the same way: its own row
        if rerank.kind == "k-reciprocal":
            sims = _leave_one_out(-k_reciprocal_distance(all_pairs, k1=rerank.n)[queries], queries)
        else:
            sims = _leave_one_out(similarity(query_vectors, database, regions), queries)
        if "qe" in rerank.kind:
            sims = _leave_one_out(similarity(expand(query_vectors, sims, database, rerank.n, rerank.alpha),
                                             database, regions), queries)
        ranked = _rankings(sims, 100)
        if rerank.kind == "verified":  # a search by ID verifies with the query image's own signature
            ranked = verified_rankings(sims, ranked, prep.gallery_signatures[queries], prep.gallery_signatures)
        seconds = time.perf_counter() - started
        m = evaluate([list(r) for r in ranked], relevances, (1, 10))
        out[rerank.name] = {"queries": len(queries), "map@10": round(m["map@10"], 4),
                            "p@10": round(m["precision@10"], 4), "p@1": round(m["precision@1"], 4),
                            "batch_ms_per_query": round(1000 * seconds / len(queries), 2)}
    return out


def _leave_one_out(sims: np.ndarray, queries: list[int]) -> np.ndarray:
    sims[np.arange(len(queries)), queries] = -np.inf
    return sims


def copy_with_qe(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, regions: np.ndarray, n: int,
                 alpha: float) -> dict[str, dict[str, float]]:
    """Copy detection when alpha-QE is on: does the expansion keep the copy's source first?"""
    expanded = expand(queries, similarity(queries, gallery, regions), gallery, n, alpha)
    return copy_detection(prep, gallery, expanded, regions)


def normalised(scores: np.ndarray) -> np.ndarray:
    """Each score minus the query's TOP-th best: its neighbourhood's level (the copy-detection normalisation)."""
    return scores - scores[:, -1:]


@cache
def team_pairs(version: str, repository: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Judged top-20 results of the team's `calib` images (Tux Paint + Noto emoji) querying with themselves
    excluded, indexed with regions: what a curve is fitted on before it meets a new domain."""
    gallery = of_split(labelled_images(), {"calib"}, seed)
    pixels = []
    for item in tqdm(gallery, desc="team calib", unit="img"):
        whole, views = indexing_views(encode(item.load()), True)
        pixels += [whole, *views]
    rows = VersionEmbedder(version, repository).embed(np.stack(pixels), f"v{version} team calib")
    rows = rows.reshape(len(gallery), len(pixels) // len(gallery), -1)
    cats = np.array([g.category for g in gallery])
    return judged(rows[:, 0], rows[:, 0], rows[:, 1:], list(range(len(gallery))), cats, len(gallery))


def calibration_error(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, regions: np.ndarray,
                      version: str, repository: Path, seed: int) -> dict:
    """ECE on this domain's judged top-20 results (copy queries and every gallery image as a query of its own,
    itself excluded; relevant = same source image or same category): of the shipped curve (fitted on the team's
    sets), and of that curve refitted as the gateway refits it from feedback (feedback_calibration.refit) on
    `n` judged results of half the queries (simulated clicks: a judged result is an impression, clicked when
    relevant), measured on the other half."""
    calibration = load_calibration(version, repository)
    if calibration is None:
        return {}
    cats = np.array([g.category for g in prep.gallery])
    sources = [s for s, _ in prep.copy_queries] + list(range(len(prep.gallery)))
    scores, labels = judged(np.concatenate([queries, gallery]), gallery, regions, sources, cats, len(prep.gallery))
    prob = np.asarray(calibration.relevance(scores.ravel()))
    out = {"ece": round(expected_calibration_error(prob, labels.ravel()), 4), "pairs": labels.size,
           "base_rate": round(float(labels.mean()), 4), "reliability": reliability(prob, labels.ravel())}
    team_scores, team_labels = team_pairs(version, repository, seed)
    for name, transform in (("raw", lambda x: x), ("normalised", normalised)):
        xs, ys = isotonic_fit(transform(team_scores).ravel(), team_labels.ravel())
        out[f"ece_team_fit_{name}"] = round(expected_calibration_error(
            np.interp(transform(scores).ravel(), xs, ys), labels.ravel()), 4)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    feedback, held = order[: len(order) // 2], order[len(order) // 2:]
    fb_scores, fb_labels = scores[feedback].ravel(), labels[feedback].ravel()
    ev_scores, ev_labels = scores[held].ravel(), labels[held].ravel()
    out["ece_shipped_on_eval_half"] = round(expected_calibration_error(calibration.relevance(ev_scores),
                                                                       ev_labels), 4)
    out["ece_by_judgements"] = {}
    for n in FEEDBACK_SIZES:
        if n > len(fb_scores):
            break
        eces = []
        for _ in range(FEEDBACK_REPEATS):
            pick = rng.choice(len(fb_scores), n, replace=False)
            fitted = refit(calibration, fb_scores[pick], fb_labels[pick])
            eces.append(expected_calibration_error(fitted.relevance(ev_scores), ev_labels))
        out["ece_by_judgements"][str(n)] = round(float(np.mean(eces)), 4)
    return out


def evaluate_domain(prep: Prepared, version: str, repository: Path, seed: int) -> dict:
    embedder = VersionEmbedder(version, repository)
    gallery = embedder.embed(prep.gallery_pixels, f"v{version} gallery")
    queries = embedder.embed(prep.copy_pixels, f"v{version} copies")
    regions = embedder.regions(prep.gallery_pixels, prep.region_pixels, f"v{version} regions")
    assert regions is not None
    copy = copy_detection(prep, gallery, queries, regions)
    verified = copy_detection(prep, gallery, queries, regions, verify=True)
    return {"version": version, "gallery": len(prep.gallery),
            "categories": len({g.category for g in prep.gallery}), "copy": copy,
            "copy_p1_min": min(v["p@1"] for v in copy.values()),
            "copy_verified": verified, "copy_verified_p1_min": min(v["p@1"] for v in verified.values()),
            # one row per image (no regions: the one-pass design of issue 26), crops found by verification alone
            "copy_whole_verified": copy_detection(prep, gallery, queries, verify=True),
            "copy_qe": copy_with_qe(prep, gallery, queries, regions, 3, 3.0),
            "category": category_rerankings(prep, gallery, regions),
            "calibration": calibration_error(prep, gallery, queries, regions, version, repository, seed)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["1", "2"])
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--per-category", type=int, default=30)
    parser.add_argument("--copy-sources", type=int, default=150)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = {}
    for source in args.domains:
        prep = build_domain(source, args.per_category, args.copy_sources, args.seed)
        results[source] = [evaluate_domain(prep, v, args.model_repository, args.seed) for v in args.versions]
    meta = {"seed": args.seed, "per_category": args.per_category, "copy_sources": args.copy_sources,
            "seconds": round(time.monotonic() - started, 1),
            "command": "python -m evaluation.heldout_domains --versions " + " ".join(args.versions)}
    from evaluation import heldout_report

    heldout_report.write(results, meta, args.out)
    return results


if __name__ == "__main__":
    main()
