"""The load generator against real services: counts, merged histograms, errors by status, open-loop queueing."""

from __future__ import annotations

import numpy as np

from benchmarks.loadgen import GatewayTarget, TritonTarget, closed_loop, open_loop, poisson_schedule
from tests.photos import small_jpeg


def test_poisson_schedule_has_the_requested_rate_and_exponential_gaps():
    times = poisson_schedule(rate=200.0, count=20_000, seed=3)
    gaps = np.diff(times)
    assert np.all(gaps > 0)
    assert abs(len(times) / times[-1] - 200.0) / 200.0 < 0.03
    # Exponential gaps: standard deviation equals the mean (a fixed-interval schedule would have none).
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05
    assert not np.array_equal(times, poisson_schedule(rate=200.0, count=20_000, seed=4))


def test_closed_loop_counts_every_request_once_across_processes(triton_server):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    target = TritonTarget(triton_server.endpoint.grpc_url, pixels, triton_server.settings.triton_admin_key)
    result = closed_loop(target, concurrency=4, requests=40,
                         warmup=4, processes=2)
    assert result.requests == 40
    assert result.errors == {}
    assert result.histogram.get_total_count() == 40
    summary = result.summary()
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["p99.9_ms"]
    assert summary["qps"] > 0


def test_errors_are_counted_by_grpc_status(gateway):
    bad = [(b"not an image", None), (small_jpeg("skimage/chelsea", 200), (0.5, 0.5, 0.2, 0.9))]
    result = closed_loop(GatewayTarget(gateway.target, bad), concurrency=2, requests=10, warmup=0, processes=1)
    assert result.requests == 0
    assert result.errors == {"INVALID_ARGUMENT": 10}


def test_open_loop_latency_includes_queueing_behind_a_saturated_server(triton_server):
    """Arrivals far above capacity with one request in flight: later requests wait for earlier ones, and the
    latency (from the scheduled send time) shows it, as coordinated-omission-free measurement must."""
    pixels = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    target = TritonTarget(triton_server.endpoint.grpc_url, pixels, triton_server.settings.triton_admin_key)
    service = closed_loop(target, concurrency=1, requests=30, warmup=2, processes=1)
    flooded = open_loop(target, rate=20 * service.qps, requests=60, warmup=2, processes=1, max_in_flight=1)
    assert flooded.requests == 60 and flooded.errors == {}
    # Request i waits for roughly i-1 service times: the median waits for ~30 of them.
    assert flooded.percentile_ms(50) > 5 * service.percentile_ms(50)
