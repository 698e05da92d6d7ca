"""The bulkhead: a bound on calls in flight, for threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from superapp_sdk._errors import BulkheadFull, OperationTimeout
from superapp_sdk.resilience import (
    Bulkhead,
    CallContext,
    CallRejected,
    Deadline,
    Event,
    Pipeline,
)
from superapp_sdk.testing import FakeClock

WAIT = 5.0  # bound on every blocking wait in these tests


def test_waiting_call_gives_up_at_its_deadline() -> None:
    """A call whose deadline comes before max_wait stops waiting at the deadline, with
    OperationTimeout (the slot holder is still inside when it gives up)."""
    bulkhead = Bulkhead(1, max_wait=WAIT)
    events: list[Event] = []
    p = Pipeline(Deadline(0.05), bulkhead, listeners=[events.append])
    inside, release = _Inside(), threading.Event()
    holder = _start(lambda: p.call(_holding(inside, release)))
    try:
        assert inside.wait_entered(1)
        with pytest.raises(OperationTimeout, match="bulkhead"):
            p.call(lambda ctx: "never")
        assert inside.now == 1, "it waited for the slot instead of for its deadline"
    finally:
        release.set()
        holder.join(WAIT)
    assert bulkhead.in_flight == 0
    assert [e.reason for e in events if isinstance(e, CallRejected)] == [
        "deadline passed in bulkhead"
    ]


async def test_waiting_task_gives_up_at_its_deadline() -> None:
    """The async path too stops waiting for a slot when the call's deadline passes (the
    deadline's own cancellation or the bulkhead's budget, whichever fires first)."""
    bulkhead = Bulkhead(1, max_wait=WAIT)
    p = Pipeline(Deadline(0.05), bulkhead)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(ctx: CallContext) -> str:
        entered.set()
        await release.wait()
        return "done"

    # The holder runs without the deadline, so only the waiter's deadline is at play.
    holder = asyncio.create_task(Pipeline(bulkhead).acall(hold))
    await entered.wait()

    async def never(ctx: CallContext) -> str:
        return "never"

    with pytest.raises(OperationTimeout):
        await p.acall(never)
    assert not holder.done()
    release.set()
    assert await holder == "done"
    assert bulkhead.in_flight == 0


class _Inside:
    """Counts calls inside the bulkhead and remembers the peak."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.now = 0
        self.peak = 0
        self.entered = 0

    def enter(self) -> None:
        with self.cond:
            self.now += 1
            self.entered += 1
            self.peak = max(self.peak, self.now)
            self.cond.notify_all()

    def leave(self) -> None:
        with self.cond:
            self.now -= 1

    def wait_entered(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.entered >= n, timeout=WAIT)


def _holding(inside: _Inside, release: threading.Event) -> Callable[[CallContext], str]:
    def fn(ctx: CallContext) -> str:
        inside.enter()
        try:
            release.wait(WAIT)
            return "done"
        finally:
            inside.leave()

    return fn


def _start(target: Callable[[], Any]) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


class _SignallingCondition(threading.Condition):
    """A condition that says when a caller starts waiting on it."""

    def __init__(self, waiting: threading.Event) -> None:
        super().__init__(threading.Lock())
        self.waiting = waiting

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        self.waiting.set()
        return super().wait_for(predicate, timeout)


# -- threads ---------------------------------------------------------------------------


def test_threads_never_exceed_max_concurrent() -> None:
    """Six threads through a bulkhead of three: three inside at once, never more."""
    bulkhead = Bulkhead(3, max_wait=WAIT)
    p = Pipeline(bulkhead, timer=FakeClock())
    inside, release = _Inside(), threading.Event()
    results: list[str] = []
    threads = [_start(lambda: results.append(p.call(_holding(inside, release)))) for _ in range(6)]
    try:
        assert inside.wait_entered(3)
        assert bulkhead.in_flight == 3
        assert inside.entered == 3
    finally:
        release.set()
    for t in threads:
        t.join(WAIT)
    assert results == ["done"] * 6
    assert inside.peak == 3
    assert bulkhead.in_flight == 0


