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

from server.embedding.contract import INPUT_SIZE

SIDE = 32  # cells per side: 7 x 7 input pixels each
SIGNATURE_BYTES = SIDE * SIDE
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
