"""Hypothesis strategies for the sans-IO core, and the registered settings profiles.

Profiles (chosen with the ``HYPOTHESIS_PROFILE`` environment variable, see ``conftest.py``):

- ``ci`` (default): fast enough for every push.
- ``long``: many more examples and longer stateful runs (``make test-long``).
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st

from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.budget import BudgetOptions
from superapp_sdk.core.domains import DomainOptions

__all__ = [
    "breaker_options",
    "budget_options",
    "domain_options",
    "durations",
    "dyadic_times",
    "grown_open_seconds",
    "load_profile",
    "rates",
    "time_steps",
]

settings.register_profile(
    "ci", max_examples=50, stateful_step_count=40, deadline=None, print_blob=True
)
settings.register_profile(
    "long", max_examples=1000, stateful_step_count=100, deadline=None, print_blob=True
)


def load_profile() -> None:
    """Load the profile named by ``HYPOTHESIS_PROFILE`` (``ci`` when unset)."""
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Rates people type, plus every rate a small window can produce exactly (7/25 == 0.28 is
# where ``failures >= rate * calls`` and ``failures / calls >= rate`` disagree).
_TYPED_RATES = (0.05, 0.1, 0.2, 0.25, 0.28, 0.3, 0.5, 0.56, 0.7, 0.9, 1.0)


def rates() -> st.SearchStrategy[float]:
    """Thresholds in (0, 1]."""
    exact = st.integers(1, 30).flatmap(lambda c: st.integers(1, c).map(lambda f: f / c))
    return st.one_of(
        st.sampled_from(_TYPED_RATES),
        exact,
        st.floats(min_value=0.01, max_value=1.0, allow_nan=False),
    )


def time_steps(max_value: float = 30.0) -> st.SearchStrategy[float]:
    """Non-negative clock advances, biased towards small and exact values."""
    return st.one_of(
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]),
        st.floats(min_value=0.0, max_value=max_value, allow_nan=False, allow_infinity=False),
    )


def dyadic_times(max_units: int = 4096, denominator: int = 64) -> st.SearchStrategy[float]:
    """Times that are exact binary fractions, so bucket boundaries can be tested exactly."""
    return st.integers(0, max_units).map(lambda k: k / denominator)


def durations(slow_call_seconds: float) -> st.SearchStrategy[float]:
    """Call durations around the slow-call threshold, including exactly on it."""
    return st.one_of(
        st.just(slow_call_seconds),
        st.just(0.0),
        st.floats(min_value=0.0, max_value=2 * slow_call_seconds, allow_nan=False),
    )


@st.composite
def breaker_options(draw: st.DrawFn) -> BreakerOptions:
    """Valid breaker options with small windows, so thresholds are reached quickly."""
    window = draw(st.sampled_from(["count", "time"]))
    if window == "count":
        size: float = draw(st.integers(1, 12))
        minimum_calls = draw(st.integers(1, int(size)))
    else:
        size = draw(st.one_of(st.sampled_from([1.0, 2.5, 10.0]), st.floats(0.5, 30.0)))
        minimum_calls = draw(st.integers(1, 8))
    open_seconds = draw(st.floats(0.5, 20.0))
    probes = draw(st.integers(1, 4))
    return BreakerOptions(
        window=window,
        window_size=size,
        minimum_calls=minimum_calls,
        failure_rate=draw(rates()),
        slow_call_rate=draw(rates()),
        slow_call_seconds=draw(st.floats(0.1, 10.0)),
        open_seconds=open_seconds,
        open_backoff=draw(st.one_of(st.just(1.0), st.floats(1.0, 3.0))),
        max_open_seconds=open_seconds * draw(st.floats(1.0, 10.0)),
        jitter=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        half_open_probes=probes,
        half_open_successes=draw(st.integers(1, probes)),
    )


@st.composite
def budget_options(draw: st.DrawFn, *, exact: bool = False) -> BudgetOptions:
    """Valid retry-budget options.

    With ``exact=True`` the ttl is a power of two times ten, so the bucket width
    (ttl / 10) and every :func:`dyadic_times` value are exact binary fractions.
    """
    if exact:
        ttl = draw(st.sampled_from([10.0, 20.0, 40.0, 5.0, 2.5]))
        ratio = draw(st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0]))
        per_second = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]))
    else:
        ttl = draw(st.floats(1.0, 60.0))
        ratio = draw(st.floats(0.0, 1.0))
        per_second = draw(st.floats(0.0, 5.0))
    return BudgetOptions(ratio=ratio, min_retries_per_second=per_second, ttl_seconds=ttl)


@st.composite
def domain_options(draw: st.DrawFn) -> DomainOptions:
    """Valid failure-domain options with small thresholds."""
    open_seconds = draw(st.floats(0.5, 20.0))
    return DomainOptions(
        window_seconds=draw(st.one_of(st.just(10.0), st.floats(0.5, 60.0))),
        min_capabilities=draw(st.integers(2, 3)),
        failures_per_capability=draw(st.integers(1, 3)),
        open_seconds=open_seconds,
        open_backoff=draw(st.one_of(st.just(1.0), st.floats(1.0, 3.0))),
        max_open_seconds=open_seconds * draw(st.floats(1.0, 10.0)),
        jitter=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        probe_successes=draw(st.integers(1, 3)),
    )


def grown_open_seconds(base: float, backoff: float, cap: float, opens_before: int) -> float:
    """The un-jittered open time after ``opens_before`` consecutive openings."""
    try:
        grown = base * backoff**opens_before
    except OverflowError:
        return cap
    return min(grown, cap)
