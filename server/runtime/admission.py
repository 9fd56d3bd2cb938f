"""Admission control: bounded in-flight work per stage, and a request that cannot start in time is refused at once.

Work is counted in requests (slots) and in decoded pixels (read from the image header before anything is
decoded), both bounded. A request that finds the stage full waits in a FIFO queue, but only if it can still
finish in time: the expected wait plus a high estimate of the service time (mean + 4 mean deviations, as TCP
estimates its retransmission timeout) must fit both the stage's latency budget (the SLO) and the caller's
deadline; otherwise it is refused immediately with RESOURCE_EXHAUSTED, and so is a waiter whose time runs out.
Under overload the server therefore spends its CPU on requests that can still succeed instead of on requests
whose callers have given up (issue 17: without it, goodput at 3x capacity fell to 0.3% of requests).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from server.core.errors import ResourceExhausted

MIN_COST_PIXELS = 250_000  # a search by ID, or an image whose header cannot be read (it fails at decode anyway)


class Shed(ResourceExhausted):
    """Refused by admission control: retry later, with backoff."""


@dataclass
class _Waiter:
    units: int
    pixels: int
    granted: asyncio.Future[None]


class Admission:
    """One stage's limiter. `latency_budget_s=None`: only the caller's deadline bounds the wait."""

    def __init__(self, name: str, max_in_flight: int, max_pixels: int, latency_budget_s: float | None,
                 initial_service_s: float = 0.05, target_service_s: float | None = None) -> None:
        self.name, self.max_in_flight, self.max_pixels = name, max_in_flight, max_pixels
        self.latency_budget_s = latency_budget_s
        # Adaptive limit (AIMD on the measured service time): when the host is slower than usual (other load,
        # a degraded encoder), fewer requests run at once so each still finishes within the target.
        self.ceiling, self.target_service_s, self._completed = max_in_flight, target_service_s, 0
        self.service_s = initial_service_s  # EWMA of one unit's service time, measured
        self.service_dev_s = 0.0  # EWMA of its absolute deviation
        self.in_flight = self.pixels = 0
        self.shed = self.admitted = 0
        self._queue: deque[_Waiter] = deque()

    def _fits(self, units: int, pixels: int) -> bool:
        return self.in_flight + units <= self.max_in_flight and self.pixels + pixels <= self.max_pixels

    def _take(self, units: int, pixels: int) -> None:
        self.in_flight += units
        self.pixels += pixels

    @property
    def service_high_s(self) -> float:
        """A high estimate (~p99) of one request's service time, from the running mean and mean deviation."""
        return self.service_s + 4 * self.service_dev_s

    def _budget(self, timeout_s: float | None) -> float | None:
        """How long a request may wait to start and still finish within the latency budget and its deadline."""
        limits = [b for b in (self.latency_budget_s, timeout_s) if b is not None]
        return min(limits) - self.service_high_s if limits else None

    def _refuse(self, why: str) -> Shed:
        self.shed += 1
        return Shed(f"{self.name} is at capacity ({self.in_flight} requests in flight, {len(self._queue)} waiting):"
                    f" {why}; retry with backoff")

    @asynccontextmanager
    async def admit(self, pixels: int, timeout_s: float | None, units: int = 1) -> AsyncIterator[None]:
        units = max(1, min(units, self.max_in_flight))
        pixels = min(max(pixels, MIN_COST_PIXELS), self.max_pixels)
        if not self._queue and self._fits(units, pixels):
            self._take(units, pixels)
        else:
            await self._wait(units, pixels, self._budget(timeout_s))
        self.admitted += 1
        started = time.monotonic()
        try:
            yield
        finally:
            if units == 1:
                took = time.monotonic() - started
                self.service_dev_s = 0.9 * self.service_dev_s + 0.1 * abs(took - self.service_s)
                self.service_s = 0.9 * self.service_s + 0.1 * took
                self._adapt()
            self.in_flight -= units
            self.pixels -= pixels
            self._wake()

    def _adapt(self) -> None:
        self._completed += 1
        if self.target_service_s is None or self._completed % 10:
            return
        if self.service_s > self.target_service_s and self.max_in_flight > 1:
            self.max_in_flight -= 1
        elif self.service_s < 0.7 * self.target_service_s and self.max_in_flight < self.ceiling:
            self.max_in_flight += 1

    async def _wait(self, units: int, pixels: int, budget: float | None) -> None:
        expected = (len(self._queue) + 1) * self.service_s / self.max_in_flight
        if budget is not None and expected > budget:
            raise self._refuse(f"expected wait {expected * 1000:.0f} ms is over the {max(budget, 0) * 1000:.0f} ms "
                               "this request may wait and still finish in time")
        waiter = _Waiter(units, pixels, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), None if budget is None else max(budget, 0))
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.granted.done() and not waiter.granted.cancelled():  # granted as we gave up: give it back
                self.in_flight -= units
                self.pixels -= pixels
                self._wake()
            else:
                waiter.granted.cancel()
                self._queue.remove(waiter)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._refuse("it could not start in time") from None

    def _wake(self) -> None:
        """FIFO: the head goes first once it fits, so a large request is not starved by small ones."""
        while self._queue and self._fits(self._queue[0].units, self._queue[0].pixels):
            waiter = self._queue.popleft()
            if waiter.granted.done():
                continue
            self._take(waiter.units, waiter.pixels)
            waiter.granted.set_result(None)
