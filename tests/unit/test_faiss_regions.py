"""Region rows of the embedded store (server/store/faiss/regions.py): an image scores its best match, the whole
image or one of its regions; private and deleted images are never reached through a region; region rows are as
durable as the image they belong to; a catalog keeps the choice it was created with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from server.core.regions import REGION_SCORE_PENALTY
from server.store.base import EmbeddedImage, Visibility
from server.store.faiss import FaissVectorStore
from server.store.faiss.regions import LOG_NAME

DIM, R = 32, 4


def unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    v = rng.standard_normal((n or 1, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v if n else v[0]


def new(image_id: str, rng: np.random.Generator, visibility: Visibility = Visibility.PUBLIC, regions: bool = True
        ) -> EmbeddedImage:
    return EmbeddedImage(image_id, "owner", visibility, hashlib.sha256(image_id.encode()).hexdigest(), unit(rng),
                    unit(rng, R) if regions else None)


def open_store(path: Path, regions: int = R, flat_threshold: int = 10_000) -> FaissVectorStore:
    return FaissVectorStore(path, DIM, "encoder/1", flat_threshold=flat_threshold, rebuild_in_background=False,
                            regions=regions)


@pytest.mark.parametrize("flat_threshold", [10_000, 100], ids=["flat", "ivf"])
def test_a_region_match_finds_its_image_first_scored_by_the_best_match(tmp_path, flat_threshold):
    rng = np.random.default_rng(0)
    store = open_store(tmp_path, flat_threshold=flat_threshold)
    images = [new(f"img{i}", rng) for i in range(300)]
    store.add(images)
    for target in (images[5], images[123], images[299]):
        for r in range(R):
            hits = store.search(target.regions[r], 5)
            assert hits[0].image_id == target.image_id
            assert hits[0].score == pytest.approx(1.0 - REGION_SCORE_PENALTY, abs=0.02)
            # the candidate carries the WHOLE image's vector (duplicate collapse compares whole pictures)
            assert np.allclose(hits[0].vector, target.vector, atol=1e-5)
        whole = store.search(target.vector, 1)[0]
        assert whole.image_id == target.image_id
    # every image appears once, however many of its rows matched
    hits = store.search(images[7].regions[0], 300)
    assert len({h.image_id for h in hits}) == len(hits) == 300
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("flat_threshold", [10_000, 50], ids=["flat", "compact"])
def test_private_and_deleted_images_are_never_reached_through_their_regions(tmp_path, flat_threshold):
    """The attacker knows (or guesses) a private image's region exactly and asks for every result, against
    exact search and against the compact index (codes in RAM, re-rank from the logs)."""
    rng = np.random.default_rng(1)
    store = open_store(tmp_path, flat_threshold=flat_threshold)
    public = [new(f"pub{i}", rng) for i in range(40)]
    private = [new(f"priv{i}", rng, Visibility.PRIVATE) for i in range(20)]
    doomed = [new(f"del{i}", rng) for i in range(20)]
    store.add(public + private + doomed)
    assert (store.stats().index_type == "Flat") == (flat_threshold > 80)
    store.delete([d.image_id for d in doomed])
    hidden = {i.image_id for i in private + doomed}
    for secret in private + doomed:
        for probe in (*secret.regions, secret.vector):
            for k in (1, 10, 1000):
                hits = store.search(probe, k)
                assert not hidden & {h.image_id for h in hits}
                assert len(hits) == min(k, len(public))
    # shown again: reachable through its regions again; hidden again: not
    store.set_visibility([private[0].image_id], Visibility.PUBLIC)
    assert store.search(private[0].regions[2], 1)[0].image_id == private[0].image_id
    store.set_visibility([private[0].image_id], Visibility.PRIVATE)
    assert private[0].image_id not in {h.image_id for h in store.search(private[0].regions[2], 1000)}
    # excluded (a search by ID): never returned through its own regions
    assert public[3].image_id not in {h.image_id for h in store.search(public[3].regions[0], 1000,
                                                                         exclude=public[3].image_id)}


def test_region_rows_survive_a_restart_and_unacknowledged_rows_are_dropped(tmp_path):
    rng = np.random.default_rng(2)
    store = open_store(tmp_path)
    images = [new(f"img{i}", rng) for i in range(30)]
    store.add(images[:20])
    store.snapshot()
    store.add(images[20:])  # after the snapshot: replayed from the log on start
    store.close()
    # a crash after the region rows were logged but before the records committed: rows of no image
    with open(tmp_path / LOG_NAME, "ab") as log:
        log.write(unit(rng, 2 * R).tobytes())
    reopened = open_store(tmp_path, regions=0)  # the catalog keeps regions whatever the setting says now
    assert reopened.regions_per_image == R
    for target in (images[3], images[25]):
        assert reopened.search(target.regions[1], 1)[0].image_id == target.image_id
    assert (tmp_path / LOG_NAME).stat().st_size == 30 * R * DIM * 4
    late = new("late", rng)
    reopened.add([late])
    assert reopened.search(late.regions[3], 1)[0].image_id == "late"
    reopened.close()


def test_a_catalog_created_without_regions_stays_without(tmp_path):
    rng = np.random.default_rng(3)
    store = open_store(tmp_path, regions=0)
    store.add([new("a", rng)])  # regions given, not kept
    store.close()
    reopened = open_store(tmp_path, regions=R)
    assert reopened.regions_per_image == 0
    assert not (tmp_path / LOG_NAME).exists()
    reopened.close()


def test_an_image_without_regions_is_found_by_its_whole_vector_and_a_wrong_region_count_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    store = open_store(tmp_path)
    plain = new("plain", rng, regions=False)
    store.add([new(f"img{i}", rng) for i in range(10)] + [plain])
    assert store.search(plain.vector, 1)[0].image_id == "plain"
    wrong = EmbeddedImage("wrong", "owner", Visibility.PUBLIC, "h", unit(rng), unit(rng, R + 1))
    with pytest.raises(ValueError, match="region vectors per image"):
        store.add([wrong])
    assert store.get("wrong") is None and store.stats().rows == 11
