"""Retrieval quality of encoder versions on held-out package images: copy detection, categories, calibration.

    python -m evaluation.quality --versions 1 [2] [--write-calibration] [--out benchmarks/results]

Embeds in-process with the project's ONNX Runtime encoder (model_repository/encoder/<v>/model.onnx, the graph Triton
serves; input prepared with `server.embedding.imaging.prepare`, as the gateway does; scored and collapsed by the
serving code's own rules) and reports, per version:
- copy detection: every held-out source image (Tux Paint stamps + a seeded sample of emoji) edited as issue 16
  lists; the query is the edited copy, the gallery all held-out originals; P@1 and MRR per edit;
- GCompris "details": each small detail cut-out of a painting / landmark as a query for its full scene (the
  21 scenes added to that gallery): P@1, recall@10, MRR;
- wallpapers at several resolutions: every smaller size of a Plasma wallpaper as a query for its largest size,
  among the largest sizes and the other real photos of the demo corpus: P@1, MRR;
- category retrieval (Tux Paint folder / emoji subgroup = relevant; leave-one-out over held-out images of the
  same source): P@1, P@10, mAP@10, nDCG@10, and P@10 with near-duplicate collapse at the fixed 0.87 and at the
  version's calibrated threshold;
- near-duplicate decision: threshold for precision >= 0.99 fitted on the `calib` split, precision/recall on
  `test` (copies = an original and its edit; not-copies = two distinct images of one category);
- relevance calibration: isotonic fit of P(relevant | cosine) on the top-20 results of `calib` queries
  (relevant = same source image or same category), ECE and reliability diagram on `test` queries.
Writes quality.json / quality.md / quality_*.png; `--write-calibration` also writes each version's
model_repository/encoder/<v>/calibration.json (server/model_versions/calibration.py reads it).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from evaluation import quality_report
from evaluation.calibrate import (
    expected_calibration_error,
    isotonic_fit,
    precision_recall,
    reliability,
    threshold_for_precision,
)
from evaluation.edits import CENTRE_CROP_BOX, EDITS, encode
from evaluation.metrics import average_precision_at_k, evaluate
from evaluation.quality_sets import (
    DEFAULT_SEED,
    PLASMA_WALLPAPERS,
    LabelledImage,
    gcompris_details,
    labelled_images,
    of_split,
    split_of,
    wallpaper_resolutions,
)
from server.core.config import MODEL_REPOSITORY
from server.core.regions import REGION_BOXES, best_match
from server.embedding.imaging import CropBox, Limits, prepare, prepare_views, region_views, shorter_side
from server.embedding.onnx_encoder import OnnxEncoder
from server.embedding.signature import pixel_signatures
from server.model_versions.calibration import FORMAT, load_calibration, save_calibration
from server.query.duplicates import collapse_duplicates
from server.query.verification import SERVED, Rule
from server.store.base import Candidate

EVALUATION_LIMITS = Limits(max_bytes=100 * 1024 * 1024, max_pixels=100_000_000)  # 5120x2880 PNG wallpapers
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TARGET_PRECISION = 0.99
FIXED_THRESHOLD = 0.87  # the global setting before calibration (server/core/config.py)
TOP = 20  # judged results per query for the relevance calibration
RELEVANCE = "relevant = the result is the query's source image or shows the same category (Tux Paint folder, " \
            "emoji subgroup); judged on the top-20 results of held-out queries over the held-out gallery"


@dataclass
class Prepared:
    """Every encoder input of the evaluation, prepared once and shared by all versions."""

    gallery: list[LabelledImage]
    gallery_pixels: np.ndarray
    copy_queries: list[tuple[int, str]]  # (gallery index of the source, edit name)
    copy_pixels: np.ndarray
    copy_sides: np.ndarray  # each copy's shorter side in pixels, as the gateway reads it from the header
    region_pixels: np.ndarray | None = None  # [gallery * R, ...]: REGION_BOXES of each gallery image
    scene_pixels: np.ndarray | None = None  # GCompris "details": full scenes (added to the gallery) ...
    detail_scenes: list[int] | None = None  # ... each detail's scene index ...
    detail_pixels: np.ndarray | None = None  # ... and the details as queries
    scene_region_pixels: np.ndarray | None = None
    wallpaper_pixels: np.ndarray | None = None  # wallpapers: the largest size of each picture + other photos ...
    wallpaper_region_pixels: np.ndarray | None = None
    wallpaper_queries: list[int] | None = None  # ... each smaller size's picture (index into wallpaper_pixels) ...
    wallpaper_query_pixels: np.ndarray | None = None  # ... and the smaller sizes as queries

    @cached_property
    def gallery_signatures(self) -> np.ndarray:
        """Pixel signatures of the gallery (copy verification), computed once for every version and use."""
        return pixel_signatures(self.gallery_pixels)

    @cached_property
    def copy_signatures(self) -> np.ndarray:
        return pixel_signatures(self.copy_pixels)


def similarity(queries: np.ndarray, gallery: np.ndarray, regions: np.ndarray | None = None) -> np.ndarray:
    """Score of each gallery image for each query as the store ranks it (server.core.regions.best_match: the whole
    image or its best region; `regions`: [gallery, R, dim]; None: no regions)."""
    whole = queries @ gallery.T
    if regions is None:
        return whole
    return best_match(whole, (queries @ regions[:, r].T for r in range(regions.shape[1])))


def indexing_views(data: bytes, regions: bool, limits: Limits | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The whole image and (with `regions`) its REGION_BOXES views from one decode, as the indexing path
    prepares them."""
    views = prepare_views(data, region_views(None) if regions else [None], limits or Limits())
    return views[0], list(views[1:])


