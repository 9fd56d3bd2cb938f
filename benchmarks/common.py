"""Shared plumbing for benchmarks: CPU seconds spent by a process and by its process group.

Where results go and how they are written: reporting/results.py."""

from __future__ import annotations

import os
from pathlib import Path


def group_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every live process in `pid`'s process group (Triton and its backend stubs)."""
    group, total = os.getpgid(pid), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # fields after the command: state, ppid, pgrp, ..., utime (11), stime (12)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
