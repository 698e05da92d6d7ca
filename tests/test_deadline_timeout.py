"""The overall deadline and the adaptive per-try timeout."""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest
import tenacity
from hypothesis import example, given
from hypothesis import strategies as st

from superapp_sdk._errors import CircuitOpen, NoAnswer, OperationTimeout, ProviderConnectError
from superapp_sdk.core.breaker import BreakerOptions, BreakerState
from superapp_sdk.core.latency import LatencyTracker
from superapp_sdk.resilience import (
    CallContext,
    CircuitBreaker,
    Deadline,
    Hedge,
    Pipeline,
    Retry,
    Timeout,
)
from superapp_sdk.resilience._base import NO_RETRY_ATTR
from superapp_sdk.testing import FakeClock


def _bound(timeout: Timeout, samples: list[float]) -> Timeout:
    """Bind ``timeout`` to a pipeline whose tracker holds exactly ``samples``."""
    latency = LatencyTracker(refresh_every=1)
    for s in samples:
        latency.record(s)
    Pipeline(timeout, timer=FakeClock(), latency=latency)
    return timeout


# -- adaptive timeout ------------------------------------------------------------------


def test_timeout_is_the_maximum_until_min_samples() -> None:
    """With fewer than ``min_samples`` latencies the configured maximum is used."""
    t = _bound(Timeout(1.0, min_samples=20), [0.01] * 19)
    assert t.current() == 1.0


def test_timeout_adapts_to_the_p99_after_min_samples() -> None:
    """Once enough samples exist the timeout is multiplier x p99."""
    t = _bound(Timeout(1.0, multiplier=3.0, min_samples=20), [0.1] * 20)
    assert t.current() == pytest.approx(0.3)


def test_adaptive_timeout_uses_the_percentile_not_the_mean() -> None:
    """One slow outlier in a hundred sets the p99 and so the timeout."""
    samples = [0.01] * 98 + [0.2, 0.2]
    t = _bound(Timeout(1.0, multiplier=2.0, percentile=0.99, min_samples=20), samples)
    assert t.current() == pytest.approx(0.4)


def test_adaptive_timeout_is_clamped_to_the_floor() -> None:
    """A very fast provider still gets at least ``floor`` seconds."""
    t = _bound(Timeout(1.0, floor=0.05, min_samples=5), [0.001] * 5)
    assert t.current() == 0.05


def test_adaptive_timeout_is_clamped_to_the_maximum() -> None:
    """A slow provider never gets more than ``seconds``."""
    t = _bound(Timeout(1.0, min_samples=5), [0.8] * 5)
    assert t.current() == 1.0


def test_timeout_adapts_as_soon_as_min_samples_are_seen() -> None:
    """With the default tracker (sorted copy refreshed every 16 samples), the timeout
    adapts at the 20th sample, not at the next refresh."""
    timeout = Timeout(1.0, multiplier=3.0, min_samples=20)
    p = Pipeline(timeout, timer=FakeClock())
    for _ in range(19):
        p.latency.record(0.1)
    assert timeout.current() == 1.0
    p.latency.record(0.1)
    assert timeout.current() == pytest.approx(0.3)


def test_timeout_is_the_maximum_again_after_the_tracker_is_reset() -> None:
    """Forgetting the samples brings the timeout back to ``seconds`` until relearned."""
    timeout = Timeout(1.0, min_samples=5)
    p = Pipeline(timeout, timer=FakeClock())
    for _ in range(5):
        p.latency.record(0.1)
    assert timeout.current() == pytest.approx(0.3)
    p.latency.reset()
    assert timeout.current() == 1.0


def test_fixed_timeout_ignores_latency() -> None:
    """``adaptive=False`` always gives ``seconds``."""
    t = _bound(Timeout(10.0, adaptive=False, min_samples=1), [0.01] * 50)
    assert t.current() == 10.0


