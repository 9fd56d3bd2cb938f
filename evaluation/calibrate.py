"""Score calibration in numpy: isotonic regression (the serving code's, pool adjacent violators), ECE,
precision-targeted thresholds.

No scikit-learn: it is not a project dependency, and PAV is a few lines.
"""

from __future__ import annotations

import numpy as np

from server.model_versions.feedback_calibration import isotonic_fit

__all__ = ["expected_calibration_error", "isotonic_fit", "precision_recall", "reliability",
           "threshold_for_precision"]


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, bins: int = 15) -> float:
    """ECE: sum over equal-width probability bins of (share of samples) * |mean label - mean probability|."""
    prob, label = np.asarray(prob, np.float64), np.asarray(label, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(label[mask].mean() - prob[mask].mean())
    return float(total)


def reliability(prob: np.ndarray, label: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per non-empty bin: mean predicted probability, observed frequency, count (the reliability diagram)."""
    prob, label = np.asarray(prob, np.float64), np.asarray(label, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    return [{"predicted": float(prob[index == b].mean()), "observed": float(label[index == b].mean()),
             "count": int((index == b).sum())} for b in range(bins) if (index == b).any()]


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Precision and recall of the decision `score > threshold` (the collapse rule is strict)."""
    decided = scores > threshold
    positives = labels.astype(bool)
    tp = int((decided & positives).sum())
    precision = tp / int(decided.sum()) if decided.any() else 1.0
    recall = tp / int(positives.sum()) if positives.any() else 0.0
    return precision, recall


def threshold_for_precision(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The lowest threshold t whose decision `score > t` has precision >= target over the labelled pairs: the
    most recall at the stated precision. (Requiring every higher cut to reach the target too would let one
    not-copy at the very top, e.g. two tricolour flags, forbid collapsing anything.)"""
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order].astype(bool)
    precision = np.cumsum(lab) / np.arange(1, len(lab) + 1)
    # Cutting after position i (keeping 0..i) is only possible where s[i] > s[i+1] (ties go together).
    distinct = np.append(s[:-1] > s[1:], True)
    valid = np.flatnonzero((precision >= target) & distinct)
    if len(valid) == 0:
        return float(s[0])  # no cut reaches the precision: nothing collapses (only pairs above the best score)
    last = valid[-1]
    return float(s[last + 1]) if last + 1 < len(s) else float(s[-1]) - 1e-6
