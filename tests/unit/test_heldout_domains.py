"""The held-out domain evaluation's own pieces: the category sample, a domain's labels, alpha-QE and DBA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import heldout_domains, quality_sets
from evaluation.heldout_domains import augment_database, domain_gallery, expand
from evaluation.quality_sets import LabelledImage, freeciv_flag_images


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_the_gallery_caps_each_category_and_drops_those_too_small_to_query() -> None:
    images = [LabelledImage(f"x/{c}/{i}", "x", f"x:{c}") for c, n in (("big", 50), ("ok", 3), ("tiny", 2))
              for i in range(n)]
    chosen = domain_gallery(images, per_category=10, seed=1)
    counts = {c: sum(1 for g in chosen if g.category == f"x:{c}") for c in ("big", "ok", "tiny")}
    assert counts == {"big": 10, "ok": 3, "tiny": 0}
    assert domain_gallery(images, 10, seed=1) == chosen != domain_gallery(images, 10, seed=2)


def test_flags_are_labelled_by_the_first_continent_group_and_each_flag_counts_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nation").mkdir()
    (tmp_path / "flags").mkdir()
    nations = {"french": ('"Modern", "European", "Core"', "france"), "russian": ('"European", "Asian"', "russia"),
               "martian": ('"Imaginary"', "mars"), "gaul": ('"Ancient"', "france"),  # shares France's flag
               "nowhere": ('"European"', "missing")}  # its flag file is not shipped
    for nation, (groups, flag) in nations.items():
        (tmp_path / "nation" / f"{nation}.ruleset").write_text(
            f'[nation_{nation}]\ngroups={groups}\nflag="{flag}"\nflag_alt = "other"\n')
    for flag in ("france", "russia", "mars", "other"):
        Image.new("RGB", (30, 20)).save(tmp_path / "flags" / f"{flag}-large.png")
    monkeypatch.setattr(quality_sets, "FREECIV", tmp_path)
    labels = {i.image_id: i.category for i in freeciv_flag_images()}
    assert labels == {"freeciv/france-large": "freeciv-flags:European",
                      "freeciv/russia-large": "freeciv-flags:European", "freeciv/mars-large": "freeciv-flags:Imaginary"}


def test_query_expansion_moves_the_query_towards_its_best_results_by_score() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((5, 16)))
    query = _unit(rng.standard_normal((1, 16)))
    sims = np.array([[0.9, 0.5, -0.2, 0.1, 0.0]])
    expanded = expand(query, sims, vectors, n=2, alpha=1.0)
    assert np.allclose(expanded, _unit(query + 0.9 * vectors[0] + 0.5 * vectors[1]))
    assert np.allclose(expand(query, sims, vectors, n=1, alpha=3.0), _unit(query + 0.9**3 * vectors[0]))


def test_database_augmentation_adds_neighbours_but_never_the_row_itself() -> None:
    base = _unit(np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0]]))
    augmented = augment_database(base, n=1, alpha=1.0)
    s01 = float(base[0] @ base[1])
    assert np.allclose(augmented[0], _unit(base[0] + s01 * base[1]))
    assert np.allclose(augmented[2], _unit(base[2] + max(0.0, float(base[2] @ base[0])) * base[0]))
    assert np.allclose(np.linalg.norm(augmented, axis=1), 1.0)


def test_judged_results_leave_a_gallery_query_out_and_normalise_by_the_neighbourhood() -> None:
    from evaluation.heldout_domains import normalised
    from evaluation.quality import TOP, judged

    rng = np.random.default_rng(1)
    gallery = _unit(rng.standard_normal((TOP + 5, 8)))
    regions = np.repeat(gallery[:, None], 2, axis=1)  # regions equal to the whole image: scores unchanged
    cats = np.array(["a"] * 3 + ["b"] * (TOP + 2))
    scores, labels = judged(gallery[:3], gallery, regions, [0, 1, 2], cats, own_rows=2)
    assert scores.shape == (3, TOP)
    assert np.isclose(scores[0, 0], 1.0) and labels[0, 0] == 1  # a query that is not a gallery image finds it
    assert not np.isclose(scores[1:, 0], 1.0).any()  # the gallery's own queries never find themselves
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.allclose(normalised(scores)[:, -1], 0) and np.allclose(normalised(scores)[:, 0],
                                                                      scores[:, 0] - scores[:, -1])


def test_k_reciprocal_neighbours_must_each_be_in_the_others_nearest() -> None:
    from evaluation.k_reciprocal import _reciprocal

    # 0's 2 nearest (after itself) are 1 and 2; 1 has 0 among its nearest, 2 does not.
    rank = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 1, 0], [3, 2, 1, 0]])
    assert sorted(_reciprocal(rank, 0, 2).tolist()) == [0, 1]
    assert sorted(_reciprocal(rank, 2, 2).tolist()) == [2, 3]


def test_k_reciprocal_reranking_drops_a_hub_below_the_querys_own_cluster() -> None:
    from evaluation.k_reciprocal import k_reciprocal_distance

    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((2, 32)))
    clusters = [_unit(c + 0.45 * rng.standard_normal((6, 32)) / np.sqrt(32)) for c in centres]
    hub = _unit(clusters[0][0] + 0.6 * centres[1])  # near image 0 and the whole other cluster
    points = np.concatenate([clusters[0], clusters[1], hub[None]])
    sims, own = points @ points.T, range(1, 6)
    original = k_reciprocal_distance(sims, k1=5, k2=2, lam=1.0)  # the original distance alone
    assert original[0, 12] < max(original[0, j] for j in own)  # it puts the hub above one of 0's cluster mates
    distance = k_reciprocal_distance(sims, k1=5, k2=2)
    assert all(distance[0, 12] > distance[0, j] for j in own)
    assert np.all(np.diag(distance) <= distance.min(axis=1) + 1e-6)  # every image is nearest to itself


def test_pictures_the_encoder_sees_as_one_input_count_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blank pieces of different sizes are different files but one image to the service: a copy of one would tie
    with the others, so the domain keeps one of them."""
    images = []
    for name, size, colour in (("blank-a", (20, 40), (255, 255, 255)), ("blank-b", (64, 64), (255, 255, 255)),
                               ("blank-c", (7, 90), (255, 255, 255)), ("red", (30, 30), (200, 0, 0)),
                               ("green", (30, 30), (0, 160, 0))):
        Image.new("RGB", size, colour).save(tmp_path / f"{name}.png")
        images.append(LabelledImage(f"t/{name}", "t", "t:all", path=tmp_path / f"{name}.png"))
    monkeypatch.setitem(heldout_domains.DOMAINS, "stand-in", lambda: images)
    prep = heldout_domains.build_domain("stand-in", per_category=10, copy_sources=2, seed=1)
    ids = [g.image_id for g in prep.gallery]
    assert len(ids) == 3 and sum(i.startswith("t/blank") for i in ids) == 1 and {"t/red", "t/green"} <= set(ids)
