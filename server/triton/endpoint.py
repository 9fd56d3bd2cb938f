"""Where a Triton serves (gRPC for inference, HTTP for readiness, metrics for Prometheus) and waiting for it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tritonclient.http as triton_http

from server.embedding.contract import MODEL_NAME, TRITON_GRPC_KEY_HEADER, TRITON_KEY_HEADER

# Triton APIs that need the launcher's key (a header only the launcher, the gateways it configures and `vsearch
# publish` know): inference (so nothing else on the host can embed around the gateway's authentication and
# admission), loading, unloading and configuring models, shared memory, statistics, tracing, logging. Health and
# metadata stay open, on loopback only.
RESTRICTED = "inference,model-repository,model-config,shared-memory,statistics,trace,logging"
ADMIN_HEADER, GRPC_ADMIN_HEADER = TRITON_KEY_HEADER, TRITON_GRPC_KEY_HEADER  # gRPC: with Triton's prefix
KEY_FILE = "triton-admin.key"


def save_admin_key(data_dir: Path, key: str) -> Path:
    """The key for `vsearch publish` on this host: readable by this user only."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return path


def load_admin_key(data_dir: Path) -> str | None:
    path = data_dir / KEY_FILE
    return path.read_text().strip() if path.exists() else None


@dataclass
class TritonEndpoint:
    """Where a Triton serves: gRPC for inference, HTTP for readiness, metrics for Prometheus."""

    grpc_url: str
    http_url: str
    metrics_url: str | None = None

    @classmethod
    def external(cls, grpc_url: str, http_url: str | None = None, metrics_url: str | None = None) -> TritonEndpoint:
        host = grpc_url.rsplit(":", 1)[0]
        return cls(grpc_url, http_url or f"{host}:8000", metrics_url or f"http://{host}:8002/metrics")

    def wait_ready(self, model: str = MODEL_NAME, timeout_s: float = 120.0,
                   alive: Callable[[], bool] | None = None) -> None:
        """Block until `model` is READY; raise TimeoutError (or RuntimeError if the process died)."""
        deadline = time.monotonic() + timeout_s
        client = triton_http.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=2.0)
        try:
            while time.monotonic() < deadline:
                if alive is not None and not alive():
                    raise RuntimeError("tritonserver exited before the model became ready")
                try:
                    if client.is_model_ready(model):
                        return
                except Exception:
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        raise TimeoutError(f"model {model!r} not ready at {self.http_url} after {timeout_s:.0f}s")
