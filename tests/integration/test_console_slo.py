"""The console's SLO panel against the real thing: under steady Search load on a real gateway, the p99 it shows
from its own scrapes of the gateway's histogram, the p99 it shows from a real Prometheus server, and Prometheus'
own histogram_quantile over the same window agree within the histogram's resolution."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from clients.client import NewImage
from devkit.launcher import start_console
from server.core.config import free_port
from server.core.metrics import REQUEST_BUCKETS
from tests.photos import small_jpeg

WINDOW_S = 10  # the panels' window (30 s by default)
LOAD_S = 15.0  # longer than the window, so the window read at the end is all load


def _bucket(seconds: float) -> int:
    return next((i for i, bound in enumerate(REQUEST_BUCKETS) if seconds <= bound), len(REQUEST_BUCKETS))


def _last_p99(console_url: str) -> float:
    with urllib.request.urlopen(f"{console_url}api/slo", timeout=10) as response:
        series = json.load(response)["series"]
    values = [p["p99_ms"] for p in series if p["p99_ms"] is not None]
    assert values, series[-3:]
    return values[-1] / 1000


def test_the_slo_panel_agrees_with_the_gateways_histogram_and_with_prometheus(prometheus, triton_server,
                                                                             fresh_gateway, tmp_path):
    queries = [small_jpeg(p, 320) for p in ("skimage/coffee", "skimage/rocket", "skimage/chelsea", "desert")]
    with fresh_gateway.client() as client:
        client.add_images(NewImage(f"slo/{i}", q, "slo") for i, q in enumerate(queries))
    server = prometheus({"vsearch-gateway": fresh_gateway.metrics_url.removeprefix("http://").removesuffix("/metrics")})
    server.wait_for('up{job="vsearch-gateway"} == 1')
    window = ("--slo-window", str(WINDOW_S))
    scraped = start_console(fresh_gateway.target, free_port(), tmp_path / "scraped.log", "--insecure-local",
                            "--metrics-url", fresh_gateway.metrics_url, *window)
    queried = start_console(fresh_gateway.target, free_port(), tmp_path / "queried.log", "--insecure-local",
                            "--prometheus-url", server.url, *window)
    done = threading.Event()

    def load(worker: int) -> int:
        n = 0
        with fresh_gateway.client() as client:
            while not done.is_set():
                client.search(queries[(worker + n) % len(queries)], k=5)
                n += 1
        return n

    try:
        callers = fresh_gateway.settings.admission_max_in_flight  # no sheds: their retries are not the SLO's
        with ThreadPoolExecutor(callers) as pool:
            counts = [pool.submit(load, w) for w in range(callers)]
            time.sleep(LOAD_S)
            panel = _last_p99(scraped.url)
            panel_from_prometheus = _last_p99(queried.url)
            direct = float(server.wait_for('histogram_quantile(0.99, sum by (le) (rate('
                                           f'vsearch_request_duration_seconds_bucket{{method="Search"}}[{WINDOW_S}s])))')
                           [0]["value"][1])
            done.set()
            searches = sum(c.result() for c in counts)
    finally:
        done.set()
        scraped.stop()
        queried.stop()
    print(f"{searches} searches in {LOAD_S:.0f} s: panel p99 {panel * 1000:.1f} ms (own scrapes), "
          f"{panel_from_prometheus * 1000:.1f} ms (Prometheus mode), Prometheus {direct * 1000:.1f} ms")
    # The three windows end a few seconds apart under the same steady load: the same or a neighbouring bucket.
    assert abs(_bucket(panel) - _bucket(direct)) <= 1, (panel, direct)
    assert abs(_bucket(panel_from_prometheus) - _bucket(direct)) <= 1, (panel_from_prometheus, direct)
