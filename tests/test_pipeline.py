"""The pipeline: composition order, repr, sync/async parity, listeners, per-kind defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import tenacity

from superapp_sdk._errors import Declined, OperationTimeout, ProviderConnectError
from superapp_sdk.resilience import (
    Bulkhead,
    CallContext,
    CircuitBreaker,
    Deadline,
    Event,
    Hedge,
    Pipeline,
    Retry,
    RetryScheduled,
    Timeout,
    retryable_unless_timeout,
)
from superapp_sdk.resilience._base import AsyncNext, Host, SyncNext
from superapp_sdk.testing import FakeClock


class Recorder:
    """A strategy that logs when it is entered and left."""

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log
        self.host: Host | None = None

    def bind(self, host: Host) -> None:
        self.host = host

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        self.log.append(f"{self.label}>")
        try:
            return nxt(ctx)
        finally:
            self.log.append(f"<{self.label}")

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        self.log.append(f"{self.label}>")
        try:
            return await nxt(ctx)
        finally:
            self.log.append(f"<{self.label}")

    def __repr__(self) -> str:
        return f"Recorder({self.label!r})"


def _flaky(failures: int, log: list[int]) -> Callable[[CallContext], str]:
    """A callable that fails ``failures`` times with a retryable error, then answers."""

    def fn(ctx: CallContext) -> str:
        log.append(ctx.attempt)
        if len(log) <= failures:
            raise ProviderConnectError("refused", request_sent=False)
        return f"ok after {ctx.attempt}"

    return fn


def _async(fn: Callable[[CallContext], str]) -> Callable[[CallContext], Any]:
    async def afn(ctx: CallContext) -> str:
        return fn(ctx)

    return afn


def _pipeline(clock: FakeClock, events: list[Event]) -> Pipeline:
    return Pipeline(
        Deadline(30.0),
        Bulkhead(4),
        CircuitBreaker(),
        Retry(3, wait=tenacity.wait_fixed(0.5)),
        Timeout(2.0),
        name="p",
        timer=clock,
        listeners=[events.append],
    )


def test_strategies_run_outermost_first() -> None:
    """The first strategy listed is entered first and left last."""
    log: list[str] = []
    p = Pipeline(Recorder("a", log), Recorder("b", log), Recorder("c", log), timer=FakeClock())

    def fn(ctx: CallContext) -> int:
        log.append("call")
        return 7

    assert p.call(fn) == 7
    assert log == ["a>", "b>", "c>", "call", "<c", "<b", "<a"]


async def test_async_strategies_run_outermost_first() -> None:
    """The async runner composes the strategies in the same order."""
    log: list[str] = []
    p = Pipeline(Recorder("a", log), Recorder("b", log), timer=FakeClock())

    async def fn(ctx: CallContext) -> int:
        log.append("call")
        return 7

    assert await p.acall(fn) == 7
    assert log == ["a>", "b>", "call", "<b", "<a"]


def test_strategies_are_bound_to_their_pipeline() -> None:
    """Every strategy is bound once, to the pipeline that owns it."""
    log: list[str] = []
    a, b = Recorder("a", log), Recorder("b", log)
    p = Pipeline(a, b)
    assert a.host is p
    assert b.host is p


def test_repr_lists_strategies_in_order() -> None:
    """The repr names the pipeline and every strategy, outermost first."""
    p = Pipeline(Deadline(5.0), Bulkhead(8), Retry(2), Timeout(1.0), name="kakao.pay")
    text = repr(p)
    assert text.startswith("Pipeline('kakao.pay': Deadline(seconds=5.0) -> Bulkhead(")
    positions = [text.index(name) for name in ("Deadline(", "Bulkhead(", "Retry(", "Timeout(")]
    assert positions == sorted(positions)
    assert "max_concurrent=8" in text
    assert "attempts=2" in text


async def test_sync_and_async_give_the_same_result() -> None:
    """A call that fails twice then answers gives the same value, tries and events."""
    sync_events: list[Event] = []
    sync_log: list[int] = []
    sync_clock = FakeClock()
    result = _pipeline(sync_clock, sync_events).call(_flaky(2, sync_log), operation="op")

    async_events: list[Event] = []
    async_log: list[int] = []
    async_clock = FakeClock()

    aresult = await _pipeline(async_clock, async_events).acall(
        _async(_flaky(2, async_log)), operation="op"
    )
    assert result == aresult == "ok after 3"
    assert sync_log == async_log == [1, 2, 3]
    assert sync_events == async_events
    assert sync_clock.slept == async_clock.slept == [0.5, 0.5]


async def test_sync_and_async_raise_the_same_non_retryable_error() -> None:
    """A business refusal passes through both runners at once, untouched."""
    calls: list[str] = []

    def fn(ctx: CallContext) -> str:
        calls.append("sync")
        raise Declined("card declined")

    async def afn(ctx: CallContext) -> str:
        calls.append("async")
        raise Declined("card declined")

    p = _pipeline(FakeClock(), [])
    with pytest.raises(Declined):
        p.call(fn)
    with pytest.raises(Declined):
        await p.acall(afn)
    assert calls == ["sync", "async"]


def test_listeners_receive_events() -> None:
    """A retry is announced to every listener with its attempt, wait and error."""
    first: list[Event] = []
    second: list[Event] = []
    p = Pipeline(
        Retry(2, wait=tenacity.wait_fixed(0.25)),
        name="p",
        timer=FakeClock(),
        listeners=[first.append],
    )
    p.on(second.append)
    p.call(_flaky(1, []), operation="read")
    expected = RetryScheduled("p", "read", 2, 0.25, "ProviderConnectError")
    assert first == [expected]
    assert second == [expected]


def test_raising_listener_is_counted_and_does_not_break_the_call() -> None:
    """A listener that raises is counted in listener_errors; later listeners still run."""
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    p = Pipeline(
        Retry(3, wait=tenacity.wait_fixed(0.1)),
        timer=FakeClock(),
        listeners=[broken, seen.append],
    )
    assert p.call(_flaky(2, [])) == "ok after 3"
    assert p.listener_errors == 2
    assert len(seen) == 2


def test_find_and_breaker_lookup() -> None:
    """``find`` returns the first strategy of a type; ``breaker`` the circuit breaker."""
    breaker = CircuitBreaker()
    p = Pipeline(Deadline(1.0), breaker, Timeout(1.0))
    assert p.breaker is breaker
    assert p.find(Deadline) is p.strategies[0]
    assert p.find(Hedge) is None
    assert Pipeline(Deadline(1.0)).breaker is None


def test_breaker_takes_the_pipeline_name() -> None:
    """An unnamed breaker takes its pipeline's name; a named one keeps its own."""
    assert Pipeline(CircuitBreaker(), name="kakao.talk").breaker.name == "kakao.talk"  # type: ignore[union-attr]
    named = Pipeline(CircuitBreaker(name="own"), name="kakao.talk").breaker
    assert named is not None
    assert named.name == "own"