def test_full_bulkhead_without_wait_rejects_at_once() -> None:
    """With max_wait 0, a call beyond the limit gets BulkheadFull and an event."""
    events: list[Event] = []
    bulkhead = Bulkhead(2)
    p = Pipeline(bulkhead, name="kakao", timer=FakeClock(), listeners=[events.append])
    inside, release = _Inside(), threading.Event()
    threads = [_start(lambda: p.call(_holding(inside, release))) for _ in range(2)]
    try:
        assert inside.wait_entered(2)
        calls: list[int] = []
        with pytest.raises(BulkheadFull) as info:
            p.call(lambda ctx: calls.append(1), operation="talk.send")
        assert calls == []
        assert info.value.provider == "kakao"
        assert info.value.retryable
    finally:
        release.set()
    for t in threads:
        t.join(WAIT)
    assert events == [CallRejected("kakao", "talk.send", "bulkhead full", None)]
    assert bulkhead.in_flight == 0


def test_waiting_call_gets_the_slot_when_it_frees() -> None:
    """A call that waits (max_wait > 0) runs once a slot is given back."""
    bulkhead = Bulkhead(1, max_wait=WAIT)
    waiting = threading.Event()
    bulkhead._cond = _SignallingCondition(waiting)
    p = Pipeline(bulkhead, timer=FakeClock())
    inside, release = _Inside(), threading.Event()
    holder = _start(lambda: p.call(_holding(inside, release)))
    assert inside.wait_entered(1)
    order: list[str] = []
    waiter = _start(lambda: order.append(p.call(lambda ctx: "second")))
    try:
        assert waiting.wait(WAIT)
        assert order == []
    finally:
        release.set()
    holder.join(WAIT)
    waiter.join(WAIT)
    assert order == ["second"]
    assert bulkhead.in_flight == 0


def test_waiting_call_gives_up_after_max_wait() -> None:
    """A call that waits longer than max_wait for a slot gets BulkheadFull."""
    bulkhead = Bulkhead(1, max_wait=0.02)
    p = Pipeline(bulkhead, timer=FakeClock())
    inside, release = _Inside(), threading.Event()
    holder = _start(lambda: p.call(_holding(inside, release)))
    try:
        assert inside.wait_entered(1)
        start = time.monotonic()
        with pytest.raises(BulkheadFull):
            p.call(lambda ctx: "never")
        assert time.monotonic() - start >= 0.02
    finally:
        release.set()
        holder.join(WAIT)
    assert bulkhead.in_flight == 0


def test_failing_call_gives_its_slot_back() -> None:
    """An exception in the call releases the slot."""
    bulkhead = Bulkhead(1)
    p = Pipeline(bulkhead, timer=FakeClock())

    def fn(ctx: CallContext) -> str:
        raise RuntimeError("boom")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            p.call(fn)
    assert bulkhead.in_flight == 0
    assert p.call(lambda ctx: "ok") == "ok"


def test_keyboard_interrupt_gives_its_slot_back() -> None:
    """A BaseException still releases the slot, and is not swallowed."""
    bulkhead = Bulkhead(1)
    p = Pipeline(bulkhead, timer=FakeClock())

    def fn(ctx: CallContext) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        p.call(fn)
    assert bulkhead.in_flight == 0


# -- asyncio ---------------------------------------------------------------------------


