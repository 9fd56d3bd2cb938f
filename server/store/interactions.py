"""Impressions and clicks from surfaces that showed Search results: durable log, CTR, training positives.

    python -m server.store.interactions ctr --db var/interactions.sqlite
    python -m server.store.interactions export-clicks --db var/interactions.sqlite --output clicks.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.durable import durable_sqlite

IMPRESSION, CLICK = 1, 2
QUERY_BATCH = 256


@dataclass(frozen=True)
class Interaction:
    request_id: str
    position: int
    image_id: str
    kind: int  # IMPRESSION or CLICK
    time: float
    score: float | None = None  # the cosine the result was shown with (None: logged before scores were kept)
    model_version: str = ""  # the encoder version whose cosine it is
    calibrates: bool = False  # logged by a caller trusted to refit the relevance curve (the `feedback` role)


class InteractionLog:
    def __init__(self, path: Path) -> None:
        self._db = durable_sqlite(path)
        self._lock = threading.Lock()
        self._db.execute("""CREATE TABLE IF NOT EXISTS interactions (request_id TEXT NOT NULL,
            position INTEGER NOT NULL, image_id TEXT NOT NULL, kind INTEGER NOT NULL, time REAL NOT NULL)""")
        self._db.execute("""CREATE TABLE IF NOT EXISTS queries (request_id TEXT PRIMARY KEY,
            query_image_id TEXT NOT NULL)""")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(interactions)")}
        for name, kind in (("score", "REAL"), ("model_version", "TEXT NOT NULL DEFAULT ''"),
                           ("calibrates", "INTEGER NOT NULL DEFAULT 0")):
            if name not in columns:  # a log written before scores were kept: its rows stay, without one
                self._db.execute(f"ALTER TABLE interactions ADD COLUMN {name} {kind}")
        # `judgements` looks up each impression's click: without this index that is a scan per impression.
        self._db.execute("CREATE INDEX IF NOT EXISTS interactions_by_result ON interactions "
                         "(request_id, position, kind)")
        self._pending_queries: list[tuple[str, str]] = []

    def record(self, items: list[Interaction]) -> int:
        with self._lock:
            self._flush_queries()  # a click refers to a query remembered before it
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO interactions (request_id, position, image_id, kind, time, score, model_version, "
                "calibrates) VALUES (?,?,?,?,?,?,?,?)",
                [(i.request_id, i.position, i.image_id, i.kind, i.time, i.score, i.model_version, int(i.calibrates))
                 for i in items])
            self._db.execute("COMMIT")
        return len(items)

    def remember_query(self, request_id: str, query_image_id: str) -> None:
        """For "more like this" searches: which image was the query (so clicks become training pairs).

        Buffered, written with the next interactions or every QUERY_BATCH queries: an fsync'd commit per
        search by ID cost the query path a disk flush (a crash forgets at most the last batch of these hints).
        """
        with self._lock:
            self._pending_queries.append((request_id, query_image_id))
            if len(self._pending_queries) >= QUERY_BATCH:
                self._flush_queries()

    def _flush_queries(self) -> None:
        if self._pending_queries:
            self._db.executemany("INSERT OR REPLACE INTO queries VALUES (?, ?)", self._pending_queries)
            self._pending_queries = []

    def ctr(self) -> dict[str, object]:
        """Clicks / impressions overall, by UTC day, and by result position (position bias)."""
        def rate(rows: list[tuple]) -> dict[str, dict[str, float]]:
            return {str(key): {"impressions": imp, "clicks": clk, "ctr": clk / imp if imp else 0.0}
                    for key, imp, clk in rows}
        agg = "SUM(kind = 1), SUM(kind = 2)"
        with self._lock:
            overall = self._db.execute(f"SELECT 'all', {agg} FROM interactions").fetchall()
            by_day = self._db.execute(f"SELECT date(time, 'unixepoch'), {agg} FROM interactions "
                                      "GROUP BY 1 ORDER BY 1").fetchall()
            by_pos = self._db.execute(f"SELECT position, {agg} FROM interactions GROUP BY 1 ORDER BY 1").fetchall()
        clean = [(k, int(i or 0), int(c or 0)) for k, i, c in overall]
        return {"overall": rate(clean)["all"], "by_day": rate(by_day), "by_position": rate(by_pos)}

    def click_pairs(self) -> list[tuple[str, str]]:
        """(query image ID, clicked image ID) for clicks on "more like this" searches."""
        with self._lock:
            self._flush_queries()
            return [tuple(r) for r in self._db.execute(
                "SELECT q.query_image_id, i.image_id FROM interactions i JOIN queries q USING (request_id) "
                "WHERE i.kind = 2 ORDER BY i.time")]

    def judgements(self, model_version: str) -> tuple[np.ndarray, np.ndarray]:
        """(score, clicked) of every impression shown with a score of `model_version` and logged by a trusted
        caller: the judged pairs a relevance calibration is refitted on (feedback_calibration.py)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.score, EXISTS (SELECT 1 FROM interactions c WHERE c.kind = 2 AND c.calibrates = 1 AND "
                "c.request_id = i.request_id AND c.position = i.position) FROM interactions i "
                "WHERE i.kind = 1 AND i.calibrates = 1 AND i.score IS NOT NULL AND i.model_version = ?",
                (model_version,)).fetchall()
        data = np.array(rows, dtype=np.float64).reshape(-1, 2)
        return data[:, 0], data[:, 1]

    def close(self) -> None:
        with self._lock:
            self._flush_queries()
            self._db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["ctr", "export-clicks"])
    parser.add_argument("--db", type=Path, default=Path("var/interactions.sqlite"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    log = InteractionLog(args.db)
    if args.command == "ctr":
        report = log.ctr()
        o = report["overall"]
        print(f"overall: {o['clicks']} clicks / {o['impressions']} impressions = CTR {o['ctr']:.3f}")
        for title in ("by_day", "by_position"):
            print(title.replace("_", " ") + ":")
            for key, v in report[title].items():
                print(f"  {key:>10}  {v['clicks']:6d} / {v['impressions']:6d}  CTR {v['ctr']:.3f}")
    else:
        lines = [json.dumps({"query_image_id": q, "clicked_image_id": c}) for q, c in log.click_pairs()]
        text = "\n".join(lines) + ("\n" if lines else "")
        if args.output:
            args.output.write_text(text)
        else:
            print(text, end="")


if __name__ == "__main__":
    main()
