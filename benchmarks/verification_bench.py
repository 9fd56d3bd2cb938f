"""What copy verification costs a search (server/query/verification.py): the signature reads and the re-score of
the candidates that tie with the best, by how many tie, with the signature files in the page cache and evicted;
and what a signature costs an image (bytes on disk, time to write at AddImages).

    python -m benchmarks.verification_bench [--images 100000] [--queries 2000] [--searches 1500]

Signatures are files of SIGNATURE_BYTES under a BlobStore.derived root on this machine's data disk (var/), as the
gateway writes them; their content is random (only the reads and the arithmetic are timed). Each query is a
candidate list of 60 (the gateway's first fetch for k = 20) of which the first `tied` are within the margin; the
last row is a small query (rule 7), whose list is as long as it is verified deep.
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
from server.query.verification import DEPTH, MARGIN, SERVED, Verifier
from server.store.base import Candidate
from server.store.blobs import BlobStore
from server.store.signatures import SignatureStore

FETCH = 60
TIED = (1, 10, DEPTH, *((SERVED.small_depth,) if SERVED.small_side else ()))  # the last: a small query


def _candidates(rng: np.random.Generator, images: int, tied: int) -> list[Candidate]:
    fetch = max(FETCH, tied)
    ids = rng.choice(images, fetch, replace=False)
    head = 0.9 - np.sort(rng.uniform(0, MARGIN * 0.9, tied))
    scores = np.concatenate([head, head[0] - MARGIN - np.sort(rng.uniform(0.01, 0.3, fetch - tied))])
    vector = np.zeros(1, np.float32)
    return [Candidate(f"i{i}", float(s), f"{i:064x}", vector) for i, s in zip(ids, scores, strict=True)]


def _evict(store: SignatureStore, candidates: list[Candidate]) -> None:
    for c in candidates:
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


def _copies(images: list[bytes], side: int | None = None) -> list[bytes]:
    """JPEG q30 copies of `images`, shrunk to `side` pixels on their longer side if given (small queries)."""
    out = []
    for data in images:
        image, buffer = Image.open(io.BytesIO(data)).convert("RGB"), io.BytesIO()
        if side is not None:
            image.thumbnail((side, side))
        image.save(buffer, "JPEG", quality=30)
        out.append(buffer.getvalue())
    return out


def through_gateway(verify: bool, images: list[bytes], searches: int) -> list[dict[str, object]]:
    """Search p50/p99 and the verify stage's mean; with verification, for small queries too (shrunk to the
    rule's small side: verified SERVED.small_depth deep)."""
    kinds = {"copies": _copies(images)}
    if verify and SERVED.small_side:
        kinds[f"copies of {SERVED.small_side} px"] = _copies(images, SERVED.small_side)
    rows = []
    with tempfile.TemporaryDirectory(prefix="verification-bench-") as tmp:
        settings = loopback_settings(data_dir=Path(tmp) / "data", copy_verification=verify)
        with running_services(settings, Path(tmp) / "logs", announce=False) as services:
            index_through_gateway(services.settings.grpc_address, images, copies=2)
            with VisualSearchClient(services.settings.grpc_address) as client:
                for kind, queries in kinds.items():
                    for n in range(10):  # warm-up
                        client.search(queries[n % len(queries)], k=20)
                    before, seconds = _stage_seconds(services.settings.metrics_port, "verify"), []
                    for n in tqdm(range(searches), desc=f"Search {kind}, verification {'on' if verify else 'off'}",
                                  unit="q"):
                        began = time.perf_counter()
                        client.search(queries[n % len(queries)], k=20)
                        seconds.append(time.perf_counter() - began)
                    total, count = np.subtract(_stage_seconds(services.settings.metrics_port, "verify"), before)
                    ms = 1000 * np.array(seconds)
                    rows.append({"copy verification": "on" if verify else "off", "queries": kind,
                                 "searches": searches, "p50_ms": round(float(np.median(ms)), 2),
                                 "p99_ms": round(float(np.percentile(ms, 99)), 2),
                                 "verify_stage_mean_ms": round(1000 * total / count, 3) if count else "-"})
    return rows


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
                    verifier.rescore(candidates, query, side=1 if tied > DEPTH else None)
                    times.append(time.perf_counter() - began)
                ms = 1000 * np.array(times)
                rows.append({"tied candidates": tied, "page cache": cache, "p50_ms": round(float(np.median(ms)), 3),
                             "p99_ms": round(float(np.percentile(ms, 99)), 3),
                             "bytes_read_per_query": tied * SIGNATURE_BYTES})
    photos = uploads()
    gateway = [row for verify in (True, False) for row in through_gateway(verify, photos, args.searches)]
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
