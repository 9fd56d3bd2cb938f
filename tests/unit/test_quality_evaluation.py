"""Quality evaluation pieces: calibration maths, the per-version calibration file, the held-out split, the edits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.calibrate import (
    expected_calibration_error,
    isotonic_fit,
    precision_recall,
    threshold_for_precision,
)
from evaluation.edits import EDITS
from evaluation.quality import collapse
from evaluation.quality_sets import SPLITS, split_of
from server.model_versions.calibration import FORMAT, load_calibration, relevance, save_calibration


def test_isotonic_fit_is_monotone_and_matches_block_means() -> None:
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([0, 1, 0, 0, 1, 1])  # 1 then 0,0 violate the order: pooled to 1/3
    xs, ys = isotonic_fit(x, y)
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    np.testing.assert_allclose(ys, [0.0, 1 / 3, 1.0])
    np.testing.assert_allclose(xs, [0.1, 0.3, 0.55])


def test_isotonic_fit_calibrates_a_known_probability() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, x.size) < x**2).astype(float)  # P(y=1 | x) = x^2
    xs, ys = isotonic_fit(x, y, max_points=50)
    assert len(xs) <= 50
    grid = np.linspace(0.1, 0.9, 9)
    np.testing.assert_allclose(np.interp(grid, xs, ys), grid**2, atol=0.05)
    held_x = rng.uniform(0, 1, 20_000)
    held_y = (rng.uniform(0, 1, held_x.size) < held_x**2).astype(float)
    assert expected_calibration_error(np.interp(held_x, xs, ys), held_y) < 0.02
    assert expected_calibration_error(held_x, held_y) > 0.1  # the raw score is not a probability


def test_threshold_for_precision_gets_the_most_recall_at_the_target() -> None:
    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.90, 0.80, 0.70])
    labels = np.array([1, 1, 1, 1, 0, 1, 0, 1])
    t = threshold_for_precision(scores, labels, 1.0)
    assert t == pytest.approx(0.95)  # keeps the four copies above the first not-copy
    assert precision_recall(scores, labels, t) == (1.0, pytest.approx(4 / 6))
    t80 = threshold_for_precision(scores, labels, 0.8)
    assert precision_recall(scores, labels, t80)[0] >= 0.8
    assert t80 < t
    assert threshold_for_precision(np.array([0.9, 0.8]), np.array([0, 1]), 0.99) == pytest.approx(0.9)


def test_collapse_skips_near_copies_and_backfills() -> None:
    vectors = np.eye(4)
    vectors[1] = vectors[0] * 0.99 + vectors[1] * 0.141  # near-copy of 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert collapse(np.array([0, 1, 2, 3]), vectors, 3, 0.9) == [0, 2, 3]
    assert collapse(np.array([0, 1, 2, 3]), vectors, 3, 2.0) == [0, 1, 2]


def _calibration(version: str = "7") -> dict:
    return {"format": FORMAT, "model_version": version,
            "duplicate": {"threshold": 0.93, "target_precision": 0.99, "precision": 0.995, "recall": 0.8},
            "relevance": {"x": [0.2, 0.5, 0.9], "y": [0.0, 0.4, 1.0], "ece": 0.01, "definition": "test"}}


def test_calibration_file_round_trip_and_relevance(tmp_path: Path) -> None:
    assert load_calibration("7", tmp_path) is None
    (tmp_path / "encoder" / "7").mkdir(parents=True)
    save_calibration(_calibration(), "7", tmp_path)
    cal = load_calibration("7", tmp_path)
    assert cal is not None and cal.duplicate_threshold == 0.93 and cal.model_version == "7"
    assert cal.relevance(0.1) == 0.0 and cal.relevance(0.95) == 1.0
    assert cal.relevance(0.35) == pytest.approx(0.2)
    np.testing.assert_allclose(cal.relevance(np.array([0.5, 0.7])), [0.4, 0.7])
    assert relevance(0.5, cal.relevance_x, cal.relevance_y) == pytest.approx(0.4)


@pytest.mark.parametrize("broken", [
    {"format": 99},
    {"relevance": {"x": [0.5, 0.2], "y": [0.1, 0.2]}},
    {"relevance": {"x": [0.2, 0.5], "y": [0.6, 0.2]}},
    {"duplicate": {"threshold": 3.0}},
])
def test_calibration_rejects_malformed_files(tmp_path: Path, broken: dict) -> None:
    (tmp_path / "encoder" / "1").mkdir(parents=True)
    with pytest.raises(ValueError):
        save_calibration({**_calibration("1"), **broken}, "1", tmp_path)
    (tmp_path / "encoder" / "1" / "calibration.json").write_text(json.dumps({**_calibration("1"), **broken}))
    with pytest.raises(ValueError):
        load_calibration("1", tmp_path)


def test_split_is_seeded_stable_and_proportioned() -> None:
    ids = [f"img/{i}" for i in range(4000)]
    first = [split_of(i) for i in ids]
    assert first == [split_of(i) for i in ids]
    assert first != [split_of(i, seed=1) for i in ids]
    for name, share in SPLITS.items():
        assert abs(first.count(name) / len(ids) - share) < 0.03


def test_edits_are_deterministic_and_change_the_image() -> None:
    from PIL import Image

    rng_image = np.random.default_rng(0)
    image = Image.fromarray(rng_image.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    original = np.asarray(image)
    for name, edit in EDITS.items():
        a = edit(image, np.random.default_rng(1))
        assert a == edit(image, np.random.default_rng(1)), name
        with Image.open(io.BytesIO(a)) as out:
            pixels = np.asarray(out.convert("RGB"))
        assert pixels.shape != original.shape or not np.array_equal(pixels, original), name


def test_copy_augmentations_are_seeded_and_sized() -> None:
    from PIL import Image

    from training.augment import COPY_DETECTION, augment

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    views = [augment(image, np.random.default_rng(s), COPY_DETECTION) for s in (5, 5, 6)]
    assert all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in views)
    np.testing.assert_array_equal(views[0], views[1])
    assert not np.array_equal(views[0], views[2])


def test_hard_negative_batches_hold_same_category_pairs() -> None:
    from training.finetune import sample_batch

    categories = [i // 4 for i in range(40)]  # 10 categories of 4
    groups = [np.array([i for i, c in enumerate(categories) if c == g]) for g in range(10)]
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = sample_batch(rng, 40, 8, groups, hard_share=0.5)
        assert len(batch) == 8 and len(set(batch.tolist())) == 8
        pairs = [(batch[i], batch[i + 1]) for i in range(0, 4, 2)]
        assert all(categories[a] == categories[b] for a, b in pairs)
    plain = sample_batch(np.random.default_rng(1), 40, 8, groups, hard_share=0.0)
    np.testing.assert_array_equal(plain, np.random.default_rng(1).choice(40, size=8, replace=False))


def test_quality_gate_refuses_a_category_regression_and_a_lost_edit() -> None:
    from evaluation.gate import decide_quality

    def result(p1: dict[str, float], maps: dict[str, float]) -> dict:
        return {"copy": {e: {"p@1": v} for e, v in p1.items()}, "category": {n: {"map@10": v} for n, v in maps.items()}}

    served = result({"crop-50": 0.90, "flip": 0.99}, {"tuxpaint": 0.40, "emoji": 0.35})
    assert decide_quality(served, result({"crop-50": 0.97, "flip": 0.99}, {"tuxpaint": 0.41, "emoji": 0.35}))[0]
    promote, reason = decide_quality(served, result({"crop-50": 0.99, "flip": 0.99}, {"tuxpaint": 0.38, "emoji": 0.4}))
    assert not promote and "tuxpaint mAP@10" in reason
    promote, reason = decide_quality(served, result({"crop-50": 0.99, "flip": 0.95}, {"tuxpaint": 0.4, "emoji": 0.35}))
    assert not promote and "flip" in reason


@pytest.mark.skipif(not Path("/usr/share/tuxpaint/stamps").is_dir(), reason="needs tuxpaint-stamps-default")
def test_demo_corpus_has_groups_and_queries_that_point_into_it() -> None:
    from devkit.corpus import demo_corpus, real_photos

    corpus, queries = demo_corpus()
    ids = [i.image_id for i in corpus]
    assert len(ids) == len(set(ids))
    assert {p.image_id for p in real_photos()} <= set(ids)
    folders = {i.rsplit("/", 1)[0] for i in ids if i.startswith("tuxpaint/")}
    assert len(folders) >= 5
    by_name = {q.name: q for q in queries}
    whole = by_name["1-whole-image"]
    assert whole.path is not None and not any(i.path == whole.path for i in corpus)  # not indexed: finds others
    assert by_name["3-more-like-this"].image_id in ids and by_name["4-same-picture"].image_id in ids
    assert by_name["2-crop"].crop is not None


def test_rcc_reader_rejects_other_files(tmp_path: Path) -> None:
    from evaluation.rcc import read_rcc

    (tmp_path / "x.rcc").write_bytes(b"PK\x03\x04 not a Qt bundle")
    with pytest.raises(ValueError):
        list(read_rcc(tmp_path / "x.rcc"))


@pytest.mark.skipif(not Path("/usr/share/gcompris-qt/rcc/details.rcc").exists(), reason="needs gcompris-qt-data")
def test_gcompris_details_pair_every_detail_with_its_scene() -> None:
    from evaluation.quality_sets import gcompris_details

    scenes, details = gcompris_details()
    assert len(scenes) >= 20 and len(details) >= 100
    for detail_id, scene, image in details:
        assert scene in scenes and detail_id.startswith("gcompris/details/")
        assert image.mode == "RGB" and max(image.size) < min(scenes[scene].size)  # a detail is smaller


def test_wallpaper_sizes_are_distinct_files_grouped_by_picture_largest_first() -> None:
    from PIL import Image

    from evaluation.quality_sets import wallpaper_resolutions

    pictures = wallpaper_resolutions()
    assert len(pictures) >= 20 and sum(len(files) - 1 for files in pictures.values()) >= 30
    for name, files in pictures.items():
        assert len(files) >= 2 and not any(f.is_symlink() for f in files), name
        assert len({f.read_bytes() for f in files}) == len(files), f"{name}: the same bytes twice"
        areas = [Image.open(f).width * Image.open(f).height for f in files]
        assert areas == sorted(areas, reverse=True), f"{name}: the largest comes first"


def test_same_picture_scores_the_largest_size_as_the_only_relevant_result() -> None:
    from evaluation.quality import Prepared, same_picture

    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[0.9, 0.1, 0, 0], [0, 0.2, 0.9, 0], [0.8, 0, 0, 0.6]], np.float32)
    empty = np.zeros((0, 224, 224, 3), np.uint8)
    prep = Prepared([], empty, [], empty, np.zeros(0, int), wallpaper_queries=[0, 1, 3])
    result = same_picture(prep, gallery, queries)
    assert result["p@1"] == round(1 / 3, 4) and result["mrr"] == round((1 + 1 / 2 + 1 / 2) / 3, 4)
    assert (result["queries"], result["pictures"], result["gallery"]) == (3, 3, 4)


def _synthetic_prepared(seed: int = 0) -> tuple:
    """Stand-in embeddings: 40 categories x 6 images; each category a direction, each image a noisy member,
    each copy its image plus smaller noise (crop-50 noisier than flip)."""
    from evaluation.quality import Prepared
    from evaluation.quality_sets import LabelledImage

    rng = np.random.default_rng(seed)
    dim, items, vectors, queries, query_vectors = 64, [], [], [], []
    centres = rng.normal(size=(40, dim))
    for c in range(40):
        for n in range(6):
            items.append(LabelledImage(f"syn/{c}/{n}", "tuxpaint" if c % 2 else "emoji", f"cat:{c}"))
            vectors.append(centres[c] + rng.normal(scale=1.2, size=dim))
    gallery = np.array(vectors)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    for i, v in enumerate(gallery):
        for edit, noise in (("flip", 0.1), ("crop-50", 0.7)):
            queries.append((i, edit))
            query_vectors.append(v + rng.normal(scale=noise / np.sqrt(dim), size=dim))
    copies = np.array(query_vectors)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    empty = np.zeros((0, 224, 224, 3), np.uint8)
    prep = Prepared(items, empty, queries, empty, np.full(len(queries), 224))
    return prep, gallery.astype(np.float32), copies.astype(np.float32)


def test_quality_metrics_on_stand_in_embeddings() -> None:
    from evaluation.quality import category_retrieval, copy_detection, duplicates, relevance_calibration

    prep, gallery, copies = _synthetic_prepared()
    copy = copy_detection(prep, gallery, copies)
    assert copy["flip"]["p@1"] == 1.0 and copy["crop-50"]["mrr"] >= copy["crop-50"]["p@1"]
    dup = duplicates(prep, gallery, copies, seed=16)
    assert dup["calibrated"]["precision"] >= 0.97 and dup["calibrated"]["recall"] > 0.5
    assert dup["calibrated"]["recall_by_edit"]["flip"] >= dup["calibrated"]["recall_by_edit"]["crop-50"]
    cats = category_retrieval(prep, gallery, {"off": 2.0, "calibrated": dup["threshold"]})
    for row in cats.values():
        assert 0.3 < row["p@1"] <= 1.0 and row["p@10 collapse off"] == row["p@10"]
    rel = relevance_calibration(prep, gallery, copies, seed=16)
    assert rel["ece"] < 0.08 and np.all(np.diff(rel["y"]) >= 0)


def test_map_difference_is_paired_and_its_interval_holds_the_truth() -> None:
    """Per-query AP@10 from category_retrieval feeds a paired bootstrap: the same ranking gives 0 exactly; a
    candidate better on every query gives an interval above 0; noise around 0 gives an interval holding 0."""
    from evaluation.quality import category_retrieval, map_difference

    prep, gallery, _ = _synthetic_prepared()
    per_query: dict[str, list[float]] = {}
    cats = category_retrieval(prep, gallery, {"off": 2.0}, per_query=per_query)
    for name, row in cats.items():
        assert len(per_query[name]) == row["queries"]
        assert abs(np.mean(per_query[name]) - row["map@10"]) < 1e-3
    same = map_difference({"category_ap@10": per_query}, {"category_ap@10": per_query}, seed=1)
    assert all(r["difference"] == r["ci95 low"] == r["ci95 high"] == 0 for r in same.values())
    rng = np.random.default_rng(3)
    base = {"s": list(rng.uniform(0, 0.8, 400))}
    better = map_difference({"category_ap@10": base}, {"category_ap@10": {"s": [v + 0.05 for v in base["s"]]}}, 1)
    assert better["s"]["ci95 low"] > 0 and better["s"]["queries better"] == 400
    noisy = map_difference({"category_ap@10": base},
                           {"category_ap@10": {"s": list(np.array(base["s"]) + rng.normal(0, 0.1, 400))}}, 1)
    assert noisy["s"]["ci95 low"] < 0 < noisy["s"]["ci95 high"]
