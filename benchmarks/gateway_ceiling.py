"""Gateway ceiling: Searches per second per gateway CPU core, with the encoder's cost taken out.

    python -m benchmarks.gateway_ceiling [--quick] [--filler 200000]

Triton serves an instant encoder (both `encoder` and `image_encoder` answer with a unit vector derived from a
hash of the input, without decoding or running a network), so what is left is the gateway: gRPC, validation,
the Triton client round trip, the ANN search over the real index and the duplicate collapse. Measured by image
(the query's bytes go to Triton's image model) and by ID (no Triton call). The figure that matters is the
gateway process's CPU time per request, which gives Searches/s per core; achieved QPS on this 2-core host is
capped by the load generator and Triton sharing the cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import process_cpu_seconds
from benchmarks.e2e_bench import add_filler, search_queries, uploads
from benchmarks.loadgen import GatewayByIdTarget, GatewayTarget, closed_loop
from devkit.launcher import running_services
from reporting.results import markdown_table, run_info, write_results
from server.core.config import MODEL_REPOSITORY, loopback_settings

INSTANT_MODEL = '''"""Benchmark stand-in: answers at once with a unit vector derived from a hash of the input."""

import zlib

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            first = request.inputs()[0].as_numpy()
            seed = zlib.crc32(first.tobytes()[:4096])
            vector = np.random.default_rng(seed).standard_normal((len(first), 1280)).astype(np.float32)
            vector /= np.linalg.norm(vector, axis=1, keepdims=True)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", vector)]))
        return responses
'''


def instant_repository(root: Path) -> Path:
    """A copy of the model repository whose encoder models answer instantly (configs and versions unchanged)."""
    repository = root / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("*.onnx", "*.plan", "*.dali"))
    for model in ("encoder", "image_encoder"):
        (repository / model / "1" / "model.py").write_text(INSTANT_MODEL)
    return repository


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--filler", type=int, default=None)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    filler = args.filler if args.filler is not None else (25_000 if args.quick else 200_000)
    requests, concurrency = (400, 8) if args.quick else (2000, 8)
    queries = search_queries(uploads())
    rows = []
    with tempfile.TemporaryDirectory(prefix="vsearch-ceiling-") as tmp:
        data_dir = Path(tmp) / "data"
        add_filler(data_dir, filler)
        settings = loopback_settings(data_dir=data_dir, model_repository=instant_repository(Path(tmp)))
        with running_services(settings, Path(tmp) / "logs") as services:
            targets = {"by image": GatewayTarget(settings.grpc_address, queries, k=args.k),
                       "by ID": GatewayByIdTarget(settings.grpc_address, [f"filler-{i}" for i in range(0, filler,
                                                                                                       97)], args.k)}
            for name, target in targets.items():
                closed_loop(target, concurrency, 100, warmup=16)  # warm caches and connections
                before = process_cpu_seconds(services.gateway.pid)
                result = closed_loop(target, concurrency, requests, warmup=16)
                cpu_ms = 1000 * (process_cpu_seconds(services.gateway.pid) - before) / result.requests
                rows.append({"query": name, "concurrency": concurrency, "requests": result.requests,
                             "achieved_qps": round(result.qps, 1), "p50_ms": round(result.percentile_ms(50), 2),
                             "p99_ms": round(result.percentile_ms(99), 2), "gateway_cpu_ms": round(cpu_ms, 3),
                             "qps_per_core": round(1000 / cpu_ms, 1), "errors": result.errors})
                print(rows[-1], flush=True)
    headline = {"gateway_ceiling_qps_per_core": rows[0]["qps_per_core"],
                "gateway_ceiling_qps_per_core_by_id": rows[1]["qps_per_core"]}
    info = run_info(filler=filler, k=args.k, concurrency=concurrency, requests=requests, quick=args.quick)
    data = {**info, **headline, "rows": rows}
    columns = ["query", "concurrency", "requests", "achieved_qps", "p50_ms", "p99_ms", "gateway_cpu_ms",
               "qps_per_core", "errors"]
    write_results("gateway_ceiling", data, "\n".join([
        "# Gateway ceiling (instant encoder)", "",
        f"`python -m benchmarks.gateway_ceiling{' --quick' if args.quick else ''}` — commit {info['git_commit']}, "
        f"{info['cpu_count']} CPUs, load average at start {info['load_average_at_start']:.2f}; index over "
        f"{filler:,} filler vectors; k={args.k}. Triton answers instantly, so the gateway's CPU per request is "
        "its own cost: gRPC, validation, the Triton round trip (by image), ANN search and duplicate collapse.", "",
        markdown_table(rows, columns), "",
        f"**gateway_ceiling_qps_per_core** (by image) = {headline['gateway_ceiling_qps_per_core']}, by ID = "
        f"{headline['gateway_ceiling_qps_per_core_by_id']} Searches/s per gateway CPU core.",
    ]))
    return data


if __name__ == "__main__":
    main()