def _rng(seed: int, image_id: str, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{image_id}:{salt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def build(seed: int = DEFAULT_SEED, emoji_copy_sources: int = 200, regions: bool = True) -> Prepared:
    """Held-out gallery (calib + test splits), its regions and its edited copies, as the encoder's uint8 inputs."""
    prep = build_split({"calib", "test"}, seed, emoji_copy_sources, regions)
    add_wallpapers(prep, regions)
    try:
        scenes, details = gcompris_details()
    except FileNotFoundError as exc:
        print(f"skipping the GCompris details set: {exc}")
        return prep
    names = sorted(scenes)
    scene_views = [indexing_views(encode(scenes[n]), regions) for n in names]
    prep.scene_pixels = np.stack([whole for whole, _ in scene_views])
    prep.detail_scenes = [names.index(scene) for _, scene, _ in details]
    prep.detail_pixels = np.stack([prepare(encode(image)) for _, _, image in details])
    if regions:
        prep.scene_region_pixels = np.stack([v for _, views in scene_views for v in views])
    return prep


def build_split(splits: set[str], seed: int, emoji_copy_sources: int, regions: bool) -> Prepared:
    """The team's images of `splits`, their regions and edited copies (every Tux Paint stamp, a seeded sample of
    the emoji), as the encoder's uint8 inputs."""
    gallery = of_split(labelled_images(), splits, seed)
    pixels, region_pixels, originals = [], [], {}
    for index, item in enumerate(tqdm(gallery, desc="gallery", unit="img")):
        image = item.load()
        originals[index] = image
        whole, views = indexing_views(encode(image), regions)
        pixels.append(whole)
        region_pixels += views
    emoji = [i for i, g in enumerate(gallery) if g.source == "emoji"]
    sample = set(np.random.default_rng(seed).choice(emoji, min(emoji_copy_sources, len(emoji)), replace=False))
    sources = [i for i, g in enumerate(gallery) if g.source != "emoji" or i in sample]
    queries, query_pixels, sides = copy_queries(gallery, originals, sources, seed)
    return Prepared(gallery, np.stack(pixels), queries, query_pixels, sides,
                    np.stack(region_pixels) if regions else None)


def copy_queries(gallery: list[LabelledImage], originals: list[Image.Image] | dict[int, Image.Image],
                 sources: list[int], seed: int, desc: str = "copies"
                 ) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
    """Every edit of each source image (and the centre crop box as a query crop), as the encoder's inputs, with
    each query's shorter side in pixels."""
    queries, query_pixels, sides = [], [], []
    for index in tqdm(sources, desc=desc, unit="src"):
        image, item = originals[index], gallery[index]
        for name, edit in EDITS.items():
            data = edit(image, _rng(seed, item.image_id, name))
            queries.append((index, name))
            query_pixels.append(prepare(data))
            sides.append(shorter_side(data))
        queries.append((index, "centre-crop-box"))
        query_pixels.append(prepare(encode(image), CropBox(*CENTRE_CROP_BOX)))
        sides.append(shorter_side(encode(image), CropBox(*CENTRE_CROP_BOX)))
    return queries, np.stack(query_pixels), np.array(sides)


def add_wallpapers(prep: Prepared, regions: bool) -> None:
    """The wallpapers-at-several-resolutions set (quality_sets.wallpaper_resolutions): gallery = the largest
    size of each picture + every real photo of the demo corpus that is not a Plasma wallpaper."""
    from devkit.corpus import real_photos

    pictures = wallpaper_resolutions()
    if not pictures:
        print(f"skipping the wallpapers set: no multi-resolution wallpapers under {PLASMA_WALLPAPERS}")
        return
    others = [p.path for p in real_photos() if not p.path.is_relative_to(PLASMA_WALLPAPERS)]
    gallery = [files[0] for files in pictures.values()] + others
    views = [indexing_views(path.read_bytes(), regions, EVALUATION_LIMITS)
             for path in tqdm(gallery, desc="wallpapers", unit="img")]
    prep.wallpaper_pixels = np.stack([whole for whole, _ in views])
    if regions:
        prep.wallpaper_region_pixels = np.stack([v for _, region_views in views for v in region_views])
    prep.wallpaper_queries = [n for n, files in enumerate(pictures.values()) for _ in files[1:]]
    prep.wallpaper_query_pixels = np.stack([prepare(f.read_bytes(), limits=EVALUATION_LIMITS)
                                            for files in pictures.values() for f in files[1:]])


def same_picture(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, regions: np.ndarray | None = None
                 ) -> dict:
    """Each smaller wallpaper size as a query; relevant = the largest size of the same picture."""
    m = evaluate([list(r) for r in _rankings(similarity(queries, gallery, regions), 10)],
                 [{source: 1} for source in prep.wallpaper_queries or []], (1,))
    return {"queries": len(queries), "pictures": len(set(prep.wallpaper_queries or [])), "gallery": len(gallery),
            "p@1": round(m["precision@1"], 4), "mrr": round(m["mrr"], 4)}


def details_retrieval(prep: Prepared, gallery: np.ndarray, scenes: np.ndarray, details: np.ndarray,
                      regions: np.ndarray | None = None, scene_regions: np.ndarray | None = None) -> dict:
    """Each detail cut-out as a query over the held-out gallery + the scenes; relevant = its own scene."""
    everything = np.concatenate([scenes, gallery])
    all_regions = None if regions is None or scene_regions is None else np.concatenate([scene_regions, regions])
    ranked = _rankings(similarity(details, everything, all_regions), 100)
    relevances = [{s: 1} for s in prep.detail_scenes or []]
    m = evaluate([list(r) for r in ranked], relevances, (1, 10))
    among_scenes = evaluate([list(r) for r in _rankings(similarity(details, scenes, scene_regions), len(scenes))],
                            relevances, (1,))
    return {"queries": len(details), "scenes": len(scenes), "gallery": len(everything),
            "p@1": round(m["precision@1"], 4), "recall@10": round(m["recall@10"], 4), "mrr": round(m["mrr"], 4),
            "p@1 among scenes only": round(among_scenes["precision@1"], 4)}


class VersionEmbedder:
    """One version's model.onnx in this process (server.embedding.onnx_encoder: what Triton's CPU model runs)."""

    def __init__(self, version: str, repository: Path = MODEL_REPOSITORY, threads: int = 2) -> None:
        self.encoder = OnnxEncoder.of_version(version, repository, threads)
        self.version = str(version)

    def embed(self, pixels: np.ndarray, desc: str) -> np.ndarray:
        with tqdm(total=len(pixels), desc=desc, unit="img") as bar:
            return self.encoder.run(pixels, progress=bar.update)

    def regions(self, whole: np.ndarray, views: np.ndarray | None, desc: str) -> np.ndarray | None:
        """[images, R, dim] region embeddings of the images whose pixels are `whole`, as the indexing path makes
        them with this version: pooled from the whole image's pass when its graph can, else from the encoded
        REGION_BOXES views (`views`: [images * R, ...]). None when `views` is None: no regions."""
        if views is None:
            return None
        if self.encoder.pooled_regions:
            with tqdm(total=len(whole), desc=desc, unit="img") as bar:
                return self.encoder.run_with_regions(whole, progress=bar.update)[1]
        return self.embed(views, desc).reshape(len(whole), len(REGION_BOXES), -1)


def _rankings(sims: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)


def verified_rankings(sims: np.ndarray, ranked: np.ndarray, query_sigs: np.ndarray, gallery_sigs: np.ndarray,
                      rule: Rule = SERVED, query_sides: np.ndarray | None = None) -> np.ndarray:
    """Each ranking's head re-ordered as the served search's copy verification orders it
    (server/query/verification.py: the same rule, on signatures of the same encoder inputs; `query_sides`: each
    query's shorter side in pixels, None: not known, as for a search by ID)."""
    out = ranked.copy()
    for i, row in enumerate(ranked):
        side = None if query_sides is None else int(query_sides[i])
        head = row[:rule.depth_for(side)]
        fused = rule.verified_scores(sims[i, head], query_sigs[i], list(gallery_sigs[head]), side)
        out[i, :len(head)] = head[np.argsort(-fused, kind="stable")]
    return out


def copy_detection(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, regions: np.ndarray | None = None,
                   verify: bool = False, rule: Rule = SERVED) -> dict[str, dict[str, float]]:
    """P@1 and MRR per edit; `verify`: with copy verification (`rule`: the served one unless told)."""
    sims = similarity(queries, gallery, regions)
    ranked = _rankings(sims, 100)
    if verify:
        ranked = verified_rankings(sims, ranked, prep.copy_signatures, prep.gallery_signatures, rule, prep.copy_sides)
    per_edit: dict[str, tuple[list, list]] = {}
    for (source, edit), row in zip(prep.copy_queries, ranked, strict=True):
        rankings, relevances = per_edit.setdefault(edit, ([], []))
        rankings.append(list(row))
        relevances.append({source: 1})
    out = {}
    for edit, (rankings, relevances) in per_edit.items():
        m = evaluate(rankings, relevances, (1,))
        out[edit] = {"p@1": round(m["precision@1"], 4), "mrr": round(m["mrr"], 4), "queries": len(rankings)}
    return out


def collapse(row: np.ndarray, vectors: np.ndarray, k: int, threshold: float) -> list[int]:
    """The gateway's own collapse (server/query/duplicates.py) over a ranked row of gallery indices (the gallery
    holds no two files with the same bytes: each index is its own content hash)."""
    kept, _ = collapse_duplicates([Candidate(str(j), 0.0, str(j), vectors[j]) for j in row], k, threshold)
    return [int(c.image_id) for c in kept]


def category_retrieval(prep: Prepared, gallery: np.ndarray, thresholds: dict[str, float],
                       regions: np.ndarray | None = None, per_query: dict[str, list[float]] | None = None
                       ) -> dict[str, dict]:
    """Leave-one-out category retrieval per source; `per_query` (if given) receives each query's AP@10."""
    out = {}
    per_query = {} if per_query is None else per_query
    for source in ("tuxpaint", "emoji"):
        members = [i for i, g in enumerate(prep.gallery) if g.source == source]
        counts = Counter(prep.gallery[i].category for i in members)
        queries = [i for i in members if counts[prep.gallery[i].category] >= 3]
        vectors = gallery[members]
        sims = similarity(gallery[queries], vectors, None if regions is None else regions[members])
        for qi, q in enumerate(queries):
            sims[qi, members.index(q)] = -np.inf  # leave-one-out: the query is not its own result
        ranked = _rankings(sims, 100)
        relevances = [{j: 1 for j, m in enumerate(members) if prep.gallery[m].category == prep.gallery[q].category
                       and m != q} for q in queries]
        m = evaluate([list(r) for r in ranked], relevances, (1, 10))
        per_query[source] = [round(average_precision_at_k(list(r), rel, 10), 4) for r, rel in zip(ranked, relevances,
                                                                                                 strict=True)]
        row = {"queries": len(queries), "gallery": len(members),
               "categories": sum(1 for c in counts.values() if c >= 3),
               "p@1": m["precision@1"], "p@10": m["precision@10"], "map@10": m["map@10"], "ndcg@10": m["ndcg@10"]}
        for name, t in thresholds.items():
            collapsed = [collapse(r, vectors, 10, t) for r in ranked]
            row[f"p@10 collapse {name}"] = evaluate(collapsed, relevances, (10,))["precision@10"]
        out[source] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    return out


def duplicate_pairs(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, split: str, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(cosines, is_copy, kind) of labelled pairs whose images are in `split`."""
    in_split = [split_of(g.image_id, seed) == split for g in prep.gallery]
    scores, labels, kinds = [], [], []
    for (source, edit), vector in zip(prep.copy_queries, queries, strict=True):
        if in_split[source]:
            scores.append(float(vector @ gallery[source]))
            labels.append(1)
            kinds.append(edit)
    by_category: dict[str, list[int]] = {}
    for i, g in enumerate(prep.gallery):
        if in_split[i]:
            by_category.setdefault(g.category, []).append(i)
    for members in by_category.values():
        if len(members) > 1:
            block = gallery[members] @ gallery[members].T
            upper = block[np.triu_indices(len(members), 1)]
            scores.extend(upper.tolist())
            labels.extend([0] * len(upper))
            kinds.extend(["same-category"] * len(upper))
    return np.array(scores), np.array(labels), kinds


def duplicates(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, seed: int) -> dict:
    cal_s, cal_l, _ = duplicate_pairs(prep, gallery, queries, "calib", seed)
    test_s, test_l, test_k = duplicate_pairs(prep, gallery, queries, "test", seed)
    threshold = threshold_for_precision(cal_s, cal_l, TARGET_PRECISION)
    out = {"threshold": round(threshold, 4), "target_precision": TARGET_PRECISION,
           "calib_pairs": {"copies": int(cal_l.sum()), "not_copies": int((cal_l == 0).sum())},
           "test_pairs": {"copies": int(test_l.sum()), "not_copies": int((test_l == 0).sum())}}
    for name, t in (("calibrated", threshold), ("fixed-0.87", FIXED_THRESHOLD)):
        p, r = precision_recall(test_s, test_l, t)
        kinds = np.array(test_k)
        recall_by_edit = {e: round(float((test_s[kinds == e] > t).mean()), 4) for e in sorted(set(test_k))
                          if e != "same-category"}
        out[name] = {"threshold": round(t, 4), "precision": round(p, 4), "recall": round(r, 4),
                     "recall_by_edit": recall_by_edit}
    curve = np.linspace(0.5, 1.0, 101)
    out["curve"] = [{"threshold": round(float(t), 3), **dict(zip(("precision", "recall"),
                    (round(v, 4) for v in precision_recall(test_s, test_l, t)), strict=True))} for t in curve]
    return out


def judged(queries: np.ndarray, gallery: np.ndarray, regions: np.ndarray | None, sources: list[int],
           cats: np.ndarray, own_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, relevant) [queries, TOP] of each query's top results; relevant = the query's source image or the
    same category. The last `own_rows` queries are gallery images querying with themselves excluded."""
    sims = similarity(queries, gallery, regions)
    first = len(queries) - own_rows
    sims[np.arange(first, len(queries)), np.asarray(sources[first:], dtype=np.int64)] = -np.inf
    ranked = _rankings(sims, TOP)
    labels = np.array([[j == s or cats[j] == cats[s] for j in row] for row, s in zip(ranked, sources, strict=True)])
    return np.take_along_axis(sims, ranked, axis=1), labels.astype(np.float64)


def judged_pairs(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, split: str, seed: int,
                 regions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, relevant) of the top-20 results of every query whose source image is in `split`:
    the copy queries and every gallery image as a query of its own (itself excluded)."""
    copies = [(source, vector) for (source, _), vector in zip(prep.copy_queries, queries, strict=True)
              if split_of(prep.gallery[source].image_id, seed) == split]
    own = [i for i, g in enumerate(prep.gallery) if split_of(g.image_id, seed) == split]
    vectors = np.stack([v for _, v in copies] + [gallery[i] for i in own])
    scores, labels = judged(vectors, gallery, regions, [s for s, _ in copies] + own,
                            np.array([g.category for g in prep.gallery]), len(own))
    return scores.ravel(), labels.ravel()


def relevance_calibration(prep: Prepared, gallery: np.ndarray, queries: np.ndarray, seed: int,
                          regions: np.ndarray | None = None) -> dict:
    cal_s, cal_l = judged_pairs(prep, gallery, queries, "calib", seed, regions)
    test_s, test_l = judged_pairs(prep, gallery, queries, "test", seed, regions)
    xs, ys = isotonic_fit(cal_s, cal_l)
    prob = np.interp(test_s, xs, ys)
    return {"x": [round(float(v), 5) for v in xs], "y": [round(float(v), 5) for v in ys],
            "ece": round(expected_calibration_error(prob, test_l), 4),
            "ece_calib": round(expected_calibration_error(np.interp(cal_s, xs, ys), cal_l), 4),
            "brier": round(float(np.mean((prob - test_l) ** 2)), 4), "base_rate": round(float(test_l.mean()), 4),
            "calib_pairs": len(cal_s), "test_pairs": len(test_s), "reliability": reliability(prob, test_l),
            "definition": RELEVANCE}


def evaluate_version(prep: Prepared, version: str, repository: Path, seed: int) -> dict:
    embedder = VersionEmbedder(version, repository)
    gallery = embedder.embed(prep.gallery_pixels, f"v{version} gallery")
    queries = embedder.embed(prep.copy_pixels, f"v{version} copies")
    regions = embedder.regions(prep.gallery_pixels, prep.region_pixels, f"v{version} regions")
    dup = duplicates(prep, gallery, queries, seed)  # whole-image vectors: what the duplicate collapse compares
    thresholds = {"off": 2.0, "fixed-0.87": FIXED_THRESHOLD, "calibrated": dup["threshold"]}
    details = details_whole = None
    if prep.scene_pixels is not None and prep.detail_pixels is not None:
        scenes = embedder.embed(prep.scene_pixels, f"v{version} scenes")
        details_px = embedder.embed(prep.detail_pixels, f"v{version} details")
        scene_regions = embedder.regions(prep.scene_pixels, prep.scene_region_pixels, f"v{version} scene regions")
        details = details_retrieval(prep, gallery, scenes, details_px, regions, scene_regions)
        details_whole = details_retrieval(prep, gallery, scenes, details_px)
    resolutions = resolutions_whole = None
    if prep.wallpaper_pixels is not None and prep.wallpaper_query_pixels is not None:
        pictures = embedder.embed(prep.wallpaper_pixels, f"v{version} wallpapers")
        sizes = embedder.embed(prep.wallpaper_query_pixels, f"v{version} wallpaper sizes")
        picture_regions = embedder.regions(prep.wallpaper_pixels, prep.wallpaper_region_pixels,
                                           f"v{version} wallpaper regions")
        resolutions = same_picture(prep, pictures, sizes, picture_regions)
        resolutions_whole = same_picture(prep, pictures, sizes)
    per_query_ap: dict[str, list[float]] = {}
    # "copy", "category", "details" and the relevance fit score as the default catalog does (regions on);
    # the "*_whole" entries as a catalog without regions (index_regions off, the Milvus backend).
    return {"version": version, "regions": regions is not None,
            "copy": copy_detection(prep, gallery, queries, regions),
            "copy_verified": copy_detection(prep, gallery, queries, regions, verify=True),
            "copy_whole": copy_detection(prep, gallery, queries),
            "copy_whole_verified": copy_detection(prep, gallery, queries, verify=True),
            "details": details, "details_whole": details_whole,
            "resolutions": resolutions, "resolutions_whole": resolutions_whole,
            "category": category_retrieval(prep, gallery, thresholds, regions, per_query_ap),
            "category_ap@10": per_query_ap,
            "category_whole": category_retrieval(prep, gallery, thresholds),
            "duplicates": dup, "relevance": relevance_calibration(prep, gallery, queries, seed, regions)}


def map_difference(baseline: dict, candidate: dict, seed: int, resamples: int = 10_000) -> dict[str, dict]:
    """Per category set: candidate mAP@10 - baseline mAP@10 over the same queries, with a paired bootstrap 95%
    interval (queries resampled with replacement). An interval that holds 0 is a difference the set cannot tell
    from noise; one query moves Tux Paint's mean by up to 1/340."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, before in baseline["category_ap@10"].items():
        diff = np.asarray(candidate["category_ap@10"][name]) - np.asarray(before)
        means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[name] = {"queries": len(diff), "difference": round(float(diff.mean()), 4),
                     "ci95 low": round(float(low), 4), "ci95 high": round(float(high), 4),
                     "queries better": int((diff > 0).sum()), "queries worse": int((diff < 0).sum())}
    return out


def calibration_file(result: dict, seed: int) -> dict:
    dup, rel = result["duplicates"], result["relevance"]
    return {"format": FORMAT, "model_version": result["version"],
            "duplicate": {"threshold": dup["threshold"], "target_precision": dup["target_precision"],
                          "precision": dup["calibrated"]["precision"], "recall": dup["calibrated"]["recall"]},
            "relevance": {"x": rel["x"], "y": rel["y"], "ece": rel["ece"], "definition": rel["definition"]},
            "provenance": {"command": f"python -m evaluation.quality --versions {result['version']} "
                                      f"--write-calibration --seed {seed}",
                           "sets": "held-out Tux Paint stamps + Noto emoji (evaluation/quality_sets.py)"}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["1"])
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--emoji-copy-sources", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--write-calibration", action="store_true", help="write <repo>/encoder/<v>/calibration.json "
                        "where a version has none (a released version's calibration is never rewritten)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    prep = build(args.seed, args.emoji_copy_sources)
    results = [evaluate_version(prep, v, args.model_repository, args.seed) for v in args.versions]
    for result in results[1:]:
        result["category_vs_first"] = map_difference(results[0], result, args.seed)
    if args.write_calibration:
        for result in results:
            if load_calibration(result["version"], args.model_repository) is not None:
                print(f"kept encoder/{result['version']}'s calibration: it was released with the version")
                continue
            path = save_calibration(calibration_file(result, args.seed), result["version"], args.model_repository)
            print(f"wrote {path}")
    meta = {"seed": args.seed, "gallery": len(prep.gallery), "copy_queries": len(prep.copy_queries),
            "seconds": round(time.monotonic() - started, 1), "command": "python -m evaluation.quality --versions "
            + " ".join(args.versions) + (" --write-calibration" if args.write_calibration else "")}
    quality_report.write(results, meta, args.out)
    return results


if __name__ == "__main__":
    main()
