"""The breaker machine against a small reference model, driven by hypothesis."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from superapp_sdk.core.breaker import BreakerMachine, BreakerOptions, BreakerState, Permit
from tests.strategies import breaker_options, grown_open_seconds, time_steps

S = BreakerState
_FREE = (S.CLOSED, S.DISABLED, S.METRICS_ONLY)
_MANUAL = {
    "isolate": S.ISOLATED,
    "disable": S.DISABLED,
    "metrics_only": S.METRICS_ONLY,
    "reset": S.CLOSED,
}
#: Call durations as a multiple of ``slow_call_seconds`` (1.0 is exactly slow).
SLOWNESS = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1.5]), st.floats(0.0, 2.0))


class BreakerModel:
    """What a breaker should do, written as plainly as possible.

    The window is a list of ``(time, failed, slow)``; the time window keeps what falls in
    the aligned buckets that ``TimeWindow`` covers. ``epoch`` counts transitions: a
    result handed back with a permit from an earlier epoch is ignored.
    """

    def __init__(self, options: BreakerOptions) -> None:
        self.o = options
        self.state = S.CLOSED
        self.outcomes: list[tuple[float, bool, bool]] = []
        self.open_until: float | None = None
        self.consecutive_opens = 0
        self.epoch = 0
        self.probes_left = 0
        self.probe_successes = 0
        self.rejected = 0
        self.transitions: list[tuple[S, S, float]] = []
        #: (opened at, open_until) of the last opening, checked against the machine.
        self.last_open: tuple[float, float] | None = None
        #: Start of the latest-started success; an older failure is not counted.
        self.answered_since = -math.inf

    def window(self, now: float) -> tuple[int, int, int]:
        if self.o.window == "count":
            kept = self.outcomes[-int(self.o.window_size) :]
        else:
            n = max(1, min(120, math.ceil(self.o.window_size)))
            width = self.o.window_size / n
            oldest = int(now // width) - n + 1
            kept = [e for e in self.outcomes if int(e[0] // width) >= oldest]
        return len(kept), sum(e[1] for e in kept), sum(e[2] for e in kept)

    def to(self, new: S, now: float) -> None:
        if new is not self.state:
            self.transitions.append((self.state, new, now))
        self.state = new
        self.epoch += 1
        if new is not S.HALF_OPEN:
            self.probes_left = 0

    def open(self, now: float, machine_open_until: float | None) -> None:
        assert machine_open_until is not None
        self.open_until = machine_open_until
        self.last_open = (now, machine_open_until)
        self.consecutive_opens += 1
        self.to(S.OPEN, now)

    def acquire(self, now: float, probe: bool, machine_open_until: float | None) -> str | None:
        if self.state in _FREE:
            return "call"
        if self.state is S.ISOLATED:
            self.rejected += 1
            return None
        if self.state is S.OPEN:
            assert self.open_until is not None
            if now < self.open_until or not probe:
                self.rejected += 1
                return None
            self.to(S.HALF_OPEN, now)
            self.probes_left = self.o.half_open_probes
            self.probe_successes = 0
        if not probe or self.probes_left == 0:
            self.rejected += 1
            return None
        self.probes_left -= 1
        return "probe"

    def result(
        self,
        epoch: int,
        probe: bool,
        failed: bool,
        duration: float,
        now: float,
        machine_open_until: float | None,
    ) -> None:
        if epoch != self.epoch:
            return
        if not failed:
            self.answered_since = max(self.answered_since, now - duration)
        elif now - duration < self.answered_since:
            return
        slow = duration >= self.o.slow_call_seconds
        if probe:
            if failed or slow:
                self.open(now, machine_open_until)
                return
            self.probe_successes += 1
            if self.probe_successes >= self.o.half_open_successes:
                self.consecutive_opens = 0
                self.outcomes.clear()
                self.open_until = None
                self.to(S.CLOSED, now)
            return
        if self.state is S.DISABLED:
            return
        self.outcomes.append((now, failed, slow))
        if self.state is S.CLOSED and (failed or slow):
            calls, failures, slows = self.window(now)
            if calls >= self.o.minimum_calls and (
                (failed and failures / calls >= self.o.failure_rate)
                or slows / calls >= self.o.slow_call_rate
            ):
                self.open(now, machine_open_until)

    def release(self, epoch: int, probe: bool) -> None:
        if probe and epoch == self.epoch and self.state is S.HALF_OPEN:
            self.probes_left = min(self.probes_left + 1, self.o.half_open_probes)


@dataclass
class Held:
    """A permit the test holds, with the model epoch it was issued in."""

    permit: Permit
    epoch: int


class BreakerStateMachine(RuleBasedStateMachine):
    """Drives a BreakerMachine and its model with the same events and compares them."""

    machine: BreakerMachine
    model: BreakerModel

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.held: list[Held] = []
        self.probe_results_in_epoch = 0
        self.seen_changes = 0

    @initialize(options=breaker_options(), seed=st.integers(0, 2**32 - 1))
    def create(self, options: BreakerOptions, seed: int) -> None:
        self.machine = BreakerMachine("test", options, rng=random.Random(seed))
        self.model = BreakerModel(options)

    # -- helpers -------------------------------------------------------------------------

    def _epoch_changed(self, before: int) -> None:
        if self.model.epoch != before:
            self.probe_results_in_epoch = 0

    def _take(self, index: int) -> Held:
        return self.held.pop(index % len(self.held))

    def _report(self, index: int, failed: bool, slowness: float) -> None:
        held = self._take(index)
        duration = slowness * self.model.o.slow_call_seconds
        state_before, changes_before = self.machine.state, len(self.machine.changes)
        epoch_before = self.model.epoch
        if failed:
            self.machine.on_failure(held.permit, duration, self.now)
        else:
            self.machine.on_success(held.permit, duration, self.now)
        self.model.result(
            held.epoch, held.permit.probe, failed, duration, self.now, self.machine.open_until
        )
        if held.epoch != epoch_before:
            # A stale permit never changes anything.
            assert self.machine.state is state_before
            assert len(self.machine.changes) == changes_before
        if state_before in (S.DISABLED, S.METRICS_ONLY):
            assert self.machine.state is state_before
        if held.permit.probe and held.epoch == epoch_before:
            self.probe_results_in_epoch += 1
        self._epoch_changed(epoch_before)

    # -- rules ---------------------------------------------------------------------------

    @rule(probe=st.booleans())
    def acquire(self, probe: bool) -> None:
        state_before, epoch_before = self.machine.state, self.model.epoch
        got = self.machine.acquire(self.now, probe=probe)
        expected = self.model.acquire(self.now, probe, self.machine.open_until)
        if expected is None:
            assert got is None
        else:
            assert got is not None
            assert got.probe is (expected == "probe")
            event(f"admitted {expected}")
            self._epoch_changed(epoch_before)
            self.held.append(Held(got, self.model.epoch))
        if state_before is S.ISOLATED:
            assert got is None

    @rule(probe=st.booleans(), failed=st.booleans(), slowness=SLOWNESS)
    def call(self, probe: bool, failed: bool, slowness: float) -> None:
        """The common case: acquire, and report the result straight away."""
        held = len(self.held)
        self.acquire(probe)
        if len(self.held) > held:
            self._report(len(self.held) - 1, failed, slowness)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 100), failed=st.booleans(), slowness=SLOWNESS)
    def report(self, index: int, failed: bool, slowness: float) -> None:
        self._report(index, failed, slowness)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 100))
    def release(self, index: int) -> None:
        held = self._take(index)
        state_before = self.machine.state
        self.machine.release(held.permit)
        self.model.release(held.epoch, held.permit.probe)
        assert self.machine.state is state_before

    @rule(seconds=time_steps())
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.model.state is S.OPEN)
    @rule(just_before=st.booleans())
    def advance_to_open_until(self, just_before: bool) -> None:
        assert self.model.open_until is not None
        target = self.model.open_until
        if just_before:
            target = math.nextafter(target, -math.inf)
        self.now = max(self.now, target)

    @rule(action=st.sampled_from(["force_open", "isolate", "disable", "metrics_only", "reset"]))
    def manual(self, action: str) -> None:
        before = self.model.epoch
        getattr(self.machine, action)(self.now)
        model = self.model
        if action == "force_open":
            model.open(self.now, self.machine.open_until)
        else:
            model.open_until = None
            if action == "reset":
                model.consecutive_opens = 0
                model.outcomes.clear()
            model.to(_MANUAL[action], self.now)
        self._epoch_changed(before)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.machine.state is self.model.state
        assert self.machine.consecutive_opens == self.model.consecutive_opens

    @invariant()
    def same_transitions(self) -> None:
        changes = self.machine.changes
        assert [(c.old, c.new, c.at) for c in changes] == self.model.transitions
        for change in changes[self.seen_changes :]:
            assert change.name == "test"
            assert change.reason
        self.seen_changes = len(changes)

    @invariant()
    def same_window_and_rejections(self) -> None:
        metrics = self.machine.metrics(self.now)
        assert (metrics.calls, metrics.failures, metrics.slow) == self.model.window(self.now)
        assert metrics.rejected == self.model.rejected
        assert metrics.state is self.model.state

    @invariant()
    def open_time_within_bounds(self) -> None:
        if self.model.last_open is None:
            return
        opened_at, until = self.model.last_open
        o = self.model.o
        lo, hi = o.open_bounds()
        span = until - opened_at
        slack = 1e-9 * max(1.0, abs(opened_at), abs(until))
        assert lo - slack <= span <= hi + slack
        base = grown_open_seconds(
            o.open_seconds, o.open_backoff, o.max_open_seconds, self.model.consecutive_opens - 1
        )
        if self.model.state is S.OPEN:
            assert base * (1 - o.jitter) - slack <= span <= base * (1 + o.jitter) + slack

    @invariant()
    def open_until_only_when_open(self) -> None:
        if self.model.state is S.OPEN:
            assert self.machine.open_until == self.model.open_until
            assert self.machine.retry_after(self.now) == max(0.0, self.model.open_until - self.now)
        elif self.model.state is not S.HALF_OPEN:
            assert self.machine.open_until is None
            assert self.machine.retry_after(self.now) is None

    @invariant()
    def half_open_admissions_bounded(self) -> None:
        if self.model.state is not S.HALF_OPEN:
            return
        outstanding = sum(1 for h in self.held if h.permit.probe and h.epoch == self.model.epoch)
        assert outstanding + self.probe_results_in_epoch <= self.model.o.half_open_probes

    @invariant()
    def permitted_matches_model(self) -> None:
        state = self.model.state
        if state in _FREE:
            expected = True
        elif state is S.OPEN:
            assert self.model.open_until is not None
            expected = self.now >= self.model.open_until
        elif state is S.HALF_OPEN:
            expected = self.model.probes_left > 0
        else:
            expected = False
        assert self.machine.is_call_permitted(self.now) is expected


TestBreakerStateMachine = BreakerStateMachine.TestCase
