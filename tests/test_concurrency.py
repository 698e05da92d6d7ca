"""Threads and asyncio tasks hammering one breaker: no lost counts, no lock held across
the protected call."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pybreaker
import pytest

from superapp_sdk._errors import CircuitOpen, ProviderConnectError
from superapp_sdk.core.breaker import BreakerOptions, BreakerState, StateChange
from superapp_sdk.core.latency import LatencyTracker
from superapp_sdk.resilience import (
    Bulkhead,
    CallContext,
    CircuitBreaker,
    Deadline,
    Event,
    Pipeline,
    Retry,
    Timeout,
)
from superapp_sdk.testing import FakeClock

WAIT = 5.0
THREADS = 8
CALLS = 250

# A window big enough to hold every call, and a rate no mix of results below 100 % reaches.
BIG_WINDOW = BreakerOptions(
    window_size=THREADS * CALLS, minimum_calls=THREADS * CALLS, failure_rate=1.0
)


def _run_threads(target: Callable[[int], Any], n: int = THREADS) -> None:
    """Run ``target(i)`` in ``n`` threads released together; re-raise the first error."""
    start = threading.Barrier(n, timeout=WAIT)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not any(t.is_alive() for t in threads), "a worker thread did not finish"
    if errors:
        raise errors[0]


def test_threads_lose_no_counts() -> None:
    """8 threads x 250 calls, every fourth failing: the window holds every call."""
    breaker = CircuitBreaker(BIG_WINDOW)
    p = Pipeline(breaker, timer=FakeClock())

    def fail(ctx: CallContext) -> str:
        raise ProviderConnectError("refused")

    def worker(i: int) -> None:
        for n in range(CALLS):
            if n % 4 == 0:
                with contextlib.suppress(ProviderConnectError):
                    p.call(fail)
            else:
                p.call(lambda ctx: "ok")

    _run_threads(worker)
    m = breaker.metrics()
    assert m.calls == THREADS * CALLS
    assert m.failures == THREADS * (CALLS // 4 + (CALLS % 4 > 0))
    assert breaker.state is BreakerState.CLOSED


def test_threads_through_a_full_pipeline_lose_no_counts() -> None:
    """Every strategy's bookkeeping survives concurrent callers."""
    bulkhead = Bulkhead(THREADS)
    breaker = CircuitBreaker(BIG_WINDOW)
    p = Pipeline(
        Deadline(30.0),
        bulkhead,
        breaker,
        Retry(2),
        Timeout(1.0),
        timer=FakeClock(),
        latency=LatencyTracker(size=THREADS * CALLS),
    )

    def worker(i: int) -> None:
        for _ in range(CALLS):
            p.call(lambda ctx: "ok")

    _run_threads(worker)
    assert breaker.metrics().calls == THREADS * CALLS
    assert p.latency.count == THREADS * CALLS
    assert bulkhead.in_flight == 0


async def test_tasks_lose_no_counts() -> None:
    """100 asyncio tasks through one pipeline are all counted."""
    tasks_n = 100
    breaker = CircuitBreaker(BIG_WINDOW)
    bulkhead = Bulkhead(tasks_n)
    p = Pipeline(
        bulkhead,
        breaker,
        Retry(3),
        Timeout(5.0),
        timer=FakeClock(),
        latency=LatencyTracker(size=tasks_n),
    )
    gate = asyncio.Event()

    async def fn(ctx: CallContext) -> int:
        await gate.wait()
        await asyncio.sleep(0)
        return ctx.attempt

    async with asyncio.timeout(WAIT):
        tasks = [asyncio.create_task(p.acall(fn)) for _ in range(tasks_n)]
        await asyncio.sleep(0)
        assert bulkhead.in_flight == tasks_n
        gate.set()
        results = await asyncio.gather(*tasks)
    assert results == [1] * tasks_n
    assert breaker.metrics().calls == tasks_n
    assert p.latency.count == tasks_n
    assert bulkhead.in_flight == 0


async def test_tasks_with_failures_lose_no_counts() -> None:
    """Failing and succeeding tasks are each recorded once by the breaker."""
    tasks_n = 100
    breaker = CircuitBreaker(BIG_WINDOW)
    p = Pipeline(breaker, timer=FakeClock())

    async def fn(ctx: CallContext, fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise ProviderConnectError("refused")
        return "ok"

    async def one(i: int) -> str | None:
        try:
            return await p.acall(lambda ctx: fn(ctx, i % 2 == 0))
        except ProviderConnectError:
            return None

    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(*(one(i) for i in range(tasks_n)))
    assert results.count(None) == tasks_n // 2
    m = breaker.metrics()
    assert m.calls == tasks_n
    assert m.failures == tasks_n // 2


def _try_lock_from_another_thread(lock: Any) -> bool:
    """Whether another thread can take ``lock`` right now (released again at once)."""
    taken: list[bool] = []

    def probe() -> None:
        ok = lock.acquire(blocking=False)
        if ok:
            lock.release()
        taken.append(ok)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(WAIT)
    assert taken, "probe thread did not finish"
    return taken[0]


def test_breaker_lock_is_free_while_the_call_runs() -> None:
    """Our breaker holds no lock while the protected call runs."""
    breaker = CircuitBreaker()
    p = Pipeline(breaker, timer=FakeClock())
    free = p.call(lambda ctx: _try_lock_from_another_thread(breaker._lock))
    assert free is True


def test_pybreaker_holds_its_lock_while_the_call_runs() -> None:
    """pybreaker holds its lock across the call (why it serialises slow calls)."""
    cb = pybreaker.CircuitBreaker()
    held = not cb.call(lambda: _try_lock_from_another_thread(cb._lock))
    assert held is True


def test_eight_calls_overlap_inside_our_breaker() -> None:
    """Eight threads are inside the protected call at the same moment."""
    p = Pipeline(CircuitBreaker(), timer=FakeClock())
    inside = threading.Barrier(THREADS, timeout=WAIT)

    def worker(i: int) -> None:
        # Raises BrokenBarrierError unless all eight are inside the call at once.
        p.call(lambda ctx: inside.wait())

    _run_threads(worker)


def test_eight_calls_overlap_inside_the_full_pipeline() -> None:
    """With deadline, bulkhead, breaker, retry and timeout, calls still overlap."""
    p = Pipeline(
        Deadline(30.0),
        Bulkhead(THREADS),
        CircuitBreaker(),
        Retry(3),
        Timeout(10.0),
        timer=FakeClock(),
    )
    inside = threading.Barrier(THREADS, timeout=WAIT)

    def worker(i: int) -> None:
        p.call(lambda ctx: inside.wait())

    _run_threads(worker)


def test_concurrent_opening_is_announced_once() -> None:
    """When many threads fail at once, the breaker opens and says so exactly once."""
    events: list[Event] = []
    breaker = CircuitBreaker(BreakerOptions(window_size=20, minimum_calls=20, failure_rate=0.5))
    p = Pipeline(breaker, timer=FakeClock(), listeners=[events.append])

    def fail(ctx: CallContext) -> str:
        raise ProviderConnectError("refused")

    def worker(i: int) -> None:
        for _ in range(10):
            with pytest.raises((ProviderConnectError, CircuitOpen)):
                p.call(fail)

    _run_threads(worker)
    assert breaker.state is BreakerState.OPEN
    opened = [e for e in events if isinstance(e, StateChange) and e.new is BreakerState.OPEN]
    assert len(opened) == 1
