"""Append-only float32 rows with fsync: the write-ahead log of embeddings (row i = internal id i)."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

READERS = 8  # concurrent row reads of one re-rank (an NVMe drive serves dozens at once)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(READERS, thread_name_prefix="row-reader")


class VectorLog:
    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = path, dim
        self._row_bytes = dim * 4
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the store's lifetime
        # The re-rank's reader: random rows, so no readahead (through a memory map each 5 KB row pulled in
        # ~128 KB or more: 1.9 GB/s of disk reads at 10M rows, benchmarks/results/economics.md).
        self._reader = os.open(path, os.O_RDONLY)
        os.posix_fadvise(self._reader, 0, 0, os.POSIX_FADV_RANDOM)

    def rows(self) -> int:
        return os.path.getsize(self.path) // self._row_bytes

    def truncate(self, rows: int) -> None:
        self._file.flush()
        os.truncate(self.path, rows * self._row_bytes)

    def append(self, vectors: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._file.flush()
        os.fsync(self._file.fileno())

    def view(self) -> np.ndarray:
        """All rows, memory-mapped (read-only)."""
        rows = self.rows()
        if rows == 0:
            return np.empty((0, self.dim), np.float32)
        return np.memmap(self.path, dtype="<f4", mode="r", shape=(rows, self.dim))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim]: these rows, each run of consecutive rows (an image's region rows often come
        together) read with one pread of exactly its bytes. Many runs are read by READERS threads at once (preadv
        releases the GIL), so an SSD serves them in parallel."""
        out = np.empty((len(rows), self.dim), np.float32)
        if len(rows) == 0:  # (every candidate under a search's floor)
            return out
        buffer, size = memoryview(out).cast("B"), self._row_bytes
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)
        runs = list(zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], rows[starts].tolist(), strict=True))

        def read(part: list[tuple[int, int, int]]) -> None:
            for first, stop, row in part:
                os.preadv(self._reader, [buffer[first * size:stop * size]], row * size)

        if len(runs) < 2 * READERS:
            read(runs)
        else:
            list(_pool().map(read, [runs[i::READERS] for i in range(READERS)]))
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.view()[start:stop], dtype=np.float32)

    def close(self) -> None:
        self._file.close()
        os.close(self._reader)
