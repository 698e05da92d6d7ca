"""The retry strategy: tenacity loop, classification, backoff, Retry-After, deadline, budget."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from superapp_sdk._errors import (
    Declined,
    OperationTimeout,
    ProviderConnectError,
    ProviderError,
    RateLimited,
)
from superapp_sdk.core.budget import BudgetOptions, RetryBudget
from superapp_sdk.resilience import (
    CallContext,
    CallRejected,
    Deadline,
    Event,
    Pipeline,
    Retry,
    RetryScheduled,
    SharedBudget,
)
from superapp_sdk.testing import FakeClock
from tests.strategies import time_steps


def _failing(error: Callable[[], BaseException], log: list[int]) -> Callable[[CallContext], Any]:
    def fn(ctx: CallContext) -> Any:
        log.append(ctx.attempt)
        raise error()

    return fn


def _flaky(failures: int, log: list[int]) -> Callable[[CallContext], str]:
    def fn(ctx: CallContext) -> str:
        log.append(ctx.attempt)
        if len(log) <= failures:
            raise ProviderConnectError("refused", request_sent=False)
        return "ok"

    return fn


def _no_budget() -> RetryBudget:
    return RetryBudget("empty", BudgetOptions(ratio=0.0, min_retries_per_second=0.0))


# -- classification --------------------------------------------------------------------


def test_retryable_error_is_retried_until_it_succeeds() -> None:
    """A refused connection is tried again; the third try's answer is returned."""
    log: list[int] = []
    p = Pipeline(Retry(3), timer=FakeClock())
    assert p.call(_flaky(2, log)) == "ok"
    assert log == [1, 2, 3]


def test_retryable_error_stops_at_attempts() -> None:
    """A provider that keeps failing is tried ``attempts`` times; the last error is raised."""
    log: list[int] = []
    p = Pipeline(Retry(4), timer=FakeClock())
    with pytest.raises(ProviderError):
        p.call(_failing(lambda: ProviderError("HTTP 503"), log))
    assert log == [1, 2, 3, 4]


def test_one_attempt_never_retries() -> None:
    """``Retry(1)`` makes exactly one try."""
    log: list[int] = []
    with pytest.raises(ProviderConnectError):
        Pipeline(Retry(1), timer=FakeClock()).call(_failing(lambda: ProviderConnectError("x"), log))
    assert log == [1]


def test_business_refusal_is_not_retried() -> None:
    """A declined card is final: one try, no retry event."""
    log: list[int] = []
    events: list[Event] = []
    p = Pipeline(Retry(3), timer=FakeClock(), listeners=[events.append])
    with pytest.raises(Declined):
        p.call(_failing(lambda: Declined("card declined"), log))
    assert log == [1]
    assert events == []


def test_unclassified_error_passes_through_unretried_and_uncounted() -> None:
    """An exception the caller did not classify is raised as is, with no retry taken."""
    log: list[int] = []
    events: list[Event] = []
    budget = SharedBudget(RetryBudget(options=BudgetOptions(ratio=0.0)))
    retry = Retry(3, budget=budget)
    p = Pipeline(retry, timer=FakeClock(), listeners=[events.append])
    with pytest.raises(KeyError):
        p.call(_failing(lambda: KeyError("bug"), log))
    assert log == [1]
    assert events == []
    assert retry.budget_denied == 0
    assert budget.budget.balance(0.0) == budget.budget.options.reserve


def test_custom_retry_on_decides() -> None:
    """``retry_on`` replaces the default classification."""
    log: list[int] = []
    p = Pipeline(Retry(3, retry_on=lambda e: isinstance(e, KeyError)), timer=FakeClock())
    with pytest.raises(KeyError):
        p.call(_failing(lambda: KeyError("k"), log))
    assert log == [1, 2, 3]


async def test_custom_retry_on_decides_in_async() -> None:
    """The async runner honours ``retry_on`` too."""
    log: list[int] = []

    async def fn(ctx: CallContext) -> str:
        log.append(ctx.attempt)
        raise KeyError("k")

    p = Pipeline(Retry(3, retry_on=lambda e: isinstance(e, KeyError)), timer=FakeClock())
    with pytest.raises(KeyError):
        await p.acall(fn)
    assert log == [1, 2, 3]


