"""Pixel signatures by content hash (server/embedding/signature.py makes them; server/query/verification.py reads
them), beside the originals: BlobStore.derived(SIGNATURES). A signature depends on the image's pixels only, not on
the model version, so every version and every gateway shares it. Derived data: written atomically but not fsync'd;
one lost to a power cut only leaves its image unverified."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.store.blobs import BlobStore

SIGNATURES = "signatures"


class SignatureStore:
    def __init__(self, originals: BlobStore) -> None:
        self.blobs = originals.derived(SIGNATURES)

    def write(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """(content hash, int8 signature) pairs; an existing signature is kept (it is the same)."""
        self.blobs.put_many([(digest, np.asarray(sig, np.int8).tobytes()) for digest, sig in items])

    def read(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """int8 signatures of the hashes that have one."""
        present = self.blobs.get_present(list(digests))  # de-duplicated there
        return {d: np.frombuffer(b, np.int8) for d, b in present.items()}
