"""The whole benchmark suite, one command; regenerates benchmarks/results/RESULTS.md and the plots.

    python -m benchmarks.run_all            # full suite (< 20 min on 2 cores)
    python -m benchmarks.run_all --quick    # smoke run (< 2 min): the index and end-to-end benchmarks, small

Each benchmark runs in its own process, one after another (never two at once: they would share the CPUs
and distort each other). RESULTS.md gathers the headline ratios and every benchmark's own report.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

from reporting.results import RESULTS, markdown_table, run_info

FULL = ("encoder_bench", "index_bench", "e2e_bench", "gateway_ceiling", "profile_gateway", "duplicate_threshold",
        "overload_bench")
QUICK = ("index_bench", "e2e_bench", "gateway_ceiling")
GOALS = {"e2e_qps_over_encoder_qps": ">= 0.8", "e2e_p50_over_stage_sum": "<= 1.3",
         "gateway_overhead_p99_ms": "<= 2 ms", "indexing_over_encoder_throughput": ">= 0.8",
         "max_qps_within_slo": "Search p99 <= 100 ms", "ann_searches_per_query": "<= 1.1"}


def run(name: str, quick: bool) -> float:
    args = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick and name in QUICK else [])
    print(f"\n=== {' '.join(args[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="only reassemble RESULTS.md from the reports")
    args = parser.parse_args(argv)
    names = QUICK if args.quick else FULL
    timing_file = RESULTS / f"run_all{'_quick' if args.quick else ''}.json"
    if args.report_only:
        timings = json.loads(timing_file.read_text()) if timing_file.exists() else []
    else:
        timings = [{"benchmark": name, "seconds": round(run(name, args.quick), 1)} for name in names]
        timing_file.write_text(json.dumps(timings, indent=2) + "\n")
    e2e = json.loads((RESULTS / "e2e.json").read_text())
    ceiling_file = RESULTS / "gateway_ceiling.json"
    ceiling = json.loads(ceiling_file.read_text()) if ceiling_file.exists() else {}
    ann_file = RESULTS / "index_1000000.json"  # `python -m benchmarks.index_bench --n 1000000`: ~25 min, run alone
    ann_cost = json.loads(ann_file.read_text()).get("ann_cost", {}) if ann_file.exists() else {}
    info = run_info(quick=args.quick)
    sections = [
        "# Benchmark results", "",
        f"`python -m benchmarks.run_all{' --quick' if args.quick else ''}` (or `make bench"
        f"{'-quick' if args.quick else ''}`) — commit {info['git_commit']}, {info['cpu_count']} CPUs, {info['date']}. "
        "Everything on loopback on one machine: the load generator, the gateway and Triton share its CPUs.", "",
        "## Headline (end-to-end benchmark)", "",
        markdown_table([{"metric": k, "measured": e2e.get(k, "not measured"), "goal": g} for k, g in GOALS.items()]
                       + [{"metric": "gateway_ceiling_qps_per_core", "goal": "(the gateway alone)",
                           "measured": ceiling.get("gateway_ceiling_qps_per_core", "not measured")}]
                       + [{"metric": f"ann_cost_over_exact ({name}, 1M x 1280)", "goal": "<= 0.02 at recall >= 0.95",
                           "measured": f"{c['ann_cost_over_exact']} at recall {c['recall_at_10']}"}
                          for name, c in ann_cost.items()],
                       ["metric", "measured", "goal"]), "",
    ]
    if timings:
        sections += ["## Run time", "", markdown_table(timings, ["benchmark", "seconds"])]
    for name in names:
        report = (RESULTS / f"{name.removesuffix('_bench')}.md")
        if report.exists():
            sections += ["", "---", "", re.sub(r"^#", "##", report.read_text(), flags=re.MULTILINE)]
    (RESULTS / "RESULTS.md").write_text("\n".join(sections) + "\n")
    print(f"\nwrote {RESULTS / 'RESULTS.md'} ({sum(t['seconds'] for t in timings):.0f} s of benchmarks)")


if __name__ == "__main__":
    main()
