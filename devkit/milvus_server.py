"""The REAL Milvus standalone server (PyPI `milvus==2.3.5`) as a managed child process, on free loopback ports.

Used by `vsearch demo --milvus`, the tests (tests/fixtures/milvus.py) and the benchmarks.

`milvus-server` (the package's launcher, Python) unpacks the Milvus binary into the data directory and starts
`milvus run standalone` (Go; embedded etcd, rocksmq and local storage) as its child. The launcher does not
forward SIGTERM to that child, and the child ignores SIGTERM for a long time, so we:
- start the launcher in a session (process group) of its own, with PR_SET_PDEATHSIG=SIGKILL, and run it
  through this module's shim (`python -m devkit.milvus_server ...` calls the package's own `main()`) which
  gives the `milvus run standalone` child PR_SET_PDEATHSIG too: if pytest dies, the launcher dies, then Milvus;
- stop by process group: SIGTERM every member, wait, SIGKILL what is left, and check that /proc holds no
  process of the group any more. In practice the launcher exits on SIGTERM at once and the kernel then
  SIGKILLs `milvus run standalone` through PDEATHSIG: a stop is a crash for Milvus (0.2 s measured), which it
  recovers from through its WAL (tests/integration/test_milvus_store.py kills it right after an add and finds
  every row).

Measured here (2 shared cores): a first start 6-14 s (launcher unpacks ~200 MB of binaries into the data
directory, then Milvus starts), a restart on the same data directory ~10 s, a stop 0.2 s.

Every listening port (proxy, proxy internal, etcd, root/query/index/data coordinators, query/index/data nodes,
metrics/health) is a free one, so two instances, or a developer's own run, never collide. The embedded etcd
ignores `--etcd-port` for its own listeners (it listens on 2379/2380 by default): an etcd config file
(`ETCD_CONFIG_PATH`, read by Milvus' embedded etcd) moves its client and peer URLs to free ports as well.
A restart reuses the same ports: Milvus' coordinators find each other through sessions kept in etcd, and a
stale session naming the old ports made a restart on new ports wait ~50 s for the 30 s session TTL.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from server.core.config import free_port
from server.triton.supervisor import dying_with_parent

PORT_FLAGS = (
    "proxy-port", "proxy-internal-port", "etcd-port", "root-coord-port", "query-coord-port",
    "query-node-port", "index-coord-port", "index-node-port", "data-coord-port", "data-node-port",
)
EXTRA_PORTS = ("metrics", "etcd-peer")  # set through the environment, not launcher flags
METRICS_ENV = "VSEARCH_MILVUS_METRICS_PORT"
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def _group_pids(pgid: int) -> list[int]:
    """Every live (non-zombie) process whose process group is `pgid`, found by walking /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


