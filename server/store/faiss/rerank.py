"""The compact layout's second step: exact inner products of a query with its candidates' stored rows.

The candidates come from the codes, best first. Rows are read in id order (the log's order on disk) through
`read_rows`. Only candidates whose code score may still make the top k are read: the codes' error depends on the
codec, the corpus and the query (4-bit PQ underestimates inner products), so it is measured per query on its best
max(k, RERANK_HEAD) candidates, always read; a later candidate is read when its code score plus the mean error plus
`sigmas` (RERANK_SIGMAS) standard deviations reaches the k-th exact score of the head. With a floor (the caller
discards exact scores below it: the region rows, which only matter when they beat the k-th whole-image match) it
must also reach the floor, within FLOOR_SIGMAS deviations. Each row read is a random read of the vector log on
disk: these bounds keep a query's disk bytes low (params.py has the measurements).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from server.store.faiss.params import FLOOR_SIGMAS, RERANK_HEAD, RERANK_SIGMAS

ReadRows = Callable[[np.ndarray], np.ndarray]


class ExactRerank:
    def __init__(self, read_rows: ReadRows) -> None:
        self.read_rows = read_rows
        self.rows_read = 0  # x row bytes: the disk / page-cache bytes the re-ranks read

    def top(self, queries: np.ndarray, codes: np.ndarray, candidates: np.ndarray, k: int, total: int,
            floor: float | None = None, sigmas: float | None = RERANK_SIGMAS) -> tuple[np.ndarray, np.ndarray]:
        """The best k candidates of each query by exact inner product ([queries, k] scores and ids, -1 padded)."""
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for q, (row, code) in enumerate(zip(candidates, codes, strict=True)):
            valid = (row >= 0) & (row < total)
            row, code = row[valid], code[valid]
            head = max(k, RERANK_HEAD)
            ids, exact = self._exact(queries[q], row[:head])
            if len(row) > head:
                errors = exact - code[:head][np.argsort(row[:head], kind="stable")]  # same (id) order
                reach = code[head:] + errors.mean()
                read = np.ones(len(reach), bool) if sigmas is None else (
                    reach + sigmas * errors.std() >= np.sort(exact)[-min(k, len(exact))])
                if floor is not None:
                    read &= reach + FLOOR_SIGMAS * errors.std() >= floor
                tail_ids, tail_exact = self._exact(queries[q], row[head:][read])
                ids, exact = np.concatenate([ids, tail_ids]), np.concatenate([exact, tail_exact])
            best = np.argsort(-exact, kind="stable")[:k]
            out_scores[q, :len(best)], out_ids[q, :len(best)] = exact[best], ids[best]
        return out_scores, out_ids

    def _exact(self, query: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids sorted, their exact scores): the rows are read in id order."""
        ids = np.unique(ids)
        self.rows_read += len(ids)
        if len(ids) == 0:
            return ids, np.zeros(0, np.float32)
        return ids, self.read_rows(ids) @ query
