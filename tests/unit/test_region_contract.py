"""The region side of the store contract, run against every backend that keeps region rows: an image scores its
best match, the whole image or one of its regions; private, deleted and excluded images are never reached through
a region, whatever an attacker on the port probes with; an image added without regions is found by its whole
vector and a wrong region count is refused; a catalog keeps the choice it was created with.

The embedded store here (exact and compact indexes); the real Milvus server in
tests/integration/test_store_contract_milvus.py (same tests)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.core.regions import REGION_SCORE_PENALTY
from server.store.base import EmbeddedImage, Visibility
from server.store.faiss import FaissVectorStore
from tests.unit.test_store_contract import STORED_ATOL, OpenStore, opener

DIM, R = 32, 4


def unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    v = rng.standard_normal((n or 1, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v if n else v[0]


def new(image_id: str, rng: np.random.Generator, visibility: Visibility = Visibility.PUBLIC, regions: bool = True
        ) -> EmbeddedImage:
    return EmbeddedImage(image_id, "owner", visibility, hashlib.sha256(image_id.encode()).hexdigest(), unit(rng),
                         unit(rng, R) if regions else None)


@pytest.fixture(params=[10_000, 50], ids=["faiss-flat", "faiss-compact"])
def open_region_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """open_region_store(regions=R): the catalog created, or opened again (a restart) with that setting."""
    yield from opener(lambda regions=R: FaissVectorStore(
        tmp_path / "faiss", DIM, "encoder/1", flat_threshold=request.param, rebuild_in_background=False,
        regions=regions))


def ids(hits: list) -> set[str]:
    return {h.image_id for h in hits}


def test_a_region_match_finds_its_image_first_scored_by_the_best_match(open_region_store):
    rng = np.random.default_rng(0)
    store = open_region_store()
    assert store.regions_per_image == R
    images = [new(f"img{i}", rng) for i in range(300)]
    store.add(images)
    for target in (images[5], images[123], images[299]):
        for r in range(R):
            hits = store.search(target.regions[r], 5)
            assert hits[0].image_id == target.image_id
            assert hits[0].score == pytest.approx(1.0 - REGION_SCORE_PENALTY, abs=0.02)
            # the candidate carries the WHOLE image's vector (duplicate collapse compares whole pictures)
            assert np.allclose(hits[0].vector, target.vector, atol=STORED_ATOL)
        whole = store.search(target.vector, 1)[0]
        assert whole.image_id == target.image_id and whole.score == pytest.approx(1.0, abs=1e-3)
    # every image appears once, however many of its rows matched
    hits = store.search(images[7].regions[0], 300)
    assert len(ids(hits)) == len(hits) == 300
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_private_and_deleted_images_are_never_reached_through_their_regions(open_region_store):
    """The attacker knows (or guesses) a private or deleted image's regions exactly and asks for every result."""
    rng = np.random.default_rng(1)
    store = open_region_store()
    public = [new(f"pub{i}", rng) for i in range(40)]
    private = [new(f"priv{i}", rng, Visibility.PRIVATE) for i in range(20)]
    doomed = [new(f"del{i}", rng) for i in range(20)]
    store.add(public + private + doomed)
    store.delete([d.image_id for d in doomed])
    hidden = {i.image_id for i in private + doomed}
    for secret in private[:10] + doomed[:10]:
        for probe in (*secret.regions, secret.vector):
            for k in (1, 1000):
                hits = store.search(probe, k)
                assert not hidden & ids(hits)
                assert len(hits) == min(k, len(public))
    # shown again: reachable through its regions again; hidden again: not
    store.set_visibility([private[0].image_id], Visibility.PUBLIC)
    assert store.search(private[0].regions[2], 1)[0].image_id == private[0].image_id
    store.set_visibility([private[0].image_id], Visibility.PRIVATE)
    assert private[0].image_id not in ids(store.search(private[0].regions[2], 1000))
    # a deleted image stays unreachable when someone tries to show it again
    assert store.set_visibility([doomed[0].image_id], Visibility.PUBLIC).not_found == [doomed[0].image_id]
    assert doomed[0].image_id not in ids(store.search(doomed[0].regions[1], 1000))
    # excluded (a search by ID): never returned through its own regions
    assert public[3].image_id not in ids(store.search(public[3].regions[0], 1000, exclude=public[3].image_id))


def test_images_without_regions_a_wrong_region_count_and_a_catalog_reopened_with_another_setting(
        open_region_store):
    """An image added without regions is found by its whole vector; a wrong region count is refused and leaves
    nothing; a catalog keeps the region choice it was created with when the setting changes."""
    rng = np.random.default_rng(4)
    store = open_region_store(regions=R)
    plain, kept = new("plain", rng, regions=False), new("kept", rng)
    store.add([new(f"img{i}", rng) for i in range(10)] + [plain, kept])
    assert store.search(plain.vector, 1)[0].image_id == "plain"
    wrong = EmbeddedImage("wrong", "owner", Visibility.PUBLIC, "h", unit(rng), unit(rng, R + 1))
    with pytest.raises(ValueError, match="region vectors per image"):
        store.add([wrong])
    assert store.get("wrong") is None and store.stats().rows == 12
    reopened = open_region_store(regions=0)  # the setting changed since: the catalog still has its regions
    assert reopened.regions_per_image == R
    assert reopened.search(kept.regions[1], 1)[0].image_id == "kept"
    rows = reopened.rows([reopened.get("kept")])
    np.testing.assert_allclose(rows[0].regions, kept.regions, atol=STORED_ATOL)
