"""Pixel signatures: what a copy keeps that an embedding throws away.

The encoder's embedding is built to be invariant to detail: two emoji that differ by their eyebrows, an arrow and
its mirror, one clock face and the next embed within a few hundredths of each other, so a JPEG or downscaled copy
of one may rank the other first. A copy still matches its source pixel for pixel at low resolution. The signature
is the whole-image view's luminance averaged to SIDE x SIDE cells, centred and scaled to unit norm: its inner
product with another is the normalised correlation of the two thumbnails, unchanged by brightness and contrast
(grayscale, JPEG, downscaling) and spoiled by crops, rotations and overlays only where they touch.

Stored as int8 (SIGNATURE_BYTES per image, on disk: server/query/verification.py reads the few it needs).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import scipy.fft

from server.core.regions import cell_overlap
from server.embedding.contract import INPUT_SIZE

SIDE = 32  # cells per side: 7 x 7 input pixels each
SIGNATURE_BYTES = SIDE * SIDE
_FLAT_VARIANCE = 4.0  # int8 units^2: a window whose cells vary by less than ~2/127 of the image's range is blank
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def pixel_signatures(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 224, 224, 3] encoder inputs -> int8 [N, SIGNATURE_BYTES]. A flat image's signature is all zeros
    (it correlates with nothing)."""
    cell = INPUT_SIZE // SIDE
    luma = pixels.astype(np.float32) @ _LUMA
    small = luma.reshape(len(pixels), SIDE, cell, SIDE, cell).mean(axis=(2, 4)).reshape(len(pixels), -1)
    small -= small.mean(axis=1, keepdims=True)
    peak = np.abs(small).max(axis=1, keepdims=True)
    peak[peak == 0] = 1.0
    return np.round(small * (127.0 / peak)).astype(np.int8)


def as_unit(signatures: np.ndarray) -> np.ndarray:
    """int8 [N, SIGNATURE_BYTES] -> float32 rows of unit norm (zero rows stay zero)."""
    rows = signatures.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


def mirrored(signatures: np.ndarray) -> np.ndarray:
    """The signatures of the left-right mirrored images."""
    return signatures.reshape(len(signatures), SIDE, SIDE)[:, :, ::-1].reshape(len(signatures), -1)


def rotated(signatures: np.ndarray, degrees: float) -> np.ndarray:
    """float32 [N, SIGNATURE_BYTES]: the signatures of the images turned by `degrees` about their centre
    (bilinear; cells turned in from outside are 0, the mean). At 32 x 32 this is close enough to turning the
    picture itself: a copy turned by 8 degrees correlates with its source turned back (server/query/
    verification.py tries a few angles)."""
    taps, weights = _rotation_taps(float(degrees))
    rows = signatures.reshape(len(signatures), -1).astype(np.float32)
    return np.einsum("nkc,kc->nc", rows[:, taps], weights)


def turned(signature: np.ndarray, angles: tuple[float, ...]) -> np.ndarray:
    """One signature turned by each of `angles` (degrees) -> float32 [len(angles), SIGNATURE_BYTES], in one
    gather (the query side of copy verification: a fraction of a millisecond matters there)."""
    taps, weights = _stacked_taps(tuple(float(a) for a in angles))
    return np.einsum("akc,akc->ac", signature.reshape(-1).astype(np.float32)[taps], weights)


def localised(query: np.ndarray, signatures: np.ndarray, sides: tuple[int, ...]) -> np.ndarray:
    """int8 query signature and int8 [M, SIGNATURE_BYTES] signatures -> float32 [M]: for each signature, the best
    normalised correlation of the query's thumbnail shrunk to w x w cells (each w of `sides`) with any w x w window
    of it. A crop keeps its source's pixels at a smaller scale and somewhere inside it: shrunk to the crop's share
    of the source's side, the query lines up with the window it was cut from (server/query/verification.py).
    Correlations by FFT over the 32 x 32 grid (windows that would wrap around are dropped); a window too flat to
    correlate (a blank background) scores -1."""
    grid = signatures.reshape(len(signatures), SIDE, SIDE).astype(np.float32)
    thumbs = _thumbnails(query, sides)
    sums = scipy.fft.irfft2(np.conj(scipy.fft.rfft2(thumbs))[:, None] * scipy.fft.rfft2(grid)[None], s=(SIDE, SIDE))
    total, squares = _integral(grid), _integral(grid * grid)
    best = np.full(len(grid), -1.0, np.float32)
    for k, w in enumerate(sides):
        n = SIDE - w + 1
        s1, s2 = _windows(total, w, n), _windows(squares, w, n)
        spread = s2 - s1 * s1 / (w * w)  # w^2 x the window's variance
        ncc = np.where(spread > w * w * _FLAT_VARIANCE, sums[k, :, :n, :n] / np.sqrt(np.maximum(spread, 1e-6)), -1.0)
        best = np.maximum(best, ncc.reshape(len(grid), -1).max(axis=1))
    return best


