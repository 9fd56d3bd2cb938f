"""End-to-end load: the gateway's Search against raw Triton and raw ANN search, measured in one run.

    python -m benchmarks.e2e_bench [--quick] [--filler N]

One Triton and one gateway (each its own process, as deployed) over an index of the real photo corpus plus
N generated filler vectors (so the served index is the IVF-PQ it would be in production). Then:
1. indexing: images/s through `AddImages` (2 concurrent streams) vs the encoder's own images/s;
2. three targets, each at concurrency 1 and at saturation (closed loop, 2 client processes):
   raw Triton (preprocessed tensors), raw ANN search in this process (a copy of the same catalog, the
   same selector), and the gateway's `Search` (JPEG uploads, a third of them with a crop);
3. an open-loop Poisson rate sweep of `Search` until p99 breaks the SLO budget.
Writes benchmarks/results/e2e.{json,md} and e2e_latency_vs_throughput.png.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import resource
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from benchmarks.common import group_cpu_seconds, process_cpu_seconds
from benchmarks.loadgen import (
    GatewayTarget,
    RunResult,
    TritonImageTarget,
    closed_loop,
    new_histogram,
    open_loop,
)
from clients.client import NewImage as UploadImage
from clients.client import VisualSearchClient
from devkit.corpus import real_photos
from devkit.launcher import running_services
from evaluation.vectors import synthetic_dataset
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.config import loopback_settings
from server.core.metrics import GatewayMetrics
from server.embedding import imaging
from server.embedding.contract import EMBED_CHUNK, EMBEDDING_DIM, MODEL_NAME
from server.embedding.encoder import EncoderClient
from server.query.ranking import Ranker
from server.store.base import EmbeddedImage, VectorStore, Visibility
from server.store.catalogs import catalog_dir, open_store, read_active_version
from server.store.faiss import FaissVectorStore

SLO_P99_MS = 100.0  # the Search latency SLO of deploy/prometheus/rules/alerts.yml
UPLOAD_MAX_SIDE = 1024  # uploads as a client would send them: a phone-sized JPEG, not a 4K original
CROPS = ((0.2, 0.2, 0.8, 0.8), (0.0, 0.3, 0.5, 1.0))


def uploads(max_side: int = UPLOAD_MAX_SIDE) -> list[bytes]:
    out = []
    for photo in real_photos():
        image = imaging.decode_image(photo.path.read_bytes(), imaging.Limits(max_pixels=10**9))
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def search_queries(images: list[bytes]) -> list[tuple[bytes, tuple[float, float, float, float] | None]]:
    """Every third query carries a crop box."""
    return [(data, CROPS[n % 2] if n % 3 == 0 else None) for n, data in enumerate(images)]


def add_filler(data_dir: Path, count: int) -> None:
    """Generated public vectors of the embedding dimension, written straight into the catalog."""
    if not count:
        return
    vectors, _ = synthetic_dataset(count, 1)
    version = f"{MODEL_NAME}/1"
    store = FaissVectorStore(catalog_dir(data_dir, version), EMBEDDING_DIM, version, rebuild_in_background=False)
    print(f"adding {count} filler vectors and building the index ...", flush=True)
    store.add([EmbeddedImage(f"filler-{i}", "bench", Visibility.PUBLIC, f"filler-{i}", v)
               for i, v in enumerate(vectors)])
    store.snapshot()
    print(f"filler index: {store.stats().index_type}", flush=True)
    store.close()


def index_through_gateway(target: str, images: list[bytes], copies: int, streams: int = 2) -> dict[str, float]:
    """AddImages throughput: `copies` distinct uploads per photo (cropped a little differently each time)."""
    items = []
    for c in range(copies):
        for n, data in enumerate(images):
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            buffer = io.BytesIO()
            image.crop((c, c, w - c, h - c)).save(buffer, "JPEG", quality=90)
            items.append(UploadImage(f"photo-{n}-copy-{c}", buffer.getvalue()))
    chunks = [items[s:s + EMBED_CHUNK] for s in range(0, len(items), EMBED_CHUNK)]
    bar = tqdm(total=len(items), unit="img", desc="AddImages")
    lock = threading.Lock()

    def send(chunk: list[UploadImage]) -> int:
        with VisualSearchClient(target, timeout_s=300) as client:
            response = client.add_images(chunk)
        with lock:
            bar.update(len(chunk))
        return sum(r.status == r.ADDED for r in response.results)

    # Warm-up, not timed (the encoder baseline has one too): a gateway's first AddImages on a large catalog
    # costs ~0.5 s once (first touch of the index and the catalog files), which would dominate a short run.
    # Deleted afterwards, so the searched corpus is the same as without it.
    warm_up = [UploadImage(f"warm-up-{n}", data) for n, data in enumerate(images[:EMBED_CHUNK])]
    with VisualSearchClient(target, timeout_s=300) as client:
        client.add_images(warm_up)
    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        added = sum(pool.map(send, chunks))
    elapsed = time.perf_counter() - start
    with VisualSearchClient(target, timeout_s=300) as client:
        client.delete([image.image_id for image in warm_up])
    bar.close()
    return {"images": len(items), "added": added, "seconds": round(elapsed, 2),
            "images_per_s": round(len(items) / elapsed, 1), "streams": streams}


def ann_run(ranker: Ranker, store: VectorStore, vectors: np.ndarray, k: int, requests: int) -> RunResult:
    """The gateway's own search call (index + privacy selector + duplicate collapse), in this process."""
    histogram = new_histogram()
    start = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        ranker.rank(store, vectors[i % len(vectors)], k, None, include_duplicates=False)
        histogram.record_value(max(1, int((time.perf_counter() - t) * 1e6)))
    result = RunResult("in-process", requests, time.perf_counter() - start, {}, histogram)
    result.concurrency = 1
    return result