def _kinds(p: Pipeline) -> list[type[Any]]:
    return [type(s) for s in p.strategies]


def test_for_read_shape() -> None:
    """Reads: deadline, bulkhead, breaker, three tries, adaptive timeout."""
    p = Pipeline.for_read("r", timeout=0.5, deadline=3.0)
    assert _kinds(p) == [Deadline, Bulkhead, CircuitBreaker, Retry, Timeout]
    deadline, _, _, retry, timeout = p.strategies
    assert isinstance(deadline, Deadline)
    assert deadline.seconds == 3.0
    assert isinstance(retry, Retry)
    assert retry.attempts == 3
    assert isinstance(timeout, Timeout)
    assert timeout.seconds == 0.5
    assert timeout.adaptive
    assert p.name == "r"


def test_for_read_with_hedge_puts_hedge_inside_retry() -> None:
    """A hedged read hedges each try: the hedge sits between retry and timeout."""
    p = Pipeline.for_read("r", hedge=True)
    assert _kinds(p) == [Deadline, Bulkhead, CircuitBreaker, Retry, Hedge, Timeout]


def test_for_write_shape() -> None:
    """Writes: the same strategies with longer defaults and no hedge."""
    p = Pipeline.for_write("w")
    assert _kinds(p) == [Deadline, Bulkhead, CircuitBreaker, Retry, Timeout]
    timeout = p.find(Timeout)
    assert timeout is not None
    assert timeout.seconds == 2.0


def test_for_payment_shape() -> None:
    """Payments: two tries at most and a fixed, generous per-try timeout."""
    p = Pipeline.for_payment("pay")
    assert _kinds(p) == [Deadline, Bulkhead, CircuitBreaker, Retry, Timeout]
    retry = p.find(Retry)
    timeout = p.find(Timeout)
    assert retry is not None
    assert timeout is not None
    assert retry.attempts == 2
    assert not timeout.adaptive
    assert timeout.seconds == 10.0


def test_default_timer_is_the_system_timer() -> None:
    """Without a timer the pipeline uses the real clock."""
    assert repr(Pipeline().timer) == "SystemTimer()"


async def test_sync_and_async_retry_the_same_errors() -> None:
    """With a custom ``retry_on``, both runners make the same number of tries."""

    def timeout(ctx: CallContext) -> str:
        tries.append(ctx.attempt)
        raise OperationTimeout("read timed out")

    async def atimeout(ctx: CallContext) -> str:
        return timeout(ctx)

    p = Pipeline(Retry(3, retry_on=retryable_unless_timeout), timer=FakeClock())
    tries: list[int] = []
    with pytest.raises(OperationTimeout):
        p.call(timeout)
    sync_tries, tries = tries, []
    with pytest.raises(OperationTimeout):
        await p.acall(atimeout)
    assert sync_tries == tries