def test_base_exception_is_never_retried() -> None:
    """KeyboardInterrupt passes straight through the retry loop."""
    log: list[int] = []
    p = Pipeline(Retry(3, retry_on=lambda e: True), timer=FakeClock())
    with pytest.raises(KeyboardInterrupt):
        p.call(_failing(KeyboardInterrupt, log))
    assert log == [1]


def test_retry_events_carry_attempt_wait_and_error() -> None:
    """Each retry is announced with the number of the try about to be made."""
    events: list[Event] = []
    p = Pipeline(
        Retry(3, wait=tenacity.wait_fixed(0.2)),
        name="kakao",
        timer=FakeClock(),
        listeners=[events.append],
    )
    p.call(_flaky(2, []), operation="talk.send")
    assert events == [
        RetryScheduled("kakao", "talk.send", 2, 0.2, "ProviderConnectError"),
        RetryScheduled("kakao", "talk.send", 3, 0.2, "ProviderConnectError"),
    ]


# -- backoff ---------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_the_exponential_cap() -> None:
    """Waits are drawn from [0, min(2 s, 50 ms * 2**n)], tenacity's full jitter."""
    clock = FakeClock()
    p = Pipeline(Retry(8), timer=clock)
    for _ in range(20):
        with pytest.raises(ProviderConnectError):
            p.call(_failing(lambda: ProviderConnectError("x"), []))
    assert len(clock.slept) == 20 * 7
    for i, wait in enumerate(clock.slept):
        n = i % 7
        assert 0.0 <= wait <= min(2.0, 0.05 * 2**n)


def test_backoff_is_random() -> None:
    """Jitter spreads the waits: twenty first waits are not all equal."""
    clock = FakeClock()
    p = Pipeline(Retry(2), timer=clock)
    for _ in range(20):
        with pytest.raises(ProviderConnectError):
            p.call(_failing(lambda: ProviderConnectError("x"), []))
    assert len(set(clock.slept)) > 1


def test_retry_after_sets_the_minimum_wait() -> None:
    """A 429 with Retry-After: 3 waits at least 3 s, whatever the jitter drew."""
    clock = FakeClock()
    log: list[int] = []

    def fn(ctx: CallContext) -> str:
        log.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RateLimited("slow down", retry_after=3)
        return "ok"

    assert Pipeline(Retry(3), timer=clock).call(fn) == "ok"
    assert log == [1, 2]
    assert len(clock.slept) == 1
    assert clock.slept[0] >= 3


def test_longer_backoff_wins_over_a_short_retry_after() -> None:
    """Retry-After is a floor, not a replacement: a longer backoff stays."""
    clock = FakeClock()

    def fn(ctx: CallContext) -> str:
        if ctx.attempt == 1:
            raise RateLimited("slow down", retry_after=0.5)
        return "ok"

    Pipeline(Retry(2, wait=tenacity.wait_fixed(4)), timer=clock).call(fn)
    assert clock.slept == [4]


def test_never_sleeps_past_the_deadline() -> None:
    """The loop stops before a wait that would end past the deadline."""
    clock = FakeClock()
    log: list[int] = []
    p = Pipeline(Deadline(1.0), Retry(10, wait=tenacity.wait_fixed(0.4)), timer=clock)
    with pytest.raises(ProviderConnectError):
        p.call(_failing(lambda: ProviderConnectError("x"), log))
    assert log == [1, 2, 3]
    assert clock.slept == [0.4, 0.4]
    assert clock.monotonic() < 1.0


def test_retry_after_past_the_deadline_gives_up_at_once() -> None:
    """A Retry-After longer than the time left ends the loop without sleeping."""
    clock = FakeClock()
    log: list[int] = []
    p = Pipeline(Deadline(2.0), Retry(3), timer=clock)
    with pytest.raises(RateLimited):
        p.call(_failing(lambda: RateLimited("later", retry_after=5), log))
    assert log == [1]
    assert clock.slept == []


def test_success_path_does_not_enter_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that succeeds first time never builds or runs a tenacity loop."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(tenacity.Retrying, "__call__", boom)
    monkeypatch.setattr(tenacity.Retrying, "__iter__", boom)
    retry = Retry(3)
    p = Pipeline(retry, timer=FakeClock())
    for _ in range(5):
        assert p.call(lambda ctx: "ok") == "ok"
    assert retry._retrying is None


