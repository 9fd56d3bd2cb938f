"""Append-only rows with fsync: the write-ahead log of embeddings (row i = internal id i).

A catalog's log is `<name>.f16` (float16, 2 B per dimension): the disk copy the compact index re-ranks from and
the source every rebuild reads. Half the SSD of float32 and half the bytes each re-rank reads; the rounding moves
a cosine by ~1e-4 (benchmarks/results/index_side_by_side.md measures the recall). Catalogs written before keep a
`<name>.f32` log, which `convert` rewrites as float16 while the catalog serves and takes writes:

- rows are copied to `<name>.f16.partial` outside the store's write lock, only rows acknowledged when the copy
  began (under that lock the log holds exactly the acknowledged rows);
- under the lock the last rows are copied, the partial file is fsync'd and renamed to `<name>.f16`, the log
  switches to it, and the `.f32` file is unlinked.

A kill -9 before the rename leaves the `.f32` log authoritative and the next conversion resumes from the partial
file's rows; after it, `open_log` finds the `.f16` log complete and removes what is left of the old one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from server.core.durable import fsync_dir, replace_durably

READERS = 8  # concurrent row reads of one re-rank (an NVMe drive serves dozens at once)
CONVERT_CHUNK_ROWS = 16_384  # rows copied per step of a conversion
RETIRED_OPEN_S = 30.0  # a converted float32 file stays open this long for the reads begun before the switch
DTYPES = {".f16": np.dtype("<f2"), ".f32": np.dtype("<f4")}
log = logging.getLogger("store.vector_log")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(READERS, thread_name_prefix="row-reader")


@functools.cache
def _fp16(dim: int) -> faiss.ScalarQuantizer:
    return faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def as_float32(rows: np.ndarray) -> np.ndarray:
    """float16 rows as float32, exactly. FAISS' decoder, because numpy 1.26 converts halves one at a time: 8.1
    against 5.2 ms for the ~5,800 rows a region search at k = 60 reads (1.1 against 0.7 ns a value)."""
    if rows.dtype != DTYPES[".f16"] or len(rows) == 0:
        return rows.astype(np.float32, copy=False)
    out = np.empty(rows.shape, np.float32)
    _fp16(rows.shape[1]).decode_c(faiss.swig_ptr(rows.view(np.uint8)), faiss.swig_ptr(out), len(rows))
    return out


@dataclass(frozen=True)
class _LogFile:
    """One file of the log. Searches read lock-free, so a conversion swaps the whole object at once; a file
    switched away from stays open for RETIRED_OPEN_S (a read that began before the switch finishes on it, and
    its descriptor is not reused under that read), then closes, which frees the unlinked file's disk."""

    path: Path
    dtype: np.dtype
    writer: int
    reader: int

    @classmethod
    def open(cls, path: Path) -> _LogFile:
        writer = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        reader = os.open(path, os.O_RDONLY)
        # The re-rank's reader: random rows, so no readahead (through a memory map each 5 KB row pulled in
        # ~128 KB or more: 1.9 GB/s of disk reads at 10M rows, benchmarks/results/economics.md).
        os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_RANDOM)
        return cls(path, DTYPES[path.suffix], writer, reader)

    def close(self) -> None:
        os.close(self.writer)
        os.close(self.reader)


def open_log(data_dir: Path, name: str, dim: int) -> VectorLog:
    """The catalog's log `name`: float16 unless an unconverted float32 log is there (then `convert` it)."""
    new, old = data_dir / f"{name}.f16", data_dir / f"{name}.f32"
    if new.exists():  # a conversion finished; a kill -9 may have left the old log or a partial file behind
        for stale in (old, new.with_name(new.name + ".partial")):
            stale.unlink(missing_ok=True)
        fsync_dir(data_dir)
    return VectorLog(old if old.exists() else new, dim)


