"""Region indexing (issue 16): what indexing 6 regions per image costs, measured in one run.

    python -m benchmarks.regions_bench [--quick]

1. Through the real services (Triton + gateway, each its own process), once with `index_regions` on (the
   default) and once off, each on a fresh data directory: AddImages images/s of the demo corpus photos
   (2 concurrent streams), then Search latency at concurrency 1 for whole-image and cropped queries.
2. In process, the store's search (FaissVectorStore.search: ANN + privacy selector + merge) at N generated
   images, with 6 region rows per image and without: p50 / p99 per query.
   With `--one-pass-graph PATH` a third run indexes with regions through a version whose graph outputs them from
   the whole image's own pass (training/region_head.py), added as the next version of a copy of the model
   repository and pinned.
What regions buy is in benchmarks/results/quality.md (`vN p@1` vs `vN p@1 whole`).
Writes benchmarks/results/regions.{json,md} and regions.png.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from benchmarks.e2e_bench import index_through_gateway, search_queries, uploads
from clients.client import VisualSearchClient
from devkit.launcher import running_services
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.config import MODEL_REPOSITORY, loopback_settings
from server.core.regions import REGION_BOXES
from server.embedding.contract import MODEL_NAME
from server.model_versions.registry import BACKEND_FILE, FIRST_VERSION, versions
from server.store.base import EmbeddedImage, Visibility
from server.store.faiss import FaissVectorStore

DIM = 1280


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def through_services(regions: bool, images: list[bytes], copies: int, searches: int, one_pass: Path | None = None
                     ) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="regions-bench-") as tmp:
        pinned = {} if one_pass is None else one_pass_repository(one_pass, Path(tmp) / "model_repository")
        settings = loopback_settings(data_dir=Path(tmp) / "data", index_regions=regions, **pinned)
        with running_services(settings, Path(tmp) / "logs", announce=False) as services:
            target = services.settings.grpc_address
            indexing = index_through_gateway(target, images, copies)
            queries = search_queries(images)
            latency: dict[str, list[float]] = {"whole": [], "crop": []}
            with VisualSearchClient(target) as client:
                for n in tqdm(range(searches), desc="Search", unit="q"):
                    data, crop = queries[n % len(queries)]
                    start = time.perf_counter()
                    client.search(data, crop=crop, k=20)
                    latency["crop" if crop else "whole"].append(time.perf_counter() - start)
                stats = client.stats()
    return {"index_regions": regions, "regions_from": "-" if not regions else "one pass" if one_pass else "encoded",
            "regions_per_image": stats.index_params.get("regions_per_image", "0"),
            "indexing_images_per_s": indexing["images_per_s"], "indexed": indexing["images"],
            **{f"search_{kind}_{k}": v for kind, values in latency.items() for k, v in percentiles(values).items()}}


def one_pass_repository(graph: Path, repository: Path) -> dict[str, object]:
    """A copy of the model repository with `graph` as the encoder's next version (beside its newest one's
    calibration and Triton model), and the settings that pin it."""
    shutil.copytree(MODEL_REPOSITORY, repository, symlinks=True)
    newest = versions(repository)[-1]
    number = str(int(newest) + 1)
    version = repository / MODEL_NAME / number
    version.mkdir()
    shutil.copy(graph, version / "model.onnx")
    shutil.copy(repository / MODEL_NAME / newest / "calibration.json", version / "calibration.json")
    (version / BACKEND_FILE).symlink_to(f"../{FIRST_VERSION}/{BACKEND_FILE}")
    return {"model_repository": repository, "model_version": number}


def in_process(n: int, queries: int, regions: bool) -> dict[str, object]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="regions-store-") as tmp:
        store = FaissVectorStore(Path(tmp), DIM, "encoder/1", rebuild_in_background=False,
                                 regions=len(REGION_BOXES) if regions else 0)
        batch = 2000
        for start in tqdm(range(0, n, batch), desc=f"fill {'with' if regions else 'without'} regions", unit="chunk"):
            whole = rng.standard_normal((batch, DIM)).astype(np.float32)
            whole /= np.linalg.norm(whole, axis=1, keepdims=True)
            parts = None
            if regions:  # a region resembles its image: the image plus noise of comparable size
                parts = whole[:, None] + rng.standard_normal((batch, len(REGION_BOXES), DIM)).astype(np.float32) / 40
                parts /= np.linalg.norm(parts, axis=2, keepdims=True)
            store.add([EmbeddedImage(f"img{start + i}", "bench", Visibility.PUBLIC, str(start + i), whole[i],
                                None if parts is None else parts[i]) for i in range(batch)])
        probes = rng.standard_normal((queries, DIM)).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        store.search(probes[0], 60)  # first touch
        times = []
        for q in probes:
            start = time.perf_counter()
            store.search(q, 60)  # the gateway's first fetch for k = 20 (Ranker.first_fetch)
            times.append(time.perf_counter() - start)
        stats = store.stats()
        kind, params = stats.index_type, stats.index_params
        store.close()
    return {"images": n, "regions_per_image": params["regions_per_image"], "index": kind, **percentiles(times)}


def plot(rows: list[dict[str, object]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['images']} images\n{'6 regions' if r['regions_per_image'] != '0' else 'whole only'}" for r in rows]
    ax.bar(labels, [r["p50_ms"] for r in rows], label="p50")
    ax.scatter(labels, [r["p99_ms"] for r in rows], color="black", zorder=3, label="p99")
    ax.set_ylabel("store search, ms (k = 60)")
    ax.set_title("Search cost of region rows (in process, 1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one-pass-graph", type=Path, default=None,
                        help="also index through a version whose graph outputs the regions from its one pass")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)  # as in the gateway
    threadpool_limits(1, user_api="blas")
    images = uploads()
    copies, searches, n = (1, 60, 5_000) if args.quick else (2, 300, 30_000)
    services = [through_services(regions, images, copies, searches) for regions in (True, False)]
    if args.one_pass_graph is not None:
        services.append(through_services(True, images, copies, searches, args.one_pass_graph))
    store_rows = [in_process(n, 200, regions) for regions in (True, False)]
    plot(store_rows, RESULTS / "regions.png")
    on, off = services[:2]
    data = {**run_info(quick=args.quick, copies=copies, searches=searches, n=n), "services": services,
            "store": store_rows,
            "indexing_cost_ratio": round(float(off["indexing_images_per_s"]) / float(on["indexing_images_per_s"]), 2)}
    if args.one_pass_graph is not None:
        data["one_pass_over_whole_only"] = round(float(services[2]["indexing_images_per_s"])
                                                 / float(off["indexing_images_per_s"]), 3)
    markdown = "\n".join([
        "# Region indexing: cost", "",
        f"Command: `python -m benchmarks.regions_bench{' --quick' if args.quick else ''}` (shared 2-core machine). "
        "Each image is indexed whole and as the 6 regions of server/core/regions.py; queries embed once. What it "
        "buys: benchmarks/results/quality.md.", "",
        "## Through Triton + gateway (demo corpus photos, AddImages with 2 streams, Search at concurrency 1)", "",
        markdown_table(services, list(services[0])), "",
        f"Indexing costs {data['indexing_cost_ratio']}x the time with regions (7 encoder inputs per image)."
        + (f" With the regions from the whole image's one pass ({args.one_pass_graph.name}): "
           f"{data['one_pass_over_whole_only']}x the whole-image-only throughput." if args.one_pass_graph else ""), "",
        "## Store search in process (generated vectors, k = 60 = the first fetch for k = 20)", "",
        markdown_table(store_rows, list(store_rows[0])), "", "![regions](regions.png)", "",
    ])
    write_results("regions", data, markdown)
    print(markdown)
    return data


if __name__ == "__main__":
    main()
