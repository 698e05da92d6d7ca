"""The circuit breaker shell: admission, classification, cancellation, manual control,
events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from superapp_sdk._errors import CircuitOpen, Declined, ProviderConnectError
from superapp_sdk.core.breaker import BreakerMetrics, BreakerOptions, BreakerState, StateChange
from superapp_sdk.resilience import (
    CallContext,
    CallRejected,
    CircuitBreaker,
    Event,
    Pipeline,
)
from superapp_sdk.testing import FakeClock

WAIT = 5.0


def _options(**overrides: Any) -> BreakerOptions:
    base: dict[str, Any] = {
        "window_size": 4,
        "minimum_calls": 2,
        "failure_rate": 0.5,
        "open_seconds": 10.0,
        "jitter": 0.0,
        "half_open_probes": 1,
        "half_open_successes": 1,
    }
    base.update(overrides)
    return BreakerOptions(**base)


def _setup(
    events: list[Event] | None = None, **kwargs: Any
) -> tuple[Pipeline, CircuitBreaker, FakeClock]:
    clock = FakeClock()
    options = kwargs.pop("options", _options())
    breaker = CircuitBreaker(options, **kwargs)
    listeners = [events.append] if events is not None else []
    p = Pipeline(breaker, name="kakao", timer=clock, listeners=listeners)
    return p, breaker, clock


def _raise(exc: Callable[[], BaseException]) -> Callable[[CallContext], Any]:
    def fn(ctx: CallContext) -> Any:
        raise exc()

    return fn


def _fail(p: Pipeline, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ProviderConnectError):
            p.call(_raise(lambda: ProviderConnectError("refused")))


def _ok(ctx: CallContext) -> str:
    return "ok"


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so the type checker does not keep a narrowed state across calls that move it.
    return breaker.state


# -- opening ---------------------------------------------------------------------------


def test_opens_after_failures_reach_the_rate() -> None:
    """Two failures out of two calls (minimum 2, rate 50 %) open the breaker."""
    p, breaker, _ = _setup()
    _fail(p, 1)
    assert _state(breaker) is BreakerState.CLOSED
    _fail(p, 1)
    assert _state(breaker) is BreakerState.OPEN


def test_open_breaker_rejects_without_calling() -> None:
    """An open breaker raises CircuitOpen with retry_after and never runs the callable."""
    events: list[Event] = []
    p, _, clock = _setup(events)
    _fail(p, 2)
    clock.advance(4.0)
    calls: list[int] = []
    with pytest.raises(CircuitOpen) as info:
        p.call(lambda ctx: calls.append(1), operation="talk.send")
    assert calls == []
    assert info.value.retry_after == pytest.approx(6.0)
    assert info.value.provider == "kakao"
    assert info.value.request_sent is False
    rejected = events[-1]
    assert isinstance(rejected, CallRejected)
    assert (rejected.name, rejected.operation, rejected.reason) == (
        "kakao",
        "talk.send",
        "circuit open",
    )
    assert rejected.retry_after == pytest.approx(6.0)


def test_successes_keep_the_breaker_closed() -> None:
    """Failures under the rate do not open it."""
    p, breaker, _ = _setup(options=_options(window_size=10, minimum_calls=4))
    for _ in range(3):
        p.call(_ok)
    _fail(p, 2)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.metrics().calls == 5
    assert breaker.metrics().failures == 2


def test_unclassified_exception_passes_through_uncounted() -> None:
    """An exception that is not a failure is raised as is and not recorded."""
    p, breaker, _ = _setup()
    for _ in range(5):
        with pytest.raises(ValueError, match="bug"):
            p.call(_raise(lambda: ValueError("bug")))
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.metrics().calls == 0


def test_business_refusal_is_not_a_failure() -> None:
    """A declined card says nothing about the provider's health."""
    p, breaker, _ = _setup()
    for _ in range(5):
        with pytest.raises(Declined):
            p.call(_raise(lambda: Declined("card declined")))
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.metrics().failures == 0


def test_custom_failure_on_decides_what_counts() -> None:
    """``failure_on`` replaces the default classification."""
    p, breaker, _ = _setup(failure_on=lambda e: isinstance(e, ValueError))
    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            p.call(_raise(lambda: ValueError("bad")))
    assert _state(breaker) is BreakerState.OPEN