def test_successful_tries_feed_the_latency_tracker() -> None:
    """Each successful try records its duration on the pipeline's tracker."""
    clock = FakeClock()
    p = Pipeline(Timeout(1.0), timer=clock, latency=LatencyTracker(refresh_every=1))

    def fn(ctx: CallContext) -> str:
        clock.advance(0.25)
        return "ok"

    for _ in range(3):
        p.call(fn)
    assert p.latency.count == 3
    assert p.latency.percentile(1.0) == 0.25


def test_failed_tries_do_not_feed_the_latency_tracker() -> None:
    """A failure's duration says nothing about healthy latency and is not recorded."""
    p = Pipeline(Timeout(1.0), timer=FakeClock())

    def fn(ctx: CallContext) -> str:
        raise ProviderConnectError("x")

    with pytest.raises(ProviderConnectError):
        p.call(fn)
    assert p.latency.count == 0


def test_ctx_timeout_is_the_per_try_timeout() -> None:
    """The callable sees the per-try timeout in ``ctx.timeout``."""
    seen: list[float | None] = []
    Pipeline(Timeout(0.7), timer=FakeClock()).call(lambda ctx: seen.append(ctx.timeout))
    assert seen == [0.7]


def test_ctx_timeout_is_clamped_by_the_deadline() -> None:
    """A deadline shorter than the per-try timeout wins."""
    seen: list[float | None] = []
    Pipeline(Deadline(0.3), Timeout(1.0), timer=FakeClock()).call(
        lambda ctx: seen.append(ctx.timeout)
    )
    assert seen == [0.3]


def test_ctx_timeout_shrinks_as_retries_use_up_the_deadline() -> None:
    """Each retry gets only what is left of the deadline."""
    clock = FakeClock()
    seen: list[float | None] = []

    def fn(ctx: CallContext) -> str:
        seen.append(ctx.timeout)
        raise ProviderConnectError("x")

    p = Pipeline(Deadline(1.0), Retry(5, wait=tenacity.wait_fixed(0.4)), Timeout(1.0), timer=clock)
    with pytest.raises(ProviderConnectError):
        p.call(fn)
    assert seen == pytest.approx([1.0, 0.6, 0.2])


def test_nested_deadline_keeps_the_earlier_one() -> None:
    """An inner deadline cannot extend an outer, shorter one."""
    seen: list[float | None] = []
    p = Pipeline(Deadline(0.5), Deadline(5.0), timer=FakeClock())
    p.call(lambda ctx: seen.append(ctx.deadline))
    assert seen == [0.5]


def test_deadline_is_relative_to_the_timer() -> None:
    """The deadline is measured on the pipeline's clock."""
    clock = FakeClock(start=100.0)
    seen: list[float | None] = []
    Pipeline(Deadline(2.0), timer=clock).call(lambda ctx: seen.append(ctx.deadline))
    assert seen == [102.0]


def test_operation_timeout_is_a_timeout_error() -> None:
    """OperationTimeout is a retryable NoAnswer and a builtin TimeoutError."""
    exc = OperationTimeout("x")
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, NoAnswer)
    assert exc.retryable


# -- async cancellation (real, small timeouts) -----------------------------------------


async def test_async_hanging_try_is_cancelled_at_the_timeout() -> None:
    """A try that never answers is cancelled at its timeout with OperationTimeout."""
    cancelled = asyncio.Event()

    async def hang(ctx: CallContext) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    p = Pipeline(Timeout(0.05), name="kakao", timer=FakeClock())
    async with asyncio.timeout(5):
        with pytest.raises(OperationTimeout) as info:
            await p.acall(hang, operation="talk.send")
    assert isinstance(info.value, TimeoutError)
    assert cancelled.is_set()
    assert info.value.provider == "kakao"
    assert info.value.operation == "talk.send"


