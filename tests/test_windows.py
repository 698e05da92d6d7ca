"""Sliding windows and the bucket counter against naive references."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superapp_sdk.core.windows import BucketCounter, CountWindow, TimeWindow, WindowTotals
from tests.strategies import dyadic_times

Event = tuple[float, bool, bool]

outcomes = st.tuples(st.booleans(), st.booleans())


def _timeline(start: float, steps: list[float]) -> list[float]:
    times, now = [], start
    for step in steps:
        now += step
        times.append(now)
    return times


def _totals(events: list[Event]) -> WindowTotals:
    return WindowTotals(len(events), sum(f for _, f, _ in events), sum(s for _, _, s in events))


def _bucketed(events: list[Event], now: float, seconds: float, buckets: int) -> list[Event]:
    """The events a window of ``buckets`` aligned buckets covering ``seconds`` holds."""
    width = seconds / buckets
    oldest = int(now // width) - buckets + 1
    return [e for e in events if int(e[0] // width) >= oldest]


def _default_buckets(seconds: float) -> int:
    return max(1, min(120, math.ceil(seconds)))


# -- WindowTotals ----------------------------------------------------------------------


def test_empty_totals_have_zero_rates() -> None:
    """An empty window reports rates of 0.0 instead of dividing by zero."""
    totals = WindowTotals(0, 0, 0)
    assert (totals.failure_rate, totals.slow_rate) == (0.0, 0.0)


def test_totals_rates_are_fractions_of_calls() -> None:
    """Rates are failures / calls and slow / calls."""
    totals = WindowTotals(8, 2, 6)
    assert (totals.failure_rate, totals.slow_rate) == (0.25, 0.75)


# -- CountWindow -----------------------------------------------------------------------


@given(size=st.integers(1, 20), calls=st.lists(outcomes, max_size=80))
def test_count_window_matches_last_n_calls(size: int, calls: list[tuple[bool, bool]]) -> None:
    """After every call the count window holds exactly the last ``size`` outcomes."""
    window = CountWindow(size)
    events: list[Event] = []
    for i, (failed, slow) in enumerate(calls):
        window.record(failed, slow, float(i))
        events.append((float(i), failed, slow))
        assert window.totals(float(i)) == _totals(events[-size:])


def test_count_window_ignores_age() -> None:
    """A count window keeps its calls however much time passes."""
    window = CountWindow(3)
    window.record(True, False, 0.0)
    assert window.totals(1e9) == WindowTotals(1, 1, 0)


def test_count_window_reset_forgets_everything() -> None:
    """After reset the window is empty and fills again from scratch."""
    window = CountWindow(2)
    for _ in range(3):
        window.record(True, True, 0.0)
    window.reset()
    assert window.totals(0.0) == WindowTotals(0, 0, 0)
    window.record(False, True, 0.0)
    assert window.totals(0.0) == WindowTotals(1, 0, 1)


@pytest.mark.parametrize("size", [0, -1])
def test_count_window_rejects_empty_size(size: int) -> None:
    """A count window needs room for at least one call."""
    with pytest.raises(ValueError, match="size"):
        CountWindow(size)


# -- TimeWindow ------------------------------------------------------------------------


@given(
    seconds=st.one_of(st.sampled_from([1.0, 2.5, 10.0, 60.0]), st.floats(0.1, 300.0)),
    start=st.floats(0.0, 1e6),
    calls=st.lists(st.tuples(st.floats(0.0, 20.0), outcomes), max_size=60),
)
def test_time_window_matches_bucketed_reference(
    seconds: float, start: float, calls: list[tuple[float, tuple[bool, bool]]]
) -> None:
    """Time-window totals equal a naive scan of the aligned buckets the window covers."""
    window = TimeWindow(seconds)
    buckets = _default_buckets(seconds)
    times = _timeline(start, [dt for dt, _ in calls])
    events: list[Event] = []
    for now, (_, (failed, slow)) in zip(times, calls, strict=True):
        window.record(failed, slow, now)
        events.append((now, failed, slow))
        assert window.totals(now) == _totals(_bucketed(events, now, seconds, buckets))


@given(
    seconds=st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0]),
    buckets=st.sampled_from([1, 2, 4, 8]),
    record_at=dyadic_times(),
    gaps=st.lists(dyadic_times(max_units=2048), min_size=1, max_size=10),
)
def test_time_window_is_exact_within_one_bucket(
    seconds: float, buckets: int, record_at: float, gaps: list[float]
) -> None:
    """A call is counted while younger than ``seconds - width`` and gone at ``seconds``."""
    window = TimeWindow(seconds, buckets)
    width = seconds / buckets
    window.record(True, False, record_at)
    for gap in sorted(gaps):
        calls = window.totals(record_at + gap).calls
        if gap <= seconds - width:
            assert calls == 1
        elif gap >= seconds:
            assert calls == 0


def test_time_window_boundaries() -> None:
    """With 1 s buckets over 10 s, a call at 0.5 counts until 9.99 and is gone at 10.0."""
    window = TimeWindow(10.0)
    window.record(False, True, 0.5)
    assert window.totals(9.99).slow == 1
    assert window.totals(10.0).slow == 0


@given(
    start=st.floats(-20.0, -0.01),
    calls=st.lists(st.tuples(st.floats(0.0, 1.0), outcomes), min_size=1, max_size=40),
)
def test_time_window_works_on_negative_clocks(
    start: float, calls: list[tuple[float, tuple[bool, bool]]]
) -> None:
    """A monotonic clock may read negative; calls made then still expire."""
    window = TimeWindow(5.0)
    events: list[Event] = []
    for now, (_, (failed, slow)) in zip(
        _timeline(start, [d for d, _ in calls]), calls, strict=True
    ):
        window.record(failed, slow, now)
        events.append((now, failed, slow))
    later = events[-1][0] + 5.0
    assert window.totals(later) == WindowTotals(0, 0, 0)


def test_time_window_forgets_a_call_made_just_before_zero() -> None:
    """A call at -0.5 s leaves a 5 s window by 4.5 s, like any other call."""
    window = TimeWindow(5.0)
    window.record(True, False, -0.5)
    assert window.totals(-0.5).calls == 1
    assert window.totals(4.5).calls == 0


def test_time_window_reset_forgets_everything() -> None:
    """After reset a time window is empty even for calls still in their window."""
    window = TimeWindow(10.0)
    window.record(True, True, 1.0)
    window.reset()
    assert window.totals(1.0) == WindowTotals(0, 0, 0)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.inf, math.nan])
def test_time_window_rejects_bad_seconds(seconds: float) -> None:
    """A time window needs a finite, positive length; the error names ``seconds``."""
    with pytest.raises(ValueError, match="seconds"):
        TimeWindow(seconds)


# -- BucketCounter ---------------------------------------------------------------------


@given(
    seconds=st.floats(0.5, 100.0),
    buckets=st.integers(1, 12),
    adds=st.lists(
        st.tuples(st.floats(0.0, 15.0), st.integers(0, 2), st.integers(-3, 5)), max_size=60
    ),
)
def test_bucket_counter_matches_reference(
    seconds: float, buckets: int, adds: list[tuple[float, int, int]]
) -> None:
    """Each field's total is the sum of the amounts added in the covered buckets."""
    counter = BucketCounter(seconds, buckets, fields=3)
    log: list[tuple[float, int, int]] = []
    for now, (_, field, amount) in zip(_timeline(0.0, [a[0] for a in adds]), adds, strict=True):
        counter.add(now, field, amount)
        log.append((now, field, amount))
        width = seconds / buckets
        oldest = int(now // width) - buckets + 1
        for f in range(3):
            expected = sum(a for t, g, a in log if g == f and int(t // width) >= oldest)
            assert counter.total(now, f) == expected


def test_bucket_counter_reads_do_not_change_totals() -> None:
    """Reading a total twice at the same time gives the same answer."""
    counter = BucketCounter(10.0, 10)
    counter.add(3.0, amount=4)
    assert counter.total(12.5) == counter.total(12.5) == 4


def test_bucket_counter_forgets_after_its_window() -> None:
    """Amounts leave the counter a bucket at a time."""
    counter = BucketCounter(4.0, 4)
    counter.add(0.5)
    counter.add(1.5, amount=2)
    assert counter.total(3.9) == 3
    assert counter.total(4.0) == 2
    assert counter.total(5.0) == 0


def test_bucket_counter_reset() -> None:
    """Reset empties every field."""
    counter = BucketCounter(10.0, 5, fields=2)
    counter.add(1.0, 0)
    counter.add(1.0, 1, 7)
    counter.reset()
    assert (counter.total(1.0, 0), counter.total(1.0, 1)) == (0, 0)


@pytest.mark.parametrize(
    ("seconds", "buckets", "field"),
    [(0.0, 1, "seconds"), (math.inf, 1, "seconds"), (math.nan, 1, "seconds"), (1.0, 0, "buckets")],
)
def test_bucket_counter_validation(seconds: float, buckets: int, field: str) -> None:
    """Bad counter sizes raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=field):
        BucketCounter(seconds, buckets)
