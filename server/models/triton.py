"""Embedded Triton: run the real `tritonserver` binary from the nvidia-pytriton wheel, no Docker.

Production GPU hosts run NVIDIA's Triton container instead; `TritonEndpoint.external(url)` covers that:
nothing is launched, we only wait for the model to be ready.

    python -m server.models.triton [--model-repository model_repository] [--triton-grpc-port 8001] ...
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import tritonclient.http as triton_http

from server.core.config import REPO_ROOT, Settings, add_arguments, from_args
from server.embedding.contract import IMAGE_MODEL_NAME, MODEL_NAME

log = logging.getLogger("triton")
_PR_SET_PDEATHSIG = 1


def _pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGKILLs Triton if the launching process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def assemble_backend_dir(target: Path) -> Path:
    """libtriton_python.so + the stub for *this* Python, in one directory (what Triton expects)."""
    root = _pytriton_root()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    shutil.copy2(stub, python_dir / stub.name)
    return target


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
                   alive: callable | None = None) -> None:
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


class TritonServer:
    """A tritonserver child process. Use as a context manager; `stop()` is idempotent."""

    def __init__(self, settings: Settings | None = None, model_config_name: str | None = None,
                 log_path: Path | None = None, log_verbose: int = 0) -> None:
        self.settings = settings or Settings()
        self.model_config_name = model_config_name
        self.log_path = log_path
        self.log_verbose = log_verbose
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_tail: deque[str] = deque(maxlen=60)
        s = self.settings
        self.endpoint = TritonEndpoint(
            grpc_url=f"127.0.0.1:{s.triton_grpc_port}",
            http_url=f"127.0.0.1:{s.triton_http_port}",
            metrics_url=f"http://127.0.0.1:{s.triton_metrics_port}/metrics",
        )

    def command(self, backend_dir: Path) -> list[str]:
        s = self.settings
        cmd = [
            str(_pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={s.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-port={s.triton_http_port}", f"--grpc-port={s.triton_grpc_port}",
            f"--metrics-port={s.triton_metrics_port}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
            "--allow-cpu-metrics=true", "--metrics-interval-ms=1000",
            "--exit-on-error=true", "--strict-readiness=true",
            # Explicit control: a newly published version is loaded by a `load_model` call (reload), never by
            # polling the repository behind the operator's back.
            "--model-control-mode=explicit", f"--load-model={s.model_name}", f"--load-model={IMAGE_MODEL_NAME}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.model_config_name:
            cmd.append(f"--model-config-name={self.model_config_name}")
        return cmd

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        self._workdir = tempfile.TemporaryDirectory(prefix="vsearch-triton-")
        backend_dir = assemble_backend_dir(Path(self._workdir.name) / "backends")
        env = dict(os.environ)
        libs = Path(_pytriton_root()).parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        # The Python backend's stub imports numpy/onnxruntime from the interpreter found on PATH, and the
        # image model imports this checkout's preprocessing (`server.embedding.imaging`).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        limits = self.settings.to_env()
        env.update({k: limits[k] for k in ("VSEARCH_MAX_IMAGE_BYTES", "VSEARCH_MAX_IMAGE_PIXELS")})
        self.process = subprocess.Popen(
            self.command(backend_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            preexec_fn=die_with_parent, start_new_session=True,
        )
        threading.Thread(target=self._forward_log, daemon=True, name="triton-log").start()
        try:
            for model in (self.settings.model_name, IMAGE_MODEL_NAME):
                self.endpoint.wait_ready(model, timeout_s, alive=lambda: self.process.poll() is None)
        except Exception as exc:
            tail = "\n".join(self._log_tail)
            self.stop()
            raise RuntimeError(f"Triton did not become ready: {exc}\n--- last log lines ---\n{tail}") from exc
        log.info("Triton ready (pid %d): gRPC %s", self.process.pid, self.endpoint.grpc_url)
        return self

    def _forward_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        sink = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - lives as long as the thread
        try:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self._log_tail.append(line)
                log.debug("%s", line)
                if sink:
                    sink.write(raw)
                    sink.flush()
        finally:
            if sink:
                sink.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (Triton unloads models and exits), then SIGKILL the whole process group."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            # Python-backend stubs are in Triton's process group; make sure none outlives it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(settings: Settings, model_config_name: str | None = None, log_path: Path | None = None) -> None:
    """Serve until SIGTERM / Ctrl-C (`vsearch triton`)."""
    server = TritonServer(settings, model_config_name=model_config_name, log_path=log_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with server:
        print(f"Triton ready: gRPC {server.endpoint.grpc_url}, HTTP {server.endpoint.http_url}, "
              f"metrics {server.endpoint.metrics_url}", flush=True)
        while not stop.wait(0.5) and server.process.poll() is None:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the embedded Triton server until Ctrl-C / SIGTERM.")
    add_arguments(parser, ("model_repository", "model_name", "triton_http_port", "triton_grpc_port",
                           "triton_metrics_port"))
    parser.add_argument("--model-config-name", default=None, help="e.g. gpu or no_batching (configs/<name>.pbtxt)")
    parser.add_argument("--log-file", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(from_args(args), args.model_config_name, args.log_file)


if __name__ == "__main__":
    main()
