"""Crash-safe writes: a file is either its old content or its complete new content, and survives power loss; SQLite
databases that commit durably."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, target: Path) -> None:
    """fsync a fully written temporary file, rename it over `target`, fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_atomic(target: Path, data: bytes, durable: bool = True) -> None:
    """`durable=False`: still atomic (a reader sees the old file or the new one), but no fsync."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if durable:
            replace_durably(Path(tmp), target)
        else:
            os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def durable_sqlite(path: Path) -> sqlite3.Connection:
    """A connection for one thread at a time (callers hold a lock) in autocommit mode, WAL journal, fsync on every
    commit (synchronous=FULL): what a commit acknowledged survives power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db
