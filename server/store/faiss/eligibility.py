"""Privacy inside the ANN search: a bitmap of the internal ids that may be returned (public and not deleted).

FAISS reads the bitmap through an `IDSelectorBitmap` without copying, so k eligible results come back whenever
k eligible images exist. A bit is updated before a hide/delete is acknowledged, so every search that starts
after the acknowledgement honours it.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np


class Eligibility:
    """Bitmap over internal ids (bit i set = id i may be returned). FAISS reads it without copying."""

    def __init__(self) -> None:
        self._bits = np.zeros(1024, dtype=np.uint8)
        self._size = 0  # ids [0, size) are known
        self._count = 0
        self._lock = threading.Lock()

    def set(self, internal_id: int, eligible: bool) -> None:
        with self._lock:
            if internal_id >= self._size:
                self._grow(internal_id + 1)
            byte, mask = internal_id >> 3, np.uint8(1 << (internal_id & 7))
            was = bool(self._bits[byte] & mask)
            if eligible and not was:
                self._bits[byte] |= mask
                self._count += 1
            elif was and not eligible:
                self._bits[byte] &= ~mask
                self._count -= 1

    def _grow(self, size: int) -> None:
        needed = (size + 7) // 8
        if needed > len(self._bits):
            # A new array: searches in flight keep reading the old one (ids they can't see yet anyway).
            bigger = np.zeros(max(needed, 2 * len(self._bits)), dtype=np.uint8)
            bigger[: len(self._bits)] = self._bits
            self._bits = bigger
        self._size = size

    @property
    def count(self) -> int:
        return self._count

    def is_eligible(self, internal_id: int) -> bool:
        return 0 <= internal_id < self._size and bool(self._bits[internal_id >> 3] & (1 << (internal_id & 7)))

    def snapshot(self, exclude: int | None = None) -> tuple[faiss.IDSelector, np.ndarray, int]:
        """A FAISS selector over a copy of the bitmap and the exact number of ids it accepts, taken together.

        A copy, not the live array: with the live array, an image made public after the count was read could
        take the place of one that was public all along when k >= the count (issue 17). The copy is size/8
        bytes (1.25 MB at 10M images). Keep the returned array alive while the search runs."""
        with self._lock:
            size, count = self._size, self._count
            bits = self._bits[: (size + 7) // 8].copy()
        if exclude is not None and 0 <= exclude < size and bits[exclude >> 3] & (1 << (exclude & 7)):
            bits[exclude >> 3] &= np.uint8(~(1 << (exclude & 7)) & 0xFF)
            count -= 1
        # FAISS's `n` is the bitmap's length in BYTES: it reads byte id>>3 for any id < 8n. Passing the id count
        # here let it read past the copy, and garbage bits there admitted private ids added after the last
        # eligible one.
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits, count

    def eligible_count(self, exclude: int | None = None) -> int:
        return self._count - (1 if exclude is not None and self.is_eligible(exclude) else 0)
