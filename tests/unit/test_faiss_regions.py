"""Region rows of the embedded store (server/store/faiss/regions.py): as durable as the image they belong to; a
catalog created without regions stays without. What every backend's region rows must do (best match, privacy):
tests/unit/test_region_contract.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.store.faiss import FaissVectorStore
from server.store.faiss.regions import LOG_NAME
from tests.unit.test_region_contract import DIM, R, new, unit


def open_store(path: Path, regions: int = R, flat_threshold: int = 10_000) -> FaissVectorStore:
    return FaissVectorStore(path, DIM, "encoder/1", flat_threshold=flat_threshold, rebuild_in_background=False,
                            regions=regions)


def test_region_rows_survive_a_restart_and_unacknowledged_rows_are_dropped(tmp_path):
    rng = np.random.default_rng(2)
    store = open_store(tmp_path)
    images = [new(f"img{i}", rng) for i in range(30)]
    store.add(images[:20])
    store.snapshot()
    store.add(images[20:])  # after the snapshot: replayed from the log on start
    store.close()
    # a crash after the region rows were logged but before the records committed: rows of no image
    with open(tmp_path / f"{LOG_NAME}.f16", "ab") as log:
        log.write(unit(rng, 2 * R).astype("<f2").tobytes())
    reopened = open_store(tmp_path, regions=0)  # the catalog keeps regions whatever the setting says now
    assert reopened.regions_per_image == R
    for target in (images[3], images[25]):
        assert reopened.search(target.regions[1], 1)[0].image_id == target.image_id
    assert (tmp_path / f"{LOG_NAME}.f16").stat().st_size == 30 * R * DIM * 2
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
    assert not list(tmp_path.glob(f"{LOG_NAME}.f*"))
    reopened.close()