def embed_for_ann(triton_url: str, key: str | None, pixels: np.ndarray) -> np.ndarray:
    async def embed() -> np.ndarray:
        encoder = EncoderClient(triton_url, key=key)
        try:
            return np.concatenate([await encoder.embed(pixels[i:i + EMBED_CHUNK], timeout_s=300)
                                   for i in range(0, len(pixels), EMBED_CHUNK)])
        finally:
            await encoder.close()

    return asyncio.run(embed())


class CpuMeter:
    """CPU time per request of each party: Triton (with its backend stubs), the gateway, the load generator
    (finished worker processes of this one). On a shared host their sum is what caps throughput."""

    def __init__(self, triton_pid: int, gateway_pid: int) -> None:
        self.triton_pid, self.gateway_pid = triton_pid, gateway_pid

    def snapshot(self) -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (group_cpu_seconds(self.triton_pid), process_cpu_seconds(self.gateway_pid),
                children.ru_utime + children.ru_stime)

    def per_request(self, before: tuple[float, float, float], requests: int) -> dict[str, float]:
        after = self.snapshot()
        names = ("cpu_ms_triton", "cpu_ms_gateway", "cpu_ms_loadgen")
        return {n: round(1000 * (a - b) / max(requests, 1), 2) for n, a, b in zip(names, after, before, strict=True)}


