"""The circuit breaker state machine (sans-IO).

States and transitions::

                 failure or slow-call rate >= threshold
                 (after ``minimum_calls`` in the window)
      CLOSED  ─────────────────────────────────────────────▶  OPEN
        ▲                                                     │  ▲
        │ ``half_open_successes`` probe successes             │  │ any probe fails
        │                                                     ▼  │ (open time grows)
        └──────────────────────────────────────────────  HALF_OPEN
                          open time elapsed, at most ``half_open_probes`` admitted

    Manual states: ISOLATED (reject everything until ``reset``), DISABLED (admit
    everything, record nothing), METRICS_ONLY (admit everything, record and report, never
    open). ``force_open`` opens now and then follows the normal timers.

The machine holds no lock and calls nothing: a shell (``resilience.CircuitBreaker``)
serialises calls into it with a lock held only for the few microseconds of a decision,
never while the protected call runs. Transitions are queued in ``changes`` for the shell
to deliver to listeners outside that lock.

The design follows Resilience4j's CircuitBreaker (count/time windows, failure and
slow-call rates, minimum calls, permitted calls in half-open) with an open time that
grows with consecutive failed recoveries and carries jitter, so a fleet of clients does
not probe a recovering provider in lockstep.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import Literal

from superapp_sdk.core.windows import CountWindow, SlidingWindow, TimeWindow

__all__ = [
    "BreakerMachine",
    "BreakerMetrics",
    "BreakerOptions",
    "BreakerState",
    "Permit",
    "StateChange",
]


class BreakerState(enum.Enum):
    """Where a breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    ISOLATED = "isolated"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


