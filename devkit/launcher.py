"""The one way to start the services as separate processes: the CLI, the tests and the benchmarks all use it.

The gateway runs as `python -m server.api.app` with its settings in VSEARCH_* environment variables
(`Settings.to_env`); it dies with the launching process (PDEATHSIG), like the embedded Triton.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.client import VisualSearchClient
from server.core.config import REPO_ROOT, Settings
from server.triton.endpoint import save_admin_key
from server.triton.supervisor import TritonServer, dying_with_parent


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM (a clean stop), SIGKILL if it is not done within `timeout_s`; reaped either way."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    settings: Settings
    log_path: Path

    @property
    def target(self) -> str:
        return self.settings.grpc_address

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.grpc_host}:{self.settings.metrics_port}/metrics"

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def root_certificates(self) -> bytes | None:
        """The gateway's certificate when it serves TLS (self-signed in tests: its own root)."""
        cert = self.settings.tls_cert_file
        return Path(cert).read_bytes() if cert and self.settings.tls_key_file else None

    def health(self) -> int:
        roots = self.root_certificates
        with (grpc.secure_channel(self.target, grpc.ssl_channel_credentials(roots)) if roots
              else grpc.insecure_channel(self.target)) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        self.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout_s)

    def wait_health(self, status: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited:\n{self._log_tail()}")
            try:
                if self.health() == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        raise TimeoutError(f"the gateway was not {name} after {timeout_s:.0f}s:\n{self._log_tail()}")

    def client(self, timeout_s: float = 30, token: str | None = None, retries: bool = True) -> VisualSearchClient:
        return VisualSearchClient(self.target, timeout_s=timeout_s, token=token,
                                  root_certificates=self.root_certificates, retries=retries)

    def stop(self, timeout_s: float = 20) -> None:
        terminate(self.process, timeout_s)

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()


def start_gateway(settings: Settings, log_path: Path | None = None, wait: bool = True) -> GatewayProcess:
    """The gateway in its own process, talking to the Triton at `settings.triton_url`."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or settings.data_dir / "gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(dying_with_parent([sys.executable, "-m", "server.api.app"]), cwd=REPO_ROOT,
                                   env={**os.environ, **settings.to_env()}, stdout=log, stderr=subprocess.STDOUT)
    gateway = GatewayProcess(process, settings, log_path)
    if wait:
        try:
            gateway.wait_serving()
        except BaseException:
            gateway.stop()
            raise
    return gateway


@dataclass
class Services:
    settings: Settings
    triton: TritonServer
    gateway: GatewayProcess


@contextmanager
def running_services(settings: Settings, log_dir: Path, announce: bool = True) -> Iterator[Services]:
    """Triton and the gateway, each in its own process; both stopped on exit (and on our death: PDEATHSIG).
    `Services.settings` are `settings` with the embedded Triton's URL and admin key."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if announce:
        print(f"starting Triton (gRPC :{settings.triton_grpc_port}, HTTP :{settings.triton_http_port}, "
              f"metrics :{settings.triton_metrics_port}) ...", flush=True)
    with TritonServer(settings, log_path=log_dir / "triton.log") as triton:
        settings = triton.settings.with_overrides(triton_url=triton.endpoint.grpc_url)
        save_admin_key(settings.data_dir, settings.triton_admin_key or "")
        if announce:
            print(f"starting gateway (gRPC {settings.grpc_address}, metrics :{settings.metrics_port}) ...",
                  flush=True)
        gateway = start_gateway(settings, log_dir / "gateway.log")
        try:
            yield Services(settings, triton, gateway)
        finally:
            gateway.stop()


@dataclass
class ConsoleProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, timeout_s: float = 10) -> None:
        terminate(self.process, timeout_s)


def start_console(gateway: str, port: int, log_path: Path, *options: str, https: bool = False,
                  timeout_s: float = 30.0) -> ConsoleProcess:
    """`python -m console` for `gateway` on loopback `port` (options: `--insecure-local`, or TLS and
    `--gateway-ca`, `--metrics-url`...), once its page answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(dying_with_parent([sys.executable, "-m", "console", "--gateway", gateway,
                                                      "--port", str(port), *options]),
                                   cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    console = ConsoleProcess(process, f"{'https' if https else 'http'}://127.0.0.1:{port}/", log_path)
    context = None
    if https:  # a self-signed certificate: this only waits for the page to answer
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the console exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(console.url, timeout=2, context=context):
                return console
        except OSError:
            time.sleep(0.2)
    console.stop()
    raise TimeoutError(f"the console did not answer at {console.url} within {timeout_s:.0f}s")
