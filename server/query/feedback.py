"""Feedback, in one place: the results the gateway handed out and the impressions and clicks logged on them.

`Feedback.issue` remembers every answer (and, for a search by ID, which image was the query, so clicks become
training pairs); `Feedback.record` stores only interactions on results really handed out. A click or impression
counts only if its request ID was issued by this gateway to the same caller, names an image at the position it
was returned at, and was not logged before (one impression and one click per shown result). Bounded memory
(least recently issued dropped first) and a time limit; after a gateway restart earlier request IDs are no
longer accepted.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from server.store.interactions import Interaction, InteractionLog


@dataclass
class _Issued:
    subject: str
    image_ids: list[str]
    scores: list[float]
    model_version: str
    at: float
    logged: set[tuple[int, int]] = field(default_factory=set)  # (position, kind)


class IssuedResults:
    def __init__(self, max_requests: int = 200_000, ttl_s: float = 3600.0) -> None:
        self.max_requests, self.ttl_s = max_requests, ttl_s
        self._issued: OrderedDict[str, _Issued] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, subject: str, image_ids: list[str], scores: list[float],
                 model_version: str) -> None:
        with self._lock:
            self._issued[request_id] = _Issued(subject, image_ids, scores, model_version, time.monotonic())
            while len(self._issued) > self.max_requests:
                self._issued.popitem(last=False)

    def accept(self, item: Interaction, subject: str) -> Interaction | None:
        """The interaction with the score its result was shown with, once per (request, position, kind), for a
        result really returned to this caller; None otherwise."""
        with self._lock:
            issued = self._issued.get(item.request_id)
            if issued is None or time.monotonic() - issued.at > self.ttl_s or issued.subject != subject:
                return None
            position = item.position
            if not 0 <= position < len(issued.image_ids) or issued.image_ids[position] != item.image_id:
                return None
            if (position, item.kind) in issued.logged:
                return None
            issued.logged.add((position, item.kind))
            return replace(item, score=issued.scores[position], model_version=issued.model_version)


class Feedback:
    def __init__(self, log: InteractionLog, issued: IssuedResults | None = None) -> None:
        self.log = log
        self.issued = issued or IssuedResults()

    def issue(self, request_id: str, subject: str, image_ids: list[str], scores: list[float], model_version: str,
              query_image_id: str | None) -> None:
        """An answer handed to `subject`: interactions on it are accepted from now on."""
        self.issued.remember(request_id, subject, image_ids, scores, model_version)
        if query_image_id is not None:  # "more like this": clicks on its results become training pairs
            self.log.remember_query(request_id, query_image_id)

    def record(self, subject: str, items: Sequence[Interaction], calibrates: bool = False) -> int:
        """Durably store the interactions on results issued to `subject`, each once; returns how many.
        `calibrates`: the caller is trusted to refit the shared relevance curve (the `feedback` role)."""
        accepted = [replace(a, calibrates=calibrates) for a in (self.issued.accept(i, subject) for i in items)
                    if a is not None]
        return self.log.record(accepted) if accepted else 0

    def close(self) -> None:
        self.log.close()