async def test_tasks_never_exceed_max_concurrent() -> None:
    """Ten tasks through a bulkhead of three: three inside at once, never more."""
    bulkhead = Bulkhead(3, max_wait=WAIT)
    p = Pipeline(bulkhead, timer=FakeClock())
    release = asyncio.Event()
    now = peak = entered = 0

    async def fn(ctx: CallContext) -> str:
        nonlocal now, peak, entered
        now += 1
        entered += 1
        peak = max(peak, now)
        try:
            await release.wait()
            return "done"
        finally:
            now -= 1

    async with asyncio.timeout(WAIT):
        tasks = [asyncio.create_task(p.acall(fn)) for _ in range(10)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert entered == 3
        assert bulkhead.in_flight == 3
        release.set()
        results = await asyncio.gather(*tasks)
    assert results == ["done"] * 10
    assert peak == 3
    assert bulkhead.in_flight == 0


async def test_full_bulkhead_rejects_a_task_at_once() -> None:
    """An async call beyond the limit with max_wait 0 gets BulkheadFull."""
    bulkhead = Bulkhead(1)
    p = Pipeline(bulkhead, timer=FakeClock())
    release = asyncio.Event()

    async def hold(ctx: CallContext) -> str:
        await release.wait()
        return "held"

    async def never(ctx: CallContext) -> str:
        raise AssertionError("admitted past a full bulkhead")

    async with asyncio.timeout(WAIT):
        holder = asyncio.create_task(p.acall(hold))
        await asyncio.sleep(0)
        with pytest.raises(BulkheadFull):
            await p.acall(never)
        release.set()
        assert await holder == "held"


async def test_waiting_task_gets_the_slot_when_it_frees() -> None:
    """A task that waits up to max_wait runs once the holder finishes."""
    bulkhead = Bulkhead(1, max_wait=WAIT)
    p = Pipeline(bulkhead, timer=FakeClock())
    release = asyncio.Event()

    async def hold(ctx: CallContext) -> str:
        await release.wait()
        return "first"

    async def second(ctx: CallContext) -> str:
        return "second"

    async with asyncio.timeout(WAIT):
        holder = asyncio.create_task(p.acall(hold))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(p.acall(second))
        await asyncio.sleep(0)
        assert not waiter.done()
        release.set()
        assert await holder == "first"
        assert await waiter == "second"
    assert bulkhead.in_flight == 0


async def test_cancelled_task_releases_its_slot() -> None:
    """Cancelling a task that holds a slot gives the slot back."""
    bulkhead = Bulkhead(1)
    p = Pipeline(bulkhead, timer=FakeClock())

    async def hang(ctx: CallContext) -> str:
        await asyncio.Event().wait()
        return "never"

    async with asyncio.timeout(WAIT):
        task = asyncio.create_task(p.acall(hang))
        await asyncio.sleep(0)
        assert bulkhead.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert bulkhead.in_flight == 0


async def test_cancelled_waiting_task_takes_no_slot() -> None:
    """Cancelling a task still waiting for a slot leaves the count untouched."""
    bulkhead = Bulkhead(1, max_wait=WAIT)
    p = Pipeline(bulkhead, timer=FakeClock())
    release = asyncio.Event()

    async def hold(ctx: CallContext) -> str:
        await release.wait()
        return "held"

    async with asyncio.timeout(WAIT):
        holder = asyncio.create_task(p.acall(hold))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(p.acall(hold))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert bulkhead.in_flight == 1
        release.set()
        await holder
    assert bulkhead.in_flight == 0


async def test_sync_and_async_callers_share_one_counter() -> None:
    """A thread holding the only slot makes an async caller wait or be refused."""
    bulkhead = Bulkhead(1)
    p = Pipeline(bulkhead, timer=FakeClock())
    inside, release = _Inside(), threading.Event()
    holder = _start(lambda: p.call(_holding(inside, release)))
    try:
        assert inside.wait_entered(1)

        async def fn(ctx: CallContext) -> str:
            return "never"

        with pytest.raises(BulkheadFull):
            await p.acall(fn)
    finally:
        release.set()
        holder.join(WAIT)
    assert bulkhead.in_flight == 0


# -- options ---------------------------------------------------------------------------


def test_invalid_options_name_the_field() -> None:
    """Bad bulkhead options raise ValueError naming the field."""
    with pytest.raises(ValueError, match=r"Bulkhead\.max_concurrent must be >= 1"):
        Bulkhead(0)
    with pytest.raises(ValueError, match=r"Bulkhead\.max_wait must be >= 0"):
        Bulkhead(1, max_wait=-1)


def test_repr_shows_the_limits() -> None:
    """The repr gives the limit and the wait."""
    assert repr(Bulkhead(4, max_wait=0.5)) == "Bulkhead(max_concurrent=4, max_wait=0.5)"
