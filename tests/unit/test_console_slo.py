"""The SLO panel's numbers from the gateway's histogram exposition: Prometheus' histogram_quantile semantics."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from console.slo import ERRORS, LATENCY, SHED, Scrape, ScrapedMetrics, bucket_quantile, parse, point


def test_quantiles_interpolate_inside_the_bucket_the_rank_falls_in():
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert bucket_quantile(0.5, buckets) == 0.1
    assert abs(bucket_quantile(0.75, buckets) - 0.15) < 1e-12
    assert abs(bucket_quantile(0.99, buckets) - 0.198) < 1e-12
    assert bucket_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    assert bucket_quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1  # in +Inf: the largest finite bound


def test_a_window_of_the_gateways_histogram_gives_its_quantiles_and_rates():
    registry = CollectorRegistry()
    latency = Histogram(LATENCY, "", ["method", "code"], registry=registry)
    errors = Counter(ERRORS, "", ["method", "code"], registry=registry)
    shed = Counter(SHED, "", ["stage", "caller"], registry=registry)
    rng = np.random.default_rng(0)
    for value in rng.uniform(0.0, 0.02, 500):  # traffic before the window: must not count
        latency.labels("Search", "OK").observe(value)
    old = parse(generate_latest(registry).decode(), at=100.0)
    inside = np.concatenate([rng.uniform(0.02, 0.05, 900), rng.uniform(0.3, 0.6, 100)])
    for value in inside:
        latency.labels("Search", "OK" if value < 0.5 else "DEADLINE_EXCEEDED").observe(value)
    latency.labels("AddImages", "OK").observe(9.0)  # another method: not the Search SLO
    errors.labels("Search", "DEADLINE_EXCEEDED").inc(3)
    errors.labels("Search", "RESOURCE_EXHAUSTED").inc(5)  # a shed, counted as such
    shed.labels("search", "alice").inc(5)
    new = parse(generate_latest(registry).decode(), at=110.0)
    got = point(new, old)
    assert got["qps"] == 100.0 and got["errors_per_s"] == 0.3 and got["shed_per_s"] == 0.5
    bounds = sorted(b for b in new.buckets if b != float("inf"))
    for q in (0.5, 0.95, 0.99):  # the exact quantile of the window's observations lies in the reported bucket
        exact = float(np.quantile(inside, q))
        upper = next(b for b in bounds if b >= exact)
        lower = max([b for b in bounds if b < upper], default=0.0)
        assert lower <= got[f"p{round(q * 100)}_ms"] / 1000 <= upper, (q, exact, got)


def test_no_point_spans_a_restart_of_the_gateway():
    """Counters start again from zero when the gateway restarts: a difference across that is not a rate."""
    scraper = ScrapedMetrics("http://127.0.0.1:9/metrics", every_s=1.0, window_s=2.0)
    before = {0.01: 90.0, 0.1: 100.0, float("inf"): 100.0}
    for at, count in ((0.0, 100.0), (1.0, 100.0), (2.0, 100.0), (3.0, 5.0), (4.0, 9.0), (5.0, 12.0)):
        scale = count / 100.0
        scraper.scrapes.append(Scrape(at, {b: c * scale for b, c in before.items()}, count=count))
    points = scraper.series()
    assert [p["t"] for p in points] == [1.0, 2.0, 5.0]  # 3 and 4: their window holds the restart
    assert all(p["qps"] >= 0 for p in points)
