"""The compact layout's search depth, measured on the corpus being served: the fewest IVF lists (and, where more
lists stop helping, the shallowest re-rank) whose searches find TARGET_RECALL of the exact top 10.

Why measured and not fixed: how many lists a query's neighbours spread over depends on the corpus. On real package
embeddings 16 of 4,096 lists found 0.951 of the top 10 and on vectors generated to look like them 0.996
(benchmarks/results/real_recall.md); an outside measurement found 0.93 on 1M real embeddings. On the generated 10M
rows the loss was in the codes instead: more lists gained nothing, a deeper re-rank did. A fixed setting is slow on
easy corpora and loses recall on hard ones, and nobody sees it until someone measures from outside.

How: SAMPLE stored rows are the queries, each one's own image's rows left out of its truth and of its results (a
new image has none in the index). Their exact top 10 comes from one scan of the stored rows. The served search
(codes, then the exact re-rank from disk) runs at each count of PROBE_LADDER, fewest first, until one reaches
TARGET_RECALL; if recall stops rising first (a step gains under PLATEAU_GAIN), the re-rank deepens along
K_FACTOR_LADDER at that count instead. The index runs this off the search path after every rebuild, after loading a
snapshot without a saved tuning, and when the corpus has doubled since; the result is saved beside the snapshot.
benchmarks/results/search_tuning.md compares the estimate with the recall of queries from images the index never saw.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from server.core.durable import replace_durably
from server.store.faiss.vector_log import as_float32

log = logging.getLogger("index.tuning")

K = 10
# Estimated from stored rows; queries from images the index never saw find slightly less (search_tuning.md).
TARGET_RECALL = 0.97
SAMPLE = 200  # queries: the estimate's standard error is ~0.005 at recall 0.97
PROBE_LADDER = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
K_FACTOR_LADDER = (60, 80, 120)  # re-rank depths (x k candidates) past the served 40
PLATEAU_GAIN = 0.002  # a step of the ladder gaining less: more lists no longer help
SCAN_ROWS = 32_768  # stored rows per step of the exact scan (float32: 168 MB at 1280-d)

# (queries, k, nprobe, k_factor) -> ids [queries, k], best first: the served search at this depth.
Search = Callable[[np.ndarray, int, int, int], np.ndarray]


@dataclass(frozen=True)
class SearchTuning:
    nprobe: int
    k_factor: int
    recall_at_10: float  # estimated at (nprobe, k_factor)
    rows: int  # corpus size when measured
    nlist: int
    curve: tuple[tuple[int, int, float], ...]  # (nprobe, k_factor, estimated 10-recall@10) as far as measured

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        replace_durably(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SearchTuning | None:
        """The saved tuning, or None (none saved, or unreadable: the index measures again)."""
        try:
            d = json.loads(path.read_text())
            return cls(int(d["nprobe"]), int(d["k_factor"]), float(d["recall_at_10"]), int(d["rows"]),
                       int(d["nlist"]), tuple((int(p), int(f), float(r)) for p, f, r in d["curve"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def sample_rows(n: int, size: int = SAMPLE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(size, n), replace=False))


def exact_top_of(blocks: Iterable[tuple[int, np.ndarray]], queries: np.ndarray, k: int = K,
                 exclude: np.ndarray | None = None, group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products ([queries, k] scores and ids, best first) over (first row id, rows) blocks;
    `exclude[q]`: the first of `group` consecutive rows query q must not find (its own image's)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start, rows in blocks:
        s = queries @ np.asarray(rows, dtype=np.float32).T
        for offset in range(group if exclude is not None else 0):
            cols = exclude + offset - start
            own = (cols >= 0) & (cols < s.shape[1])
            s[np.flatnonzero(own), cols[own]] = -np.inf
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def blocks_of(stored: np.ndarray, rows: int = SCAN_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row id, float32 rows) over a memory map of the vector log: read once, in order (float16 rows through
    the log's own decoder)."""
    return ((start, as_float32(np.asarray(stored[start:start + rows]))) for start in range(0, len(stored), rows))