async def test_async_adaptive_timeout_cancels_at_the_learned_timeout() -> None:
    """After fast answers, a hanging try gets the floor, not the configured maximum."""
    latency = LatencyTracker(refresh_every=1)
    for _ in range(20):
        latency.record(0.001)
    seen: list[float | None] = []

    async def hang(ctx: CallContext) -> str:
        seen.append(ctx.timeout)
        await asyncio.Event().wait()
        return "never"

    p = Pipeline(Timeout(30.0, floor=0.05), timer=FakeClock(), latency=latency)
    async with asyncio.timeout(5):
        with pytest.raises(OperationTimeout):
            await p.acall(hang)
    assert seen == [0.05]


async def test_async_deadline_cancels_a_slow_call() -> None:
    """A call that sleeps longer than the deadline is cancelled with OperationTimeout."""
    finished: list[bool] = []

    async def slow(ctx: CallContext) -> str:
        await asyncio.sleep(10)
        finished.append(True)
        return "late"

    p = Pipeline(Deadline(0.05), timer=FakeClock())
    async with asyncio.timeout(5):
        with pytest.raises(OperationTimeout, match="deadline"):
            await p.acall(slow)
    assert finished == []


async def test_async_deadline_with_hedge_inside_is_enforced() -> None:
    """With a hedge inside, the deadline itself cancels the call."""

    async def slow(ctx: CallContext) -> str:
        await asyncio.sleep(10)
        return "late"

    p = Pipeline(Deadline(0.05), Hedge(initial_delay=0.01), Timeout(30.0), timer=FakeClock())
    async with asyncio.timeout(5):
        with pytest.raises(OperationTimeout):
            await p.acall(slow)


async def test_async_fast_call_is_not_cancelled() -> None:
    """A call well within both limits returns its value."""

    async def fast(ctx: CallContext) -> str:
        await asyncio.sleep(0)
        return "ok"

    p = Pipeline(Deadline(5.0), Timeout(5.0), timer=FakeClock())
    assert await p.acall(fast) == "ok"


