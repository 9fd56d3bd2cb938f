"""What copy verification costs a search (server/query/verification.py): the signature reads and the re-score of
the candidates that tie with the best, by how many tie, with the signature files in the page cache and evicted;
and what a signature costs an image (bytes on disk, time to write at AddImages).

    python -m benchmarks.verification_bench [--images 100000] [--queries 2000] [--searches 1500]

Signatures are files of SIGNATURE_BYTES under a BlobStore.derived root on this machine's data disk (var/), as the
gateway writes them; their content is random (only the reads and the arithmetic are timed). Each query is a
candidate list of 60 (the gateway's first fetch for k = 20) of which the first `tied` are within the margin.
Cold: every file of the query evicted (POSIX_FADV_DONTNEED) before it. One thread.
Then the real path, side by side: Triton and a gateway with verification on, then off, each indexing the package
photos twice (two slightly different crops of each: copies that tie), answering `--searches` JPEG q30 copies of
them at concurrency 1; the gateway's own `verify` stage histogram says what the stage took inside it.
Writes benchmarks/results/verification.{json,md,png}.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from benchmarks.e2e_bench import index_through_gateway, uploads
from clients.client import VisualSearchClient
from devkit.launcher import running_services
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.config import loopback_settings
from server.embedding.signature import SIGNATURE_BYTES
from server.query.verification import DEPTH, MARGIN, Verifier
from server.store.base import Candidate
from server.store.blobs import BlobStore
from server.store.signatures import SignatureStore

FETCH = 60
TIED = (1, 10, DEPTH)


def _candidates(rng: np.random.Generator, images: int, tied: int) -> list[Candidate]:
    ids = rng.choice(images, FETCH, replace=False)
    head = 0.9 - np.sort(rng.uniform(0, MARGIN * 0.9, tied))
    scores = np.concatenate([head, head[0] - MARGIN - np.sort(rng.uniform(0.01, 0.3, FETCH - tied))])
    vector = np.zeros(1, np.float32)
    return [Candidate(f"i{i}", float(s), f"{i:064x}", vector) for i, s in zip(ids, scores, strict=True)]


def _evict(store: SignatureStore, candidates: list[Candidate]) -> None:
    for c in candidates[:DEPTH]:
        fd = os.open(store.blobs.path(c.content_hash), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _stage_seconds(metrics_port: int, stage: str) -> tuple[float, float]:
    """(sum, count) of the gateway's vsearch_stage_duration_seconds for `stage`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stage") == stage and sample.name.endswith("_sum"):
                total = sample.value
            elif sample.labels.get("stage") == stage and sample.name.endswith("_count"):
                count = sample.value
    return total, count


def through_gateway(verify: bool, images: list[bytes], searches: int) -> dict[str, object]:
    queries = []
    for data in images:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=30)
        queries.append(buffer.getvalue())
    with tempfile.TemporaryDirectory(prefix="verification-bench-") as tmp:
        settings = loopback_settings(data_dir=Path(tmp) / "data", copy_verification=verify)
        with running_services(settings, Path(tmp) / "logs", announce=False) as services:
            index_through_gateway(services.settings.grpc_address, images, copies=2)
            seconds = []
            with VisualSearchClient(services.settings.grpc_address) as client:
                for n in range(10):  # warm-up
                    client.search(queries[n % len(queries)], k=20)
                for n in tqdm(range(searches), desc=f"Search, verification {'on' if verify else 'off'}", unit="q"):
                    began = time.perf_counter()
                    client.search(queries[n % len(queries)], k=20)
                    seconds.append(time.perf_counter() - began)
            total, count = _stage_seconds(services.settings.metrics_port, "verify")
    ms = 1000 * np.array(seconds)
    return {"copy verification": "on" if verify else "off", "searches": searches,
            "p50_ms": round(float(np.median(ms)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "verify_stage_mean_ms": round(1000 * total / count, 3) if count else "-"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=1500)
    args = parser.parse_args(argv)
    Path("var").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir="var") as root:
        store = SignatureStore(BlobStore(Path(root) / "blobs"))
        write_s = []
        for start in tqdm(range(0, args.images, 32), desc="write signatures", unit="batch"):
            batch = [(f"{i:064x}", rng.integers(-127, 128, SIGNATURE_BYTES).astype(np.int8))
                     for i in range(start, min(start + 32, args.images))]
            began = time.perf_counter()
            store.write(batch)
            write_s.append((time.perf_counter() - began) / len(batch))
        one = Path(store.blobs.path(f"{0:064x}"))
        disk_bytes = one.stat().st_blocks * 512
        verifier, query = Verifier(store), rng.integers(-127, 128, SIGNATURE_BYTES).astype(np.int8)
        rows = []
        for tied in TIED:
            for cache in ("warm", "cold"):
                times = []
                for _ in tqdm(range(args.queries), desc=f"{tied} tied, {cache}", unit="query"):
                    candidates = _candidates(rng, args.images, tied)
                    if cache == "warm":
                        verifier.read([c.content_hash for c in candidates[:tied]])
                    else:
                        _evict(store, candidates)
                    began = time.perf_counter()
                    verifier.rescore(candidates, query)
                    times.append(time.perf_counter() - began)
                ms = 1000 * np.array(times)
                rows.append({"tied candidates": tied, "page cache": cache, "p50_ms": round(float(np.median(ms)), 3),
                             "p99_ms": round(float(np.percentile(ms, 99)), 3),
                             "bytes_read_per_query": tied * SIGNATURE_BYTES})
    photos = uploads()
    gateway = [through_gateway(verify, photos, args.searches) for verify in (True, False)]
    data = {**run_info(images=args.images, queries=args.queries, fetch=FETCH, searches=args.searches), "rows": rows,
            "gateway": gateway,
            "signature_bytes": SIGNATURE_BYTES, "disk_bytes_per_image": disk_bytes,
            "write_ms_per_image": round(1000 * float(np.median(write_s)), 3)}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for cache in ("warm", "cold"):
        picked = [r for r in rows if r["page cache"] == cache]
        tied = [r["tied candidates"] for r in picked]
        ax.plot(tied, [r["p99_ms"] for r in picked], marker="o", label=f"p99, {cache}")
        ax.plot(tied, [r["p50_ms"] for r in picked], marker="x", linestyle="--", label=f"p50, {cache}")
    ax.set_xlabel("candidates within the margin (signatures read)")
    ax.set_ylabel("verification, ms per search")
    ax.set_title("Copy verification cost per search")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "verification.png", dpi=110)
    plt.close(fig)
    md = ["# Copy verification: cost per search and per image", "",
          f"`python -m benchmarks.verification_bench --images {args.images}`: {args.images:,} signature files on the "
          f"data disk, {args.queries} searches per row, one thread. Commit {data['git_commit']}.", "",
          markdown_table(rows, list(rows[0])), "",
          f"Per image: a {SIGNATURE_BYTES} B signature, {disk_bytes} B on this file system (one file per image), "
          f"written in {data['write_ms_per_image']} ms (atomic rename, no fsync: derived data). No RAM is kept.", "",
          f"Through Triton and the gateway ({len(photos)} package photos indexed twice, whole + regions; "
          f"{args.searches} JPEG q30 copies searched at concurrency 1, k = 20):", "",
          markdown_table(gateway, list(gateway[0])), "",
          "![cost](verification.png)"]
    write_results("verification", data, "\n".join(md))
    print("\n".join(md))
    return data


if __name__ == "__main__":
    main()
