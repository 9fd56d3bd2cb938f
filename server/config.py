"""Gateway settings: one dataclass, defaults documented in the README, overridable by env or CLI."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
ENCODER_MODEL_NAME = "encoder"


@dataclass
class Settings:
    """Everything a deployment can change. Env vars are VSEARCH_<FIELD> (upper case)."""

    # Gateway
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = 9464
    data_dir: Path = field(default_factory=lambda: REPO_ROOT / "var")
    # Triton: launched embedded unless triton_url points at an external server ("host:port", gRPC).
    triton_url: str | None = None
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    model_repository: Path = MODEL_REPOSITORY
    model_name: str = ENCODER_MODEL_NAME
    # Encoder version a new data directory is indexed with; afterwards the data directory's ACTIVE_MODEL file
    # decides (SwitchModel changes it).
    model_version: str = "1"
    # Input limits (decompression-bomb and abuse protection).
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    # Search
    default_k: int = 20
    max_k: int = 1000
    # Cosine above which two results are near-duplicates. Measured on real pairs
    # (benchmarks/results/duplicate_threshold.md): half-size JPEG q50 copies score p5 0.73, different pictures
    # p99.9 0.95 (the pairs above 0.87 are mostly the same artwork shipped twice); 0.87 collapses 80% of copies
    # and 0.2% of different-picture pairs.
    duplicate_threshold: float = 0.87

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f"VSEARCH_{f.name.upper()}")
            if raw is None:
                continue
            current = getattr(cls(), f.name)
            if isinstance(current, bool):
                values[f.name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(current, int):
                values[f.name] = int(raw)
            elif isinstance(current, float):
                values[f.name] = float(raw)
            elif isinstance(current, Path):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_settings(**overrides: object) -> Settings:
    """Settings whose every port is free: for tests and benchmarks that start their own services."""
    ports = {name: free_port() for name in ("grpc_port", "metrics_port", "triton_http_port", "triton_grpc_port",
                                            "triton_metrics_port")}
    return Settings(**{**ports, **overrides})  # type: ignore[arg-type]
