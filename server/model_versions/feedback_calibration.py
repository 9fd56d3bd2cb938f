"""Relevance calibration for the corpus being served, refitted from its own impressions and clicks.

A version's shipped curve (calibration.py) was fitted on the team's labelled sets; on another image domain the
same cosine means another probability of relevance (issue 28: ECE 0.14 on a domain outside them). The gateway
logs every impression and click on the results it handed out, with the score it showed
(server/store/interactions.py); `refit` turns them into judged pairs (shown -> 0, clicked -> 1) and fits a
weighted isotonic regression of relevance on the cosine, in which the shipped curve counts as `prior_weight`
judgements spread over the observed scores: with few clicks the curve stays near the shipped one, with many it
follows the corpus. How many judgements the shipped curve is worth depends on how far the corpus is from the
sets it was fitted on, so the weight is chosen per refit, by cross-validation on the corpus's own judgements
(`chosen_prior_weight`): a fixed 200 left a domain the curve missed by 0.25 at ECE 0.058 after 1,000
judgements, the prior's pull alone being worth ~0.04. `CorpusRelevance` holds the refitted curve per model
version for the Search path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from server.model_versions.calibration import Calibration

log = logging.getLogger("relevance")
PRIOR_WEIGHTS = (0.0, 25.0, 50.0, 100.0, 200.0, 400.0)  # what the shipped curve may count as, in judgements
CV_FOLDS = 5
CV_MAX_JUDGEMENTS = 20_000  # the weight is chosen on at most this many (30 fits of pure-Python PAV, GIL held)
MIN_JUDGEMENTS = 100  # fewer impressions than this: keep the shipped curve
SCORE_DECIMALS = 4  # judgements are pooled per cosine at this resolution before the fit


def isotonic_fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, max_points: int = 200
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing weighted least-squares fit of y (labels or probabilities) on x; returns interpolation
    points (xs, ys): pool adjacent violators over x-sorted samples, each pooled block one point at its weighted
    mean x, blocks merged evenly down to `max_points` (which keeps the fit monotone)."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    ws = np.ones_like(xs) if weights is None else np.asarray(weights, np.float64)[order]
    values: list[float] = []
    totals: list[float] = []
    sums_x: list[float] = []
    for xi, yi, wi in zip(xs, ys, ws, strict=True):
        values.append(yi)
        totals.append(wi)
        sums_x.append(xi * wi)
        while len(values) > 1 and values[-2] >= values[-1]:  # equal neighbours pool too: fewer points
            v, w, sx = values.pop(), totals.pop(), sums_x.pop()
            values[-1] = (values[-1] * totals[-1] + v * w) / (totals[-1] + w)
            totals[-1] += w
            sums_x[-1] += sx
    v, w, sx = np.array(values), np.array(totals), np.array(sums_x)
    if len(v) > max_points:
        groups = np.array_split(np.arange(len(v)), max_points)
        v = np.array([np.average(v[g], weights=w[g]) for g in groups])
        sx = np.array([sx[g].sum() for g in groups])
        w = np.array([w[g].sum() for g in groups])
    return sx / w, v


def chosen_prior_weight(base: Calibration, scores: np.ndarray, labels: np.ndarray,
                        candidates: tuple[float, ...] = PRIOR_WEIGHTS, seed: int = 0) -> float:
    """The prior weight whose refits predict held-out judgements best: Brier score over CV_FOLDS folds (ties go
    to the larger prior, the steadier curve)."""
    rng = np.random.default_rng(seed)
    if len(scores) > CV_MAX_JUDGEMENTS:
        pick = rng.choice(len(scores), CV_MAX_JUDGEMENTS, replace=False)
        scores, labels = scores[pick], labels[pick]
    fold = rng.permutation(len(scores)) % CV_FOLDS
    losses = []
    for weight in candidates:
        loss = 0.0
        for f in range(CV_FOLDS):
            train, test = fold != f, fold == f
            fitted = _refit(base, scores[train], labels[train], weight)
            loss += float(np.sum((np.asarray(fitted.relevance(scores[test])) - labels[test]) ** 2))
        losses.append(loss)
    best = min(losses)
    return max(w for w, loss in zip(candidates, losses, strict=True) if loss <= best * (1 + 1e-9))


def refit(base: Calibration, scores: np.ndarray, labels: np.ndarray, prior_weight: float | None = None
          ) -> Calibration:
    """`base` with its relevance curve refitted on judged (score, 0/1) pairs, the base curve as a prior worth
    `prior_weight` judgements (None: `chosen_prior_weight`)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if prior_weight is None:
        prior_weight = chosen_prior_weight(base, scores, labels)
    return _refit(base, scores, labels, prior_weight)


def _refit(base: Calibration, scores: np.ndarray, labels: np.ndarray, prior_weight: float) -> Calibration:
    # Pairs are pooled per cosine to 1e-4 first: the pure-Python PAV then walks at most ~20k points however many
    # judgements the log holds (it runs in a gateway thread, beside the query path, under the GIL).
    cells, where = np.unique(np.round(scores, SCORE_DECIMALS), return_inverse=True)  # (float64: `refit`)
    counts = np.bincount(where, minlength=len(cells)).astype(np.float64)
    clicked = np.bincount(where, weights=labels, minlength=len(cells))
    if prior_weight > 0:
        prior = np.asarray(base.relevance(cells), np.float64)
        prior_weights = counts * prior_weight / max(1, len(where))  # the prior spread like the judgements
        xs, ys = isotonic_fit(np.concatenate([cells, cells]), np.concatenate([clicked / counts, prior]),
                              np.concatenate([counts, prior_weights]))
    else:
        xs, ys = isotonic_fit(cells, clicked / counts, counts)
    raw = {**base.raw, "relevance": {**base.raw.get("relevance", {}), "x": xs.tolist(), "y": ys.tolist(),
                                     "source": "feedback", "judgements": len(where),
                                     "prior_weight": prior_weight}}
    return replace(base, relevance_x=xs, relevance_y=ys, raw=raw)


class CorpusRelevance:
    """The refitted relevance curve per model version (None: the shipped one applies)."""

    def __init__(self, min_judgements: int = MIN_JUDGEMENTS, prior_weight: float | None = None) -> None:
        """`prior_weight`: what the shipped curve counts as, in judgements (None: chosen at every refit)."""
        self.min_judgements, self.prior_weight = min_judgements, prior_weight
        self._fitted: dict[str, Calibration] = {}
        self._lock = threading.Lock()

    def calibration(self, model_version: str, shipped: Calibration | None) -> Calibration | None:
        with self._lock:
            return self._fitted.get(model_version, shipped)

    def update(self, model_version: str, shipped: Calibration | None, scores: np.ndarray, labels: np.ndarray
               ) -> Calibration | None:
        """Refit from all judged pairs of this version; returns the new curve (None: too few, or no base)."""
        if shipped is None or len(scores) < self.min_judgements:
            return None
        fitted = refit(shipped, scores, labels, self.prior_weight)
        with self._lock:
            self._fitted[model_version] = fitted
        return fitted

    def refit(self, judgements: Callable[[str], tuple[np.ndarray, np.ndarray]], model_version: str,
              shipped: Calibration | None) -> Calibration | None:
        """`update` from every judged pair `judgements(model_version)` returns (the interaction log's)."""
        scores, labels = judgements(model_version)
        fitted = self.update(model_version, shipped, scores, labels)
        if fitted is not None:
            log.info("relevance of %s refitted on %d judged results (%d clicked)", model_version, len(scores),
                     int(labels.sum()))
        return fitted
