"""The batch embedding job (jobs/embed) on a REAL two-node Ray cluster over real photos from packages.

Every job runs as its own driver process (`python -m jobs.embed`, the real CLI) with a wall-clock timeout, so a
hung pipeline fails the test instead of blocking CI.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clients.client import NewImage as GatewayImage
from jobs.embed.adapters import (
    REGION_BOXES,
    BlobStore,
    EmbeddedImage,
    EncoderClient,
    Visibility,
    content_hash,
    open_vector_store,
    pixel_signatures,
    prepare,
    prepare_views,
    signature_store,
)
from jobs.embed.runner import JobConfig, plan_resources, run
from protos.visual_search.v1 import visual_search_pb2 as pb
from server.core.config import loopback_settings
from server.core.regions import REGION_SCORE_PENALTY
from server.embedding.imaging import CropBox
from server.triton.supervisor import TritonServer
from tests.fixtures.gateway import start_gateway
from tests.fixtures.ray_cluster import HEAD_IP, WORKER_IP, RayCluster
from tests.photos import jpeg

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "model_repository" / "encoder" / "1" / "model.onnx"
IMAGE_DIRS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
JOB_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def real_images() -> list[tuple[str, Path]]:
    """(image ID, path) of the package photos (Debian wallpapers + scikit-image's), identical files once."""
    import skimage

    files = sorted(p for root in IMAGE_DIRS if root.exists() for p in root.rglob("*")
                   if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"} and p.is_file() and not p.is_symlink())
    files += sorted((Path(skimage.__file__).parent / "data").glob("*.png"))[:12]
    found, seen = [], set()
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            found.append((f"{path.parent.name}/{path.stem}-{digest[:8]}", path))
    return found


@pytest.fixture(scope="module")
def images() -> list[tuple[str, Path]]:
    found = real_images()
    if len(found) < 60:
        pytest.skip(f"only {len(found)} package photos: run `make setup` (installs the wallpaper packages)")
    return found


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri"])
        writer.writerows(rows)
    return path


def job_command(cluster: RayCluster, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.embed", "--manifest", str(manifest), "--model-version", "1",
            "--out", str(out), "--ray-address", cluster.address, "--actors", "2", *extra]


def run_job(cluster: RayCluster, command: list[str], env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(command, cwd=REPO, env={**cluster.driver_env, **(env or {})}, capture_output=True,
                          text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads((Path(command[command.index("--out") + 1]) / "summary.json").read_text())


def start_job(cluster: RayCluster, command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(command, cwd=REPO, env=cluster.driver_env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_until(condition, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll `condition()` while the job runs (it must not finish first); wall-clock bounded."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, f"job exited before {what}: {log.read_text()[-5000:]}"
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"not {what} after {JOB_TIMEOUT_S} s: {log.read_text()[-5000:]}")


def done_markers(out: Path) -> list[Path]:
    return sorted((out / "done").glob("shard-*.json"))


def embedded_on(out: Path, ip: str) -> int:
    """Rows of committed shards that an actor on node `ip` embedded."""
    return sum(a.startswith(ip + ":") for marker in done_markers(out)
               for a in pq.read_table(out / "embeddings" / f"{marker.stem}.parquet")["embed_actor"].to_pylist())


def embeddings(out: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(out / "embeddings")
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1)
    return table.column("image_id").to_pylist(), vectors


def failures(out: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(out / "failures").to_pylist()}


def reference_embeddings(paths: list[Path]) -> np.ndarray:
    """In-process ONNX Runtime on the gateway's own `prepare` output."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    pixels = np.stack([prepare(p.read_bytes()) for p in paths])
    return session.run(["embedding"], {"pixels": pixels})[0]


def assert_exact(out: Path, expected_ids: set[str], expected_failures: set[str] = frozenset()) -> None:
    ids, vectors = embeddings(out)
    assert len(ids) == len(set(ids)), "an image was written twice"
    assert set(ids) == expected_ids
    assert set(failures(out)) == set(expected_failures)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def first_job(ray_cluster: RayCluster, images, tmp_path_factory) -> tuple[dict, Path, list[tuple[str, Path]]]:
    """40 photos + a corrupt file + a missing file + one over the pixel limit, through the cluster into a catalog."""
    tmp = tmp_path_factory.mktemp("embed")
    corrupt = tmp / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    huge = tmp / "huge.png"  # 54 Mpixels, over the gateway's default 50 Mpixel limit (a small file: one colour)
    Image.new("RGB", (9000, 6000), (90, 120, 150)).save(huge)
    chosen = images[::3][:40]
    rows = [(i, str(p)) for i, p in chosen] + [("bad/corrupt", str(corrupt)), ("bad/missing", str(tmp / "nope.jpg")),
                                               ("bad/huge", str(huge))]
    manifest = write_manifest(tmp / "manifest.csv", rows)
    out = tmp / "out"
    summary = run_job(ray_cluster, job_command(ray_cluster, manifest, out, "--shard-size", "8",
                                               "--data-dir", str(tmp / "data")))
    return summary, out, chosen


def test_job_embeds_every_image_once_and_reports_failures(first_job):
    summary, out, chosen = first_job
    assert (summary["images"], summary["embedded"], summary["failed"]) == (43, 40, 3)
    assert_exact(out, {i for i, _ in chosen}, {"bad/corrupt", "bad/missing", "bad/huge"})
    reasons = failures(out)
    assert reasons["bad/huge"]["stage"] == "prepare" and "pixel limit" in reasons["bad/huge"]["reason"]
    assert reasons["bad/corrupt"]["stage"] == "prepare" and "decodable" in reasons["bad/corrupt"]["reason"]
    assert reasons["bad/missing"]["stage"] == "read" and "FileNotFoundError" in reasons["bad/missing"]["reason"]
    actors = summary["run"]["actors"]
    assert {name.split(":")[0] for name in actors} <= {HEAD_IP, WORKER_IP}, summary["run"]
    assert sum(a["rows"] for a in actors.values()) == sum(summary["run"]["prepared_on"].values()) == 43
    # prepare ran as a task stage of its own, not fused into the embedding actors.
    stats = summary["ray_data_stats"]
    assert "MapBatches(OrtEmbedder)" in stats and "MapBatches(prepare_batch)" in stats
    assert "prepare_batch)->MapBatches(OrtEmbedder" not in stats


def test_job_embeddings_equal_in_process_onnxruntime(first_job):
    _, out, chosen = first_job
    ids, vectors = embeddings(out)
    by_id = dict(zip(ids, vectors, strict=True))
    reference = reference_embeddings([p for _, p in chosen])
    cosines = np.array([float(by_id[i] @ r) for (i, _), r in zip(chosen, reference, strict=True)])
    assert cosines.min() >= 0.9999, cosines.min()


def test_job_embeds_regions_as_the_gateway_does_and_the_catalog_searches_them(first_job):
    """Each image's REGION_BOXES, embedded by the actors, equal in-process ONNX Runtime on the gateway's own
    `prepare_views`; the catalog the job created keeps them, so a region finds its image first."""
    _, out, chosen = first_job
    table = pq.read_table(out / "embeddings")
    regions = np.asarray(table.column("regions").combine_chunks().flatten(), np.float32).reshape(
        table.num_rows, len(REGION_BOXES), -1)
    by_id = dict(zip(table.column("image_id").to_pylist(), regions, strict=True))
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    sample = chosen[:4]
    for image_id, path in sample:
        views = prepare_views(path.read_bytes(), [CropBox(*box) for box in REGION_BOXES])
        reference = session.run(["embedding"], {"pixels": views})[0]
        assert np.min(np.sum(reference * by_id[image_id], axis=1)) >= 0.9999
    ids, whole = embeddings(out)
    whole_of = dict(zip(ids, whole, strict=True))
    store = open_vector_store(out.parent / "data", "encoder/1")
    try:
        assert store.regions_per_image == len(REGION_BOXES)
        for image_id, _ in chosen:
            region = min(by_id[image_id], key=lambda r: float(r @ whole_of[image_id]))  # least like the whole
            hit = store.search(region, 1)[0]
            assert hit.image_id == image_id
            if float(region @ whole_of[image_id]) < 1 - REGION_SCORE_PENALTY - 0.01:  # only its region row scores so
                assert hit.score == pytest.approx(1 - REGION_SCORE_PENALTY, abs=1e-3)
    finally:
        store.close()


def test_job_stores_each_loaded_images_pixel_signature_where_the_gateway_reads_it(first_job):
    """Copy verification needs every searchable image's signature: the job computes it from the same prepared
    pixels as Triton's image model and writes it beside the data directory's originals, by content hash."""
    _, out, chosen = first_job
    table = pq.read_table(out / "embeddings")
    hash_of = dict(zip(table.column("image_id").to_pylist(), table.column("content_hash").to_pylist(), strict=True))
    stored = signature_store(out.parent / "data").read([hash_of[i] for i, _ in chosen])
    assert len(stored) == len(chosen)
    want = pixel_signatures(np.stack([prepare(p.read_bytes()) for _, p in chosen]))
    for (image_id, _), expected in zip(chosen, want, strict=True):
        np.testing.assert_array_equal(stored[hash_of[image_id]], expected)


def test_job_loads_the_catalog_idempotently(first_job, ray_cluster):
    summary, out, _ = first_job
    assert summary["store"] == {"added": 40, "already_present": 0, "shards_skipped": 0}
    data_dir = out.parent / "data"
    # A rerun finds every shard done and every shard loaded: nothing is embedded or added twice.
    again = run_job(ray_cluster, job_command(ray_cluster, out.parent / "manifest.csv", out, "--shard-size", "8",
                                             "--data-dir", str(data_dir)))
    assert (again["shards_skipped"], again["shards_run"]) == (6, 0)
    assert again["store"] == {"added": 0, "already_present": 0, "shards_skipped": 6}
    # Loading the same shards into the store again (markers gone) adds nothing: add() is idempotent on IDs.
    for marker in (out / "loaded" / "encoder-1").glob("*.json"):
        marker.unlink()
    reloaded = run_job(ray_cluster, job_command(ray_cluster, out.parent / "manifest.csv", out, "--shard-size", "8",
                                                "--data-dir", str(data_dir)))
    assert reloaded["store"] == {"added": 0, "already_present": 40, "shards_skipped": 0}
    store = open_vector_store(data_dir, "encoder/1")
    try:
        assert store.stats().rows == 40
    finally:
        store.close()


def test_catalog_manifest_builds_an_aligned_prefix_of_the_next_versions_catalog(ray_cluster, first_job, tmp_path):
    """The model-switch path: the records of encoder/1 (originals from the blob store) -> encoder/2 at the same add
    positions, deleted ones marked deleted, up to the first image that fails (the gateway's switch resumes there)."""
    _, out, chosen = first_job
    ids, vectors = embeddings(out)
    by_id = dict(zip(ids, vectors, strict=True))
    data_dir, records = tmp_path / "data", chosen[:8]
    blobs = BlobStore(data_dir / "blobs")
    old = open_vector_store(data_dir, "encoder/1")
    try:
        images = []
        for n, (image_id, path) in enumerate(records):
            data = path.read_bytes()
            blobs.put(content_hash(data), data)
            visibility = Visibility.PRIVATE if n == 1 else Visibility.PUBLIC
            images.append(EmbeddedImage(image_id, f"owner-{n}", visibility, content_hash(data), by_id[image_id]))
        assert old.add(images) == [True] * 8
        assert old.delete([records[0][0]]).count == 1  # deleted: must never be searchable in the new version
        old_ids = {image_id: old.get(image_id).internal_id for image_id, _ in records}
    finally:
        old.close()
    Path(blobs.path(images[6].content_hash)).unlink()  # the original at position 6 is gone: the prefix ends there
    repository = tmp_path / "model_repository"  # version 2 = the same graph, so the vectors must match v1's
    (repository / "encoder" / "2").mkdir(parents=True)
    (repository / "encoder" / "2" / "model.onnx").symlink_to(MODEL)
    command = [sys.executable, "-m", "jobs.embed", "--manifest", "catalog:encoder/1", "--model-version", "2",
               "--out", str(tmp_path / "out"), "--ray-address", ray_cluster.address, "--actors", "2",
               "--shard-size", "3", "--data-dir", str(data_dir), "--model-repository", str(repository)]
    summary = run_job(ray_cluster, command)
    assert (summary["images"], summary["embedded"], summary["failed"]) == (8, 7, 1)
    assert failures(tmp_path / "out")[records[6][0]]["stage"] == "read"
    assert summary["store"] == {"added": 6, "present_before": 0, "aligned_prefix_end": 6}
    new = open_vector_store(data_dir, "encoder/2")
    try:
        assert new.stats().rows == 6
        assert new.get(records[0][0]).deleted
        for n, (image_id, _) in enumerate(records[:6]):
            record = new.get(image_id)
            assert record.internal_id == old_ids[image_id] == n
            assert record.owner_id == f"owner-{n}"
            assert int(record.visibility) == (Visibility.PRIVATE if n == 1 else Visibility.PUBLIC)
            assert float(new.vector(image_id) @ by_id[image_id]) >= 0.9999
        assert new.get(records[7][0]) is None  # after the gap: left to the gateway's switch
    finally:
        new.close()
    again = run_job(ray_cluster, command)  # nothing to embed or add twice
    assert again["shards_run"] == 0 and again["store"]["added"] == 0


def test_switch_model_resumes_from_the_jobs_prefix_and_keeps_writes_made_meanwhile(ray_cluster, images, tmp_path):
    """The hand-off end to end: a running gateway serves encoder/1; the job builds encoder/2's catalog; deletes,
    hides and adds arrive after the job froze its manifest; SwitchModel(2) resumes from the job's prefix and cuts
    over without losing the new image or resurrecting the deleted or hidden ones."""
    repository = tmp_path / "model_repository"
    shutil.copytree(MODEL.parent.parent.parent, repository,
                    ignore=lambda d, names: [n for n in names if (n.isdigit() and n != "1") or n.startswith(".")])
    shutil.copytree(repository / "encoder" / "1", repository / "encoder" / "2")  # v2: the same graph, published
    photos = images[2::4][:24]
    added_later = images[1]
    with TritonServer(loopback_settings(model_repository=repository), log_path=tmp_path / "triton.log") as triton:
        gateway = start_gateway(triton, tmp_path / "data")
        try:
            with gateway.client() as client:
                client.add_images([GatewayImage(i, jpeg(Image.open(p), max_side=320)) for i, p in photos])
                deleted, hidden = photos[3][0], photos[4][0]
                out, log = tmp_path / "out", tmp_path / "job.log"
                job = start_job(ray_cluster, [
                    sys.executable, "-m", "jobs.embed", "--manifest", "catalog:encoder/1", "--model-version", "2",
                    "--out", str(out), "--ray-address", ray_cluster.address, "--actors", "2", "--shard-size", "4",
                    "--data-dir", str(gateway.data_dir), "--model-repository", str(repository)], log)
                try:
                    wait_until(lambda: (out / "manifest" / "_index.json").exists(), job, log, "the manifest was frozen")
                    client.delete([deleted])
                    client.set_visibility([hidden], private=True)
                    client.add_images([GatewayImage(added_later[0], jpeg(Image.open(added_later[1]), max_side=320))])
                    job.wait(JOB_TIMEOUT_S)
                finally:
                    if job.poll() is None:
                        job.kill()
                assert job.returncode == 0, log.read_text()[-5000:]
                summary = json.loads((out / "summary.json").read_text())
                assert summary["store"]["aligned_prefix_end"] == len(photos)  # the snapshot, not the later add

                assert client.switch_model("2").state == pb.SwitchModelResponse.STARTED
                deadline = time.monotonic() + JOB_TIMEOUT_S
                while (stats := client.stats()).model_version != "encoder/2":
                    assert not stats.switch_error and time.monotonic() < deadline, stats.switch_error
                    time.sleep(0.2)
                assert (stats.public_count, stats.private_count, stats.deleted_count) == (len(photos) - 1, 1, 1)
                found = client.similar(photos[0][0], k=50)
                assert found.model_version == "encoder/2"
                ids = {r.image_id for r in found.results}
                assert added_later[0] in ids and not {deleted, hidden} & ids
                assert len(ids) == len(photos) - 2  # every visible image but the query itself
        finally:
            gateway.stop()
    # The switch re-embedded only what the job had not: the image added meanwhile.
    assert f"{len(photos)} of {len(photos) + 1} images already re-embedded" in gateway.log_path.read_text()


def test_triton_actors_give_the_gateways_embeddings(ray_cluster, triton_server, images, tmp_path):
    chosen = images[1::17][:6]
    manifest = write_manifest(tmp_path / "manifest.csv", [(i, str(p)) for i, p in chosen])
    summary = run_job(ray_cluster, job_command(ray_cluster, manifest, tmp_path / "out", "--shard-size", "3",
                                               "--triton-url", triton_server.endpoint.grpc_url,
                                               "--actor-cpus", "0.25"),
                      env={"VSEARCH_TRITON_ADMIN_KEY": triton_server.settings.triton_admin_key or ""})
    assert summary["ray"]["embedder"] == "triton" and summary["embedded"] == 6
    ids, vectors = embeddings(tmp_path / "out")
    by_id = dict(zip(ids, vectors, strict=True))

    async def gateway_path() -> np.ndarray:  # what the gateway does: prepare, then the same Triton client
        client = EncoderClient(triton_server.endpoint.grpc_url, "encoder", "1", triton_server.settings.triton_admin_key)
        try:
            return await client.embed(np.stack([prepare(p.read_bytes()) for _, p in chosen]), timeout_s=60)
        finally:
            await client.close()

    gateway = asyncio.run(gateway_path())
    reference = reference_embeddings([p for _, p in chosen])
    for (image_id, _), g, r in zip(chosen, gateway, reference, strict=True):
        assert float(by_id[image_id] @ g) >= 0.9999
        assert float(by_id[image_id] @ r) >= 0.9999  # Triton's actors == ONNX Runtime's actors


def test_worker_node_killed_mid_job_still_completes_exactly(ray_cluster, images, tmp_path):
    # Four copies of the corpus (distinct IDs) in shards of 2: on a quiet machine the job must still be running
    # when the worker node's first shard is seen committed.
    items = [(f"{i}/copy{n}", str(p)) for n in range(4) for i, p in images]
    manifest = write_manifest(tmp_path / "manifest.csv", items)
    out, log = tmp_path / "out", tmp_path / "job.log"
    # Whole images only (--no-regions): node loss is what this test is about, and 7 inputs per image made it
    # 107 s instead of 73 s; the regions path runs through the cluster in `first_job`.
    job = start_job(ray_cluster, job_command(ray_cluster, manifest, out, "--shard-size", "2", "--no-regions"), log)
    shards = -(-len(items) // 2)
    try:
        # Kill once the worker node has demonstrably embedded part of the corpus (actors go round-robin over
        # the nodes; which batches reach which actor is Ray Data's choice).
        wait_until(lambda: embedded_on(out, WORKER_IP) > 0, job, log, "the worker node embedded a committed shard")
        done_at_kill = len(done_markers(out))
        ray_cluster.kill_worker()
        job.wait(JOB_TIMEOUT_S)
    finally:
        if job.poll() is None:
            job.kill()
        if ray_cluster.worker is None:
            ray_cluster.start_worker()  # the next tests get a two-node cluster again
    assert job.returncode == 0, log.read_text()[-5000:]
    assert done_at_kill < shards, "the job had finished before the node was killed"
    assert_exact(out, {i for i, _ in items})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embedded"] == len(items) and summary["shards_run"] == shards


def test_driver_killed_then_rerun_resumes_exactly(ray_cluster, images, tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv", [(i, str(p)) for i, p in images])
    out, log = tmp_path / "out", tmp_path / "job.log"
    command = job_command(ray_cluster, manifest, out, "--shard-size", "4", "--no-regions")  # see above
    shards = -(-len(images) // 4)
    job = start_job(ray_cluster, command, log)
    try:
        wait_until(lambda: len(done_markers(out)) >= 3, job, log, "3 shards were done")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver dies mid-job (no cleanup, no summary)
        job.wait()
    markers = done_markers(out)
    done_after_kill = len(markers)
    rows_done = sum(json.loads(p.read_text())["rows"] for p in markers)
    assert 3 <= done_after_kill < shards
    assert not (out / "summary.json").exists()

    summary = run_job(ray_cluster, command)
    assert (summary["shards_skipped"], summary["shards_run"]) == (done_after_kill, shards - done_after_kill)
    assert summary["run"]["rows"] == len(images) - rows_done  # only the shards not done were embedded again
    assert_exact(out, {i for i, _ in images})


def test_local_mode_needs_no_cluster(images, tmp_path):
    """`--ray-address local`: Ray started by the job on this machine (2 CPUs -> 1 actor), stopped at the end."""
    chosen = images[5::29][:5]
    manifest = write_manifest(tmp_path / "manifest.csv", [(i, str(p)) for i, p in chosen])
    command = [sys.executable, "-m", "jobs.embed", "--manifest", str(manifest), "--model-version", "1",
               "--out", str(tmp_path / "out"), "--ray-address", "local", "--shard-size", "2"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                          text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "5 images: 5 embedded, 0 failed" in done.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ray"]["address"] == "local" and summary["ray"]["actors"] == 1
    assert_exact(tmp_path / "out", {i for i, _ in chosen})


def test_the_catalog_the_gateway_serves_is_refused(tmp_path):
    (tmp_path / "ACTIVE_MODEL").write_text("encoder/1\n")
    with pytest.raises(ValueError, match="gateway serves"):
        run(JobConfig(manifest=str(tmp_path), out=tmp_path / "out", model_version=1, data_dir=tmp_path))
    assert not (tmp_path / "out").exists()


def test_actor_pool_that_would_starve_the_read_tasks_is_refused():
    config = JobConfig(manifest="x", out=Path("x"), model_version=1, actors=2)
    with pytest.raises(ValueError, match="wait forever"):
        plan_resources(config, {"CPU": 2.0})
    assert plan_resources(config, {"CPU": 3.0}).actors == 2
    assert plan_resources(JobConfig(manifest="x", out=Path("x"), model_version=1), {"CPU": 2.0}).actors == 1
    with pytest.raises(ValueError, match="fuse"):
        plan_resources(JobConfig(manifest="x", out=Path("x"), model_version=1, actors=1, prepare_cpus=1.0),
                       {"CPU": 4.0})
