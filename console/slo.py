"""The live SLO panel's numbers: Search latency quantiles, QPS, shed and error rates over a sliding window.

Two sources, one shape of answer:
- `ScrapedMetrics` reads the gateway's own /metrics every few seconds and keeps the scrapes of the last minutes;
  a point is the difference between the scrape at t and the one a window earlier: quantiles interpolated inside
  the histogram's buckets exactly as Prometheus' `histogram_quantile` does, rates as counts over time.
- `PrometheusQueries` asks a Prometheus server that scrapes the gateway (`query_range`), for deployments that
  run one: the same expressions, computed by Prometheus.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LATENCY = "vsearch_request_duration_seconds"
SHED = "vsearch_admission_shed_total"
ERRORS = "vsearch_request_errors_total"
QUANTILES = (0.5, 0.95, 0.99)
METHOD = "Search"
SHED_CODE = "RESOURCE_EXHAUSTED"


@dataclass
class Scrape:
    """One reading of the counters the panel needs (Search only for latency and errors; shed: every stage)."""

    at: float
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    count: float = 0.0
    shed: float = 0.0
    errors: float = 0.0
    in_flight: float = 0.0  # gRPC calls being served at `at`, every method


def parse(text: str, at: float) -> Scrape:
    scrape = Scrape(at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == f"{LATENCY}_bucket" and labels.get("method") == METHOD:
                bound = float(labels["le"])
                scrape.buckets[bound] = scrape.buckets.get(bound, 0.0) + sample.value  # summed over codes
            elif sample.name == f"{LATENCY}_count" and labels.get("method") == METHOD:
                scrape.count += sample.value
            elif sample.name == "vsearch_requests_in_flight":
                scrape.in_flight += sample.value
            elif sample.name == SHED:
                scrape.shed += sample.value
            elif sample.name == ERRORS and labels.get("method") == METHOD and labels.get("code") != SHED_CODE:
                scrape.errors += sample.value  # sheds are counted apart
    return scrape


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts: linear inside the bucket the rank falls
    in (from 0 for the first bucket); in the +Inf bucket, the largest finite bound. None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


def point(new: Scrape, old: Scrape) -> dict[str, float | None]:
    """The panel's values over (old.at, new.at]: quantiles in ms, rates per second."""
    seconds = max(new.at - old.at, 1e-9)
    delta = {b: new.buckets[b] - old.buckets.get(b, 0.0) for b in new.buckets}
    out: dict[str, float | None] = {"t": new.at}
    for q in QUANTILES:
        value = bucket_quantile(q, delta)
        out[f"p{round(q * 100)}_ms"] = None if value is None else round(1000 * value, 2)
    out["qps"] = round((new.count - old.count) / seconds, 2)
    out["shed_per_s"] = round((new.shed - old.shed) / seconds, 3)
    out["errors_per_s"] = round((new.errors - old.errors) / seconds, 3)
    out["in_flight"] = new.in_flight
    return out


class ScrapedMetrics:
    """Scrapes `url` every `every_s` in a daemon thread; `series()` gives one point per scrape over `window_s`."""

    def __init__(self, url: str, every_s: float = 2.0, window_s: float = 30.0, keep_s: float = 600.0,
                 context: ssl.SSLContext | None = None, clock: Callable[[], float] = time.time) -> None:
        self.url, self.every_s, self.window_s, self.context, self.clock = url, every_s, window_s, context, clock
        self.scrapes: deque[Scrape] = deque(maxlen=max(2, int(keep_s / every_s)))
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=5, context=self.context) as response:
                scrape = parse(response.read().decode(), self.clock())
        except (OSError, ValueError) as exc:
            self.last_error = f"cannot read {self.url}: {exc}"
            return
        self.last_error = None
        with self._lock:
            self.scrapes.append(scrape)

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.scrape_once()
                self._stop.wait(self.every_s)

        self._thread = threading.Thread(target=run, name="slo-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def series(self) -> list[dict[str, float | None]]:
        with self._lock:
            scrapes = list(self.scrapes)
        out, base = [], 0  # base: the newest scrape at least a window before `new` (else the oldest)
        for n, new in enumerate(scrapes):
            while base + 1 < n and scrapes[base + 1].at <= new.at - self.window_s + self.every_s / 2:
                base += 1
            if n and new.count >= scrapes[base].count:  # not across a gateway restart
                out.append(point(new, scrapes[base]))
        return out


class PrometheusQueries:
    """The same panel from a Prometheus server's HTTP API (`query_range` over the last `span_s`)."""

    def __init__(self, base_url: str, window_s: float = 30.0, span_s: float = 600.0, step_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.base_url, self.window_s, self.span_s, self.step_s = base_url.rstrip("/"), window_s, span_s, step_s
        self.clock = clock
        self.last_error: str | None = None

    def expressions(self) -> dict[str, str]:
        w = f"{int(self.window_s)}s"
        rate = f'rate({LATENCY}_bucket{{method="{METHOD}"}}[{w}])'
        out = {f"p{round(q * 100)}_ms": f"1000 * histogram_quantile({q}, sum by (le) ({rate}))" for q in QUANTILES}
        out["qps"] = f'sum(rate({LATENCY}_count{{method="{METHOD}"}}[{w}]))'
        out["shed_per_s"] = f"sum(rate({SHED}[{w}]))"
        out["errors_per_s"] = f'sum(rate({ERRORS}{{method="{METHOD}",code!="{SHED_CODE}"}}[{w}]))'
        return out

    def _query_range(self, expr: str, start: float, end: float) -> dict[float, float]:
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": self.step_s})
        with urllib.request.urlopen(f"{self.base_url}/api/v1/query_range?{query}", timeout=5) as response:
            body = json.load(response)
        result = body.get("data", {}).get("result", [])
        return {float(t): float(v) for t, v in result[0]["values"]} if result else {}

    def start(self) -> None:
        """Nothing to run: Prometheus scrapes."""

    def stop(self) -> None:
        """Nothing to stop."""

    def series(self) -> list[dict[str, float | None]]:
        end = self.clock()
        try:
            columns = {name: self._query_range(expr, end - self.span_s, end)
                       for name, expr in self.expressions().items()}
        except (OSError, ValueError, KeyError) as exc:
            self.last_error = f"cannot query {self.base_url}: {exc}"
            return []
        self.last_error = None
        times = sorted(set().union(*columns.values()))

        def value(name: str, t: float) -> float | None:
            v = columns[name].get(t)
            return None if v is None or math.isnan(v) else round(v, 3)

        return [{"t": t, **{name: value(name, t) for name in columns}} for t in times]