def test_keyboard_interrupt_is_never_a_failure_nor_swallowed() -> None:
    """KeyboardInterrupt propagates and is not counted."""
    p, breaker, _ = _setup()
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            p.call(_raise(KeyboardInterrupt))
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.metrics().calls == 0


async def test_cancelled_error_is_never_a_failure_nor_swallowed() -> None:
    """A cancelled async call propagates CancelledError and is not counted."""
    p, breaker, _ = _setup()

    async def hang(ctx: CallContext) -> str:
        await asyncio.Event().wait()
        return "never"

    async with asyncio.timeout(WAIT):
        for _ in range(3):
            task = asyncio.create_task(p.acall(hang))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.metrics().calls == 0


async def test_async_failures_open_the_breaker() -> None:
    """The async runner records failures like the sync one."""
    p, breaker, _ = _setup()

    async def fail(ctx: CallContext) -> str:
        raise ProviderConnectError("refused")

    for _ in range(2):
        with pytest.raises(ProviderConnectError):
            await p.acall(fail)
    assert _state(breaker) is BreakerState.OPEN

    async def never(ctx: CallContext) -> str:
        raise AssertionError("called through an open breaker")

    with pytest.raises(CircuitOpen):
        await p.acall(never)


# -- half-open -------------------------------------------------------------------------


def test_half_open_probe_success_closes() -> None:
    """After the open time a probe is admitted; its success closes the breaker."""
    p, breaker, clock = _setup()
    _fail(p, 2)
    clock.advance(10.0)
    assert p.call(_ok) == "ok"
    assert _state(breaker) is BreakerState.CLOSED


def test_half_open_admits_only_the_permitted_probes() -> None:
    """While the single probe is in flight, other calls are rejected."""
    p, breaker, clock = _setup()
    _fail(p, 2)
    clock.advance(10.0)
    inner: list[str] = []

    def probe(ctx: CallContext) -> str:
        with pytest.raises(CircuitOpen):
            p.call(_ok)
        inner.append("rejected")
        return "ok"

    assert p.call(probe) == "ok"
    assert inner == ["rejected"]
    assert _state(breaker) is BreakerState.CLOSED


async def test_cancelled_half_open_probe_gives_its_permit_back() -> None:
    """Cancelling the only probe lets the breaker admit another one."""
    p, breaker, clock = _setup()
    _fail(p, 2)
    clock.advance(10.0)

    async def hang(ctx: CallContext) -> str:
        await asyncio.Event().wait()
        return "never"

    async def ok(ctx: CallContext) -> str:
        return "ok"

    async with asyncio.timeout(WAIT):
        probe = asyncio.create_task(p.acall(hang))
        await asyncio.sleep(0)
        assert _state(breaker) is BreakerState.HALF_OPEN
        with pytest.raises(CircuitOpen):
            await p.acall(ok)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert _state(breaker) is BreakerState.HALF_OPEN
        assert breaker.probe_due()
        assert await p.acall(ok) == "ok"
    assert _state(breaker) is BreakerState.CLOSED


def test_interrupted_half_open_probe_gives_its_permit_back() -> None:
    """A KeyboardInterrupt in the probe returns the permit too."""
    p, breaker, clock = _setup()
    _fail(p, 2)
    clock.advance(10.0)
    with pytest.raises(KeyboardInterrupt):
        p.call(_raise(KeyboardInterrupt))
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert p.call(_ok) == "ok"
    assert _state(breaker) is BreakerState.CLOSED


