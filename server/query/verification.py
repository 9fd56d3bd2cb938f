"""Copy verification: the candidates nearest the best on the embedding are told apart by their pixels.

The embedding ranks an edited copy's source and the source's look-alikes (the same emoji with other eyebrows, the
next clock face, an arrow's mirror image) within a few hundredths; their pixel signatures (server/embedding/
signature.py) tell which one the copy was made from. Each of the first DEPTH candidates within MARGIN of the best
score gains up to WEIGHT: the share of its signature's correlation with the query's above THRESHOLD, raised to
EXPONENT, so a near-exact match (a copy) gains far more than a look-alike. The mirrored query counts too, a
little lower, so a flipped copy still finds its source while an unflipped copy of an image whose mirror image is
also indexed prefers the unflipped one; so does the query turned by a few degrees either way (a rotated copy's
thumbnail no longer lines up with its source's). A crop finds its source by its thumbnail shrunk to the crop's
scale and slid over the candidate's (rule 5): the best window's correlation gains up to CROP_WEIGHT, and a
candidate gains the larger of the two. A copy with a caption band or bars added is the crop turned round: the
candidate squashed into a band of the query's rows or columns and slid along it gains the same way (rule 6). A
verified score is capped at 1.

DEPTH matters most: a downscaled copy of one sprite among many of its kind finds its source anywhere in the
embedding's first few dozen. The search fetches at least DEPTH candidates when it verifies; 30 is what a k=10
search fetches anyway, so the common request reads no more from the store (50 found more sprite copies but reads
2/3 more rows from disk at 10M images). A query of at most `small_side` pixels on its shorter side (an icon, or a
sprite shrunk further; the gateway reads the side from the header) is verified `small_depth` deep instead (rule 7):
its vaguer embedding ranks a sprite's source anywhere in the first hundred, and such queries are few.
docs/QUALITY.md, 'Copy verification', has how the constants were chosen and the held-out figures, in the order
they were looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from server.embedding.signature import SIGNATURE_BYTES, as_unit, banded, localised, mirrored, turned
from server.store.base import Candidate
from server.store.signatures import SignatureStore


@dataclass(frozen=True)
class Rule:
    """Which candidates verification looks at and what they can gain (evaluation/verification_grid.py compares
    rules offline with this same code)."""

    depth: int = 30  # candidates read per query at most (one small file each); = a k=10 search's first fetch
    margin: float = 0.3  # = weight: a candidate further below the best cannot overtake it
    weight: float = 0.3
    threshold: float = 0.5
    exponent: float = 3.0
    mirror_penalty: float = 0.05
    rotations: tuple[float, ...] = (-8.0, -4.0, 4.0, 8.0)  # degrees the query is also turned by
    rotation_penalty: float = 0.02
    # A crop query matches a window of its source at the crop's scale: the query is also shrunk to each of these
    # sides (cells of the 32 x 32 grid: a crop keeping 25% to 88% of its source's area) and slid over each
    # candidate; the best window's correlation gains up to crop_weight. () = whole-image agreement only (rule 4).
    crop_sides: tuple[int, ...] = (16, 18, 20, 22, 24, 26, 28, 30)
    crop_threshold: float = 0.8
    crop_weight: float = 0.2
    crop_exponent: float = 2.0
    # The other way round (rule 6): a caption band or letterbox bars added on one side leave the source squashed
    # into a band of the query's rows (or columns): each candidate is squashed to each of these heights (a band
    # of 7-50% of the copy's height: a caption on a small picture is a large share of its copy) and slid along
    # the query, and gains as a crop does. () = off (rule 5).
    band_sides: tuple[int, ...] = (16, 18, 20, 22, 24, 26, 28, 30)
    band_threshold: float | None = None  # None: crop_threshold
    # A query of few pixels (an icon or sprite, or one shrunk further) has a vaguer embedding: its source ranks
    # anywhere in the first hundred among its kind. Such a query is verified deeper; a larger one reads no more.
    small_side: int = 64  # a query whose shorter side has at most this many pixels (an icon) ... (0: none)
    small_depth: int = 100  # ... is verified this deep (rule 7)

    def depth_for(self, side: int | None) -> int:
        """Candidates verified for a query whose shorter side is `side` pixels (None: not known)."""
        return self.small_depth if side is not None and side <= self.small_side else self.depth

    def agreement(self, query: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        """int8 query signature and int8 [M, SIGNATURE_BYTES] candidate signatures -> each candidate's best
        correlation with the query as it is, mirrored or turned (a little lower for either)."""
        rows = as_unit(signatures)
        variants = [query[None].astype(np.float32), mirrored(query[None]).astype(np.float32)]
        if self.rotations:
            variants.append(turned(query, self.rotations))
        penalties = np.array([0.0, self.mirror_penalty, *(self.rotation_penalty for _ in self.rotations)])
        return (rows @ as_unit(np.concatenate(variants)).T - penalties).max(axis=1)

    def bonuses(self, query: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        """int8 query signature and int8 [M, SIGNATURE_BYTES] candidate signatures -> each candidate's gain."""
        gain = self.weight * _share(self.agreement(query, signatures), self.threshold)**self.exponent
        located = np.zeros(len(signatures), np.float32)  # the best window's or band's share above its threshold
        if self.crop_sides:
            located = _share(localised(query, signatures, self.crop_sides), self.crop_threshold)
        if self.band_sides:
            band_threshold = self.crop_threshold if self.band_threshold is None else self.band_threshold
            located = np.maximum(located, _share(banded(query, signatures, self.band_sides), band_threshold))
        return np.maximum(gain, self.crop_weight * located**self.crop_exponent)

    def near_best(self, scores: np.ndarray, side: int | None = None) -> list[int]:
        """Positions (scores best first) of the candidates looked at: the first `depth_for(side)` within `margin`
        of the best."""
        return [i for i in range(min(self.depth_for(side), len(scores))) if scores[i] >= scores[0] - self.margin]

    def verified_scores(self, scores: np.ndarray, query: np.ndarray, signatures: Sequence[np.ndarray | None],
                        side: int | None = None) -> np.ndarray:
        """Scores best first and the first candidates' signatures (None: none stored) -> every candidate's score
        with its gain (uncapped). The serving rule, which the offline evaluation applies too."""
        fused = np.asarray(scores, np.float64).copy()
        near = [i for i in self.near_best(fused, side) if i < len(signatures) and signatures[i] is not None]
        if near:
            fused[near] += self.bonuses(query, np.stack([signatures[i] for i in near]))
        return fused


