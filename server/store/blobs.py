"""Content-addressed store of the original image bytes, so a new encoder version can re-embed every image.

Blobs are named by the SHA-256 of their bytes (the content hash every store keeps) under a root given as a
path or a URL (`s3://bucket/prefix`, anything fsspec knows), so several stateless gateways can share it. On
a local disk a blob is written to a temporary name, fsync'd and renamed: complete or absent, and durable
before its image is acknowledged. Object stores give the same guarantee per PUT. Equal uploads share one blob.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec

from server.core.durable import write_atomic


class BlobStore:
    def __init__(self, root: Path | str, durable: bool = True) -> None:
        """`durable=False` (derived data that can be recomputed): a local write is still atomic (temporary name,
        rename) but not fsync'd."""
        self.url, self.durable = str(root), durable
        self.fs, path = fsspec.core.url_to_fs(str(root))
        self.local = "file" in self.fs.protocol
        self.root = path.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def derived(self, name: str) -> BlobStore:
        """A store of data derived from the originals (recomputable, so not fsync'd) under this root's `name`/."""
        return BlobStore(f"{self.url.rstrip('/')}/{name}", durable=False)

    def path(self, digest: str) -> str:
        return f"{self.root}/{digest[:2]}/{digest}"

    def put(self, digest: str, data: bytes) -> None:
        target = self.path(digest)
        if self.fs.exists(target):
            return
        if self.local:
            Path(target).parent.mkdir(exist_ok=True)
            write_atomic(Path(target), data, self.durable)
        else:
            self.fs.pipe_file(target, data)

    def get(self, digest: str) -> bytes:
        return self.fs.cat_file(self.path(digest))

    def put_many(self, blobs: list[tuple[str, bytes]]) -> None:
        for digest, data in blobs:
            self.put(digest, data)

    def get_present(self, digests: list[str]) -> dict[str, bytes]:
        """The blobs of `digests` that exist (missing ones are left out), in one call: an object store fetches
        them concurrently."""
        wanted = set(digests)
        if self.local:
            return _read_present_local({d: self.path(d) for d in wanted})
        found = self.fs.cat([self.path(d) for d in wanted], on_error="omit")
        return {name: data for path, data in found.items() if (name := path.rsplit("/", 1)[-1]) in wanted}


def _read_present_local(paths: dict[str, str]) -> dict[str, bytes]:
    """{key: path} -> {key: bytes} of the files that exist. All are opened and announced to the kernel
    (POSIX_FADV_WILLNEED) before the first is read, so the disk serves them concurrently: 30 evicted 1 KB files
    in 0.7 ms instead of 4.3 ms read one after the other, and fsspec's per-file overhead is gone when they are
    in the page cache (0.15 ms instead of 1.6 ms)."""
    fds = {}
    try:
        for key, path in paths.items():
            try:
                fds[key] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            os.posix_fadvise(fds[key], 0, 0, os.POSIX_FADV_WILLNEED)
        return {key: _read_fd(fd) for key, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = os.read(fd, size)
    while len(data) < size and (more := os.read(fd, size - len(data))):
        data += more
    return data
