"""The held-out domain evaluation's own pieces: the category sample, alpha-QE and DBA."""

from __future__ import annotations

import numpy as np

from evaluation.heldout_domains import augment_database, domain_gallery, expand
from evaluation.quality_sets import LabelledImage


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_the_gallery_caps_each_category_and_drops_those_too_small_to_query() -> None:
    images = [LabelledImage(f"x/{c}/{i}", "x", f"x:{c}") for c, n in (("big", 50), ("ok", 3), ("tiny", 2))
              for i in range(n)]
    chosen = domain_gallery(images, per_category=10, seed=1)
    counts = {c: sum(1 for g in chosen if g.category == f"x:{c}") for c in ("big", "ok", "tiny")}
    assert counts == {"big": 10, "ok": 3, "tiny": 0}
    assert domain_gallery(images, 10, seed=1) == chosen != domain_gallery(images, 10, seed=2)


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