def recall_at_k(found: np.ndarray, truth: np.ndarray, rows: np.ndarray, group: int = 1, k: int = K) -> float:
    """Mean share of each query's true top k among its first k results outside its own image's rows."""
    hits = [len(set([int(i) for i in f if i // group != own // group][:k]) & set(t.tolist())) / k
            for f, t, own in zip(found, truth, rows, strict=True)]
    return float(np.mean(hits))


def measure(search: Search, stored: np.ndarray, nlist: int, k_factor: int, group: int = 1,
            target: float = TARGET_RECALL, sample: int = SAMPLE, seed: int = 0, whole_curve: bool = False
            ) -> SearchTuning:
    """The fewest lists of PROBE_LADDER (capped at nlist) reaching `target` on a sample of the stored rows at the
    served re-rank depth `k_factor`; where recall plateaus below it, the shallowest deeper re-rank at that count that
    does; the best measured when none does. `group`: rows per image (consecutive), left out with the query: a new
    image has no rows of its own in the index. `whole_curve`: every probe count (benchmarks), not only up to the
    chosen one."""
    rows = sample_rows(len(stored), sample, seed)
    queries = np.asarray(stored[rows], dtype=np.float32)
    own = rows - rows % group
    truth = exact_top_of(blocks_of(stored), queries, exclude=own, group=group)[1]
    curve: list[tuple[int, int, float]] = []

    def point(nprobe: int, factor: int) -> float:
        found = search(queries, K + group, nprobe, factor)  # + group: its own image's rows come back
        recall = recall_at_k(found, truth, rows, group)
        curve.append((nprobe, factor, round(recall, 4)))
        return recall

    chosen: tuple[int, int, float] | None = None
    plateau: tuple[int, int, float] | None = None
    for nprobe in sorted({min(p, nlist) for p in PROBE_LADDER}):
        recall = point(nprobe, k_factor)
        if chosen is None and plateau is None:
            if recall >= target:
                chosen = curve[-1]
            elif len(curve) > 1 and recall - curve[-2][2] < PLATEAU_GAIN:
                plateau = curve[-2]  # the fewer lists did as well
        if (chosen or plateau) and not whole_curve:
            break
    if chosen is None:
        start = plateau or max(curve, key=lambda c: c[2])
        for factor in K_FACTOR_LADDER:
            if point(start[0], factor) >= target:
                chosen = curve[-1]
                break
    nprobe, factor, recall = chosen or max(curve, key=lambda c: (c[2], -c[0], -c[1]))
    return SearchTuning(nprobe, factor, round(recall, 4), len(stored), nlist, tuple(curve))


class SearchTuner:
    """When an index measures its search depth, and the last result."""

    def __init__(self, enabled: bool = True, in_background: bool = True, group: int = 1) -> None:
        """`group`: the index's rows per image (consecutive; `measure`)."""
        self.enabled, self.in_background, self.group = enabled, in_background, group
        self.tuning: SearchTuning | None = None
        self._saved: SearchTuning | None = None  # what the file beside the snapshot holds
        self._attempted: tuple[int, int] | None = None  # (nlist, rows) of the last measurement, even a failed one
        self._running = threading.Lock()

    def adopt(self, tuning: SearchTuning) -> None:
        """A tuning saved with the snapshot: not measured again until the corpus doubles."""
        self.tuning, self._saved, self._attempted = tuning, tuning, (tuning.nlist, tuning.rows)

    def save(self, path: Path) -> None:
        """Write the last result beside a snapshot, unless the file already holds it (snapshots come every 1,000
        adds; the result changes once per doubling)."""
        if (tuning := self.tuning) is not None and tuning is not self._saved:
            tuning.save(path)
            self._saved = tuning

    def due(self, rows: int, nlist: int) -> bool:
        """Never measured for these lists, or the corpus has doubled since."""
        last = self._attempted
        return self.enabled and (last is None or last[0] != nlist or rows >= 2 * last[1])

    def start(self, search: Search, stored: np.ndarray, nlist: int, k_factor: int,
              apply: Callable[[SearchTuning], None]) -> None:
        """Measure (in a thread unless in_background is off) and hand the result to `apply`; one at a time."""
        if not self._running.acquire(blocking=False):
            return
        self._attempted = (nlist, len(stored))

        def run() -> None:
            try:
                tuning = measure(search, stored, nlist, k_factor, self.group)
                self.tuning = tuning
                apply(tuning)
                log.info("search depth: %d of %d lists, re-rank %dx, estimated 10-recall@10 %.3f on %d rows (%s)",
                         tuning.nprobe, nlist, tuning.k_factor, tuning.recall_at_10, tuning.rows, tuning.curve)
            except Exception:  # the index keeps serving with the depth it has
                log.exception("search tuning failed")
            finally:
                self._running.release()

        if self.in_background:
            threading.Thread(target=run, daemon=True, name="search-tuning").start()
        else:
            run()
