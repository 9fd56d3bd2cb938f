"""Encoder throughput and latency through Triton, dynamic batching on vs off, and raw ONNX Runtime.

    python -m benchmarks.encoder_bench [--quick]

One run: for each Triton configuration (the served one: dynamic batching without queue delay; the same
with 500 us and 2000 us of queue delay; `no_batching`), closed-loop load at concurrency 1, 8, 32, 64 with
real photos as preprocessed uint8 tensors; then ONNX Runtime in-process at batch 1 and 16, so Triton's own
overhead is visible. Writes benchmarks/results/encoder.{json,md,png}.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.loadgen import TritonTarget, closed_loop
from devkit.corpus import real_photos
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.config import MODEL_REPOSITORY, loopback_settings
from server.embedding import imaging
from server.embedding.onnx_encoder import OnnxEncoder
from server.triton.supervisor import TritonServer

CONCURRENCY = (1, 8, 32, 64)
# name -> (--model-config-name, max_queue_delay_microseconds override)
CONFIGS = {"dynamic_batching (served)": (None, None), "queue_delay_500us": (None, 500),
           "queue_delay_2000us": (None, 2000), "no_batching": ("no_batching", None)}


@contextmanager
def repository_with_delay(delay_us: int | None) -> Iterator[Path]:
    """The model repository, or a copy of it whose config waits `delay_us` to form batches."""
    if delay_us is None:
        yield MODEL_REPOSITORY
        return
    with tempfile.TemporaryDirectory(prefix="encoder-bench-") as tmp:
        copy = Path(tmp) / "model_repository"
        shutil.copytree(MODEL_REPOSITORY, copy)
        config = copy / "encoder" / "config.pbtxt"
        config.write_text(re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {delay_us}",
                                 config.read_text()))
        yield copy


def photo_tensors(count: int) -> np.ndarray:
    return np.stack([imaging.prepare(p.path.read_bytes()) for p in real_photos()[:count]])


def raw_onnxruntime(pixels: np.ndarray, seconds: float) -> list[dict[str, object]]:
    encoder = OnnxEncoder.of_version(1)
    rows = []
    for batch in (1, 16):
        x = np.resize(pixels, (batch, *pixels.shape[1:]))
        encoder.run(x, batch=batch)
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            encoder.run(x, batch=batch)
            times.append(time.perf_counter() - t)
        rows.append({"backend": "onnxruntime in-process", "batch": batch,
                     "images_per_s": round(batch * len(times) / sum(times), 1),
                     "p50_ms": round(1000 * float(np.median(times)), 2)})
    return rows


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    requests = 150 if args.quick else 800
    pixels = photo_tensors(32)
    rows = []
    for name, (config, delay_us) in CONFIGS.items():
        with repository_with_delay(delay_us) as repository, \
                TritonServer(loopback_settings(model_repository=repository), model_config_name=config) as triton:
            target = TritonTarget(triton.endpoint.grpc_url, pixels, triton.settings.triton_admin_key)
            for c in CONCURRENCY:
                result = closed_loop(target, c, max(requests, 4 * c), warmup=max(8, c), processes=2)
                row = {"config": name, **result.summary()}
                rows.append(row)
                print(f"{name:26s} c={c:3d}  {row['qps']:7.1f} img/s  p50 {row['p50_ms']:7.2f} ms  "
                      f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}", flush=True)
    raw = raw_onnxruntime(pixels, 1.0 if args.quick else 4.0)
    for r in raw:
        print(f"onnxruntime batch {r['batch']}: {r['images_per_s']} img/s", flush=True)

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        a.plot([r["concurrency"] for r in mine], [r["qps"] for r in mine], marker="o", label=name)
        b.plot([r["concurrency"] for r in mine], [r["p99_ms"] for r in mine], marker="o", label=name)
    for r in raw:
        a.axhline(r["images_per_s"], linestyle=":", color="gray")
        a.text(1, r["images_per_s"], f" ORT in-process batch {r['batch']}", fontsize=8, va="bottom")
    a.set(xscale="log", xlabel="concurrent requests", ylabel="images/s", title="Triton encoder throughput")
    b.set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="p99 latency (ms)", title="p99 latency")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "encoder.png", dpi=110)

    info = run_info(requests_per_level=requests, concurrency=CONCURRENCY, quick=args.quick)
    md = ["# Encoder benchmark (Triton, EfficientNet-Lite0, CPU)", "",
          f"`python -m benchmarks.encoder_bench{' --quick' if args.quick else ''}` — commit {info['git_commit']}, "
          f"{info['cpu_count']} CPUs, load average at start {info['load_average_at_start']:.2f}. "
          "Closed-loop load from 2 client processes, one preprocessed 224x224 real photo per request.", "",
          markdown_table(rows, ["config", "concurrency", "qps", "p50_ms", "p99_ms", "errors"]), "",
          "Raw ONNX Runtime in the benchmark process (no Triton, no gRPC):", "",
          markdown_table(raw, ["backend", "batch", "images_per_s", "p50_ms"]), "", "![encoder](encoder.png)"]
    data = {**info, "triton": rows, "onnxruntime": raw}
    write_results("encoder", data, "\n".join(md))
    return data


if __name__ == "__main__":
    main()
