"""Content-addressed store of the original image bytes, so a new encoder version can re-embed every image.

Files are named by the SHA-256 of their bytes (the content hash the catalog already keeps), written to a
temporary name, fsync'd and renamed: a blob is complete or absent, and durable before its image is
acknowledged. Equal uploads share one file.
"""

from __future__ import annotations

from pathlib import Path

from server.core.durable import write_atomic


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> None:
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            write_atomic(target, data)

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put_many(self, blobs: list[tuple[str, bytes]]) -> None:
        for digest, data in blobs:
            self.put(digest, data)