def _share(correlation: np.ndarray, threshold: float) -> np.ndarray:
    """How far each correlation is above `threshold`, as a share of the way to 1."""
    return np.clip((correlation - threshold) / (1.0 - threshold), 0.0, 1.0)


SERVED = Rule()
DEPTH, MARGIN, WEIGHT = SERVED.depth, SERVED.margin, SERVED.weight


@dataclass(frozen=True)
class Verifier:
    signatures: SignatureStore
    rule: Rule = SERVED

    def read(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """The well-formed signatures of `digests` that exist."""
        return {d: s for d, s in self.signatures.read(digests).items() if len(s) == SIGNATURE_BYTES}

    def rescore(self, candidates: list[Candidate], query: np.ndarray | None, side: int | None = None
                ) -> list[Candidate]:
        """`candidates` best first -> the same candidates best first after verification (`side`: the query's
        shorter side in pixels, if known)."""
        if query is None or not candidates:
            return candidates
        scores = np.array([c.score for c in candidates])
        near = self.rule.near_best(scores, side)
        found = self.read([candidates[i].content_hash for i in near])  # only these can gain: one small read each
        fused = self.rule.verified_scores(
            scores, query, [found.get(c.content_hash) for c in candidates[:self.rule.depth_for(side)]], side)
        order = np.argsort(-fused, kind="stable")  # ties keep the store's order
        return [candidates[i] if fused[i] == scores[i] else replace(candidates[i], score=min(1.0, float(fused[i])))
                for i in order]
