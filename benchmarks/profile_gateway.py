"""Where a Search's time goes: server-side stage means from the gateway's metrics, and a py-spy profile.

    python -m benchmarks.profile_gateway [--seconds 20] [--concurrency 1]

Starts Triton and the gateway over the real corpus, drives `Search` in a closed loop from another process,
then samples the gateway's on-CPU stacks with py-spy in a second run.
Writes benchmarks/results/profile_gateway.{json,md} and profile_gateway.svg (a flame graph).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import process_cpu_seconds
from benchmarks.e2e_bench import add_filler, index_through_gateway, search_queries, uploads
from benchmarks.loadgen import GatewayTarget, closed_loop
from devkit.launcher import running_services
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.core.config import loopback_settings


def histogram_sums(metrics_url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(metric, label) -> (sum, count) for the stage and request-duration histograms."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("vsearch_stage_duration_seconds", "vsearch_request_duration_seconds"):
            continue
        for sample in family.samples:
            label = sample.labels.get("stage") or sample.labels.get("method", "")
            if sample.name.endswith("_sum"):
                out.setdefault((family.name, label), [0.0, 0.0])[0] += sample.value
            elif sample.name.endswith("_count"):
                out.setdefault((family.name, label), [0.0, 0.0])[1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def top_frames(collapsed: Path, limit: int = 25, by_self: bool = False) -> list[dict[str, object]]:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks (most inclusive first,
    or most self time first)."""
    inclusive, own, total = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    order = own if by_self else inclusive
    return [{"function": f, "inclusive_pct": round(100 * inclusive[f] / total, 1),
             "self_pct": round(100 * own[f] / total, 1)} for f, _ in order.most_common(limit)]


def with_ms(frames: list[dict[str, object]], cpu_ms: float) -> list[dict[str, object]]:
    """Shares of on-CPU samples as gateway CPU milliseconds per Search."""
    return [{**f, "inclusive_ms": round(cpu_ms * float(f["inclusive_pct"]) / 100, 3),
             "self_ms": round(cpu_ms * float(f["self_pct"]) / 100, 3)} for f in frames]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--filler", type=int, default=0, help="generated vectors in the index (see e2e_bench)")
    parser.add_argument("--copies", type=int, default=1, help="near-identical copies of each photo indexed")
    args = parser.parse_args(argv)
    images = uploads()
    with tempfile.TemporaryDirectory(prefix="vsearch-profile-") as tmp:
        settings = loopback_settings(data_dir=Path(tmp) / "data")
        add_filler(settings.data_dir, args.filler)
        with running_services(settings, Path(tmp) / "logs") as services:
            index_through_gateway(settings.grpc_address, images, copies=args.copies)
            metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
            target = GatewayTarget(settings.grpc_address, search_queries(images))
            closed_loop(target, args.concurrency, 100)  # warm-up
            # Phase 1, unobserved: client latency and the gateway's own stage means.
            before, cpu_before = histogram_sums(metrics_url), process_cpu_seconds(services.gateway.pid)
            result = closed_loop(target, args.concurrency, 50 * args.seconds, warmup=0)
            after, cpu_after = histogram_sums(metrics_url), process_cpu_seconds(services.gateway.pid)
            cpu_ms = 1000 * (cpu_after - cpu_before) / max(1, result.requests)
            # Phase 2, under py-spy (sampling perturbs latency, so its run is not the one reported above).
            collapsed = Path(tmp) / "profile.txt"
            load = threading.Thread(target=closed_loop, args=(target, args.concurrency, 100 * args.seconds, 0))
            load.start()
            pid = services.gateway.pid
            for fmt, path in (("raw", collapsed), ("flamegraph", RESULTS / "profile_gateway.svg")):
                subprocess.run([Path(sys.executable).with_name("py-spy"), "record", "--pid", str(pid),
                                "--duration", str(args.seconds // 2), "--rate", "100", "--format", fmt,
                                "--output", str(path), "--nonblocking"], check=True, capture_output=True)
            load.join()
            frames = with_ms(top_frames(collapsed), cpu_ms)
            hottest = with_ms(top_frames(collapsed, 20, by_self=True), cpu_ms)
    stages = []
    for key, (total, count) in sorted(after.items()):
        d_sum, d_count = total - before.get(key, (0, 0))[0], count - before.get(key, (0, 0))[1]
        if d_count:
            stages.append({"metric": key[0].removeprefix("vsearch_"), "label": key[1], "count": int(d_count),
                           "mean_ms": round(1000 * d_sum / d_count, 3)})
    client = result.summary()
    info = run_info(seconds=args.seconds, concurrency=args.concurrency)
    data = {**info, "client": client, "gateway_cpu_ms_per_search": round(cpu_ms, 3), "server_side": stages,
            "top_frames": frames, "top_self_frames": hottest}
    columns = ["function", "inclusive_pct", "self_pct", "inclusive_ms", "self_ms"]
    md = ["# Gateway profile", "",
          f"`python -m benchmarks.profile_gateway --concurrency {args.concurrency} --filler {args.filler} "
          f"--copies {args.copies}` — "
          f"commit {info['git_commit']}, "
          f"{info['cpu_count']} CPUs. Client-side: {client['qps']} req/s, mean {client['mean_ms']} ms, "
          f"p50 {client['p50_ms']} ms, p99 {client['p99_ms']} ms. Gateway CPU per Search: {cpu_ms:.2f} ms "
          "(`_ms` columns below: that CPU split by py-spy's samples).", "",
          "## Server-side means (gateway metrics, during the run)", "",
          markdown_table(stages, ["metric", "label", "count", "mean_ms"]), "",
          "## py-spy (gateway process, on-CPU samples over all threads)", "",
          markdown_table(frames, columns), "",
          "### Most self time", "",
          markdown_table(hottest, columns), "",
          "Flame graph: [profile_gateway.svg](profile_gateway.svg)"]
    write_results("profile_gateway", data, "\n".join(md))
    return data


if __name__ == "__main__":
    main()
