"""Image records of the embedded store in SQLite (WAL, synchronous=FULL): by image ID and by add position."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from server.core.durable import durable_sqlite
from server.core.ids import NAMESPACE_SEPARATOR
from server.store.base import ImageRecord, Visibility

_COLUMNS = "image_id, internal_id, owner_id, visibility, deleted, content_hash, model_version, added_at"


def _row(row: tuple) -> ImageRecord:
    return ImageRecord(row[0], row[1], row[2], Visibility(row[3]), bool(row[4]), row[5], row[6], row[7])


class SqliteMetadataStore:
    """One connection guarded by a lock: writes are tiny and serialized anyway; fsync on commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = durable_sqlite(path)  # an acknowledged add must survive power loss
        self._lock = threading.Lock()
        self._db.execute("""CREATE TABLE IF NOT EXISTS images (
            image_id TEXT PRIMARY KEY, internal_id INTEGER NOT NULL UNIQUE, owner_id TEXT NOT NULL,
            visibility INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, content_hash TEXT NOT NULL,
            model_version TEXT NOT NULL, added_at REAL NOT NULL)""")
        self._db.execute("CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash)")
        # The index version answers carry: bumped in the same transaction as every change, so it only grows,
        # across restarts and kill -9 alike.
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES ('version', 0)")
        self.version = self._db.execute("SELECT value FROM counters WHERE name = 'version'").fetchone()[0]
        # Searches name their hits through a connection of their own: a WAL reader never waits for a writer's
        # fsync, so ingest does not stall the search path.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader_lock = threading.Lock()

    def _bump(self) -> None:
        """Inside an open transaction, lock held."""
        self._db.execute("UPDATE counters SET value = value + 1 WHERE name = 'version'")
        self.version += 1

    def advance_version(self, at_least: int) -> None:
        with self._lock:
            self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'version'", (at_least,))
            self.version = max(self.version, at_least)

    def bump_version(self) -> None:
        """A change that is not a row change (the index was rebuilt)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._bump()
            self._db.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT under the lock; on failure roll back, the in-memory version with it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self.version = self._db.execute("SELECT value FROM counters WHERE name = 'version'").fetchone()[0]
                raise

    def _write(self, sql: str, rows: list[tuple]) -> None:
        with self._transaction():
            self._db.executemany(sql, rows)
            self._bump()

    def insert(self, records: list[ImageRecord]) -> None:
        self._write(f"INSERT INTO images ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", [
            (r.image_id, r.internal_id, r.owner_id, int(r.visibility), int(r.deleted), r.content_hash,
             r.model_version, r.added_at) for r in records])

    def _select(self, where: str, args: Iterable = ()) -> list[ImageRecord]:
        with self._lock:
            return [_row(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM images {where}", tuple(args))]

    def get(self, image_id: str) -> ImageRecord | None:
        found = self._select("WHERE image_id = ?", (image_id,))
        return found[0] if found else None

    def get_many(self, internal_ids: Iterable[int]) -> dict[int, ImageRecord]:
        ids = [int(i) for i in internal_ids]
        out: dict[int, ImageRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for r in self._select(f"WHERE internal_id IN ({','.join('?' * len(chunk))})", chunk):
                out[r.internal_id] = r
        return out

    def names(self, internal_ids: list[int]) -> dict[int, tuple[str, str]]:
        """internal id -> (image ID, content hash) of committed records: the hot path's lookup (a search names
        its few hits here instead of keeping every image's ID and hash in RAM)."""
        if not internal_ids:
            return {}
        with self._reader_lock:
            return {r[0]: (r[1], r[2]) for r in self._reader.execute(
                f"SELECT internal_id, image_id, content_hash FROM images WHERE internal_id IN "
                f"({','.join('?' * len(internal_ids))})", internal_ids)}

    def known(self, image_ids: Iterable[str]) -> set[str]:
        ids = list(image_ids)
        out: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            with self._lock:
                out.update(r[0] for r in self._db.execute(
                    f"SELECT image_id FROM images WHERE image_id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def refuse_nested_owners(self) -> None:
        """Catalogs written before owner IDs were checked may hold owners with '/' in their IDs, whose namespaces
        nest in another's (owner 'a' could probe and take 'a/b/...' IDs): refuse to serve them."""
        with self._lock:
            nested = [r[0] for r in self._db.execute(
                "SELECT DISTINCT owner_id FROM images WHERE instr(owner_id, ?) > 0 LIMIT 10", (NAMESPACE_SEPARATOR,))]
        if nested:
            raise RuntimeError(
                f"{self.path} holds images of owners whose IDs contain '{NAMESPACE_SEPARATOR}' ({nested}): owner "
                "namespaces must not nest. Delete those images, or re-add them under owner IDs without "
                f"'{NAMESPACE_SEPARATOR}', with the release that wrote them; then start again.")

    def _update(self, image_ids: list[str], assignment: str, args: tuple, still: str) -> list[ImageRecord]:
        """Apply an update to live (not deleted) images that need it; return their new records."""
        changed = []
        with self._transaction():
            for image_id in image_ids:
                cur = self._db.execute(f"UPDATE images SET {assignment} WHERE image_id = ? AND deleted = 0 "
                                       f"AND {still}", (*args, image_id))
                if cur.rowcount:
                    changed.append(image_id)
            if changed:
                self._bump()
        return [r for i in changed if (r := self.get(i))]

    def set_visibility(self, image_ids: list[str], visibility: Visibility) -> list[ImageRecord]:
        return self._update(image_ids, "visibility = ?", (int(visibility),), f"visibility != {int(visibility)}")

    def mark_deleted(self, image_ids: list[str]) -> list[ImageRecord]:
        return self._update(image_ids, "deleted = 1", (), "1")

    def iter_all(self, chunk: int = 10_000) -> Iterator[ImageRecord]:
        """Every record in internal-id order, read a chunk at a time (a catalog of 100M images never sits in
        memory as records)."""
        last = -1
        while rows := self._select("WHERE internal_id > ? ORDER BY internal_id LIMIT ?", (last, chunk)):
            yield from rows
            last = rows[-1].internal_id

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._reader_lock:
            self._reader.close()


def now() -> float:
    return time.time()