def test_failed_probe_reopens_for_longer() -> None:
    """A failed probe reopens the breaker with a grown open time."""
    p, breaker, clock = _setup()
    _fail(p, 2)
    clock.advance(10.0)
    _fail(p, 1)
    assert _state(breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as info:
        p.call(_ok)
    assert info.value.retry_after == pytest.approx(20.0)


def test_background_probe_rejects_user_calls_while_recovering() -> None:
    """With background_probe, user calls are refused after the open time, not used as
    probes; an explicit probe through ``acquire`` tests the provider instead."""
    p, breaker, clock = _setup(background_probe=True)
    _fail(p, 2)
    clock.advance(10.0)
    calls: list[int] = []
    with pytest.raises(CircuitOpen):
        p.call(lambda ctx: calls.append(1))
    assert calls == []
    assert breaker.probe_due()
    ctx = CallContext("probe")
    permit = breaker.acquire(ctx, probe=True)
    breaker.settle(permit, clock.monotonic(), None)
    assert _state(breaker) is BreakerState.CLOSED
    assert p.call(_ok) == "ok"


# -- manual control --------------------------------------------------------------------


def test_isolate_rejects_until_reset() -> None:
    """An isolated breaker refuses every call however long one waits."""
    p, breaker, clock = _setup()
    breaker.isolate()
    clock.advance(10_000.0)
    with pytest.raises(CircuitOpen):
        p.call(_ok)
    assert _state(breaker) is BreakerState.ISOLATED
    breaker.reset()
    assert p.call(_ok) == "ok"
    assert _state(breaker) is BreakerState.CLOSED


def test_force_open_rejects_then_probes_after_open_time() -> None:
    """A forced-open breaker rejects, then admits a probe after the open time."""
    p, breaker, clock = _setup()
    breaker.force_open()
    with pytest.raises(CircuitOpen) as info:
        p.call(_ok)
    assert info.value.retry_after == pytest.approx(10.0)
    clock.advance(10.0)
    assert p.call(_ok) == "ok"
    assert _state(breaker) is BreakerState.CLOSED


def test_disable_admits_everything_and_records_nothing() -> None:
    """A disabled breaker never opens and keeps no counts."""
    p, breaker, _ = _setup()
    breaker.disable()
    _fail(p, 5)
    assert _state(breaker) is BreakerState.DISABLED
    assert breaker.metrics().calls == 0


def test_metrics_only_records_but_never_opens() -> None:
    """In metrics-only mode failures are counted but the breaker stays open to calls."""
    p, breaker, _ = _setup()
    breaker.metrics_only()
    _fail(p, 4)
    assert _state(breaker) is BreakerState.METRICS_ONLY
    m = breaker.metrics()
    assert m.calls == 4
    assert m.failures == 4
    assert p.call(_ok) == "ok"


def test_reset_forgets_history() -> None:
    """After reset one more failure does not reopen a breaker that needs two."""
    p, breaker, _ = _setup()
    _fail(p, 2)
    breaker.reset()
    _fail(p, 1)
    assert _state(breaker) is BreakerState.CLOSED


# -- events ----------------------------------------------------------------------------


def test_state_changes_reach_listeners() -> None:
    """Opening, half-opening and closing are each announced."""
    events: list[Event] = []
    p, _, clock = _setup(events)
    _fail(p, 2)
    clock.advance(10.0)
    p.call(_ok)
    changes = [(e.old, e.new) for e in events if isinstance(e, StateChange)]
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert all(e.name == "kakao" for e in events if isinstance(e, StateChange))


def test_manual_changes_reach_listeners() -> None:
    """Manual control is announced like any transition."""
    events: list[Event] = []
    _, breaker, _ = _setup(events)
    breaker.isolate()
    breaker.reset()
    assert [e.new for e in events if isinstance(e, StateChange)] == [
        BreakerState.ISOLATED,
        BreakerState.CLOSED,
    ]


def test_listener_is_called_outside_the_lock() -> None:
    """A listener that reads the breaker's metrics does not deadlock."""
    seen: list[BreakerMetrics] = []
    locked: list[bool] = []
    breaker_box: list[CircuitBreaker] = []

    def listener(event: Event) -> None:
        if isinstance(event, StateChange):
            locked.append(breaker_box[0]._lock.locked())
            seen.append(breaker_box[0].metrics())

    p, breaker, _ = _setup()
    breaker_box.append(breaker)
    p.on(listener)
    done = threading.Event()

    def run() -> None:
        _fail(p, 2)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    assert done.is_set(), "listener deadlocked on the breaker lock"
    assert locked == [False]
    assert [m.state for m in seen] == [BreakerState.OPEN]


def test_breaker_with_its_own_name_and_timer() -> None:
    """A breaker given a name and a timer uses them over the pipeline's."""
    own = FakeClock(start=50.0)
    breaker = CircuitBreaker(_options(), name="own", timer=own)
    p = Pipeline(breaker, name="pipe", timer=FakeClock())
    _fail(p, 2)
    with pytest.raises(CircuitOpen) as info:
        p.call(_ok)
    assert info.value.provider == "own"
    assert breaker.metrics().open_until == pytest.approx(60.0)


def test_repr_shows_state_and_window() -> None:
    """The repr names the breaker, its state and its thresholds."""
    _, breaker, _ = _setup()
    text = repr(breaker)
    assert "name='kakao'" in text
    assert "state=closed" in text
    assert "window=count:4" in text
