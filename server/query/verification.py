"""Copy verification: candidates that tie with the best on the embedding are told apart by their pixels.

The embedding ranks an edited copy's source and the source's look-alikes (the same emoji with other eyebrows, the
next clock face, an arrow's mirror image) within a few hundredths; their pixel signatures (server/embedding/
signature.py) tell which one the copy was made from. Every candidate within MARGIN of the best score gains up to
WEIGHT in proportion to how far its signature's correlation with the query's exceeds THRESHOLD. The mirrored query
counts too, MIRROR_PENALTY lower, so a flipped copy still finds its source while an unflipped copy of an image
whose mirror image is also indexed prefers the unflipped one. A verified score is capped at 1.

The constants were chosen on the team's train split (copy P@1, mean over the edits) and only then measured on
the held-out domains (docs/QUALITY.md, 'Copy verification'). Signatures live beside the originals, by content
hash (server/store/signatures.py); a candidate without one (indexed before signatures existed) is not
verified. Verification only re-scores candidates the store returned: it never adds an image to a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from server.embedding.signature import SIGNATURE_BYTES, as_unit, mirrored
from server.store.base import Candidate
from server.store.signatures import SignatureStore

MARGIN = 0.05
THRESHOLD = 0.5
WEIGHT = 0.1
MIRROR_PENALTY = 0.05
MAX_VERIFIED = 10  # candidates read per query at most (one small file each)


def bonuses(query: np.ndarray, signatures: np.ndarray) -> np.ndarray:
    """int8 query signature and int8 [M, SIGNATURE_BYTES] candidate signatures -> each candidate's score gain."""
    rows = as_unit(signatures)
    straight = rows @ as_unit(query[None])[0]
    flipped = rows @ as_unit(mirrored(query[None]))[0] - MIRROR_PENALTY
    agreement = np.maximum(straight, flipped)
    return WEIGHT * np.clip((agreement - THRESHOLD) / (1.0 - THRESHOLD), 0.0, None)


@dataclass(frozen=True)
class Verifier:
    signatures: SignatureStore

    def read(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """The well-formed signatures of `digests` that exist."""
        return {d: s for d, s in self.signatures.read(digests).items() if len(s) == SIGNATURE_BYTES}

    def rescore(self, candidates: list[Candidate], query: np.ndarray | None) -> list[Candidate]:
        """`candidates` best first -> the same candidates best first after verification."""
        if query is None or not candidates:
            return candidates
        best = candidates[0].score
        near = [c for c in candidates[:MAX_VERIFIED] if c.score >= best - MARGIN]
        found = self.read([c.content_hash for c in near])
        checked = [c for c in near if c.content_hash in found]
        if not checked:
            return candidates
        gains = bonuses(query, np.stack([found[c.content_hash] for c in checked]))
        gain = {c.image_id: float(g) for c, g in zip(checked, gains, strict=True) if g > 0}
        if not gain:
            return candidates
        fused = sorted(candidates, key=lambda c: -(c.score + gain.get(c.image_id, 0.0)))  # stable: ties keep order
        return [replace(c, score=min(1.0, c.score + gain[c.image_id])) if c.image_id in gain else c for c in fused]
