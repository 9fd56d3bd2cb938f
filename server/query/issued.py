"""Results the gateway handed out, remembered for a while: interactions are accepted only for those.

A click or impression counts only if its request ID was issued by this gateway to the same caller, names an
image at the position it was returned at, and was not logged before (one impression and one click per shown
result). Bounded memory (least recently issued dropped first) and a time limit; after a gateway restart earlier
request IDs are no longer accepted.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class _Issued:
    subject: str
    image_ids: list[str]
    at: float
    logged: set[tuple[int, int]] = field(default_factory=set)  # (position, kind)


class IssuedResults:
    def __init__(self, max_requests: int = 200_000, ttl_s: float = 3600.0) -> None:
        self.max_requests, self.ttl_s = max_requests, ttl_s
        self._issued: OrderedDict[str, _Issued] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, subject: str, image_ids: list[str]) -> None:
        with self._lock:
            self._issued[request_id] = _Issued(subject, image_ids, time.monotonic())
            while len(self._issued) > self.max_requests:
                self._issued.popitem(last=False)

    def accept(self, request_id: str, subject: str, position: int, image_id: str, kind: int) -> bool:
        """True once per (request, position, kind) for a result really returned to this caller."""
        with self._lock:
            issued = self._issued.get(request_id)
            if issued is None or time.monotonic() - issued.at > self.ttl_s or issued.subject != subject:
                return False
            if not 0 <= position < len(issued.image_ids) or issued.image_ids[position] != image_id:
                return False
            if (position, kind) in issued.logged:
                return False
            issued.logged.add((position, kind))
            return True
