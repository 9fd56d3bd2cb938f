"""Refitting the relevance curve from judged results: the weighted isotonic fit, the prior, the interaction log."""

from __future__ import annotations

import sqlite3

import numpy as np

from evaluation.calibrate import expected_calibration_error
from server.model_versions.calibration import Calibration
from server.model_versions.feedback_calibration import CorpusRelevance, chosen_prior_weight, isotonic_fit, refit
from server.query.feedback import Feedback
from server.store.interactions import CLICK, IMPRESSION, Interaction, InteractionLog


def _shipped(ys: tuple[float, float] = (0.0, 0.5)) -> Calibration:
    return Calibration.from_dict({"format": 1, "model_version": "1", "duplicate": {"threshold": 0.9},
                                  "relevance": {"x": [0.0, 1.0], "y": list(ys)}})


def test_weights_count_as_repeated_samples() -> None:
    x, y = np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.0, 1.0])
    xs_w, ys_w = isotonic_fit(x, y, np.array([1.0, 3.0, 1.0]))
    xs_r, ys_r = isotonic_fit(np.array([0.1, 0.2, 0.2, 0.2, 0.3]), np.array([1.0, 0, 0, 0, 1.0]))
    assert np.allclose(xs_w, xs_r) and np.allclose(ys_w, ys_r)


def test_a_few_judgements_move_the_curve_a_little_many_move_it_to_the_data() -> None:
    rng = np.random.default_rng(0)
    truth = lambda s: np.clip(0.2 + s, 0, 1)  # noqa: E731 - this corpus is far more relevant than the shipped curve
    shipped = _shipped()
    errors = []
    for n in (20, 200, 5000):
        scores = rng.uniform(0.2, 0.8, n)
        labels = (rng.random(n) < truth(scores)).astype(float)
        fitted = refit(shipped, scores, labels, prior_weight=200)
        grid = np.linspace(0.25, 0.75, 11)
        errors.append(float(np.abs(fitted.relevance(grid) - truth(grid)).mean()))
        assert np.all(np.diff(fitted.relevance_y) >= 0) and fitted.duplicate_threshold == shipped.duplicate_threshold
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05


def test_corpus_relevance_keeps_the_shipped_curve_until_enough_judgements() -> None:
    shipped, relevance = _shipped(), CorpusRelevance(min_judgements=10)
    assert relevance.update("encoder/1", shipped, np.full(9, 0.5), np.ones(9)) is None
    assert relevance.calibration("encoder/1", shipped) is shipped
    assert relevance.update("encoder/1", shipped, np.full(10, 0.5), np.ones(10)) is not None
    assert relevance.calibration("encoder/1", shipped).relevance(0.5) > shipped.relevance(0.5)
    assert relevance.calibration("encoder/2", shipped) is shipped  # another version's cosines are not these


def test_the_log_keeps_the_shown_score_and_labels_impressions_by_their_clicks(tmp_path) -> None:
    feedback = Feedback(InteractionLog(tmp_path / "log.sqlite"))
    feedback.issue("r1", "alice", ["a", "b", "c"], [0.9, 0.6, 0.3], "encoder/1", None)
    items = [Interaction("r1", p, i, IMPRESSION, 1.0) for p, i in enumerate("abc")]
    items += [Interaction("r1", 1, "b", CLICK, 2.0), Interaction("r1", 2, "a", CLICK, 2.0)]  # a forged position
    assert feedback.record("alice", items, calibrates=True) == 4
    assert feedback.record("mallory", [Interaction("r1", 2, "c", CLICK, 2.0)]) == 0  # not issued to mallory
    scores, labels = feedback.log.judgements("encoder/1")
    assert sorted(zip(scores.tolist(), labels.tolist(), strict=True)) == [(0.3, 0.0), (0.6, 1.0), (0.9, 0.0)]
    assert len(feedback.log.judgements("encoder/2")[0]) == 0


def test_only_trusted_callers_interactions_are_judgements(tmp_path) -> None:
    feedback = Feedback(InteractionLog(tmp_path / "log.sqlite"))
    feedback.issue("r1", "searcher", ["a", "b"], [0.9, 0.6], "encoder/1", None)
    feedback.issue("r2", "frontend", ["a", "b"], [0.8, 0.5], "encoder/1", None)
    assert feedback.record("searcher", [Interaction("r1", p, i, k, 1.0) for p, i in enumerate("ab")
                                        for k in (IMPRESSION, CLICK)]) == 4
    assert feedback.record("frontend", [Interaction("r2", 0, "a", IMPRESSION, 1.0)], calibrates=True) == 1
    assert feedback.log.ctr()["overall"]["clicks"] == 2  # every caller's interactions are logged ...
    scores, labels = feedback.log.judgements("encoder/1")  # ... only the trusted one's refit the curve
    assert scores.tolist() == [0.8] and labels.tolist() == [0.0]


def test_a_log_written_before_scores_were_kept_opens_and_keeps_its_rows(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE interactions (request_id TEXT NOT NULL, position INTEGER NOT NULL, "
                   "image_id TEXT NOT NULL, kind INTEGER NOT NULL, time REAL NOT NULL)")
        db.execute("INSERT INTO interactions VALUES ('r0', 0, 'a', 1, 1.0)")
    log = InteractionLog(path)
    assert log.ctr()["overall"]["impressions"] == 1
    assert len(log.judgements("encoder/1")[0]) == 0  # no score: not a judged pair
    log.record([Interaction("r1", 0, "b", IMPRESSION, 2.0, 0.7, "encoder/1", calibrates=True)])
    assert log.judgements("encoder/1")[0].tolist() == [0.7]


def _judged(truth, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.uniform(0.2, 0.8, n)
    return scores, (rng.random(n) < truth(scores)).astype(float)


def test_the_prior_counts_for_little_where_the_corpus_disagrees_and_for_much_where_it_agrees() -> None:
    rng = np.random.default_rng(1)
    shipped = _shipped()  # relevance = s / 2
    far = lambda s: np.clip(0.35 + s, 0, 1)  # noqa: E731 - a corpus the shipped curve misses by 0.35
    near = lambda s: s / 2  # noqa: E731 - a corpus exactly like the shipped curve's sets
    assert chosen_prior_weight(shipped, *_judged(far, 1000, rng)) <= 50
    assert chosen_prior_weight(shipped, *_judged(near, 1000, rng)) >= 200


def test_a_chosen_prior_calibrates_a_far_corpus_better_than_a_fixed_one() -> None:
    rng = np.random.default_rng(2)
    shipped, far = _shipped(), (lambda s: np.clip(0.35 + s, 0, 1))
    held_scores, held_labels = _judged(far, 20_000, rng)
    errors = {"chosen": [], "fixed": []}
    for _ in range(5):
        scores, labels = _judged(far, 1000, rng)
        for name, weight in (("chosen", None), ("fixed", 200.0)):
            fitted = refit(shipped, scores, labels, prior_weight=weight)
            errors[name].append(expected_calibration_error(np.asarray(fitted.relevance(held_scores)), held_labels))
    assert np.mean(errors["chosen"]) < np.mean(errors["fixed"]), errors
    assert fitted.raw["relevance"]["prior_weight"] == 200.0