class VectorLog:
    def __init__(self, path: Path, dim: int) -> None:
        """`path`'s suffix names the row type: `.f16` or `.f32`."""
        self.dim = dim
        self._file = _LogFile.open(path)
        self._retired: list[_LogFile] = []
        self._retired_lock = threading.Lock()
        self._closed = False  # set under the write lock: a conversion running in the background stops

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def dtype(self) -> np.dtype:
        return self._file.dtype

    def _row_bytes(self, file: _LogFile | None = None) -> int:
        return self.dim * (file or self._file).dtype.itemsize

    def rows(self) -> int:
        return os.fstat(self._file.writer).st_size // self._row_bytes()

    def truncate(self, rows: int) -> None:
        os.ftruncate(self._file.writer, rows * self._row_bytes())

    def append(self, vectors: np.ndarray) -> None:
        data = np.ascontiguousarray(vectors, dtype=self.dtype).tobytes()
        written = 0
        while written < len(data):
            written += os.write(self._file.writer, data[written:])
        os.fsync(self._file.writer)

    def view(self) -> np.ndarray:
        """All rows, memory-mapped (read-only), in the log's row type: convert what you take."""
        file, rows = self._file, self.rows()
        if rows == 0:
            return np.empty((0, self.dim), file.dtype)
        return np.memmap(file.path, dtype=file.dtype, mode="r", shape=(rows, self.dim))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim]: these rows, each run of consecutive rows (an image's region rows often come
        together) read with one pread of exactly its bytes. Many runs are read by READERS threads at once (preadv
        releases the GIL), so an SSD serves them in parallel."""
        file = self._file
        out = np.empty((len(rows), self.dim), file.dtype)
        if len(rows) == 0:  # (every candidate under a search's floor)
            return as_float32(out)
        buffer, size = memoryview(out).cast("B"), self._row_bytes(file)
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)
        runs = list(zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], rows[starts].tolist(), strict=True))

        def read(part: list[tuple[int, int, int]]) -> None:
            for first, stop, row in part:
                os.preadv(file.reader, [buffer[first * size:stop * size]], row * size)

        if len(runs) < 2 * READERS:
            read(runs)
        else:
            list(_pool().map(read, [runs[i::READERS] for i in range(READERS)]))
        return as_float32(out)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.view()[start:stop], dtype=np.float32)  # a copy: replay, not the query path

    @property
    def converted(self) -> bool:
        return self.dtype == DTYPES[".f16"]

    def convert(self, write_lock: threading.Lock) -> None:
        """Rewrite a float32 log as float16 while it serves (module docstring); `write_lock` is the lock every
        append and truncate of this log is made under."""
        if self.converted:
            return
        target = self.path.with_suffix(".f16")
        partial = target.with_name(target.name + ".partial")
        row_bytes = self.dim * DTYPES[target.suffix].itemsize
        done = partial.stat().st_size // row_bytes if partial.exists() else 0
        with open(partial, "ab") as out:
            out.truncate(min(done, self.rows()) * row_bytes)  # a torn last row of a killed conversion
            done = min(done, self.rows())
            log.info("converting %s to float16 from row %d of %d", self.path.name, done, self.rows())
            while True:
                with write_lock:
                    if self._closed:
                        return
                    acknowledged = self.rows()
                    if acknowledged - done <= CONVERT_CHUNK_ROWS:  # the rest, then the switch, under the lock
                        self._copy(out, done, acknowledged)
                        self._switch(out, partial, target)
                        return
                stop = min(acknowledged, done + CONVERT_CHUNK_ROWS)
                self._copy(out, done, stop)
                done = stop

    def _copy(self, out: BinaryIO, start: int, stop: int) -> None:
        out.write(np.ascontiguousarray(self.view()[start:stop], dtype=DTYPES[".f16"]).tobytes())

    def _switch(self, out: BinaryIO, partial: Path, target: Path) -> None:
        out.flush()
        replace_durably(partial, target)
        with self._retired_lock:
            old, self._file = self._file, _LogFile.open(target)
            self._retired.append(old)
        old.path.unlink()
        fsync_dir(target.parent)
        timer = threading.Timer(RETIRED_OPEN_S, self._close_retired, args=(old,))
        timer.daemon = True
        timer.start()
        log.info("converted %s: %d rows", target.name, self.rows())

    def _close_retired(self, file: _LogFile) -> None:
        with self._retired_lock:
            if file in self._retired:
                self._retired.remove(file)
                file.close()

    def close(self) -> None:
        """Call under the write lock given to `convert`."""
        self._closed = True
        with self._retired_lock:
            for file in (self._file, *self._retired):
                with contextlib.suppress(OSError):
                    file.close()
            self._retired.clear()


def convert_logs(logs: list[VectorLog], write_lock: threading.Lock, in_background: bool) -> None:
    """Convert a catalog's float32 logs to float16, one after the other, on a thread of their own unless told."""
    pending = [vector_log for vector_log in logs if not vector_log.converted]
    if not pending:
        return

    def run() -> None:
        for vector_log in pending:
            vector_log.convert(write_lock)

    if in_background:
        threading.Thread(target=run, daemon=True, name="log-conversion").start()
    else:
        run()