def row(target: str, result: RunResult) -> dict[str, object]:
    return {"target": target, **result.summary()}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--filler", type=int, default=None, help="generated vectors added to the index")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    quick = args.quick
    # As in the gateway: one OpenMP thread for FAISS (the raw ANN target must search the way the gateway does)
    # and no spinning BLAS thread in this process either.
    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    filler = args.filler if args.filler is not None else (25_000 if quick else 200_000)
    n_c1, n_sat, copies = (150, 300, 1) if quick else (600, 1500, 4)
    saturation = 16
    rates = (5, 20, 40) if quick else (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)

    images = uploads()
    queries = search_queries(images)
    pixels = np.stack([imaging.prepare(data, imaging.CropBox(*crop) if crop else None) for data, crop in queries])
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="vsearch-e2e-") as tmp:
        data_dir = Path(tmp) / "data"
        add_filler(data_dir, filler)
        # Admission off (no in-flight cap, no latency budget): this measures how much the pipeline can serve;
        # shedding under overload is measured by benchmarks/overload_bench.py.
        settings = loopback_settings(data_dir=data_dir, admission_max_in_flight=10_000, admission_latency_budget_ms=0)
        with running_services(settings, Path(tmp) / "logs") as services:
            settings = services.settings
            gateway_url, triton_url = settings.grpc_address, settings.triton_url
            # The Triton target is the image model called directly with the same bytes and crop boxes as the
            # gateway's queries (decode + encode in Triton); the pixel-tensor encoder is measured for indexing.
            triton = TritonImageTarget(triton_url, queries, settings.triton_admin_key)
            gateway = GatewayTarget(gateway_url, queries, k=args.k)

            print("indexing throughput ...", flush=True)
            whole_images = TritonImageTarget(triton_url, [(d, None) for d in images], settings.triton_admin_key)
            encoder_sat = closed_loop(whole_images, saturation, n_sat, warmup=16)
            indexing = index_through_gateway(gateway_url, images, copies)
            indexing["encoder_images_per_s"] = round(encoder_sat.qps, 1)
            print(f"AddImages {indexing['images_per_s']} img/s vs encoder {encoder_sat.qps:.1f} img/s", flush=True)

            # Raw ANN on a copy of the very catalog the gateway serves (the gateway keeps its own open).
            shutil.copytree(data_dir, Path(tmp) / "ann", ignore=shutil.ignore_patterns("*.log"))
            version = read_active_version(settings)
            store = open_store(settings.with_overrides(data_dir=Path(tmp) / "ann"), version, EMBEDDING_DIM)
            ranker = Ranker(settings.duplicate_threshold, GatewayMetrics(CollectorRegistry()))
            vectors = embed_for_ann(triton_url, settings.triton_admin_key, pixels)
            index_type = store.stats().index_type
            cpu = CpuMeter(services.triton.pid, services.gateway.pid)

            for name, run in (
                ("triton", lambda c, n: closed_loop(triton, c, n, warmup=16)),
                ("ann", lambda c, n: ann_run(ranker, store, vectors, args.k, n)),
                ("gateway", lambda c, n: closed_loop(gateway, c, n, warmup=16)),
            ):
                for c, n in ((1, n_c1), (saturation, n_sat)):
                    if name == "ann" and c > 1:
                        continue  # in-process, one thread: the gateway searches one query at a time
                    before = cpu.snapshot()
                    result = run(c, n)
                    rows.append({**row(name, result), **cpu.per_request(before, result.requests)})
                    print(f"{name:8s} c={c}: {result.qps:7.1f}/s p50 {result.percentile_ms(50):7.2f} ms "
                          f"p99 {result.percentile_ms(99):7.2f} ms errors {result.errors}", flush=True)
            store.close()
            ann_searches = searches_per_query(services.gateway.metrics_url)

            sweep = []
            for rate in rates:
                result = open_loop(gateway, rate, max(60, int(rate * (6 if quick else 15))), warmup=8)
                sweep.append(row("gateway open-loop", result))
                print(f"open loop {rate:5.0f}/s: achieved {result.qps:6.1f}/s p50 {result.percentile_ms(50):7.2f} "
                      f"p99 {result.percentile_ms(99):8.2f} ms errors {result.errors}", flush=True)
                if result.percentile_ms(99) > 2 * SLO_P99_MS:
                    break

    def pick(target: str, c: int) -> dict[str, object]:
        return next(r for r in rows if r["target"] == target and r["concurrency"] == c)

    tri1, ann1, gw1 = pick("triton", 1), pick("ann", 1), pick("gateway", 1)
    tri_sat, gw_sat = pick("triton", saturation), pick("gateway", saturation)
    meeting = [r for r in sweep if r["p99_ms"] <= SLO_P99_MS and not r["errors"]]
    headline = {
        "e2e_qps_over_encoder_qps": round(gw_sat["qps"] / tri_sat["qps"], 3),
        "e2e_p50_over_stage_sum": round(gw1["p50_ms"] / (tri1["p50_ms"] + ann1["p50_ms"]), 3),
        "gateway_overhead_p99_ms": round(gw1["p99_ms"] - tri1["p99_ms"] - ann1["p99_ms"], 2),
        "indexing_over_encoder_throughput": round(indexing["images_per_s"] / indexing["encoder_images_per_s"], 3),
        "max_qps_within_slo": max((r["qps"] for r in meeting), default=0.0),
        "ann_searches_per_query": ann_searches,
    }
    plot_sweep(sweep)
    info = run_info(filler=filler, index=index_type, k=args.k, saturation_concurrency=saturation,
                    upload_max_side=UPLOAD_MAX_SIDE, slo_p99_ms=SLO_P99_MS, quick=quick)
    data = {**info, **headline, "targets": rows, "open_loop_sweep": sweep, "indexing": indexing}
    write_results("e2e", data, report(data, rows, sweep, headline, indexing, index_type))
    return data


