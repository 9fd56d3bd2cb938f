"""Copy verification (server/query/verification.py) over real signature files: what it re-scores and what it
must never do (add a candidate, reorder beyond the tie margin, or break the descending order of scores)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.embedding.contract import INPUT_SIZE
from server.embedding.signature import SIGNATURE_BYTES, banded, localised, pixel_signatures
from server.query.verification import MARGIN, SERVED, WEIGHT, Rule, Verifier
from server.store.base import Candidate
from server.store.blobs import BlobStore
from server.store.signatures import SignatureStore


def _picture(seed: int) -> np.ndarray:
    """uint8 [224, 224, 3] with structure at every scale (smoothed noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (16, 16, 3)).astype(np.float32)
    fine = rng.integers(-40, 40, (INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
    return np.clip(np.kron(coarse, np.ones((14, 14, 1))) + fine, 0, 255).astype(np.uint8)


def _detail_changed(pixels: np.ndarray) -> np.ndarray:
    """A look-alike: the same picture with one detail (a 56 px square) painted over."""
    out = pixels.copy()
    out[84:140, 84:140] = 255 - out[84:140, 84:140]
    return out


@pytest.fixture
def verifier(tmp_path: Path) -> Verifier:
    return Verifier(SignatureStore(BlobStore(tmp_path / "blobs")))


def _candidate(image_id: str, score: float) -> Candidate:
    return Candidate(image_id, score, f"hash-{image_id}", np.zeros(4, np.float32))


def test_signatures_ignore_brightness_and_contrast_but_not_a_changed_detail() -> None:
    source = _picture(1)
    dimmer = (source.astype(np.float32) * 0.6 + 30).astype(np.uint8)
    sig = pixel_signatures(np.stack([source, dimmer, _detail_changed(source), _picture(2)]))
    assert sig.shape == (4, SIGNATURE_BYTES) and sig.dtype == np.int8
    gains = SERVED.bonuses(sig[0], sig[1:])
    assert gains[0] == pytest.approx(WEIGHT, rel=0.05)  # the same picture, dimmed: a full gain
    assert gains[0] > gains[1] > gains[2] == 0.0  # the look-alike gains less, an unrelated picture nothing
    assert not pixel_signatures(np.full((1, INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)).any()  # flat: all zero


def test_a_mirrored_copy_finds_its_source_but_an_unflipped_copy_prefers_the_unflipped_image() -> None:
    source = _picture(3)
    mirror = source[:, ::-1]
    sig = pixel_signatures(np.stack([source, mirror]))
    straight_first = SERVED.bonuses(sig[0], sig)  # query = the source itself: source vs its mirror image
    assert straight_first[0] > straight_first[1] > 0.0
    flipped_query = SERVED.bonuses(sig[1], sig[:1])  # a flipped copy, only the source indexed: still verified
    assert flipped_query[0] > 0.0


def test_a_rotated_copy_lines_up_with_its_source_turned_back() -> None:
    """A copy turned by 8 degrees (white corners, as an editor fills them) correlates with its source only once
    the query is turned back; the unturned query keeps preferring its own unturned image."""
    source = Image.fromarray(_picture(7))
    turned = np.asarray(source.rotate(8, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)))
    sig = pixel_signatures(np.stack([np.asarray(source), turned, _picture(8)]))
    still = Rule(rotations=())
    assert SERVED.agreement(sig[1], sig[:1])[0] > still.agreement(sig[1], sig[:1])[0] + 0.1
    assert SERVED.agreement(sig[1], sig[:1])[0] > 0.8 > SERVED.agreement(sig[1], sig[2:])[0]
    unturned_query = SERVED.agreement(sig[0], sig[:2])
    assert unturned_query[0] > unturned_query[1]


def test_the_copys_source_overtakes_a_look_alike_within_the_margin_only(verifier: Verifier) -> None:
    source, other = _picture(4), _picture(5)
    look_alike = _detail_changed(source)
    sig = pixel_signatures(np.stack([source, look_alike, other]))
    verifier.signatures.write([("hash-source", sig[0]), ("hash-look-alike", sig[1]), ("hash-other", sig[2])])
    copy = pixel_signatures(np.stack([np.clip(source.astype(np.int16) + 12, 0, 255).astype(np.uint8)]))[0]

    close = [_candidate("look-alike", 0.93), _candidate("source", 0.91), _candidate("other", 0.60)]
    ranked = verifier.rescore(close, copy)
    assert [c.image_id for c in ranked] == ["source", "look-alike", "other"]
    assert ranked[0].score > 0.91 and ranked[-1].score == 0.60  # gained; out of the margin: untouched
    assert all(a.score >= b.score for a, b in itertools.pairwise(ranked))  # still descending

    far = [_candidate("look-alike", 0.93), _candidate("source", 0.93 - MARGIN - 0.01)]
    assert [c.image_id for c in verifier.rescore(far, copy)] == ["look-alike", "source"]


def test_verification_never_adds_a_candidate_and_leaves_unsigned_ones_alone(verifier: Verifier) -> None:
    source = _picture(6)
    verifier.signatures.write([("hash-a", pixel_signatures(source[None])[0])])
    candidates = [_candidate("b", 0.95), _candidate("a", 0.94), _candidate("c", 0.94)]
    ranked = verifier.rescore(candidates, pixel_signatures(source[None])[0])
    assert {c.image_id for c in ranked} == {"a", "b", "c"} and len(ranked) == 3
    assert ranked[0].image_id == "a" and ranked[0].score <= 1.0
    assert {c.image_id: c.score for c in ranked[1:]} == {"b": 0.95, "c": 0.94}  # no signature: not verified
    assert verifier.rescore(candidates, None) == candidates
    assert verifier.rescore([], pixel_signatures(source[None])[0]) == []


def test_a_truncated_signature_file_is_ignored(verifier: Verifier) -> None:
    verifier.signatures.blobs.put("hash-x", b"\x01\x02")
    assert verifier.read(["hash-x", "hash-missing"]) == {}


def _smooth_picture(seed: int) -> np.ndarray:
    """uint8 [224, 224, 3]: smooth shapes, as photographs and drawings are at the signature's scale (a crop's
    place is not a whole number of cells, and a blocky picture decorrelates at a half-cell shift)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (10, 10, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC))


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The part of a picture in `box` (x0, y0, x1, y1 pixels), resized to the encoder's input as a query is."""
    return np.asarray(Image.fromarray(pixels).crop(box).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("box", [(37, 21, 195, 179), (56, 56, 168, 168), (0, 90, 130, 220)],
                         ids=["half-area-off-grid", "centre-quarter", "corner"])
def test_a_crop_lines_up_with_the_window_of_its_source_it_was_cut_from(box: tuple[int, int, int, int]) -> None:
    """A crop's thumbnail correlates with its source's only at the crop's scale and place: rule 5 finds it there,
    whole-image agreement (rule 4) does not, and neither finds it in another picture or a look-alike whose detail
    under the crop was changed."""
    source = _smooth_picture(9)
    changed = source.copy()
    changed[box[1]:box[3], box[0]:box[2]] = 255 - changed[box[1]:box[3], box[0]:box[2]]
    sig = pixel_signatures(np.stack([_crop(source, box), source, _smooth_picture(10), changed]))
    found = localised(sig[0], sig[1:], SERVED.crop_sides)
    assert found[0] > 0.9 > SERVED.crop_threshold > max(found[1:])
    gains = SERVED.bonuses(sig[0], sig[1:])
    assert gains[0] > 0.5 * SERVED.crop_weight and gains[1] == gains[2] == 0.0
    assert Rule(crop_sides=()).bonuses(sig[0], sig[1:2])[0] < 0.5 * gains[0]


def _banded(pixels: np.ndarray, side: str, share: float) -> np.ndarray:
    """The picture on a canvas grown by `share` of its height (width) on one side, the band dark with a light stripe
    (a caption), squashed back to the encoder's input as the whole-image view is."""
    h, w = pixels.shape[:2]
    vertical = side in ("top", "bottom")
    grow = int((h if vertical else w) * share)
    canvas = np.zeros((h + grow, w, 3) if vertical else (h, w + grow, 3), np.uint8)
    at = {"top": (grow, 0), "bottom": (0, 0), "left": (0, grow), "right": (0, 0)}[side]
    canvas[at[0]:at[0] + h, at[1]:at[1] + w] = pixels
    band = (slice(h, h + grow) if side == "bottom" else slice(0, grow)) if vertical else None
    if band is not None:
        canvas[band, w // 10:w // 2] = 230
    return np.asarray(Image.fromarray(canvas).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))


@pytest.mark.parametrize(("side", "share"), [("bottom", 0.2), ("top", 0.3), ("left", 0.15), ("right", 0.25)])
def test_a_copy_with_a_band_added_finds_its_source_squashed_into_the_query(side: str, share: float) -> None:
    """A caption band or bars grow the canvas on one side: the source fills the query's width and a share of its
    height. Band localisation finds it there; another picture does not pass the threshold, a look-alike with a
    changed detail (1/16 of it) gains far less, and the rule without bands gains less."""
    rule = replace(SERVED, band_sides=tuple(range(22, 31)))
    source = _smooth_picture(21)
    sig = pixel_signatures(np.stack([_banded(source, side, share), source, _smooth_picture(22),
                                     _detail_changed(source)]))
    found = banded(sig[0], sig[1:], rule.band_sides)
    assert found[0] > 0.95 and found[1] < rule.crop_threshold and found[0] - found[2] > 0.05, found
    gains = rule.bonuses(sig[0], sig[1:])
    assert gains[0] > 0.5 * rule.crop_weight and gains[1] == 0.0 and gains[0] > gains[2] + 0.05, gains
    assert replace(rule, band_sides=()).bonuses(sig[0], sig[1:2])[0] < 0.5 * gains[0]
    stricter = replace(rule, band_threshold=(rule.crop_threshold + found[0]) / 2)  # bands judged by their own
    assert 0.0 < stricter.bonuses(sig[0], sig[1:2])[0] < gains[0]
    assert replace(rule, band_threshold=0.999).bonuses(sig[0], sig[1:2])[0] < 0.5 * gains[0]  # as without bands


def test_a_blank_window_correlates_with_nothing() -> None:
    """A window without structure (a blank canvas, or the flat margin around a small picture) cannot vouch for a
    query: its correlation would be noise divided by nothing."""
    blank = np.zeros((1, SIGNATURE_BYTES), np.int8)
    query = pixel_signatures(_picture(11)[None])[0]
    assert localised(query, blank, SERVED.crop_sides)[0] == -1.0
    assert banded(np.zeros(SIGNATURE_BYTES, np.int8), query[None], (24, 28))[0] == -1.0  # a blank query band
    assert SERVED.bonuses(query, blank)[0] == 0.0


def test_a_crops_source_overtakes_the_picture_the_embedding_preferred(verifier: Verifier) -> None:
    source, other = _smooth_picture(12), _smooth_picture(13)
    sig = pixel_signatures(np.stack([source, other]))
    verifier.signatures.write([("hash-source", sig[0]), ("hash-other", sig[1])])
    crop = pixel_signatures(_crop(source, (40, 30, 198, 188))[None])[0]
    ranked = verifier.rescore([_candidate("other", 0.80), _candidate("source", 0.72)], crop)
    assert [c.image_id for c in ranked] == ["source", "other"] and ranked[1].score == 0.80


def test_a_small_query_is_verified_deeper_and_a_large_one_reads_no_more(verifier: Verifier) -> None:
    """A sprite shrunk to a few dozen pixels ranks its source anywhere in the first hundred: with the query's
    shorter side at or below `small_side`, verification reads `small_depth` candidates, else `depth`."""
    rule = replace(SERVED, depth=30, small_side=48, small_depth=100)
    source = _picture(11)
    others = [_picture(100 + n) for n in range(59)]
    sig = pixel_signatures(np.stack([source, *others]))
    verifier.signatures.write([(f"hash-o{n}", s) for n, s in enumerate(sig[1:])] + [("hash-source", sig[0])])
    candidates = [_candidate(f"o{n}", 0.90 - n * 0.001) for n in range(59)]
    candidates.insert(45, _candidate("source", 0.85))  # 46th: beyond 30, within 100 and the margin
    deep = Verifier(verifier.signatures, rule)
    assert deep.rescore(candidates, sig[0], side=29)[0].image_id == "source"
    assert deep.rescore(candidates, sig[0], side=48)[0].image_id == "source"
    assert deep.rescore(candidates, sig[0], side=49)[0].image_id == "o0"  # large: 30 read, the source not among them
    assert deep.rescore(candidates, sig[0])[0].image_id == "o0"  # side unknown (a search by ID): the usual depth
    assert [rule.depth_for(s) for s in (None, 1, 48, 49, 4000)] == [30, 100, 100, 30, 30]
    assert replace(rule, small_side=0).depth_for(1) == 30  # 0: no query is small