async def test_async_success_path_does_not_enter_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The async success path skips tenacity's async loop too."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity entered on the success path")

    monkeypatch.setattr(tenacity.AsyncRetrying, "__call__", boom)

    async def fn(ctx: CallContext) -> str:
        return "ok"

    retry = Retry(3)
    p = Pipeline(retry, timer=FakeClock())
    assert await p.acall(fn) == "ok"
    assert retry._asyncer is None


async def test_async_retries_with_the_fake_timer() -> None:
    """The async loop retries and waits on the pipeline's timer."""
    clock = FakeClock()
    log: list[int] = []

    async def fn(ctx: CallContext) -> str:
        log.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ProviderConnectError("refused")
        return "ok"

    p = Pipeline(Retry(3, wait=tenacity.wait_fixed(1.5)), timer=clock)
    assert await p.acall(fn) == "ok"
    assert log == [1, 2, 3]
    assert clock.slept == [1.5, 1.5]


def test_each_call_gets_its_own_loop_state() -> None:
    """Two failing calls in a row each get the full number of tries."""
    log: list[int] = []
    p = Pipeline(Retry(3), timer=FakeClock())
    for _ in range(2):
        with pytest.raises(ProviderConnectError):
            p.call(_failing(lambda: ProviderConnectError("x"), log))
    assert log == [1, 2, 3, 1, 2, 3]


# -- budget ----------------------------------------------------------------------------


def test_spent_budget_stops_retries_and_emits_rejection() -> None:
    """With no ratio and no reserve nothing is retried, and the refusal is announced."""
    log: list[int] = []
    events: list[Event] = []
    retry = Retry(3, budget=_no_budget())
    p = Pipeline(retry, name="kakao", timer=FakeClock(), listeners=[events.append])
    with pytest.raises(ProviderConnectError):
        p.call(_failing(lambda: ProviderConnectError("x"), log), operation="op")
    assert log == [1]
    assert events == [CallRejected("kakao", "op", "retry budget spent", None)]
    assert retry.budget_denied == 1


def test_budget_is_shared_between_pipelines() -> None:
    """Two pipelines of one failure domain draw on one budget."""
    clock = FakeClock()
    # A reserve of exactly one retry (0.1 per second for 10 s) and no ratio.
    shared = SharedBudget(
        RetryBudget("kakao", BudgetOptions(ratio=0.0, min_retries_per_second=0.1))
    )
    talk_events: list[Event] = []
    pay_events: list[Event] = []
    talk = Pipeline(
        Retry(3, budget=shared), name="talk", timer=clock, listeners=[talk_events.append]
    )
    pay = Pipeline(Retry(3, budget=shared), name="pay", timer=clock, listeners=[pay_events.append])
    talk_log: list[int] = []
    pay_log: list[int] = []
    with pytest.raises(ProviderConnectError):
        talk.call(_failing(lambda: ProviderConnectError("x"), talk_log))
    with pytest.raises(ProviderConnectError):
        pay.call(_failing(lambda: ProviderConnectError("x"), pay_log))
    assert talk_log == [1, 2]
    assert pay_log == [1]
    assert any(isinstance(e, CallRejected) for e in pay_events)


def test_plain_retry_budget_is_wrapped_for_threads() -> None:
    """A bare RetryBudget given to Retry is wrapped in a thread-safe SharedBudget."""
    retry = Retry(2, budget=RetryBudget())
    assert isinstance(retry.budget, SharedBudget)


@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    per_second=st.sampled_from([0.0, 0.001, 0.005]),
    calls=st.lists(st.tuples(st.integers(0, 4), time_steps(max_value=1.0)), max_size=60),
)
def test_retries_stay_within_the_budget(
    ratio: float, per_second: float, calls: list[tuple[int, float]]
) -> None:
    """Over any run of failing and succeeding calls, retries <= ratio * requests + reserve."""
    clock = FakeClock()
    options = BudgetOptions(ratio=ratio, min_retries_per_second=per_second, ttl_seconds=1000.0)
    events: list[Event] = []
    p = Pipeline(
        Retry(5, budget=RetryBudget(options=options), wait=tenacity.wait_fixed(0.01)),
        timer=clock,
        listeners=[events.append],
    )
    tries = 0
    for failures, step in calls:
        clock.advance(step)
        log: list[int] = []
        with contextlib.suppress(ProviderConnectError):
            p.call(_flaky(failures, log))
        tries += len(log)
    retries = tries - len(calls)
    assert retries <= ratio * len(calls) + options.reserve + 1e-9
    assert retries == sum(isinstance(e, RetryScheduled) for e in events)


