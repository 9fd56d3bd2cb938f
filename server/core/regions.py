"""Regions embedded with every indexed image besides the whole image (issue 16).

A query that is a crop of an indexed picture matches one of its regions far better than the whole picture
(held-out crops keeping half the area, pretrained encoder: P@1 0.934 -> 0.99; benchmarks/results/quality.md).
Four corners and the centre at half the area, and the centre quarter (a crop box over the middle of a picture,
the common "search this object" gesture). Normalized x_min, y_min, x_max, y_max. Shared by the indexing path
(server/embedding/imaging.py: region_views), the stores that keep region rows and the offline evaluation, which
scores as the stores do (`best_match`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np

Score = TypeVar("Score", float, np.ndarray)

_HALF = 0.7071  # side of a square region holding half the area

# A region match scores its cosine minus this, so an image whose whole picture matches nearly as well wins:
# without it a downscaled or blurred copy (and a same-category query) sometimes matched a region of another
# picture better (held-out set: downscale-40 P@1 0.959 -> 0.942, Tux Paint category mAP@10 0.391 -> 0.378);
# with 0.05 both are back (0.957, 0.390) while crops keep nearly all the gain (crop-50 0.934 -> 0.988).
REGION_SCORE_PENALTY = 0.05

REGION_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, _HALF, _HALF),
    (1 - _HALF, 0.0, 1.0, _HALF),
    (0.0, 1 - _HALF, _HALF, 1.0),
    (1 - _HALF, 1 - _HALF, 1.0, 1.0),
    ((1 - _HALF) / 2, (1 - _HALF) / 2, (1 + _HALF) / 2, (1 + _HALF) / 2),
    (0.25, 0.25, 0.75, 0.75),
)


def region_score(cosine: Score) -> Score:
    """What a region match counts for when an image is ranked: its cosine minus the penalty."""
    return cosine - REGION_SCORE_PENALTY


def best_match(whole: np.ndarray, regions: Iterable[np.ndarray]) -> np.ndarray:
    """An image's score as the stores rank it: the best of its whole-image cosine and its regions' scores (each
    array of `regions`: the cosines of one region view, shaped like `whole`)."""
    best = np.array(whole, dtype=np.float32, copy=True)
    for cosines in regions:
        np.maximum(best, region_score(cosines), out=best)
    return best


def cell_overlap(lo: float, hi: float, cells: int) -> np.ndarray:
    """[cells]: how much of the interval [lo, hi] of [0, 1] falls in each of `cells` equal cells (lengths in units
    of [0, 1]). Area pooling over a grid, whether of a box (below) or of a shrunk thumbnail (server/embedding/
    signature.py), is the outer product of two of these."""
    edges = np.arange(cells + 1) / cells
    return np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0.0, None)


def region_pooling_weights(cells: int) -> np.ndarray:
    """[cells * cells, R]: each REGION_BOXES box's share of each cell of a cells x cells feature map (area overlap,
    normalised per box), so a MatMul with the flattened map average-pools exactly the box."""
    columns = []
    for x_min, y_min, x_max, y_max in REGION_BOXES:
        weight = np.outer(cell_overlap(y_min, y_max, cells), cell_overlap(x_min, x_max, cells))  # [y, x]
        columns.append((weight / weight.sum()).reshape(-1))
    return np.stack(columns, axis=1).astype(np.float32)