def banded(query: np.ndarray, signatures: np.ndarray, sides: tuple[int, ...]) -> np.ndarray:
    """int8 query signature and int8 [M, SIGNATURE_BYTES] signatures -> float32 [M]: for each signature, the best
    normalised correlation of it squashed to h of the SIDE rows (or columns), each h of `sides`, with any band of h
    rows (columns) of the query. A caption band or letterbox bars grow the canvas on one side, and the whole-image
    view squashes it back to a square: the source then fills the query's width and a share of its height
    (server/query/verification.py). A query band too flat to correlate scores -1."""
    query_grid = query.reshape(SIDE, SIDE).astype(np.float32)
    grids = signatures.reshape(len(signatures), SIDE, SIDE).astype(np.float32)
    best = np.full(len(grids), -1.0, np.float32)
    for q, g in ((query_grid, grids), (query_grid.T, grids.transpose(0, 2, 1))):  # bands above / below, beside
        for h in sides:
            small = (_shrink_matrices((h,))[0][:h] @ g).reshape(len(g), -1)  # [M, h x SIDE]
            small -= small.mean(axis=1, keepdims=True)
            small /= np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-6)
            bands = np.lib.stride_tricks.sliding_window_view(q, h, axis=0).transpose(0, 2, 1).reshape(-1, h * SIDE)
            bands = bands - bands.mean(axis=1, keepdims=True)  # [offsets, h x SIDE]
            spread = (bands * bands).sum(axis=1)
            ncc = (small @ bands.T) / np.sqrt(np.maximum(spread, 1e-6))
            ncc[:, spread <= h * SIDE * _FLAT_VARIANCE] = -1.0
            best = np.maximum(best, ncc.max(axis=1))
    return best


def _thumbnails(query: np.ndarray, sides: tuple[int, ...]) -> np.ndarray:
    """float32 [len(sides), SIDE, SIDE]: the query shrunk to each w x w (area averaging) in the top-left corner,
    centred, unit norm, zeros elsewhere."""
    shrink = _shrink_matrices(tuple(sides))
    thumbs = shrink @ query.reshape(SIDE, SIDE).astype(np.float32) @ shrink.transpose(0, 2, 1)
    for k, w in enumerate(sides):
        thumbs[k, :w, :w] -= thumbs[k, :w, :w].mean()
    norms = np.linalg.norm(thumbs.reshape(len(sides), -1), axis=1)
    norms[norms == 0] = 1.0
    return thumbs / norms[:, None, None]


@cache
def _shrink_matrices(sides: tuple[int, ...]) -> np.ndarray:
    """[len(sides), SIDE, SIDE]: row r < w of matrix k holds output cell r's area share of each input cell."""
    out = np.zeros((len(sides), SIDE, SIDE), np.float32)
    for k, w in enumerate(sides):
        for r in range(w):
            out[k, r] = cell_overlap(r / w, (r + 1) / w, SIDE) * w  # shares of an output cell of width 1 / w
    return out


def _integral(grid: np.ndarray) -> np.ndarray:
    out = np.zeros((len(grid), SIDE + 1, SIDE + 1), np.float32)
    out[:, 1:, 1:] = grid.cumsum(axis=1).cumsum(axis=2)
    return out


def _windows(integral: np.ndarray, w: int, n: int) -> np.ndarray:
    """The sums of every w x w window (n x n of them) from an integral image."""
    return integral[:, w:, w:] - integral[:, :n, w:] - integral[:, w:, :n] + integral[:, :n, :n]


@cache
def _stacked_taps(angles: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [_rotation_taps(a) for a in angles]
    return np.stack([t for t, _ in pairs]), np.stack([w for _, w in pairs])


@cache
def _rotation_taps(degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """For every output cell, the 4 source cells and bilinear weights of a rotation by `degrees`."""
    centre, theta = (SIDE - 1) / 2.0, np.deg2rad(degrees)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64) - centre
    sy = np.cos(theta) * y - np.sin(theta) * x + centre  # where each output cell comes from
    sx = np.sin(theta) * y + np.cos(theta) * x + centre
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0
    taps, weights = [], []
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < SIDE) & (xx >= 0) & (xx < SIDE)
        taps.append(np.where(inside, yy * SIDE + xx, 0).ravel())
        weights.append(np.where(inside, w, 0.0).ravel().astype(np.float32))
    return np.stack(taps), np.stack(weights)