def searches_per_query(metrics_url: str) -> float:
    """Mean store searches per Search so far, from the gateway's own histogram."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("vsearch_ann_searches_per_query_")}
    count = values.get("vsearch_ann_searches_per_query_count", 0.0)
    return round(values.get("vsearch_ann_searches_per_query_sum", 0.0) / count, 3) if count else float("nan")


def plot_sweep(sweep: list[dict[str, object]]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    achieved = [r["qps"] for r in sweep]
    for p, style in (("p50_ms", "o-"), ("p99_ms", "s-"), ("p99.9_ms", "^:")):
        ax.plot(achieved, [r[p] for r in sweep], style, label=p.replace("_ms", ""))
    ax.axhline(SLO_P99_MS, color="red", linestyle="--", label=f"SLO p99 {SLO_P99_MS:.0f} ms")
    ax.set(xlabel="achieved Search requests/s (open loop, Poisson arrivals)", ylabel="latency (ms)", yscale="log",
           title="Gateway Search: latency vs throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "e2e_latency_vs_throughput.png", dpi=110)
    plt.close(fig)


def report(info: dict[str, object], rows: list[dict[str, object]], sweep: list[dict[str, object]],
           headline: dict[str, float], indexing: dict[str, float], index_type: str) -> str:
    goals = {"e2e_qps_over_encoder_qps": ">= 0.8", "e2e_p50_over_stage_sum": "<= 1.3",
             "gateway_overhead_p99_ms": "<= 2 ms", "indexing_over_encoder_throughput": ">= 0.8",
             "max_qps_within_slo": f"p99 <= {SLO_P99_MS:.0f} ms", "ann_searches_per_query": "<= 1.1"}
    columns = ["target", "mode", "concurrency", "target_rate", "requests", "qps", "p50_ms", "p90_ms", "p99_ms",
               "p99.9_ms", "errors"]
    cpu_columns = ["target", "concurrency", "qps", "cpu_ms_triton", "cpu_ms_gateway", "cpu_ms_loadgen"]
    return "\n".join([
        "# End-to-end benchmark", "",
        f"`python -m benchmarks.e2e_bench{' --quick' if info['params']['quick'] else ''}` — commit "
        f"{info['git_commit']}, {info['cpu_count']} CPUs, load average at start {info['load_average_at_start']:.2f}. "
        f"Index: `{index_type}` over the real photo corpus + {info['params']['filler']:,} filler vectors; "
        f"k={info['params']['k']}; uploads are JPEGs of at most {UPLOAD_MAX_SIDE} px, a third with a crop box.", "",
        "## Headline ratios", "",
        markdown_table([{"metric": k, "measured": v, "goal": goals[k]} for k, v in headline.items()],
                       ["metric", "measured", "goal"]), "",
        "## Three targets (closed loop)", "",
        markdown_table(rows, columns), "",
        "CPU time per request by process (2 cores = 2,000 ms of CPU per second; the gateway's target includes "
        "its ANN search and gRPC work; decoding runs in Triton's image model for both the gateway and the Triton "
        "target, which sends the same image bytes and crop boxes):", "",
        markdown_table([r for r in rows if r["target"] != "ann"], cpu_columns), "",
        "## Open-loop rate sweep of Search", "",
        markdown_table(sweep, columns), "", "![latency vs throughput](e2e_latency_vs_throughput.png)", "",
        "## Indexing", "",
        markdown_table([indexing], ["images", "added", "streams", "seconds", "images_per_s", "encoder_images_per_s"]),
    ])


if __name__ == "__main__":
    main()
