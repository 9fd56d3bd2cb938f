"""Regions embedded with every indexed image besides the whole image (issue 16).

A query that is a crop of an indexed picture matches one of its regions far better than the whole picture
(held-out crops keeping half the area, pretrained encoder: P@1 0.934 -> 0.99; benchmarks/results/quality.md).
Four corners and the centre at half the area, and the centre quarter (a crop box over the middle of a picture,
the common "search this object" gesture). Normalized x_min, y_min, x_max, y_max. Shared by the indexing path
(server/embedding/pipeline.py) and the stores that keep region rows.
"""

from __future__ import annotations

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
