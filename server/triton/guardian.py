"""Triton's guardian: the one process that owns tritonserver, its Python-backend stubs, their /dev/shm regions
and the backend folder, and leaves none of them behind.

    python -m server.triton.guardian WORKDIR SHM_PREFIX -- tritonserver ARGS...

Its stdin is the lifeline from the launcher: end of file (the launcher stopped it, or died, even by kill -9)
means stop; after a clean stop's `stop` Triton gets 10 s to finish, after the launcher's death none. Triton runs
in its own process group with PDEATHSIG, the guardian is a child subreaper, so stubs orphaned by Triton's death
are re-parented to it rather than to PID 1 (which may never reap them: the stub only exits once its parent is
gone, and a zombie parent is not gone). When Triton exits, or the lifeline ends, the guardian kills the whole
group, reaps everything, removes `/dev/shm/SHM_PREFIX*` and WORKDIR, and exits with Triton's code. If the
guardian itself is killed with -9, Triton dies with it (PDEATHSIG) and the launcher's supervisor `sweep()`s the
stubs, shm regions and folder at once (a launcher that died too: the next start does).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "vsearch-triton-"  # workdirs are <tmp>/vsearch-triton-<guardian pid>-<random>
SHM_PREFIX = "vsearch_triton_"  # shm regions are /dev/shm/vsearch_triton_<guardian pid>_...
SHM_DIR = Path("/dev/shm")
BACKENDS, SHM = "{backends}", "{shm_prefix}"  # placeholders in the command, filled in by the guardian
STOP = b"stop"  # said on the lifeline before a clean stop closes it
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def dying_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, run so that the kernel SIGKILLs it when the thread that started it exits: util-linux `setpriv`
    sets PR_SET_PDEATHSIG, then a shell checks that its parent is still this process (one that died before the
    flag was set would never send the signal) and execs the command in its place (same pid). Not a
    `preexec_fn`: that makes `subprocess` fork() where it would vfork(), and fork() runs gRPC's at-fork handlers,
    which in a process with live channels stalled a start for 60 s and broke its pollers (`epoll_wait: Bad file
    descriptor`); tests/unit/test_lifetime.py."""
    check = f'test "$PPID" = {os.getpid()} && exec "$@"'
    return ["setpriv", "--pdeathsig", "KILL", "--", "sh", "-c", check, "sh", *command]


def _pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


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


def _alive(pid: int) -> bool:
    """True for a running process, False for none or a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"


def _reap_all() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _kill_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group (Triton unloads models), then SIGKILL whatever is left; reap as we go."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pgid):
        _reap_all()
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for _ in range(100):  # stubs re-parented to us: reap them so they are really gone
        _reap_all()
        if not _group_members(pgid):
            break
        time.sleep(0.02)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry.name))
    return members


def cleanup(workdir: Path, shm_prefix: str) -> None:
    for region in SHM_DIR.glob(f"{shm_prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
    shutil.rmtree(workdir, ignore_errors=True)


def sweep(tmp_root: Path | None = None) -> list[str]:
    """Remove what guardians killed with -9 left: stub processes, shm regions, workdirs whose owner is dead."""
    removed: list[str] = []
    tmp_root = tmp_root or Path(os.environ.get("TMPDIR", "/tmp"))
    dead: set[str] = set()
    for workdir in tmp_root.glob(f"{PREFIX}*-*"):
        owner = workdir.name[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            dead.add(owner)
    for region in SHM_DIR.glob(f"{SHM_PREFIX}*_*"):
        owner = region.name[len(SHM_PREFIX):].split("_", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            dead.add(owner)
    for owner in dead:
        marker = f"{PREFIX}{owner}-"
        for entry in Path("/proc").iterdir():  # stubs still running from a dead guardian's backend folder
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
                    removed.append(f"process {entry.name}")
        for workdir in tmp_root.glob(f"{marker}*"):
            cleanup(workdir, f"{SHM_PREFIX}{owner}_")
            removed.append(str(workdir))
        for region in SHM_DIR.glob(f"{SHM_PREFIX}{owner}_*"):
            region.unlink(missing_ok=True)
            removed.append(str(region))
    return removed


def left_behind(guardian_pid: int, processes: list[int], tmp_root: Path | None = None) -> list[str]:
    """What a Triton under this guardian could leave behind: live processes among `processes`, its shm regions,
    its backend folder. Empty once everything is cleaned up."""
    tmp_root = tmp_root or Path(os.environ.get("TMPDIR", "/tmp"))
    return ([f"process {p}" for p in processes if _alive(p)]
            + [str(r) for r in SHM_DIR.glob(f"{SHM_PREFIX}{guardian_pid}_*")]
            + [str(d) for d in tmp_root.glob(f"{PREFIX}{guardian_pid}-*")])


def main(argv: list[str]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    shm_prefix = f"{SHM_PREFIX}{os.getpid()}_"
    backends = assemble_backend_dir(workdir / "backends")
    command = [a.replace(BACKENDS, str(backends)).replace(SHM, shm_prefix) for a in argv[argv.index("--") + 1:]]
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping goes through the lifeline, never half-way
    triton = subprocess.Popen(dying_with_parent(command), stdin=subprocess.DEVNULL, start_new_session=True)
    code, grace_s = None, 0.0
    try:
        while code is None:
            readable, _, _ = select.select([sys.stdin], [], [], 0.2)
            if readable:
                said = os.read(sys.stdin.fileno(), 4096)
                if STOP in said:
                    grace_s = 10.0  # a clean stop: Triton finishes what it is doing and unloads its models
                if not said:
                    break  # lifeline closed: after a clean stop, or the launcher died (then nobody waits: kill now)
            code = triton.poll()
    finally:
        _kill_group(triton.pid, grace_s=grace_s if code is None else 0.0)
        if code is None:  # we stopped it (it may already be reaped by _kill_group)
            code = triton.returncode if triton.returncode is not None else 0
        cleanup(workdir, shm_prefix)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
