"""Prometheus metrics of the gateway. Names follow Prometheus conventions (base units, _total).

Every metric the gateway exports is defined here, so dashboards and rules have one place to look.
Buckets: the Search path costs ~3-10 ms on a 2-core CPU host (encoder dominates), a few tens of ms
under load; buckets are dense between 1 ms and 100 ms where the SLO (see deploy/prometheus) lives.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

# Seconds. Dense around the 5-50 ms region where Search latency and its SLO budget sit.
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
)


@dataclass(frozen=True)
class MetricsTls:
    cert_file: str
    key_file: str
    client_ca_file: str


MAX_CALLER_LABELS = 20  # bounded label cardinality: callers beyond these are counted as `other`


class GatewayMetrics:
    """All gateway metrics, registered on one registry (a fresh one per test server if wanted)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.request_latency = Histogram(
            "vsearch_request_duration_seconds",
            "Server-side latency of a gRPC call, by RPC method and final status code.",
            ["method", "code"], buckets=REQUEST_BUCKETS, registry=registry,
        )
        self.requests_in_flight = Gauge(
            "vsearch_requests_in_flight", "gRPC calls being served now.", ["method"], registry=registry,
        )
        self.errors = Counter(
            "vsearch_request_errors_total", "gRPC calls that ended with a non-OK status.",
            ["method", "code"], registry=registry,
        )
        self.stage_latency = Histogram(
            "vsearch_stage_duration_seconds",
            "Latency of one stage of the Search / AddImages path "
            "(decode, embed, search, verify, filter, persist).",
            ["stage"], buckets=STAGE_BUCKETS, registry=registry,
        )
        self.ann_searches = Histogram(
            "vsearch_ann_searches_per_query",
            "Store searches one query needed (more than 1 when duplicate collapse had to go back for more).",
            buckets=(1, 2, 3, 4, 6, 8), registry=registry,
        )
        self.verified_searches = Counter(
            "vsearch_verified_searches_total",
            "Searches re-scored by copy verification, by depth (usual; small_query: a query of few pixels, verified "
            "deeper, which reads more candidates' signatures and vectors).",
            ["depth"], registry=registry,
        )
        for depth in ("usual", "small_query"):
            self.verified_searches.labels(depth)
        self.filtered_results = Counter(
            "vsearch_filtered_results_total",
            "Candidates removed by a filter (reason: private, deleted, duplicate, query_image, min_score).",
            ["reason"], registry=registry,
        )
        self.index_vectors = Gauge(
            "vsearch_index_vectors", "Vectors in the FAISS index (including hidden ones).", registry=registry,
        )
        self.index_recall_estimate = Gauge(
            "vsearch_index_recall_at_10_estimate",
            "The compact index's 10-recall@10 against exact search at the depth it serves, measured on a sample of "
            "its own rows (rows: images or regions; server/store/faiss/search_tuning.py).",
            ["rows"], registry=registry,
        )
        self.admission_shed = Counter(
            "vsearch_admission_shed_total",
            "Requests refused by admission control (RESOURCE_EXHAUSTED), by stage and caller (the token's subject; "
            f"the first {MAX_CALLER_LABELS} callers seen by name, the rest as `other`).",
            ["stage", "caller"], registry=registry,
        )
        self._caller_labels: set[str] = set()
        self.images = Gauge(
            "vsearch_images", "Images by state (public, private, deleted).", ["state"], registry=registry,
        )
        self.images_added = Counter(
            "vsearch_images_added_total", "AddImages items by result (added, already_exists, rejected).",
            ["result"], registry=registry,
        )
        self.build_info = Info(
            "vsearch_build", "Model version, index type and index version serving now.", registry=registry,
        )

    def set_index(self, vectors: int, index_params: dict[str, str]) -> None:
        """The index's size and the compact indexes' measured recall, as GetStats reports it (`recall_at_10_estimate`
        and the region index's `regions_recall_at_10_estimate`; absent for exact and not yet measured indexes)."""
        self.index_vectors.set(vectors)
        for rows, prefix in (("images", ""), ("regions", "regions_")):
            if (estimate := index_params.get(f"{prefix}recall_at_10_estimate")) is not None:
                self.index_recall_estimate.labels(rows).set(float(estimate))

    def serve(self, port: int, addr: str = "127.0.0.1", tls: MetricsTls | None = None) -> None:
        """Expose /metrics on its own port (not on the gRPC port); with `tls`, over TLS to scrapers that present a
        client certificate its CA signed (mutual TLS: Prometheus scrapes with `tls_config`)."""
        if tls is None:
            start_http_server(port, addr=addr, registry=self.registry)
            return
        start_http_server(port, addr=addr, registry=self.registry, certfile=tls.cert_file, keyfile=tls.key_file,
                          client_cafile=tls.client_ca_file, client_auth_required=True)

    def shed(self, stage: str, caller: str) -> None:
        """A request of `caller` refused by admission; at most MAX_CALLER_LABELS callers get their own series."""
        if caller not in self._caller_labels and len(self._caller_labels) < MAX_CALLER_LABELS:
            self._caller_labels.add(caller)
        self.admission_shed.labels(stage, caller if caller in self._caller_labels else "other").inc()
