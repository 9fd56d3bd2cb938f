"""Per-version score calibration: the near-duplicate threshold and cosine -> relevance probability.

Both are properties of an encoder version (a fine-tuned model moves every cosine), so they live next to the
model: `model_repository/encoder/<version>/calibration.json`, written by `python -m evaluation.quality
--write-calibration` from held-out labelled pairs (never from training images). Format (version 1):

    {"format": 1, "model_version": "1",
     "duplicate": {"threshold": 0.93, "target_precision": 0.99, "precision": ..., "recall": ...},
     "relevance": {"x": [cosines, increasing], "y": [probabilities, non-decreasing], "ece": ...,
                   "definition": "..."},
     "provenance": {...}}

How the gateway uses it: `load_calibration(version)` once per served version (None when the file is missing:
keep the configured threshold and return no relevance); collapse near-duplicates at `cal.duplicate_threshold`
instead of the global setting; fill `SearchResult.relevance` with `cal.relevance(score)`; drop results below
`SearchRequest.min_relevance`. `relevance()` is a pure, vectorised function of the cosine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.config import MODEL_REPOSITORY
from server.core.durable import write_atomic
from server.embedding.contract import MODEL_NAME

CALIBRATION_FILE = "calibration.json"
FORMAT = 1


def relevance(cosine: float | np.ndarray, xs: np.ndarray, ys: np.ndarray) -> float | np.ndarray:
    """Probability of relevance: the isotonic fit, linear between its points, constant beyond its ends."""
    out = np.interp(cosine, xs, ys)
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class Calibration:
    model_version: str
    duplicate_threshold: float
    relevance_x: np.ndarray
    relevance_y: np.ndarray
    raw: dict  # the whole file, for reporting (precision, recall, ece, provenance)

    def relevance(self, cosine: float | np.ndarray) -> float | np.ndarray:
        return relevance(cosine, self.relevance_x, self.relevance_y)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown calibration format {data.get('format')!r} (expected {FORMAT})")
        xs = np.asarray(data["relevance"]["x"], dtype=np.float64)
        ys = np.asarray(data["relevance"]["y"], dtype=np.float64)
        if xs.ndim != 1 or xs.shape != ys.shape or len(xs) < 1:
            raise ValueError("relevance.x and relevance.y must be equally long, non-empty lists")
        if np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0) or ys.min() < 0 or ys.max() > 1:
            raise ValueError("relevance must be non-decreasing probabilities over increasing cosines")
        threshold = float(data["duplicate"]["threshold"])
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"duplicate threshold {threshold} is not a cosine")
        return cls(str(data["model_version"]), threshold, xs, ys, data)


def calibration_path(version: str, repository: Path = MODEL_REPOSITORY, model_name: str = MODEL_NAME) -> Path:
    return repository / model_name / str(version) / CALIBRATION_FILE


def load_calibration(version: str, repository: Path = MODEL_REPOSITORY,
                     model_name: str = MODEL_NAME) -> Calibration | None:
    """The version's calibration, or None when it has none (a version published without evaluation)."""
    path = calibration_path(version, repository, model_name)
    if not path.exists():
        return None
    return Calibration.from_dict(json.loads(path.read_text()))


def save_calibration(data: dict, version: str, repository: Path = MODEL_REPOSITORY,
                     model_name: str = MODEL_NAME) -> Path:
    """Validate and write atomically (Triton ignores the extra file in the version directory)."""
    Calibration.from_dict(data)
    path = calibration_path(version, repository, model_name)
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
    return path