# -- payments --------------------------------------------------------------------------


def test_payment_retries_an_error_that_proves_nothing_was_sent() -> None:
    """for_payment retries a refused connection (request_sent is False)."""
    log: list[int] = []
    p = Pipeline.for_payment("pay", timer=FakeClock())
    assert p.call(_flaky(1, log)) == "ok"
    assert log == [1, 2]


@pytest.mark.parametrize("sent", [True, None])
def test_payment_never_retries_an_ambiguous_error(sent: bool | None) -> None:
    """for_payment does not retry an error after which the charge may have executed."""
    log: list[int] = []
    p = Pipeline.for_payment("pay", timer=FakeClock())
    with pytest.raises(OperationTimeout):
        p.call(_failing(lambda: OperationTimeout("read timed out", request_sent=sent), log))
    assert log == [1]


@pytest.mark.parametrize("last_resort", [True, False])
def test_payment_never_retries_an_ambiguous_error_with_or_without_alternates(
    last_resort: bool,
) -> None:
    """Whether or not a router has another provider, an ambiguous payment error is final."""
    log: list[int] = []
    p = Pipeline.for_payment("pay", timer=FakeClock())
    with pytest.raises(OperationTimeout):
        p.call(_failing(lambda: OperationTimeout("read timed out"), log), last_resort=last_resort)
    assert log == [1]


async def test_async_payment_never_retries_an_ambiguous_error() -> None:
    """The async payment pipeline does not retry an error after which the charge may have
    executed."""
    log: list[int] = []

    async def fn(ctx: CallContext) -> str:
        log.append(ctx.attempt)
        raise OperationTimeout("read timed out")

    with pytest.raises(OperationTimeout):
        await Pipeline.for_payment("pay", timer=FakeClock()).acall(fn)
    assert log == [1]


def test_invalid_attempts_are_refused() -> None:
    """``attempts`` below 1 raises ValueError naming the field."""
    with pytest.raises(ValueError, match=r"Retry\.attempts must be >= 1"):
        Retry(0)


def test_shared_budget_applies_buffered_deposits_before_a_withdrawal() -> None:
    """Deposits wait in a buffer, yet a withdrawal sees every one made before it."""
    shared = SharedBudget(RetryBudget(options=BudgetOptions(ratio=0.5, min_retries_per_second=0)))
    assert not shared.try_withdraw(0.0)
    for _ in range(4):  # fewer than FLUSH_EVERY: all still buffered
        shared.deposit(0.5)
    assert shared.balance(0.5) == 2.0
    assert shared.try_withdraw(0.5)
    assert shared.try_withdraw(0.5)
    assert not shared.try_withdraw(0.5)


def test_shared_budget_keeps_each_buffered_deposits_time() -> None:
    """A deposit applied late still counts at the time it was made: it expires on time."""
    options = BudgetOptions(ratio=1.0, min_retries_per_second=0, ttl_seconds=10)
    shared = SharedBudget(RetryBudget(options=options))
    shared.deposit(0.0)
    shared.deposit(9.5)
    assert shared.balance(9.5) == 2.0
    assert shared.balance(10.5) == 1.0  # the first fell out of the window, applied or not


def test_shared_budget_loses_no_deposit_across_threads() -> None:
    """8 threads depositing at once: after flush() the budget holds every deposit, and
    no more is buffered than one flush's worth per thread."""
    options = BudgetOptions(ratio=1.0, min_retries_per_second=0)
    shared = SharedBudget(RetryBudget(options=options))
    barrier = threading.Barrier(8)
    most_buffered: list[int] = []

    def work() -> None:
        barrier.wait()
        most = 0
        for _ in range(5_000):
            shared.deposit(1.0)
            most = max(most, len(shared._pending))
        most_buffered.append(most)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(most_buffered) == 8
    assert max(most_buffered) <= SharedBudget.FLUSH_EVERY + 8
    shared.flush()
    assert shared.budget.balance(1.0) == 40_000
