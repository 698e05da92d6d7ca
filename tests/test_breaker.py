"""The circuit breaker machine, one behaviour at a time."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from superapp_sdk.core.breaker import (
    BreakerMachine,
    BreakerMetrics,
    BreakerOptions,
    BreakerState,
    Permit,
)

S = BreakerState


def make(**options: Any) -> BreakerMachine:
    """A breaker without jitter unless asked, so open times are exact."""
    options.setdefault("jitter", 0.0)
    return BreakerMachine("kakao.pay", BreakerOptions(**options), rng=random.Random(7))


def call(
    m: BreakerMachine, now: float, *, failed: bool, duration: float = 0.0, probe: bool = True
) -> Permit | None:
    """Acquire and report one call; returns the permit (None when rejected)."""
    permit = m.acquire(now, probe=probe)
    if permit is not None:
        if failed:
            m.on_failure(permit, duration, now)
        else:
            m.on_success(permit, duration, now)
    return permit


def open_breaker(m: BreakerMachine, now: float = 0.0) -> None:
    m.force_open(now)
    assert m.state is S.OPEN


# -- opening ---------------------------------------------------------------------------


def test_does_not_open_before_minimum_calls() -> None:
    """Failures below ``minimum_calls`` never open the breaker, whatever the rate."""
    m = make(window_size=10, minimum_calls=5)
    for _ in range(4):
        call(m, 0.0, failed=True)
    assert m.state is S.CLOSED


def test_opens_at_failure_rate_once_minimum_calls_reached() -> None:
    """The call that reaches ``minimum_calls`` with a failure rate at the threshold opens."""
    m = make(window_size=10, minimum_calls=4, failure_rate=0.5)
    for failed in (False, True, False, True):
        call(m, 1.0, failed=failed)
    assert m.state is S.OPEN
    assert m.open_until == 1.0 + m.options.open_seconds


def test_a_failure_older_than_a_later_success_is_not_counted() -> None:
    """Calls that hung through an outage and fail after the provider answered a later call
    do not reopen the breaker: their failures say nothing about now."""
    m = make(window_size=10, minimum_calls=4, failure_rate=0.5)
    hung = [m.acquire(0.0, probe=False) for _ in range(4)]
    call(m, 20.0, failed=False, duration=0.01)
    for permit in hung:
        assert permit is not None
        m.on_failure(permit, 21.0, 21.0)
    assert m.state is S.CLOSED
    assert m.metrics(21.0).failures == 0
    # A failure that began after that success counts as before.
    for _ in range(4):
        call(m, 22.0, failed=True)
    assert m.state is S.OPEN


def test_stays_closed_below_failure_rate() -> None:
    """A failure rate under the threshold keeps the breaker closed."""
    m = make(window_size=10, minimum_calls=10, failure_rate=0.5)
    for i in range(10):
        call(m, 0.0, failed=i < 4)
    assert m.state is S.CLOSED
    assert m.metrics(0.0).failure_rate == 0.4


def test_a_fast_success_never_opens_the_breaker() -> None:
    """Nine failures then a success reach 90 % over ``minimum_calls`` calls, but the
    provider has just answered: the breaker opens on the next failure, not on the
    success (case 6: a recovered provider was turned away by its own first answer)."""
    m = make(window_size=10, minimum_calls=10, failure_rate=0.5)
    for _ in range(9):
        call(m, 0.0, failed=True)
    call(m, 0.0, failed=False)
    assert m.state is S.CLOSED
    call(m, 0.0, failed=True)
    assert m.state is S.OPEN


def test_a_slow_success_can_open_on_the_slow_call_rate() -> None:
    """A success that is slow still counts toward the slow-call rate, and can open."""
    m = make(window_size=4, minimum_calls=4, slow_call_rate=0.5, slow_call_seconds=1.0)
    for _ in range(3):
        call(m, 0.0, failed=False)
    call(m, 0.0, failed=False, duration=2.0)
    assert m.state is S.CLOSED
    call(m, 0.0, failed=False, duration=2.0)
    assert m.state is S.OPEN


def test_opens_exactly_at_a_rate_that_multiplication_would_miss() -> None:
    """7 failures in 25 calls is a 0.28 rate and opens a breaker set to 0.28."""
    assert 0.28 * 25 > 7  # why this is a test: the product rounds up
    m = make(window_size=25, minimum_calls=25, failure_rate=0.28)
    for i in range(25):
        call(m, 0.0, failed=i >= 18)  # the 25th call, a failure, is judged
    assert m.state is S.OPEN


def test_opens_at_slow_call_rate() -> None:
    """Successful but slow calls open the breaker at ``slow_call_rate``."""
    m = make(window_size=4, minimum_calls=4, slow_call_rate=0.5, slow_call_seconds=2.0)
    call(m, 0.0, failed=False, duration=0.1)
    call(m, 0.0, failed=False, duration=0.1)
    call(m, 0.0, failed=False, duration=2.0)
    assert m.state is S.CLOSED
    call(m, 0.0, failed=False, duration=5.0)
    assert m.state is S.OPEN
    assert "slow-call rate" in m.changes[-1].reason


def test_a_call_exactly_at_slow_call_seconds_is_slow() -> None:
    """``slow_call_seconds`` is inclusive."""
    m = make(window_size=1, minimum_calls=1, slow_call_rate=1.0, slow_call_seconds=2.0)
    call(m, 0.0, failed=False, duration=2.0)
    assert m.state is S.OPEN


def test_count_window_forgets_old_calls() -> None:
    """A count window judges only the last ``window_size`` calls."""
    m = make(window_size=4, minimum_calls=4, failure_rate=0.75)
    for failed in (True, True, False, False, False, False):
        call(m, 0.0, failed=failed)
    assert m.metrics(0.0).failures == 0
    call(m, 0.0, failed=True)
    call(m, 0.0, failed=True)
    assert m.state is S.CLOSED


def test_time_window_forgets_old_failures() -> None:
    """Failures older than the time window do not count towards the rate."""
    m = make(window="time", window_size=10.0, minimum_calls=4, failure_rate=0.5)
    for _ in range(3):
        call(m, 0.0, failed=True)
    for _ in range(3):
        call(m, 10.5, failed=False)
    call(m, 10.5, failed=True)
    assert m.state is S.CLOSED
    assert m.metrics(10.5).calls == 4


def test_time_window_opens_within_its_window() -> None:
    """Failures spread over less than the time window add up."""
    m = make(window="time", window_size=10.0, minimum_calls=4, failure_rate=1.0)
    for t in (0.0, 3.0, 6.0, 8.5):
        call(m, t, failed=True)
    assert m.state is S.OPEN


# -- open and half-open ----------------------------------------------------------------


def test_open_rejects_until_open_time_elapsed() -> None:
    """An open breaker rejects calls and counts them, and says when to come back."""
    m = make(open_seconds=10.0)
    open_breaker(m, 5.0)
    assert m.acquire(14.9) is None
    assert m.rejected == 1
    assert m.retry_after(12.0) == 3.0
    assert not m.is_call_permitted(14.9)
    assert m.is_call_permitted(15.0)


def test_open_time_elapsed_admits_a_probe() -> None:
    """After the open time, the next call is a half-open probe."""
    m = make(open_seconds=10.0)
    open_breaker(m)
    permit = m.acquire(10.0)
    assert permit is not None
    assert permit.probe
    assert m.state is S.HALF_OPEN


def test_half_open_admits_at_most_half_open_probes() -> None:
    """Half-open admits ``half_open_probes`` calls and rejects the rest."""
    m = make(half_open_probes=3, half_open_successes=3)
    open_breaker(m)
    permits = [m.acquire(20.0) for _ in range(5)]
    assert [p is not None for p in permits] == [True, True, True, False, False]
    assert not m.probe_due(20.0)


def test_half_open_closes_after_half_open_successes() -> None:
    """``half_open_successes`` successful probes close the breaker."""
    m = make(half_open_probes=3, half_open_successes=2)
    open_breaker(m)
    first, second = m.acquire(20.0), m.acquire(20.0)
    assert first is not None
    assert second is not None
    m.on_success(first, 0.1, 20.0)
    assert m.state is S.HALF_OPEN
    m.on_success(second, 0.1, 20.5)
    assert m.state is S.CLOSED
    assert m.consecutive_opens == 0


def test_closing_forgets_the_window_and_the_open_time() -> None:
    """A breaker closed by its probes starts with an empty window and no open_until."""
    m = make(window_size=4, minimum_calls=2, half_open_probes=1, half_open_successes=1)
    call(m, 0.0, failed=True)
    call(m, 0.0, failed=True)
    assert m.state is S.OPEN
    call(m, 20.0, failed=False)
    metrics = m.metrics(20.0)
    assert (metrics.state, metrics.calls, metrics.open_until) == (S.CLOSED, 0, None)


def test_any_probe_failure_reopens_with_longer_open_time() -> None:
    """A failed probe reopens at once, for ``open_backoff`` times longer."""
    m = make(open_seconds=10.0, open_backoff=2.0, half_open_probes=3, half_open_successes=2)
    open_breaker(m)
    good, bad = m.acquire(10.0), m.acquire(10.0)
    assert good is not None
    assert bad is not None
    m.on_success(good, 0.1, 10.0)
    m.on_failure(bad, 0.1, 11.0)
    assert m.state is S.OPEN
    assert m.open_until == 11.0 + 20.0
    assert m.changes[-1].reason == "half-open probe failed"


def test_a_slow_probe_reopens() -> None:
    """A probe that succeeds slowly counts as a failed recovery."""
    m = make(slow_call_seconds=1.0)
    open_breaker(m)
    permit = m.acquire(10.0)
    assert permit is not None
    m.on_success(permit, 1.5, 11.5)
    assert m.state is S.OPEN
    assert m.changes[-1].reason == "half-open probe slow"


def test_open_time_grows_up_to_the_cap() -> None:
    """Each failed recovery multiplies the open time by the backoff, up to the cap."""
    m = make(open_seconds=10.0, open_backoff=2.0, max_open_seconds=60.0)
    spans, now = [], 0.0
    for _ in range(6):
        if m.state is S.CLOSED:
            m.force_open(now)
        else:
            assert m.open_until is not None
            now = m.open_until
            call(m, now, failed=True)
        assert m.open_until is not None
        spans.append(m.open_until - now)
    assert spans == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]


def test_open_time_survives_a_very_long_outage() -> None:
    """Thousands of failed recoveries keep the open time at the cap instead of overflowing."""
    m = make(open_seconds=10.0, open_backoff=2.0, max_open_seconds=120.0)
    m.consecutive_opens = 5000
    assert m.open_duration() == 120.0
    m.force_open(0.0)
    assert m.open_until == 120.0


@pytest.mark.parametrize("seed", range(20))
def test_jittered_open_time_stays_within_bounds(seed: int) -> None:
    """Jitter scales the open time by at most ``jitter`` either way."""
    options = BreakerOptions(open_seconds=10.0, jitter=0.5)
    m = BreakerMachine("x", options, rng=random.Random(seed))
    m.force_open(100.0)
    assert m.open_until is not None
    assert 5.0 <= m.open_until - 100.0 <= 15.0
    low, high = options.open_bounds()
    assert low <= m.open_until - 100.0 <= high


def test_probe_false_is_admitted_only_when_closed() -> None:
    """``probe=False`` calls pass a closed breaker and never become probes."""
    m = make()
    permit = m.acquire(0.0, probe=False)
    assert permit is not None
    assert not permit.probe
    open_breaker(m)
    assert m.acquire(100.0, probe=False) is None
    assert m.state is S.OPEN
    assert m.acquire(100.0) is not None
    assert m.acquire(100.0, probe=False) is None
    assert m.rejected == 2


def test_release_returns_a_probe_slot() -> None:
    """A probe handed back without a result lets another call probe."""
    m = make(half_open_probes=1, half_open_successes=1)
    open_breaker(m)
    permit = m.acquire(10.0)
    assert permit is not None
    assert m.acquire(10.0) is None
    m.release(permit)
    assert m.state is S.HALF_OPEN
    assert m.acquire(10.0) is not None


def test_release_never_exceeds_half_open_probes() -> None:
    """Releasing a closed-state permit in half-open adds no probe slot."""
    m = make(half_open_probes=1, half_open_successes=1)
    closed_permit = m.acquire(0.0)
    assert closed_permit is not None
    open_breaker(m)
    assert m.acquire(10.0) is not None
    m.release(closed_permit)
    assert m.acquire(10.0) is None


def test_stale_permit_results_are_ignored() -> None:
    """A result from a permit issued before a transition changes nothing."""
    m = make(window_size=2, minimum_calls=1)
    old = m.acquire(0.0)
    assert old is not None
    m.reset(0.0)
    m.on_failure(old, 0.1, 0.0)
    assert m.state is S.CLOSED
    assert m.metrics(0.0).calls == 0


def test_stale_probe_cannot_close_a_reopened_breaker() -> None:
    """A probe from an earlier half-open period cannot close the current one."""
    m = make(half_open_probes=2, half_open_successes=1)
    open_breaker(m)
    stale = m.acquire(10.0)
    failing = m.acquire(10.0)
    assert stale is not None
    assert failing is not None
    m.on_failure(failing, 0.1, 10.0)
    assert m.open_until is not None
    assert m.acquire(m.open_until) is not None
    m.on_success(stale, 0.1, m.open_until)
    assert m.state is S.HALF_OPEN


# -- manual states ---------------------------------------------------------------------


def test_isolated_rejects_everything_until_reset() -> None:
    """ISOLATED rejects every call, probes included, whatever the time."""
    m = make()
    m.isolate(0.0)
    assert m.acquire(1e6) is None
    assert m.acquire(1e6, probe=False) is None
    assert not m.is_call_permitted(1e6)
    assert m.retry_after(0.0) is None
    m.reset(1.0)
    assert m.acquire(1.0) is not None


def test_disabled_admits_everything_and_records_nothing() -> None:
    """DISABLED admits calls and ignores their results."""
    m = make(window_size=2, minimum_calls=1)
    m.disable(0.0)
    for _ in range(5):
        assert call(m, 0.0, failed=True) is not None
    assert m.state is S.DISABLED
    assert m.metrics(0.0).calls == 0


def test_metrics_only_records_but_never_opens() -> None:
    """METRICS_ONLY keeps the window up to date but never opens."""
    m = make(window_size=4, minimum_calls=1)
    m.metrics_only(0.0)
    for _ in range(4):
        call(m, 0.0, failed=True)
    assert m.state is S.METRICS_ONLY
    assert m.metrics(0.0).failure_rate == 1.0


def test_force_open_then_probes_after_open_time() -> None:
    """A forced open breaker follows the normal timers."""
    m = make(open_seconds=10.0)
    m.force_open(3.0)
    assert m.acquire(12.9) is None
    assert m.acquire(13.0) is not None
    assert m.state is S.HALF_OPEN


def test_reset_forgets_open_time_growth() -> None:
    """Reset closes and starts the open-time growth again."""
    m = make(open_seconds=10.0, open_backoff=2.0)
    m.force_open(0.0)
    m.force_open(0.0)
    m.reset(0.0)
    m.force_open(0.0)
    assert m.open_until == 10.0


# -- reporting -------------------------------------------------------------------------


def test_changes_record_transitions_with_reasons() -> None:
    """Every transition is queued with old and new state, time and a reason."""
    m = make(window_size=2, minimum_calls=2, half_open_probes=1, half_open_successes=1)
    call(m, 1.0, failed=True)
    call(m, 2.0, failed=True)
    call(m, 12.0, failed=False)
    m.isolate(13.0)
    m.reset(14.0)
    m.reset(15.0)
    summary = [(c.name, c.old, c.new, c.at) for c in m.changes]
    assert summary == [
        ("kakao.pay", S.CLOSED, S.OPEN, 2.0),
        ("kakao.pay", S.OPEN, S.HALF_OPEN, 12.0),
        ("kakao.pay", S.HALF_OPEN, S.CLOSED, 12.0),
        ("kakao.pay", S.CLOSED, S.ISOLATED, 13.0),
        ("kakao.pay", S.ISOLATED, S.CLOSED, 14.0),
    ]
    reasons = [c.reason for c in m.changes]
    assert reasons[0] == "failure rate 100% over 2 calls"
    assert reasons[1:] == ["open time elapsed", "half-open probes succeeded", "isolated", "reset"]


def test_is_call_permitted_does_not_change_state() -> None:
    """Asking whether a call would pass leaves an open breaker open."""
    m = make()
    open_breaker(m)
    assert m.is_call_permitted(100.0)
    assert m.probe_due(100.0)
    assert m.state is S.OPEN


def test_metrics_snapshot() -> None:
    """Metrics report the window, the rejections and the open state."""
    m = make(window_size=10, minimum_calls=10)
    call(m, 0.0, failed=True, duration=6.0)
    call(m, 0.0, failed=False)
    m.force_open(1.0)
    m.acquire(2.0)
    assert m.metrics(2.0) == BreakerMetrics(
        name="kakao.pay",
        state=S.OPEN,
        calls=2,
        failures=1,
        slow=1,
        failure_rate=0.5,
        slow_rate=0.5,
        rejected=1,
        open_until=11.0,
        consecutive_opens=1,
    )


def test_repr_names_breaker_and_state() -> None:
    """The repr shows the name and the state."""
    assert repr(make()) == "BreakerMachine(name='kakao.pay', state=closed)"


# -- options ---------------------------------------------------------------------------


def test_default_options_are_valid() -> None:
    """The defaults describe a sensible breaker."""
    options = BreakerOptions()
    assert options.open_bounds() == (9.0, 132.0)


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("window", {"window": "sliding"}),
        ("window_size", {"window_size": 0}),
        ("window_size", {"window_size": 2.5}),
        ("window_size", {"window": "time", "window_size": 0.0}),
        ("window_size", {"window": "time", "window_size": math.inf}),
        ("window_size", {"window": "time", "window_size": math.nan}),
        ("minimum_calls", {"minimum_calls": 0}),
        ("minimum_calls", {"window_size": 5, "minimum_calls": 6}),
        ("failure_rate", {"failure_rate": 0.0}),
        ("failure_rate", {"failure_rate": 1.5}),
        ("failure_rate", {"failure_rate": math.nan}),
        ("slow_call_rate", {"slow_call_rate": 0.0}),
        ("slow_call_rate", {"slow_call_rate": 1.01}),
        ("slow_call_seconds", {"slow_call_seconds": 0.0}),
        ("slow_call_seconds", {"slow_call_seconds": math.nan}),
        ("open_seconds", {"open_seconds": 0.0}),
        ("open_seconds", {"open_seconds": math.inf}),
        ("open_backoff", {"open_backoff": 0.5}),
        ("open_backoff", {"open_backoff": math.nan}),
        ("max_open_seconds", {"max_open_seconds": 5.0}),
        ("max_open_seconds", {"max_open_seconds": math.inf}),
        ("jitter", {"jitter": -0.1}),
        ("jitter", {"jitter": 1.0}),
        ("half_open_probes", {"half_open_probes": 0}),
        ("half_open_successes", {"half_open_successes": 0}),
        ("half_open_successes", {"half_open_probes": 2, "half_open_successes": 3}),
    ],
)
def test_invalid_options_name_the_field(field: str, changes: dict[str, Any]) -> None:
    """Every invalid option raises ValueError naming the field and its allowed range."""
    with pytest.raises(ValueError, match=rf"^BreakerOptions\.{field} must be .+, got "):
        BreakerOptions(**changes)
