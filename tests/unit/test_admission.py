"""Admission control on its own (asyncio, no servers): limits hold, a request that cannot start in time is refused
without queueing, the adaptive limit follows the service time, callers share the stage fairly. Through the real
gateway: tests/integration/test_gateway_limits.py."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from server.core.metrics import MAX_CALLER_LABELS, GatewayMetrics
from server.runtime.admission import Admission, Shed
from server.runtime.callers import Principal, parse_shares, principal_of


async def _hold(admission: Admission, pixels: int, release: asyncio.Event, started: asyncio.Event | None = None,
                timeout_s: float | None = None, principal: str = "") -> None:
    async with admission.admit(pixels, timeout_s, caller=Principal(principal)):
        if started is not None:
            started.set()
        await release.wait()


def test_a_request_that_cannot_start_before_its_deadline_is_refused_without_queueing():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=1, max_pixels=10**9, latency_budget_s=1.0,
                              initial_service_s=0.2)
        release, started = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_hold(admission, 1, release, started))
        await started.wait()
        with pytest.raises(Shed, match="at capacity"):
            async with admission.admit(1, timeout_s=0.1):  # 0.1 s left < 0.2 s of service: hopeless
                pytest.fail("admitted")
        assert admission.shed == 1 and admission.waiting == 0
        release.set()
        await holder
        async with admission.admit(1, timeout_s=0.1):  # an idle stage admits at once, even with little time
            assert admission.in_flight == 1
        assert admission.in_flight == 0 and admission.pixels == 0
    asyncio.run(scenario())


async def _one_held(admission: Admission) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """A request admitted and running until the returned event is set."""
    release, started = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold(admission, 1, release, started))
    await started.wait()
    return release, holder


def test_a_request_that_would_finish_past_the_latency_budget_is_refused_even_with_a_long_deadline():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=1, max_pixels=10**9, latency_budget_s=0.1,
                              initial_service_s=0.03)
        admission.service_dev_s = 0.0075  # a high estimate of 60 ms: a wait of 40 ms or more cannot end in time
        release, holder = await _one_held(admission)
        queued = asyncio.create_task(_hold(admission, 1, asyncio.Event(), timeout_s=60))  # expected wait 30 ms
        await asyncio.sleep(0)
        with pytest.raises(Shed, match="still finish in time"):  # expected wait 60 ms + 60 ms > 100 ms
            async with admission.admit(1, timeout_s=60):
                pytest.fail("admitted")
        with pytest.raises(Shed, match="could not start in time"):  # the queued one gives up after 40 ms
            await queued
        release.set()
        await holder
        assert admission.in_flight == 0 and admission.waiting == 0
    asyncio.run(scenario())


def test_pixels_in_flight_are_bounded_and_the_queue_is_fifo():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=8, max_pixels=100, latency_budget_s=None)
        order: list[str] = []
        first_release, first_started = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(_hold(admission, 60, first_release, first_started))
        await first_started.wait()

        async def later(name: str, pixels: int) -> None:
            async with admission.admit(pixels, None):
                order.append(name)
                assert admission.pixels <= 100

        big, small = asyncio.create_task(later("big", 60)), asyncio.create_task(later("small", 1))
        await asyncio.sleep(0.01)
        assert order == [] and admission.waiting == 2  # small fits, but waits behind big (no starvation)
        first_release.set()
        await asyncio.gather(first, big, small)
        assert order == ["big", "small"] and admission.pixels == 0 and admission.in_flight == 0
    asyncio.run(scenario())


def test_a_waiter_whose_budget_runs_out_is_refused_and_leaves_the_queue():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=1, max_pixels=10**9, latency_budget_s=0.05,
                              initial_service_s=0.001)
        release, holder = await _one_held(admission)
        with pytest.raises(Shed, match="could not start in time"):
            async with admission.admit(1, timeout_s=5):
                pytest.fail("admitted")
        assert admission.waiting == 0
        cancelled = asyncio.create_task(_hold(admission, 1, asyncio.Event(), timeout_s=5))
        await asyncio.sleep(0.01)
        cancelled.cancel()  # the caller went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        release.set()
        await holder
        assert admission.in_flight == 0 and admission.waiting == 0
    asyncio.run(scenario())


def test_the_adaptive_limit_shrinks_while_service_is_slower_than_its_target_and_grows_back():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=4, max_pixels=10**9, latency_budget_s=None,
                              target_service_s=1e-9)  # every request is "too slow"
        for _ in range(30):
            async with admission.admit(1, None):
                pass
        assert admission.max_in_flight == 1  # 4 -> 1, one step per 10 completions, never below 1
        admission.target_service_s = 1e9  # now every request is fast
        for _ in range(30):
            async with admission.admit(1, None):
                pass
        assert admission.max_in_flight == 4  # back to the configured ceiling, not above
    asyncio.run(scenario())


def test_a_caller_over_its_share_is_refused_at_once_and_the_others_keep_theirs():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=4, max_pixels=10**9, latency_budget_s=None)
        release = asyncio.Event()
        noisy = [asyncio.create_task(_hold(admission, 1, release, principal="noisy")) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert admission.in_flight == 4  # alone, a caller may use the whole stage
        polite = asyncio.create_task(_hold(admission, 1, release, principal="polite"))
        await asyncio.sleep(0.01)
        assert admission.waiting == 1  # the stage is full: it waits for the next free slot
        with pytest.raises(Shed, match=r"holds its share \(4 of 2 requests\).*retry after"):
            async with admission.admit(1, None, caller=Principal("noisy")):
                pytest.fail("admitted over its share")
        assert admission.shed_by == {"noisy": 1}
        release.set()
        await asyncio.gather(*noisy, polite)
        assert admission.in_flight == 0 and admission.waiting == 0
    asyncio.run(scenario())


def test_while_another_caller_is_active_one_caller_holds_at_most_its_share():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=4, max_pixels=10_000_000, latency_budget_s=None, share=0.5)
        release = asyncio.Event()
        polite = asyncio.create_task(_hold(admission, 1_000_000, release, principal="polite"))
        await asyncio.sleep(0.01)
        first = [asyncio.create_task(_hold(admission, 1_000_000, release, principal="noisy")) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert admission.in_flight == 3
        with pytest.raises(Shed, match="share"):  # a third would be over half the slots
            async with admission.admit(1_000_000, None, caller=Principal("noisy")):
                pytest.fail("admitted over its share")
        with pytest.raises(Shed, match="share"):  # and so is cost over half the stage's pixels
            async with admission.admit(6_000_000, None, caller=Principal("polite")):
                pytest.fail("admitted over its share")
        release.set()
        await asyncio.gather(polite, *first)
    asyncio.run(scenario())


def test_waiting_callers_are_served_least_recent_usage_first():
    async def scenario() -> None:
        admission = Admission("search", max_in_flight=1, max_pixels=10**9, latency_budget_s=None, share=1.0)
        admission._charge("heavy", 30.0)  # measured: it used 30 s of service recently
        release, holder = await _one_held(admission)
        order: list[str] = []

        async def later(name: str) -> None:
            async with admission.admit(1, None, caller=Principal(name)):
                order.append(name)

        waiters = [asyncio.create_task(later(n)) for n in ("heavy", "light")]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(holder, *waiters)
        assert order == ["light", "heavy"]
    asyncio.run(scenario())


def test_shares_are_configured_per_caller_or_per_role():
    table = parse_shares("catalog-indexer=0.9, role:admin=1.0,role:search=0.25")
    assert principal_of("catalog-indexer", frozenset({"search"}), table) == Principal("catalog-indexer", 0.9)
    assert principal_of("ops", frozenset({"admin", "search"}), table) == Principal("ops", 1.0)
    assert principal_of("shop-17", frozenset({"write"}), table) == Principal("shop-17", None)  # the default
    for broken in ("x=0", "x=1.5", "=0.5", "x"):
        with pytest.raises(ValueError):
            parse_shares(broken)


def test_shed_metrics_name_at_most_a_bounded_number_of_callers():
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    for n in range(MAX_CALLER_LABELS + 30):
        metrics.shed("search", f"caller-{n}")
    callers = {s.labels["caller"] for f in registry.collect() for s in f.samples
               if s.name == "vsearch_admission_shed_total"}
    assert len(callers) == MAX_CALLER_LABELS + 1 and "other" in callers
    assert registry.get_sample_value("vsearch_admission_shed_total", {"stage": "search", "caller": "other"}) == 30
