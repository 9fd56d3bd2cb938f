"""Data directories written before the compact index keep working: they serve at once, the background rebuild
converts their whole-image and region indexes, and a kill -9 during the conversion loses no acknowledged image
(the conversion starts again at the next start)."""

from __future__ import annotations

import hashlib
import logging
import os
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
from server.store.faiss import FaissVectorStore, vector_log
from server.store.faiss.build import build_index
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
    """A catalog as the earlier release left it: float32 logs, snapshots with exact float copies in RAM (`RFlat`)."""
    added = images(n, 0, "old")
    store = FaissVectorStore(path, DIM, VERSION, flat_threshold=10**9, regions=R)
    store.add(added)
    store.close()
    whole, regions = np.stack([i.vector for i in added]), np.concatenate([i.regions for i in added])
    for rows, log_name, snapshot in ((whole, "vectors", "index.faiss"), (regions, "regions", "regions.faiss")):
        (path / f"{log_name}.f16").unlink()
        rows.astype("<f4").tofile(path / f"{log_name}.f32")
        faiss.write_index(build_index(ivf_params(64, DIM), DIM, rows), str(path / snapshot))
    return added


def assert_logs_converted(path: Path, added: list[EmbeddedImage], first: int = 0) -> None:
    """float16 logs only, holding `added`'s rows at internal ids first, first + 1, ..."""
    assert sorted(p.name for p in path.glob("*.f*") if p.suffix != ".faiss") == ["regions.f16", "vectors.f16"]
    whole = np.fromfile(path / "vectors.f16", "<f2").reshape(-1, DIM)[first:first + len(added)]
    regions = np.fromfile(path / "regions.f16", "<f2").reshape(-1, R, DIM)[first:first + len(added)]
    assert np.array_equal(whole, np.stack([i.vector for i in added]).astype("<f2"))
    assert np.array_equal(regions, np.stack([i.regions for i in added]).astype("<f2"))


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
            if layouts(store) == ("compact", "compact") and not list(tmp_path.glob("*.f32")):
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
        assert_logs_converted(tmp_path, added)
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
        sys.stdout.write(f"acknowledged {n}\\n")  # one write: print() writes the newline apart, and another
        sys.stdout.flush()  # thread's line can land between the two
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


LOG_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.unit.test_index_conversion import DIM, VERSION, images
    from server.store.faiss import FaissVectorStore
    from server.store.faiss import vector_log
    copy = vector_log.VectorLog._copy
    def slow_copy(self, out, start, stop):  # timing only: the conversion must still be running at the kill
        copy(self, out, start, stop)
        out.flush()
        sys.stdout.write(f"copied {self.path.name} {stop}\\n")
        sys.stdout.flush()
        time.sleep(0.05)
    vector_log.VectorLog._copy = slow_copy
    vector_log.CONVERT_CHUNK_ROWS = 500
    store = FaissVectorStore(Path(sys.argv[1]), DIM, VERSION, flat_threshold=10**9)  # converts in the background
    for n, image in enumerate(images(400, 1, "new")):
        store.add([image])
        sys.stdout.write(f"acknowledged {n}\\n")  # one write: print() writes the newline apart, and another
        sys.stdout.flush()  # thread's line can land between the two
""")


def test_kill_9_during_the_log_conversion_loses_no_acknowledged_image_and_the_conversion_resumes(tmp_path, caplog):
    added = legacy_catalog(tmp_path, 3_000)
    child = subprocess.Popen([sys.executable, "-c", LOG_CHILD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    seen, copied, acknowledged = [], 0, -1
    assert child.stdout is not None
    for line in child.stdout:
        seen.append(line.strip())
        if line.startswith("copied vectors.f32"):
            copied = int(line.split()[2])
        if line.startswith("acknowledged"):
            acknowledged = int(line.split()[1])
        if copied >= 1_000 and acknowledged >= 20:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert copied >= 1_000 and acknowledged >= 20, seen[-5:]
    assert (tmp_path / "vectors.f32").exists() and (tmp_path / "vectors.f16.partial").exists()

    with caplog.at_level(logging.INFO, logger="store.vector_log"):
        store = FaissVectorStore(tmp_path, DIM, VERSION, flat_threshold=10**9, rebuild_in_background=False)
    try:
        resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("converting vectors.f32")]
        assert resumed and int(resumed[0].split("from row ")[1].split()[0]) >= copied  # not from the start
        fresh = images(400, 1, "new")[: acknowledged + 1]
        assert all(store.get(i.image_id) is not None for i in fresh)
        assert all(found_first(store, i) for i in fresh) and all(found_first(store, i) for i in added[::100])
        assert_logs_converted(tmp_path, added)
        assert_logs_converted(tmp_path, fresh, first=len(added))
    finally:
        store.close()


def _open_deleted_logs() -> list[str]:
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return [link for link in links if ".f32" in link and link.endswith("(deleted)")]


def test_the_float32_files_are_closed_after_the_switch_so_their_disk_is_freed(tmp_path, monkeypatch):
    monkeypatch.setattr(vector_log, "RETIRED_OPEN_S", 0.3)
    added = legacy_catalog(tmp_path, 500)
    store = FaissVectorStore(tmp_path, DIM, VERSION, flat_threshold=10**9)  # converts in the background
    try:
        for _ in range(100):
            if not list(tmp_path.glob("*.f32")):
                break
            time.sleep(0.05)
        assert not list(tmp_path.glob("*.f32"))
        assert all(found_first(store, i) for i in added[::25])  # served throughout, from the new files
        for _ in range(100):
            if not _open_deleted_logs():
                break
            time.sleep(0.05)
        assert not _open_deleted_logs()
        assert all(found_first(store, i) for i in added[::25])
    finally:
        store.close()


def test_a_conversion_killed_after_its_switch_keeps_the_float16_log(tmp_path):
    """Between the rename of the float16 log and the unlink of the float32 one, the float16 log is complete."""
    added = legacy_catalog(tmp_path, 200)
    stale = {name: (tmp_path / f"{name}.f32").read_bytes() for name in ("vectors", "regions")}
    FaissVectorStore(tmp_path, DIM, VERSION, rebuild_in_background=False).close()  # converts
    for name, data in stale.items():
        (tmp_path / f"{name}.f32").write_bytes(data)
        (tmp_path / f"{name}.f16.partial").write_bytes(data[: len(data) // 3])
    store = FaissVectorStore(tmp_path, DIM, VERSION, rebuild_in_background=False)
    try:
        assert_logs_converted(tmp_path, added)
        assert not list(tmp_path.glob("*.partial"))
        assert all(found_first(store, i) for i in added)
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
