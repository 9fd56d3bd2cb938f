"""Child processes die with their starter, and starting them does not disturb the starter's gRPC."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from server.core.config import REPO_ROOT

# A process with live gRPC traffic (a server and three clients calling it) that starts 40 children the way the
# launchers do. Run as a script: gRPC's at-fork handlers log to this process's stderr.
STARTER = textwrap.dedent("""
    import subprocess, sys, threading
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from server.triton.supervisor import dying_with_parent

    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    done = threading.Event()

    def call() -> None:
        while not done.is_set():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                for _ in range(20):
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for t in callers:
        t.start()
    for _ in range(40):
        subprocess.Popen(dying_with_parent(["true"]), start_new_session=True).wait()
    done.set()
    for t in callers:
        t.join()
    server.stop(None).wait()
    print("calls ok")
""")


def test_starting_children_in_a_grpc_process_runs_no_fork_handlers():
    """A preexec_fn made subprocess fork() and run gRPC's at-fork handlers: a 60 s stall of a gateway start in
    the test suite, and pollers of live channels broken (`epoll_wait ... Bad file descriptor`)."""
    run = subprocess.run([sys.executable, "-c", STARTER], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0 and "calls ok" in run.stdout, run.stderr[-2000:]
    assert "fork_posix" not in run.stderr and "Bad file descriptor" not in run.stderr, run.stderr[-2000:]


def test_no_launcher_uses_a_preexec_fn():
    packages = ("server", "devkit", "benchmarks", "jobs", "cli", "training", "evaluation", "clients", "reporting")
    offenders = [str(p.relative_to(REPO_ROOT)) for package in packages
                 for p in (REPO_ROOT / package).rglob("*.py") if "preexec_fn=" in p.read_text()]
    assert offenders == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_child_dies_with_the_process_that_started_it():
    starter = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
                               "from server.triton.supervisor import dying_with_parent\n"
                               "child = subprocess.Popen(dying_with_parent(['sleep', '300']))\n"
                               "print(child.pid, flush=True)\n"
                               "time.sleep(300)\n"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    child = int(starter.stdout.readline())
    assert _alive(child)
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived the process that started it"
