"""Admission control: bounded in-flight work per stage, shared fairly between callers, and a request that cannot
start in time is refused at once.

Work is counted in requests (slots) and in decode cost (pixels from the image header, more for a JPEG of many
scans: `imaging.decode_cost`). A request that finds the stage full waits only if it can still finish in time (the
expected wait plus a high estimate of its caller's service time, mean + 4 mean deviations as TCP estimates its
retransmission timeout, within the latency budget and the caller's deadline); otherwise it is refused at once with
RESOURCE_EXHAUSTED, and so is a waiter whose time runs out (issue 17: without it, goodput at 3x capacity fell to
0.3% of requests).

Fairness (issue 25; a caller is its token's subject): while others are active (in flight, waiting, or served in the
last `RECENT_S`), a caller holds at most `share` of the cost and of the slots (idle slots may be borrowed while no
one else waits), and one request is charged at most that share; more is refused at once with a retry hint. Waiters
are served caller by caller, least recent measured service time first. A lone caller may use the whole stage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from server.core.errors import ResourceExhausted
from server.runtime.callers import ANONYMOUS, Principal

MIN_COST_PIXELS = 250_000  # a search by ID, or an image whose header cannot be read (it fails at decode anyway)
RECENT_S = 2.0  # a caller that finished a request this recently still counts as active
USAGE_HALF_LIFE_S = 5.0  # how fast a caller's measured usage is forgotten


class Shed(ResourceExhausted):
    """Refused by admission control: retry later, with backoff."""


@dataclass
class _Waiter:
    principal: str
    units: int
    pixels: int
    granted: asyncio.Future[None]


class Admission:
    """One stage's limiter. `latency_budget_s=None`: only the caller's deadline bounds the wait. `share`: the part
    of the stage one caller may hold while others are active (1.0: no fairness)."""

    def __init__(self, name: str, max_in_flight: int, max_pixels: int, latency_budget_s: float | None,
                 initial_service_s: float = 0.05, target_service_s: float | None = None, share: float = 0.5,
                 on_shed: Callable[[str], None] = lambda principal: None) -> None:
        self.name, self.max_in_flight, self.max_pixels = name, max_in_flight, max_pixels
        self.latency_budget_s = latency_budget_s
        self.share, self.on_shed = share, on_shed
        self._shares: dict[str, float] = {}  # the share each active caller was admitted with
        # Adaptive limit (AIMD on the measured service time): when the host is slower than usual (other load,
        # a degraded encoder), fewer requests run at once so each still finishes within the target.
        self.ceiling, self.target_service_s, self._completed = max_in_flight, target_service_s, 0
        self.service_s = initial_service_s  # EWMA of one unit's service time, measured
        self.service_dev_s = 0.0  # EWMA of its absolute deviation
        # The same per caller: whether one of its requests can finish in time depends on what its own cost, not on
        # another caller's heavy ones.
        self._service_by: dict[str, tuple[float, float]] = {}
        self.in_flight = self.pixels = 0
        self.shed = self.admitted = 0
        self.shed_by: Counter[str] = Counter()
        self._in_flight_by: Counter[str] = Counter()
        self._pixels_by: Counter[str] = Counter()
        self._usage: dict[str, tuple[float, float]] = {}  # principal -> (decayed service seconds, at)
        self._last_seen: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._queues: dict[str, deque[_Waiter]] = {}

    # -- who may take what ---------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _others_active(self, principal: str) -> bool:
        if any(p != principal for p in self._in_flight_by) or any(p != principal for p in self._queues):
            return True
        horizon = time.monotonic() - RECENT_S
        for p in reversed(self._last_seen):  # most recent first: stop at the first one too old
            if self._last_seen[p] < horizon:
                return False
            if p != principal:
                return True
        return False

    def _seen(self, principal: str) -> None:
        self._last_seen.pop(principal, None)
        self._last_seen[principal] = time.monotonic()
        while len(self._last_seen) > 10_000:  # bounded memory: forget the callers idle longest
            old, _ = self._last_seen.popitem(last=False)
            self._usage.pop(old, None)
            self._shares.pop(old, None)
            self._service_by.pop(old, None)

    def _cap(self, principal: str) -> tuple[int, int]:
        """(slots, cost) one caller may hold while others are active."""
        share = self._shares.get(principal, self.share)
        return max(1, math.floor(self.max_in_flight * share)), max(MIN_COST_PIXELS, int(self.max_pixels * share))

    def _within_share(self, principal: str, units: int, pixels: int) -> bool:
        """Alone, a caller may take everything; with others active, its share of the cost, and its share of the
        slots, beyond which it may borrow idle slots while no one else waits, always leaving one free."""
        if not self._others_active(principal):
            return True
        slots, cost = self._cap(principal)
        held_units, held_pixels = self._in_flight_by[principal], self._pixels_by[principal]
        if held_units == 0 or held_units + units <= slots:
            return held_units == 0 or held_pixels + pixels <= cost
        return (held_pixels + pixels <= cost and not any(p != principal for p in self._queues)
                and self.in_flight + units < self.max_in_flight)

    def _fits(self, principal: str, units: int, pixels: int) -> bool:
        return (self.in_flight + units <= self.max_in_flight and self.pixels + pixels <= self.max_pixels
                and self._within_share(principal, units, pixels))

    def _take(self, principal: str, units: int, pixels: int, sign: int = 1) -> None:
        """Hold (sign 1) or give back (sign -1) slots and cost."""
        self.in_flight, self.pixels = self.in_flight + sign * units, self.pixels + sign * pixels
        self._in_flight_by[principal] += sign * units
        self._pixels_by[principal] += sign * pixels
        if not self._in_flight_by[principal]:
            del self._in_flight_by[principal], self._pixels_by[principal]

    def usage(self, principal: str) -> float:
        """Measured service seconds of this caller, decayed with USAGE_HALF_LIFE_S."""
        used, at = self._usage.get(principal, (0.0, 0.0))
        return used * 0.5 ** ((time.monotonic() - at) / USAGE_HALF_LIFE_S)

    def _charge(self, principal: str, seconds: float) -> None:
        self._usage[principal] = (self.usage(principal) + seconds, time.monotonic())
        self._seen(principal)

    @property
    def service_high_s(self) -> float:
        """A high estimate (~p99) of one request's service time, from the running mean and mean deviation."""
        return self.service_s + 4 * self.service_dev_s

    def caller_service_high_s(self, principal: str) -> float:
        """The same estimate from this caller's own requests (the stage's until it has some)."""
        mean, dev = self._service_by.get(principal, (self.service_s, self.service_dev_s))
        return mean + 4 * dev

    def _measured(self, principal: str, took: float) -> None:
        self.service_dev_s = 0.9 * self.service_dev_s + 0.1 * abs(took - self.service_s)
        self.service_s = 0.9 * self.service_s + 0.1 * took
        mean, dev = self._service_by.get(principal, (self.service_s, self.service_dev_s))
        self._service_by[principal] = (0.9 * mean + 0.1 * took, 0.9 * dev + 0.1 * abs(took - mean))

    def _budget(self, timeout_s: float | None, principal: str) -> float | None:
        """How long a request may wait to start and still finish within the latency budget and its deadline."""
        limits = [b for b in (self.latency_budget_s, timeout_s) if b is not None]
        return min(limits) - self.caller_service_high_s(principal) if limits else None

    def _refuse(self, principal: str, why: str) -> Shed:
        self.shed += 1
        self.shed_by[principal] += 1
        self.on_shed(principal)
        return Shed(f"{self.name} is at capacity ({self.in_flight} requests in flight, {self.waiting} waiting):"
                    f" {why}; retry with backoff")

    # -- admission -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def admit(self, pixels: int, timeout_s: float | None, units: int = 1,
                    caller: Principal = ANONYMOUS) -> AsyncIterator[None]:
        """`caller`: who asks (fairness between callers); anonymous callers share one account."""
        principal = caller.name
        if caller.share is not None:
            self._shares[principal] = caller.share
        units = max(1, min(units, self.max_in_flight))
        # One request never holds more than its caller's share of the stage's cost, however costly its image: the
        # rest stays for the others (the caller's requests then run one at a time while others are active).
        pixels = min(max(pixels, MIN_COST_PIXELS), self.max_pixels, self._cap(principal)[1])
        self._seen(principal)
        if self.waiting == 0 and self._fits(principal, units, pixels):
            self._take(principal, units, pixels)
        elif not self._within_share(principal, units, pixels) and self._in_flight_by[principal]:
            slots, _ = self._cap(principal)
            raise self._refuse(principal, f"this caller holds its share ({self._in_flight_by[principal]} of "
                                          f"{slots} requests) while others wait; retry after "
                                          f"~{self.caller_service_high_s(principal) * 1000:.0f} ms")
        else:
            await self._wait(principal, units, pixels, self._budget(timeout_s, principal))
        self.admitted += 1
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self._charge(principal, took)
            if units == 1:
                self._measured(principal, took)
                self._adapt()
            self._take(principal, units, pixels, -1)
            self._wake()

    def _adapt(self) -> None:
        self._completed += 1
        if self.target_service_s is None or self._completed % 10:
            return
        if self.service_s > self.target_service_s and self.max_in_flight > 1:
            self.max_in_flight -= 1
        elif self.service_s < 0.7 * self.target_service_s and self.max_in_flight < self.ceiling:
            self.max_in_flight += 1

    async def _wait(self, principal: str, units: int, pixels: int, budget: float | None) -> None:
        expected = (self.waiting + 1) * self.service_s / self.max_in_flight
        if budget is not None and expected > budget:
            raise self._refuse(principal, f"expected wait {expected * 1000:.0f} ms is over the "
                                          f"{max(budget, 0) * 1000:.0f} ms this request may wait and still finish "
                                          "in time")
        waiter = _Waiter(principal, units, pixels, asyncio.get_running_loop().create_future())
        self._queues.setdefault(principal, deque()).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), None if budget is None else max(budget, 0))
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.granted.done() and not waiter.granted.cancelled():  # granted as we gave up: give it back
                self._take(principal, units, pixels, -1)
                self._wake()
            else:
                waiter.granted.cancel()
                self._dequeue(waiter)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._refuse(principal, "it could not start in time") from None

    def _dequeue(self, waiter: _Waiter) -> None:
        queue = self._queues[waiter.principal]
        queue.remove(waiter)
        if not queue:
            del self._queues[waiter.principal]

    def _wake(self) -> None:
        """The caller that used least recently goes next, first come first served within a caller; a caller whose
        head does not fit yet is not overtaken by its own smaller requests (no starvation of large ones)."""
        while self._queues:
            ready = [(self.usage(p), p) for p, q in self._queues.items() if self._fits(p, q[0].units, q[0].pixels)]
            if not ready:
                return
            _, principal = min(ready)
            waiter = self._queues[principal][0]
            self._dequeue(waiter)
            if waiter.granted.done():
                continue
            self._take(principal, waiter.units, waiter.pixels)
            waiter.granted.set_result(None)