@dataclass
class MilvusServer:
    """One Milvus standalone server: `start()`, `stop()`, `uri`; the data directory survives a stop."""

    data_dir: Path
    extra_config: dict[str, str] = field(default_factory=dict)  # milvus.yaml keys, e.g. proxy.timeTickInterval
    # Milvus settings the package's milvus.yaml template lacks (extra_config only rewrites keys it has), as Milvus'
    # environment overrides: the key upper-cased, dots as underscores, e.g. QUERYCOORD_UPDATENEXTTARGETINTERVAL.
    extra_env: dict[str, str] = field(default_factory=dict)
    # sealed segments memory-mapped from <data_dir>/mmap (`queryNode.mmapDirPath`), as deploy/milvus runs the query
    # nodes: the raw floats stay out of the heap (Milvus maps the files, then unlinks them: see `mapped_bytes`)
    mmap: bool = True
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0
    stop_seconds: float = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy-port']}"

    @property
    def mmap_dir(self) -> Path:
        return self.data_dir / "mmap"

    def mapped_bytes(self) -> tuple[int, int]:
        """(mapped, resident) bytes of the server's memory-mapped segment files: Milvus unlinks each file once
        mapped, so only /proc/<pid>/smaps still shows them (resident: pages in the page cache, not the heap)."""
        mapped = resident = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
            except OSError:
                continue
            inside = False
            for line in lines:
                if MAPPING.match(line):  # a mapping's header line: address range, mode, offset, device, inode, path
                    inside = str(self.mmap_dir) in line
                elif inside and line.startswith("Size:"):
                    mapped += int(line.split()[1]) * 1024
                elif inside and line.startswith("Rss:"):
                    resident += int(line.split()[1]) * 1024
        return mapped, resident

    @property
    def log_path(self) -> Path:
        return self.data_dir / "launcher.log"

    def start(self, timeout_s: float = 180.0) -> MilvusServer:
        """Start (first time on free ports, a restart on the same ones) and wait until pymilvus answers."""
        from pymilvus import MilvusClient

        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            names = (*PORT_FLAGS, *EXTRA_PORTS)
            self.ports = dict(zip(names, [free_port() for _ in names], strict=True))
        etcd_config = self.data_dir / "embed-etcd.yaml"
        client, peer = f"http://127.0.0.1:{self.ports['etcd-port']}", f"http://127.0.0.1:{self.ports['etcd-peer']}"
        etcd_config.write_text(
            f"listen-client-urls: {client}\nadvertise-client-urls: {client}\nlisten-peer-urls: {peer}\n"
            f"initial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n")
        args = [sys.executable, "-u", "-m", "devkit.milvus_server", "--data", str(self.data_dir)]
        for flag in PORT_FLAGS:
            args += [f"--{flag}", str(self.ports[flag])]
        for key, value in self.extra_config.items():
            args += ["--extra-config", f"{key}={value}"]
        env = {**os.environ, **self.extra_env, METRICS_ENV: str(self.ports["metrics"]),
               "ETCD_CONFIG_PATH": str(etcd_config)}
        if self.mmap:
            env["QUERYNODE_MMAPDIRPATH"] = str(self.mmap_dir)
        self.process = subprocess.Popen(
            dying_with_parent(args), stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            env=env, start_new_session=True)
        deadline = began + timeout_s
        last_error: Exception | None = None
        health = f"http://127.0.0.1:{self.ports['metrics']}/healthz"
        while time.monotonic() < deadline and self.process.poll() is None:
            try:  # Milvus' own health endpoint first: polling with pymilvus logs a traceback per attempt
                with urllib.request.urlopen(health, timeout=2) as response:
                    if b"OK" not in response.read():
                        raise ConnectionError("not healthy yet")
                client = MilvusClient(uri=self.uri, timeout=10)
                client.list_collections()
                client.close()
                self.start_seconds = time.monotonic() - began
                return self
            except Exception as exc:
                last_error = exc
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"milvus did not start ({last_error}); log: {self._log_tail()}")

    def pids(self) -> list[int]:
        """Processes of this server's group still alive (launcher and `milvus run standalone`)."""
        return _group_pids(self.process.pid) if self.process is not None else []

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group, wait up to grace_s, SIGKILL what is left; verify nothing remains."""
        if self.process is None:
            return
        began = time.monotonic()
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _group_pids(pgid) and time.monotonic() < deadline:
            self.process.poll()  # reap the launcher
            time.sleep(0.2)
        if _group_pids(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _group_pids(pgid) and time.monotonic() < deadline:
            self.process.poll()
            time.sleep(0.1)
        self.process.wait(timeout=10)
        left = _group_pids(pgid)
        self.process = None
        self.stop_seconds = time.monotonic() - began
        if left:
            raise RuntimeError(f"milvus processes still alive after SIGKILL: {left}")

    def kill(self) -> None:
        """Crash the server (SIGKILL to the whole group, no grace)."""
        self.stop(grace_s=0.0)

    def _log_tail(self) -> str:
        """The ends of the launcher's log and of Milvus' own (the launcher sends Milvus' output to data/logs)."""
        tails = []
        for path in (self.log_path, self.data_dir / "logs" / "milvus-stderr.log",
                     self.data_dir / "logs" / "milvus-stdout.log"):
            try:
                tails.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-1500:]}")
            except OSError:
                tails.append(f"--- {path.name}: (none)")
        return "\n".join(tails)


def _launch(argv: list[str]) -> None:
    """Run the package's `milvus-server` main() with PR_SET_PDEATHSIG on its child and our metrics port."""
    import milvus

    popen = subprocess.Popen

    class _DyingPopen(popen):  # type: ignore[misc,valid-type]
        def __init__(self, command: list[str], *args, **kwargs) -> None:
            super().__init__(dying_with_parent(command), *args, **kwargs)

    def resolve_port(self: milvus.MilvusServerConfig, port: int) -> tuple[int, socket.socket]:
        # The launcher scans upward from a busy port and silently uses the next one; a port left in TIME_WAIT
        # by a client of the previous run looked busy to its bind without SO_REUSEADDR. Use exactly ours.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            raise SystemExit(f"milvus port {port} is taken: {exc}") from exc
        sock.listen()
        return port, sock

    subprocess.Popen = _DyingPopen  # type: ignore[misc]
    milvus.MilvusServerConfig.resolve_port = resolve_port  # type: ignore[method-assign]
    for server in (milvus.default_server, milvus.debug_server):
        server.webservice_port = int(os.environ[METRICS_ENV])  # health/metrics port: scanned upward from here
    sys.argv = ["milvus-server", *argv]
    milvus.main()


if __name__ == "__main__":
    _launch(sys.argv[1:])
