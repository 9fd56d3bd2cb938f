"""Data directories written before the compact index keep working: they serve at once, the background rebuild
converts their whole-image and region indexes, and a kill -9 during the conversion loses no acknowledged image
(the conversion starts again at the next start)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np

from server.core.regions import region_score
from server.store.base import EmbeddedImage, Visibility
from server.store.faiss import FaissVectorStore
from server.store.faiss.index import build_index
from server.store.faiss.params import ivf_params
from tests.unit.test_faiss_index import embedding_like

DIM, R, VERSION = 64, 3, "encoder/1"
ROOT = Path(__file__).resolve().parents[2]


def images(n: int, seed: int, prefix: str) -> list[EmbeddedImage]:
    rows = embedding_like(n * (1 + R), DIM, seed=seed).reshape(n, 1 + R, DIM)
    ids = [f"{prefix}{i}" for i in range(n)]
    return [EmbeddedImage(image_id, "owner", Visibility.PUBLIC, hashlib.sha256(image_id.encode()).hexdigest(),
                          rows[i, 0], rows[i, 1:]) for i, image_id in enumerate(ids)]


def legacy_catalog(path: Path, n: int) -> list[EmbeddedImage]:
    """A catalog as the earlier release left it: snapshots with exact float copies in RAM (`RFlat`)."""
    added = images(n, 0, "old")
    store = FaissVectorStore(path, DIM, VERSION, flat_threshold=10**9, regions=R)
    store.add(added)
    store.close()
    for log_name, snapshot in (("vectors.f32", "index.faiss"), ("regions.f32", "regions.faiss")):
        rows = np.fromfile(path / log_name, dtype=np.float32).reshape(-1, DIM)
        faiss.write_index(build_index(ivf_params(64, DIM), DIM, rows), str(path / snapshot))
    return added


def layouts(store: FaissVectorStore) -> tuple[str, str]:
    _, params = store.stats().index_type, store.stats().index_params
    return params["rerank"], params["regions_rerank"]


def found_first(store: FaissVectorStore, image: EmbeddedImage) -> bool:
    return store.search(image.vector, 1)[0].image_id == image.image_id


def test_an_earlier_catalog_serves_at_once_and_converts_in_the_background(tmp_path):
    added = legacy_catalog(tmp_path, 3_000)
    store = FaissVectorStore(tmp_path, DIM, VERSION, flat_threshold=1_000)
    try:
        assert all(found_first(store, i) for i in added[:50])  # serving while converting
        for _ in range(600):
            if layouts(store) == ("compact", "compact"):
                break
            time.sleep(0.1)
        assert layouts(store) == ("compact", "compact")
        assert all(found_first(store, i) for i in added[::30])
        # through the regions: the top result is the exact best match (whole image or best region, scored)
        whole = np.stack([i.vector for i in added])
        regions = np.stack([i.regions for i in added])
        probes = [i.regions[1] for i in added[::30]]
        exact = [added[int(np.argmax(np.maximum(whole @ q, region_score(regions @ q).max(axis=1))))].image_id
                 for q in probes]
        agree = np.mean([store.search(q, 1)[0].image_id == e for q, e in zip(probes, exact, strict=True)])
        assert agree >= 0.95, agree
    finally:
        store.close()


CHILD = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    from tests.unit.test_index_conversion import DIM, VERSION, images
    from server.store.faiss import FaissVectorStore
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    store = FaissVectorStore(Path(sys.argv[1]), DIM, VERSION, flat_threshold=1_000)  # starts the conversion
    for n, image in enumerate(images(400, 1, "new")):
        store.add([image])
        print(f"acknowledged {n}", flush=True)
""")


def test_kill_9_during_the_conversion_loses_no_acknowledged_image_and_the_conversion_resumes(tmp_path):
    legacy_catalog(tmp_path, 12_000)  # a conversion that lasts well beyond 20 adds, also on a fast host
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    seen, converting, acknowledged = [], False, -1
    assert child.stdout is not None
    for line in child.stdout:
        seen.append(line.strip())
        converting |= line.startswith("rebuilding index")
        if line.startswith("acknowledged"):
            acknowledged = int(line.split()[1])
        if converting and acknowledged >= 20:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert converting and acknowledged >= 20, seen[-5:]
    assert not any(line.startswith("index rebuilt") for line in seen)  # killed mid-conversion

    store = FaissVectorStore(tmp_path, DIM, VERSION, flat_threshold=1_000, rebuild_in_background=False)
    try:
        assert layouts(store) == ("compact", "compact")  # converted again, from the logs
        fresh = images(400, 1, "new")[: acknowledged + 1]
        assert all(store.get(i.image_id) is not None for i in fresh)
        assert all(found_first(store, i) for i in fresh)
        assert store.stats().rows >= 3_000 + acknowledged + 1
    finally:
        store.close()


def test_a_restart_reads_the_records_a_chunk_at_a_time_and_keeps_them_all(tmp_path):
    """Recovery streams the catalog's records (a 100M-image catalog never sits in memory as records): every
    image is found after a restart, across chunk boundaries."""
    added = images(25, 2, "img")
    store = FaissVectorStore(tmp_path, DIM, VERSION, regions=R)
    store.add(added)
    store.close()
    reopened = FaissVectorStore(tmp_path, DIM, VERSION)
    try:
        assert [r.image_id for r in reopened._records.iter_all(chunk=10)] == [i.image_id for i in added]
        assert reopened._records.count() == 25 and reopened.stats().counts.public == 25
        assert all(found_first(reopened, i) for i in added)
    finally:
        reopened.close()