async def test_async_timeout_error_from_the_callable_is_an_operation_timeout() -> None:
    """An OperationTimeout raised by the callable itself is passed on unchanged."""
    original = OperationTimeout("provider said timeout")

    async def fn(ctx: CallContext) -> str:
        raise original

    p = Pipeline(Deadline(5.0), Timeout(5.0), timer=FakeClock())
    with pytest.raises(OperationTimeout) as info:
        await p.acall(fn)
    assert info.value is original


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seconds": 0}, "seconds"),
        ({"seconds": 1.0, "multiplier": 0.5}, "multiplier"),
        ({"seconds": 1.0, "percentile": 0}, "percentile"),
        ({"seconds": 1.0, "percentile": 1.5}, "percentile"),
        ({"seconds": 1.0, "floor": 2.0}, "floor"),
        ({"seconds": 1.0, "floor": 0}, "floor"),
        ({"seconds": 1.0, "min_samples": 0}, "min_samples"),
    ],
)
def test_invalid_timeout_options_name_the_field(kwargs: dict[str, float], field: str) -> None:
    """Invalid Timeout options raise ValueError naming the field."""
    with pytest.raises(ValueError, match=rf"Timeout\.{field} must be"):
        Timeout(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_invalid_deadline_is_refused(seconds: float) -> None:
    """A deadline must be a positive number of seconds."""
    with pytest.raises(ValueError, match=r"Deadline\.seconds must be > 0"):
        Deadline(seconds)


async def test_timed_out_try_is_retried() -> None:
    """A try cancelled at its timeout is retried like any other timeout."""
    tries: list[int] = []

    async def hang(ctx: CallContext) -> str:
        tries.append(ctx.attempt)
        await asyncio.Event().wait()
        return "never"

    p = Pipeline(Retry(2, wait=tenacity.wait_none()), Timeout(0.02, floor=0.01), timer=FakeClock())
    async with asyncio.timeout(5):
        with pytest.raises(OperationTimeout):
            await p.acall(hang)
    assert tries == [1, 2]


async def test_timed_out_try_marked_do_not_retry_is_not_retried() -> None:
    """A callable that marks its cancellation "may have executed" is not tried again."""
    tries: list[int] = []

    async def send_once(ctx: CallContext) -> str:
        tries.append(ctx.attempt)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            setattr(exc, NO_RETRY_ATTR, True)
            raise
        return "never"

    p = Pipeline(Retry(3, wait=tenacity.wait_none()), Timeout(0.02, floor=0.01), timer=FakeClock())
    async with asyncio.timeout(5):
        with pytest.raises(OperationTimeout) as info:
            await p.acall(send_once)
    assert tries == [1]
    assert getattr(info.value, NO_RETRY_ATTR) is True


def test_adaptive_timeout_without_breaker_recovers_when_the_provider_slows_down() -> None:
    """A provider that slows from 20 ms to 100 ms (under the 1 s maximum) is served again."""
    clock = FakeClock()
    p = Pipeline(Timeout(1.0, min_samples=20), timer=clock)
    latency = 0.02

    def call(ctx: CallContext) -> str:
        assert ctx.timeout is not None
        if ctx.timeout < latency:
            clock.advance(ctx.timeout)
            raise OperationTimeout("read timed out")
        clock.advance(latency)
        return "ok"

    for _ in range(100):
        p.call(call)
    latency = 0.1
    answered = []
    for _ in range(200):
        try:
            p.call(call)
            answered.append(True)
        except OperationTimeout:
            answered.append(False)
    assert all(answered[-100:])
    # Back-off lets one try in four through; a sample above the p99 refreshes the
    # tracker's percentiles at once, so the new latency is the p99 after the few successes
    # that fill the top 1% (2 here: 102 samples), not after a periodic refresh.
    assert answered.count(False) <= 3 * 3


def test_breaker_probe_relearns_the_latency_of_a_slowed_provider() -> None:
    """A provider that slowed down is cut by the learned timeout until the breaker opens; a
    probe gets the full timeout, and after recovery user calls are served again."""
    clock = FakeClock()
    options = BreakerOptions(
        window_size=10,
        minimum_calls=5,
        open_seconds=10.0,
        jitter=0.0,
        half_open_probes=1,
        half_open_successes=1,
    )
    breaker = CircuitBreaker(options)
    # No timer back-off here: this is about the breaker's probe path alone.
    p = Pipeline(breaker, Timeout(1.0, min_samples=20, backoff_after=1000), timer=clock)
    latency = 0.02

    def call(ctx: CallContext) -> str:
        assert ctx.timeout is not None
        if ctx.timeout < latency:
            clock.advance(ctx.timeout)
            raise OperationTimeout("read timed out")
        clock.advance(latency)
        return "ok"

    for _ in range(20):
        p.call(call)
    latency = 0.1
    for _ in range(10):
        with pytest.raises((OperationTimeout, CircuitOpen)):
            p.call(call)
    assert breaker.metrics().state is BreakerState.OPEN
    clock.advance(10.0)
    assert p.call(call, probe=True) == "ok"
    assert breaker.metrics().state is BreakerState.CLOSED
    assert p.call(call) == "ok"


def test_timeout_backs_off_after_timeouts_in_a_row_and_resets_on_success() -> None:
    """After backoff_after timeouts in a row each further try gets twice the timeout, capped
    at the maximum; a success brings the learned timeout back."""
    clock = FakeClock()
    t = Timeout(1.0, min_samples=1, floor=0.01, backoff_after=2)
    p = Pipeline(t, timer=clock)
    p.call(lambda ctx: clock.advance(0.01))
    learned = t.current()
    seen = []

    def hang(ctx: CallContext) -> None:
        assert ctx.timeout is not None
        seen.append(ctx.timeout)
        clock.advance(ctx.timeout)
        raise OperationTimeout("read timed out")

    for _ in range(8):
        with pytest.raises(OperationTimeout):
            p.call(hang)
    assert seen[:2] == [learned, learned]
    assert seen[2:5] == [learned * 2, learned * 4, learned * 8]
    assert max(seen) <= 1.0
    p.call(lambda ctx: clock.advance(0.01))
    assert t.current() == learned


# -- the latency tracker ---------------------------------------------------------------


@given(
    size=st.integers(1, 40),
    refresh_every=st.integers(1, 70),
    samples=st.lists(st.floats(0, 10, allow_nan=False) | st.sampled_from([-1.0, math.inf])),
    q=st.floats(0.01, 1.0),
)
def test_tracker_percentiles_match_the_last_samples_when_refreshed(
    size: int, refresh_every: int, samples: list[float], q: float
) -> None:
    """Percentiles are nearest-rank over the last ``size`` valid samples whenever
    ``version`` says they were refreshed; invalid samples are ignored."""
    tracker = LatencyTracker(size, refresh_every=refresh_every)
    valid: list[float] = []
    seen_version = tracker.version
    for value in samples:
        tracker.record(value)
        if value >= 0 and math.isfinite(value):
            valid.append(value)
        if tracker.version != seen_version:
            seen_version = tracker.version
            window = sorted(valid[-size:])
            assert tracker.percentile(q) == window[max(1, math.ceil(q * len(window))) - 1]
    assert tracker.samples() == min(len(valid), size)
    assert tracker.count == len(valid)


def test_tracker_rises_at_once_and_falls_within_refresh_every() -> None:
    """A sample above the p99 refreshes at once; lower ones wait for the periodic refresh."""
    tracker = LatencyTracker(100, refresh_every=64)
    for _ in range(100):
        tracker.record(0.02)
    assert tracker.percentile(0.99) == 0.02
    tracker.record(0.5)
    tracker.record(0.5)
    assert tracker.percentile(0.99) == 0.5
    for i in range(63):
        tracker.record(0.01)
        assert tracker.percentile(0.5) == 0.02, i  # quicker samples wait
    tracker.record(0.01)  # the 64th since the last refresh
    assert tracker.percentile(0.5) == 0.01
    assert tracker.percentile(0.99) == 0.5  # both slow samples are still in the ring


@given(
    steps=st.lists(
        st.tuples(
            st.floats(0.001, 0.3),
            st.booleans(),
            st.none() | st.floats(0.01, 2.0),
            st.sampled_from([None, False, True]),
        ),
        max_size=120,
    )
)
# Learned after 5 successes, then timeouts in a row until the back-off doubles it.
@example(steps=[(0.05, False, None, None)] * 6 + [(0.05, True, None, None)] * 4)
def test_sync_try_gets_the_timeout_current_gives(
    steps: list[tuple[float, bool, float | None, bool | None]],
) -> None:
    """The sync path reads the learned timeout from its cache; whatever the history
    (successes, timeouts in a row, probes, caps), a try gets what current() says."""
    clock = FakeClock()
    timeout = Timeout(1.0, min_samples=5, backoff_after=2, floor=0.01)
    p = Pipeline(timeout, timer=clock, latency=LatencyTracker(32, refresh_every=4))
    for latency, times_out, cap, probe in steps:
        expected = timeout.seconds if probe else timeout.current()
        if cap is not None:
            expected = min(expected, cap)
        seen: list[float | None] = []

        def call(
            ctx: CallContext,
            latency: float = latency,
            times_out: bool = times_out,
            seen: list[float | None] = seen,
        ) -> int:
            seen.append(ctx.timeout)
            assert ctx.timeout is not None
            if times_out or latency >= ctx.timeout:
                clock.advance(ctx.timeout)
                raise OperationTimeout("read timed out")
            clock.advance(latency)
            return 1

        with contextlib.suppress(OperationTimeout):
            p.call(call, probe=probe, max_timeout=cap)
        assert seen == [expected]
