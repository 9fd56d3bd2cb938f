"""Embedded Triton: run the real `tritonserver` binary from the nvidia-pytriton wheel, no Docker.

Production GPU hosts run NVIDIA's Triton container instead; `TritonEndpoint.external(url)` covers that:
nothing is launched, we only wait for the model to be ready.

    python -m server.triton.supervisor [--model-repository model_repository] [--triton-grpc-port 8001] ...
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from server.core.config import REPO_ROOT, Settings, add_arguments, from_args
from server.embedding.contract import IMAGE_MODEL_NAME
from server.triton import guardian
from server.triton.endpoint import ADMIN_HEADER, RESTRICTED, TritonEndpoint
from server.triton.guardian import _pytriton_root, dying_with_parent

__all__ = ["TritonEndpoint", "TritonServer", "dying_with_parent"]

log = logging.getLogger("triton")
RESTART_BACKOFF_S, MAX_BACKOFF_S = 0.5, 30.0


class TritonServer:
    """tritonserver under its guardian (server/triton/guardian.py), restarted with backoff when it dies.

    Use as a context manager; `stop()` is idempotent. `restarts` counts the supervised restarts."""

    def __init__(self, settings: Settings | None = None, model_config_name: str | None = None,
                 log_path: Path | None = None, log_verbose: int = 0, supervise: bool = True) -> None:
        settings = settings or Settings()
        # The key Triton requires on its restricted APIs: generated per launcher unless the settings name one.
        self.settings = settings if settings.triton_admin_key else settings.with_overrides(
            triton_admin_key=secrets.token_urlsafe(24))
        self.model_config_name, self.log_path, self.log_verbose = model_config_name, log_path, log_verbose
        self.supervise = supervise
        self.process: subprocess.Popen[bytes] | None = None  # the guardian
        self.restarts = 0
        self._log_tail: deque[str] = deque(maxlen=60)
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        s = self.settings
        self.endpoint = TritonEndpoint(
            grpc_url=f"127.0.0.1:{s.triton_grpc_port}",
            http_url=f"127.0.0.1:{s.triton_http_port}",
            metrics_url=f"http://127.0.0.1:{s.triton_metrics_port}/metrics",
        )

    def command(self, backend_dir: Path | str, shm_prefix: str) -> list[str]:
        s = self.settings
        cmd = [
            str(_pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={s.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--http-port={s.triton_http_port}", f"--grpc-port={s.triton_grpc_port}",
            f"--metrics-port={s.triton_metrics_port}",
            # Loopback only, and the model-control/repository APIs need the key only launcher and gateway hold.
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={s.triton_admin_key}",
            f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={s.triton_admin_key}",
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
        for leftover in guardian.sweep():
            log.warning("removed a leftover of a Triton killed with its guardian: %s", leftover)
        self._stopping.clear()
        self._launch(timeout_s)
        if self.supervise and (self._supervisor is None or not self._supervisor.is_alive()):
            self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="triton-supervisor")
            self._supervisor.start()
        return self

    def _launch(self, timeout_s: float) -> None:
        env = dict(os.environ)
        libs = Path(_pytriton_root()).parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        # The Python backend's stub imports numpy/onnxruntime from the interpreter found on PATH, and the
        # image model imports this checkout's preprocessing (`server.embedding.imaging`).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        limits = self.settings.to_env()  # the image model checks the gateway's limits
        env.update({k: limits[k] for k in ("VSEARCH_MAX_IMAGE_BYTES", "VSEARCH_MAX_IMAGE_PIXELS")})
        if self.log_path is not None:  # before Triton writes a line (if it cannot be made, the reader still drains)
            with contextlib.suppress(OSError):
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The guardian fills in its backend folder and shm prefix (both named after its pid, so a sweep can tell
        # whose they are); it runs in a session of its own without PDEATHSIG, to clean up after our death.
        process = subprocess.Popen(
            [sys.executable, "-m", "server.triton.guardian", "--", *self.command(guardian.BACKENDS,
                                                                                 guardian.SHM)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True)
        self.process = process
        threading.Thread(target=self._forward_log, args=(process,), daemon=True, name="triton-log").start()
        try:
            for model in (self.settings.model_name, IMAGE_MODEL_NAME):
                self.endpoint.wait_ready(model, timeout_s,
                                         alive=lambda: process.poll() is None and not self._stopping.is_set())
        except Exception as exc:
            tail = "\n".join(self._log_tail)
            self._stop_process(process)
            raise RuntimeError(f"Triton did not become ready: {exc}\n--- last log lines ---\n{tail}") from exc
        if self._stopping.is_set():  # stop() was called while this (re)start was under way
            self._stop_process(process)
            return
        log.info("Triton ready (pid %s, guardian %d): gRPC %s", self.pid, process.pid, self.endpoint.grpc_url)

    def _supervise(self) -> None:
        """Restart Triton when it dies, with exponential backoff (reset after a minute of good health)."""
        backoff = RESTART_BACKOFF_S
        while not self._stopping.is_set():
            process = self.process
            if process is None or process.poll() is None:
                self._stopping.wait(0.2)
                continue
            if self._stopping.is_set():
                break
            up_since = time.monotonic()
            log.error("Triton exited with code %s; restarting in %.1f s", process.returncode, backoff)
            # The guardian itself may be what died (kill -9): its Triton died with it (PDEATHSIG), but the stubs,
            # their shm regions and the backend folder are ours to remove now, not at the next start.
            for leftover in guardian.sweep():
                log.warning("removed what the dead guardian left: %s", leftover)
            if self._stopping.wait(backoff):
                break
            try:
                self._launch(120.0)
                self.restarts += 1
            except Exception:
                log.exception("Triton restart failed")
            backoff = RESTART_BACKOFF_S if time.monotonic() - up_since > 60 else min(backoff * 2, MAX_BACKOFF_S)

    def _forward_log(self, process: subprocess.Popen[bytes]) -> None:
        """Drains the pipe to its end whatever happens to the log file: a full pipe would block Triton."""
        assert process.stdout is not None
        sink = None
        try:
            sink = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - lives with the thread
        except OSError:
            log.exception("cannot write Triton's log to %s; keeping only its tail in memory", self.log_path)
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._log_tail.append(line)
            log.debug("%s", line)
            if sink is not None:
                try:
                    sink.write(raw)
                    sink.flush()
                except OSError:
                    sink = None
        if sink is not None:
            sink.close()

    @property
    def pid(self) -> int | None:
        """tritonserver's pid (the guardian's only child), None when it is not running."""
        if self.process is None or self.process.poll() is not None:
            return None
        for _ in range(50):
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
                if children:
                    return int(children[0])
            time.sleep(0.02)
        return None

    def _stop_process(self, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
        """Close the lifeline: the guardian stops Triton, kills the stubs, removes shm and workdir, exits."""
        if process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                process.stdin.write(guardian.STOP)
                process.stdin.flush()
            with contextlib.suppress(OSError, ValueError):
                process.stdin.close()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                guardian.sweep()

    def stop(self, timeout_s: float = 20.0) -> None:
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout_s + 130)  # a restart under way finishes (or fails) and stops itself
        self._supervisor = None
        if self.process is not None:
            self._stop_process(self.process, timeout_s)

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