def _check(condition: bool, field: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"BreakerOptions.{field} must be {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BreakerOptions:
    """Options of a circuit breaker.

    Attributes:
        window: ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the calls of the
            last ``window_size`` seconds).
        window_size: calls (count window) or seconds (time window).
        minimum_calls: calls the window must hold before rates are judged.
        failure_rate: open when failures / calls reaches this (0 < x <= 1).
        slow_call_rate: open when slow calls / calls reaches this (0 < x <= 1).
        slow_call_seconds: a call that took at least this long counts as slow.
        open_seconds: how long the breaker stays open the first time.
        open_backoff: factor the open time grows by after each failed recovery (>= 1).
        max_open_seconds: the open time never grows past this (before jitter).
        jitter: the open time is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``.
        half_open_probes: at most this many calls are admitted in half-open.
        half_open_successes: successful probes needed to close (<= ``half_open_probes``).
    """

    window: Literal["count", "time"] = "count"
    window_size: float = 100
    minimum_calls: int = 10
    failure_rate: float = 0.5
    slow_call_rate: float = 1.0
    slow_call_seconds: float = 5.0
    open_seconds: float = 10.0
    open_backoff: float = 2.0
    max_open_seconds: float = 120.0
    jitter: float = 0.1
    half_open_probes: int = 3
    half_open_successes: int = 2

    def __post_init__(self) -> None:
        _check(self.window in ("count", "time"), "window", '"count" or "time"', self.window)
        if self.window == "count":
            _check(
                isinstance(self.window_size, int) and self.window_size >= 1,
                "window_size",
                "an integer >= 1 for a count window",
                self.window_size,
            )
        else:
            _check(
                math.isfinite(self.window_size) and self.window_size > 0,
                "window_size",
                "a number of seconds > 0 for a time window",
                self.window_size,
            )
        _check(self.minimum_calls >= 1, "minimum_calls", ">= 1", self.minimum_calls)
        if self.window == "count":
            _check(
                self.minimum_calls <= self.window_size,
                "minimum_calls",
                f"<= window_size ({self.window_size})",
                self.minimum_calls,
            )
        _check(0 < self.failure_rate <= 1, "failure_rate", "in (0, 1]", self.failure_rate)
        _check(0 < self.slow_call_rate <= 1, "slow_call_rate", "in (0, 1]", self.slow_call_rate)
        _check(self.slow_call_seconds > 0, "slow_call_seconds", "> 0", self.slow_call_seconds)
        _check(
            math.isfinite(self.open_seconds) and self.open_seconds > 0,
            "open_seconds",
            "a finite number > 0",
            self.open_seconds,
        )
        _check(self.open_backoff >= 1, "open_backoff", ">= 1", self.open_backoff)
        _check(
            math.isfinite(self.max_open_seconds) and self.max_open_seconds >= self.open_seconds,
            "max_open_seconds",
            f">= open_seconds ({self.open_seconds}) and finite",
            self.max_open_seconds,
        )
        _check(0 <= self.jitter < 1, "jitter", "in [0, 1)", self.jitter)
        _check(self.half_open_probes >= 1, "half_open_probes", ">= 1", self.half_open_probes)
        _check(
            1 <= self.half_open_successes <= self.half_open_probes,
            "half_open_successes",
            f"in [1, half_open_probes={self.half_open_probes}]",
            self.half_open_successes,
        )

    def open_bounds(self) -> tuple[float, float]:
        """The shortest and longest open time this configuration can produce."""
        return (self.open_seconds * (1 - self.jitter), self.max_open_seconds * (1 + self.jitter))


@dataclass(frozen=True, slots=True)
class Permit:
    """Admission to make one call; hand it back with the call's result."""

    epoch: int
    probe: bool


@dataclass(frozen=True, slots=True)
class StateChange:
    """A breaker moved from one state to another."""

    name: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of a breaker for health reports and dashboards."""

    name: str
    state: BreakerState
    calls: int
    failures: int
    slow: int
    failure_rate: float
    slow_rate: float
    rejected: int
    open_until: float | None
    consecutive_opens: int


_FREE_STATES = frozenset({BreakerState.CLOSED, BreakerState.DISABLED, BreakerState.METRICS_ONLY})


class BreakerMachine:
    """The decisions of one circuit breaker; see the module docstring for the states.

    Time comes in as ``now`` on every call; randomness (open-time jitter) from the injected
    ``rng``. Not thread-safe by itself: drive it from one thread or under a lock.
    """

    __slots__ = (
        "_answered_since",
        "_closed_permit",
        "_epoch",
        "_probe_permit",
        "_probe_successes",
        "_probes_left",
        "_rng",
        "_window",
        "changes",
        "consecutive_opens",
        "free_permit",
        "name",
        "open_until",
        "options",
        "rejected",
        "state",
    )

    def __init__(
        self, name: str, options: BreakerOptions | None = None, *, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.options = options = options or BreakerOptions()
        self._rng = rng or random.Random()
        self._window: SlidingWindow = (
            CountWindow(int(options.window_size))
            if options.window == "count"
            else TimeWindow(options.window_size)
        )
        self.state = BreakerState.CLOSED
        self.open_until: float | None = None
        self.consecutive_opens = 0
        self.rejected = 0
        self.changes: list[StateChange] = []
        self._epoch = 0
        self._closed_permit = Permit(0, probe=False)
        self._probe_permit = Permit(0, probe=True)
        #: The permit every call gets in the current state without a decision (closed,
        #: disabled, metrics-only), or ``None`` when admission must go through
        #: :meth:`acquire`. A shell may hand it out without its lock: a call admitted
        #: just as another thread changes the state carries the old epoch, and its
        #: result is ignored, as for a call admitted just before the change.
        self.free_permit: Permit | None = self._closed_permit
        #: When the latest-started successful call began: a failure of a call that began
        #: before it is old news (the provider has answered since), and is not counted.
        self._answered_since = -math.inf
        self._probes_left = 0
        self._probe_successes = 0

    # -- admission ---------------------------------------------------------------------

    def acquire(self, now: float, *, probe: bool = True) -> Permit | None:
        """Ask to make a call at ``now``; ``None`` means rejected.

        With ``probe=False`` the caller declines to be a half-open probe: the call is
        admitted only when the breaker is closed. Shells use this for user calls when a
        background prober tests a recovering provider, so no user waits on a dead one.
        """
        if self.free_permit is not None:
            return self.free_permit
        state = self.state
        if state is BreakerState.OPEN:
            assert self.open_until is not None
            if now < self.open_until or not probe:
                self.rejected += 1
                return None
            self._to(BreakerState.HALF_OPEN, now, "open time elapsed")
            self._probes_left = self.options.half_open_probes
            self._probe_successes = 0
        elif state is BreakerState.ISOLATED:
            self.rejected += 1
            return None
        # HALF_OPEN
        if not probe or self._probes_left <= 0:
            self.rejected += 1
            return None
        self._probes_left -= 1
        return self._probe_permit

    def probe_due(self, now: float) -> bool:
        """True when a half-open probe would be admitted at ``now``."""
        if self.state is BreakerState.OPEN:
            assert self.open_until is not None
            return now >= self.open_until
        return self.state is BreakerState.HALF_OPEN and self._probes_left > 0

    def retry_after(self, now: float) -> float | None:
        """Seconds until the breaker may admit a call again; ``None`` if unknown."""
        if self.state is BreakerState.OPEN and self.open_until is not None:
            return max(0.0, self.open_until - now)
        return None

    def is_call_permitted(self, now: float) -> bool:
        """True when ``acquire`` would admit a call now (does not change state)."""
        return self.free_permit is not None or self.probe_due(now)

    # -- results -----------------------------------------------------------------------

    def on_success(self, permit: Permit, duration: float, now: float) -> None:
        """Record a call that succeeded (it may still have been slow)."""
        self.record(permit, False, duration, now)

    def on_failure(self, permit: Permit, duration: float, now: float) -> None:
        """Record a call that failed in a way the caller classified as a failure."""
        self.record(permit, True, duration, now)

    def release(self, permit: Permit) -> None:
        """Hand back a permit without a result (cancelled, or an unclassified error).

        A half-open probe slot is returned so another call may probe.
        """
        if permit.probe and permit.epoch == self._epoch and self.state is BreakerState.HALF_OPEN:
            self._probes_left = min(self._probes_left + 1, self.options.half_open_probes)

    def record(self, permit: Permit, failed: bool, duration: float, now: float) -> None:
        """Record the result of a call made with ``permit``: :meth:`on_failure` when
        ``failed``, else :meth:`on_success`."""
        if permit.epoch != self._epoch:
            return  # admitted under an earlier state; its result says nothing about now
        started = now - duration
        if not failed:
            self._answered_since = max(self._answered_since, started)
        elif started < self._answered_since:
            # A call that hung through an outage and failed after the provider was back
            # (and had answered a later call) says nothing about now: counting it would
            # reopen a breaker just after recovery.
            return
        state = self.state
        slow = duration >= self.options.slow_call_seconds
        if permit.probe:
            if state is not BreakerState.HALF_OPEN:
                return
            if failed or slow:
                self._open(now, "half-open probe failed" if failed else "half-open probe slow")
                return
            self._probe_successes += 1
            if self._probe_successes >= self.options.half_open_successes:
                self.consecutive_opens = 0
                self.open_until = None
                self._window.reset()
                self._to(BreakerState.CLOSED, now, "half-open probes succeeded")
            return
        if state is BreakerState.DISABLED:
            return
        calls, failures, slowed = self._window.record(failed, slow, now)
        # Judged on the call that fails or is slow, never on a fast success: the provider
        # has just answered, and opening then (the window reaching ``minimum_calls`` with
        # failures from an outage that is over) would turn it away right after recovery.
        # Compare the rates themselves: ``failures >= rate * calls`` misses the threshold
        # by rounding (7 of 25 calls is 0.28, but 0.28 * 25 == 7.000000000000001).
        opts = self.options
        if state is not BreakerState.CLOSED or calls < opts.minimum_calls:
            return
        if failed and (rate := failures / calls) >= opts.failure_rate:
            self._open(now, f"failure rate {rate:.0%} over {calls} calls")
        elif (failed or slow) and (rate := slowed / calls) >= opts.slow_call_rate:
            self._open(now, f"slow-call rate {rate:.0%} over {calls} calls")

    # -- manual control ----------------------------------------------------------------

    def force_open(self, now: float) -> None:
        """Open now; half-open probing follows after the usual open time."""
        self._open(now, "forced open")

    def isolate(self, now: float) -> None:
        """Reject every call until :meth:`reset`."""
        self.open_until = None
        self._to(BreakerState.ISOLATED, now, "isolated")

    def disable(self, now: float) -> None:
        """Admit every call and record nothing until :meth:`reset`."""
        self.open_until = None
        self._to(BreakerState.DISABLED, now, "disabled")

    def metrics_only(self, now: float) -> None:
        """Admit every call, keep recording and reporting, never open."""
        self.open_until = None
        self._to(BreakerState.METRICS_ONLY, now, "metrics only")

    def reset(self, now: float) -> None:
        """Close and forget the window and the open-time growth."""
        self.open_until = None
        self.consecutive_opens = 0
        self._window.reset()
        self._to(BreakerState.CLOSED, now, "reset")

    # -- reporting ---------------------------------------------------------------------

    def metrics(self, now: float) -> BreakerMetrics:
        """A snapshot of the state and the window."""
        t = self._window.totals(now)
        return BreakerMetrics(
            name=self.name,
            state=self.state,
            calls=t.calls,
            failures=t.failures,
            slow=t.slow,
            failure_rate=t.failure_rate,
            slow_rate=t.slow_rate,
            rejected=self.rejected,
            open_until=self.open_until,
            consecutive_opens=self.consecutive_opens,
        )

    # -- internals ---------------------------------------------------------------------

    def open_duration(self) -> float:
        """The open time the next opening would use, before jitter."""
        opts = self.options
        try:
            grown = opts.open_seconds * opts.open_backoff ** max(0, self.consecutive_opens)
        except OverflowError:  # an outage of thousands of failed recoveries
            return opts.max_open_seconds
        return min(grown, opts.max_open_seconds)

    def _open(self, now: float, reason: str) -> None:
        base = self.open_duration()
        jitter = self.options.jitter
        factor = 1.0 + self._rng.uniform(-jitter, jitter) if jitter else 1.0
        self.open_until = now + base * factor
        self.consecutive_opens += 1
        self._to(BreakerState.OPEN, now, reason)

    def _to(self, new: BreakerState, now: float, reason: str) -> None:
        old = self.state
        self.state = new
        self._epoch += 1
        self._closed_permit = Permit(self._epoch, probe=False)
        self._probe_permit = Permit(self._epoch, probe=True)
        self.free_permit = self._closed_permit if new in _FREE_STATES else None
        if new is not BreakerState.HALF_OPEN:
            self._probes_left = 0
        if old is not new:
            self.changes.append(StateChange(self.name, old, new, now, reason))

    def __repr__(self) -> str:
        return f"BreakerMachine(name={self.name!r}, state={self.state.value})"
