"""Settings: one dataclass, defaults documented in the README, overridable by env (VSEARCH_<FIELD>) or flags.

Every command line (the gateway, `vsearch`, the Triton launcher) takes its flags from `add_arguments`, which
derives them from the fields, and a launcher hands settings to a child process as environment variables
(`to_env`), so no field is listed by hand anywhere else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"


FLAT_THRESHOLD = 20_000  # vectors; below, exact search costs < ~3 ms and IVF training has too few points


@dataclass(frozen=True)
class Settings:
    """Everything a deployment can change. Env vars are VSEARCH_<FIELD> (upper case). Frozen: a process reads its
    settings once at start-up; a launcher derives changed copies (`with_overrides`) for the processes it starts."""

    # Gateway
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = 9464
    data_dir: Path = field(default_factory=lambda: REPO_ROOT / "var")
    # Where the vectors live: `faiss` (embedded in this process, the default) or `milvus` (a Milvus cluster at
    # milvus_uri; gateways become stateless replicas). Milvus index: IVF_SQ8, HNSW, IVF_PQ, GPU_IVF_PQ, GPU_CAGRA.
    index_backend: str = "faiss"
    milvus_uri: str | None = None
    milvus_index: str = "IVF_SQ8"  # codes in the heap, floats memory-mapped; measured: docs/milvus-scale.md
    milvus_timeout_s: float = 3.0  # per call to Milvus: down means UNAVAILABLE within seconds, not a hang
    milvus_prefix: str = "vsearch"  # collections `<prefix>_encoder_N`, live alias `<prefix>_live`
    # Originals of indexed images (re-embedded by a model switch): a path or a URL (s3://bucket/prefix) that
    # every gateway reaches; default <data_dir>/blobs.
    blob_url: str | None = None
    # Access control (server/api/auth.py, docs/OPERATIONS.md). "jwt": bearer tokens verified against the public
    # keys of a JWKS file, over TLS (both required). "insecure-local": no TLS, no tokens, every caller is admin;
    # loopback only, announced loudly (make demo, tests).
    auth_mode: str = "jwt"
    jwt_keys_file: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = "visual-search"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None  # set: mutual TLS, clients must present a certificate it signed
    # /metrics in jwt mode is served over TLS to scrapers presenting a client certificate this CA signed
    # (Prometheus' tls_config); unset: tls_client_ca_file. Without either, jwt mode refuses to start unless
    # metrics_port is 0: the metrics show private and deleted counts that GetStats hides from readers.
    metrics_client_ca_file: str | None = None
    # Triton: launched embedded unless triton_url points at an external server ("host:port", gRPC).
    triton_url: str | None = None
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    model_repository: Path = MODEL_REPOSITORY
    # Header value Triton requires on its model-control APIs; the launcher generates one per start if unset.
    triton_admin_key: str | None = None
    model_name: str = "encoder"  # Triton's name of the encoder (server/embedding/contract.py: MODEL_NAME)
    # Encoder version a new data directory is indexed with; unset: the version the promotion gate promoted
    # (<model_repository>/<model_name>/promoted.json, server/model_versions/registry.py), else 1. Afterwards the data
    # directory's ACTIVE_MODEL file decides (SwitchModel changes it).
    model_version: str | None = None
    # A new catalog (FAISS directory or Milvus collection) also indexes embeddings of the regions in
    # server/core/regions.py, so a crop of an indexed picture finds it (issue 16; benchmarks/results/quality.md).
    # Costs 1 + 6 encoder inputs per indexed image and 7x the vectors; queries still embed once. A catalog keeps
    # what it was created with.
    index_regions: bool = True
    # FAISS catalogs below this many vectors search exactly (Flat); above, the compact index (codes in RAM, exact
    # re-rank from the vector log: server/store/faiss/params.py).
    index_flat_threshold: int = FLAT_THRESHOLD
    # Input limits (decompression-bomb and abuse protection).
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    # Decode, crop and resize in the gateway instead of in Triton's image model (benchmarks/results/e2e.md).
    decode_in_gateway: bool = False
    # SearchBatch: decoded pixels of all its images together (read from the headers before decoding).
    max_batch_pixels: int = 100_000_000
    # Admission control (server/runtime/admission.py): in-flight searches and their decoded pixels; a search
    # waits to start only if it can still finish within the latency budget (the Search SLO) and its deadline,
    # else RESOURCE_EXHAUSTED at once.
    admission_max_in_flight: int = 4
    admission_max_pixels: int = 100_000_000
    admission_latency_budget_ms: float = 100.0  # the p99 latency SLO of deploy/prometheus/rules/alerts.yml
    # If > 0: fewer searches at once while one takes longer than this (AIMD). Off by default: on the shared
    # benchmark host it cost goodput without bringing p99 down (benchmarks/results/overload.md).
    admission_target_service_ms: float = 0.0
    # Fairness between callers (the token's subject): while others are active, one caller may hold at most this
    # part of a stage's slots and decode cost; over it, RESOURCE_EXHAUSTED at once (issue 25). A lone caller may
    # use the whole stage.
    admission_share: float = 0.5
    # Other shares by caller or role: "catalog-indexer=0.9,role:admin=1.0" (a subject's own entry wins, else its
    # roles' largest).
    admission_shares: str | None = None
    ingest_max_in_flight: int = 2  # AddImages chunks (of 32 images) being decoded/embedded at once
    # Search
    default_k: int = 20
    max_k: int = 1000
    # Cosine above which two results are near-duplicates. Measured on real pairs
    # (benchmarks/results/duplicate_threshold.md): half-size JPEG q50 copies score p5 0.73, different pictures
    # p99.9 0.95 (the pairs above 0.87 are mostly the same artwork shipped twice); 0.87 collapses 80% of copies
    # and 0.2% of different-picture pairs.
    # Since issue 16 each model version carries its own threshold, calibrated for a stated precision on held-out
    # labelled pairs (model_repository/encoder/<v>/calibration.json); this setting is the fallback for a
    # version without calibration, and overrides the calibrated value when given explicitly.
    duplicate_threshold: float | None = None
    # Re-score the candidates that tie with the best by their pixel signatures, so an edited copy's source
    # ranks above its look-alikes (server/query/verification.py; docs/QUALITY.md, 'Copy verification').
    copy_verification: bool = True
    # Every this many seconds the relevance curve is refitted from this gateway's logged impressions and clicks
    # (server/model_versions/feedback_calibration.py); 0 keeps the version's shipped curve.
    relevance_refit_s: float = 300.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        defaults = cls()
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(_env_name(f.name))
            if raw is not None:
                values[f.name] = _parse(getattr(defaults, f.name), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The settings as VSEARCH_* variables: how a launcher hands them to a child process."""
        return {_env_name(f.name): str(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}

    def with_overrides(self, **overrides: object) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


def _env_name(name: str) -> str:
    return f"VSEARCH_{name.upper()}"


def _parse(default: object, raw: str) -> object:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    for kind in (int, float, Path):
        if isinstance(default, kind):
            return kind(raw)
    return raw or None if default is None else raw


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per settings field (`--grpc-port` for grpc_port), default None: unset flags leave the env value."""
    defaults = Settings()
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        default = getattr(defaults, f.name)
        kind = type(default) if default is not None and not isinstance(default, bool) else str
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                            help=f"default {default} (env {_env_name(f.name)})")


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given on the command line."""
    return Settings.from_env(**{f.name: getattr(args, f.name, None) for f in fields(Settings)})


# Ports handed to a server that binds them later are picked below Linux's ephemeral range (32768-60999 here):
# a port the OS picks (bind to 0) lies inside that range, where any outgoing connection of any process may take
# it before the server binds it. A CI run lost a Milvus start that way (its health port never came up).
UNEPHEMERAL_PORTS = (20000, 32768)
_handed_out: set[int] = set()  # never hand the same port out twice in one process


def free_port_range(size: int = 1) -> int:
    """First of `size` consecutive TCP ports free on loopback right now, below the ephemeral range."""
    low, high = UNEPHEMERAL_PORTS
    for _ in range(500):
        start = random.randrange(low, high - size)
        ports = range(start, start + size)
        if _handed_out.intersection(ports):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.update(ports)
        return start
    raise RuntimeError(f"no {size} consecutive free loopback ports in {low}-{high}")


def free_port() -> int:
    """A TCP port free on loopback right now, which no outgoing connection can take before its server binds it."""
    return free_port_range(1)


def loopback_settings(**overrides: object) -> Settings:
    """Settings whose every port is free, in insecure-local mode unless overridden: for tests and benchmarks that
    start their own services on loopback."""
    ports = {name: free_port() for name in ("grpc_port", "metrics_port", "triton_http_port", "triton_grpc_port",
                                            "triton_metrics_port")}
    return Settings(**{"auth_mode": "insecure-local", **ports, **overrides})  # type: ignore[arg-type]
