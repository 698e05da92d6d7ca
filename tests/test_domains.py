"""The failure-domain detector: examples, and a stateful test against a reference model."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from superapp_sdk.core.domains import (
    DomainChange,
    DomainOptions,
    DomainState,
    FailureDomainDetector,
)
from tests.strategies import domain_options, grown_open_seconds, time_steps

D = DomainState
DOMAINS = ("kakao", "naver")
CAPABILITIES = ("chat", "identity", "mobility", "payment")


def make(**options: Any) -> FailureDomainDetector:
    """A detector without jitter unless asked, so open times are exact."""
    options.setdefault("jitter", 0.0)
    return FailureDomainDetector(DomainOptions(**options), rng=random.Random(3))


def fail(det: FailureDomainDetector, capability: str, now: float, times: int = 2) -> None:
    for _ in range(times):
        det.record_failure("kakao", capability, now)


def open_kakao(det: FailureDomainDetector, now: float = 0.0) -> None:
    fail(det, "chat", now)
    fail(det, "payment", now)
    assert not det.allows("kakao", now)


# -- opening ---------------------------------------------------------------------------


def test_two_failing_capabilities_open_the_domain() -> None:
    """Chat and payment failing together in one domain open it, naming both."""
    det = make()
    fail(det, "chat", 0.0)
    assert det.allows("kakao", 0.0)
    fail(det, "payment", 1.0)
    assert det.state("kakao", 1.0) is D.OPEN
    assert det.changes == [
        DomainChange("kakao", D.CLOSED, D.OPEN, 1.0, "2 capabilities failing", ("chat", "payment"))
    ]


@given(
    failures=st.lists(time_steps(5.0), max_size=60),
    capability=st.sampled_from(CAPABILITIES),
)
def test_one_capability_failing_never_opens_the_domain(
    failures: list[float], capability: str
) -> None:
    """However often one capability fails, and its breaker opens, the domain stays closed."""
    det = make(failures_per_capability=1)
    now = 0.0
    for step in failures:
        now += step
        det.record_failure("kakao", capability, now)
        det.record_breaker_open("kakao", capability, now)
    assert det.state("kakao", now) is D.CLOSED
    assert det.changes == []


def test_a_capability_needs_failures_per_capability() -> None:
    """One failure of each capability is not enough with ``failures_per_capability=2``."""
    det = make()
    for capability in CAPABILITIES:
        det.record_failure("kakao", capability, 0.0)
    assert det.allows("kakao", 0.0)
    assert det.failing("kakao", 0.0) == ()


def test_failures_outside_the_window_do_not_count() -> None:
    """Failures older than ``window_seconds`` are forgotten."""
    det = make(window_seconds=30.0)
    fail(det, "chat", 0.0)
    fail(det, "payment", 30.5)
    assert det.allows("kakao", 30.5)
    assert det.failing("kakao", 30.5) == ("payment",)


def test_failures_on_the_window_edge_count() -> None:
    """A failure exactly ``window_seconds`` old is still inside the window."""
    det = make(window_seconds=30.0)
    fail(det, "chat", 0.0)
    fail(det, "payment", 30.0)
    assert not det.allows("kakao", 30.0)


def test_a_success_clears_the_capability() -> None:
    """A success after failures means the capability is not failing."""
    det = make()
    fail(det, "chat", 0.0)
    det.record_success("kakao", "chat", 0.5)
    fail(det, "payment", 1.0)
    assert det.allows("kakao", 1.0)


def test_a_breaker_opening_marks_its_capability_failing() -> None:
    """A capability whose breaker opened counts as failing for the window."""
    det = make(window_seconds=30.0)
    det.record_breaker_open("kakao", "identity", 0.0)
    assert det.failing("kakao", 0.0) == ("identity",)
    assert det.failing("kakao", 30.1) == ()
    det.record_breaker_open("kakao", "identity", 40.0)
    fail(det, "payment", 41.0)
    assert det.state("kakao", 41.0) is D.OPEN
    assert det.changes[-1].capabilities == ("identity", "payment")


def test_min_capabilities_three() -> None:
    """With ``min_capabilities=3`` two failing capabilities are not enough."""
    det = make(min_capabilities=3)
    fail(det, "chat", 0.0)
    fail(det, "payment", 0.0)
    assert det.allows("kakao", 0.0)
    fail(det, "mobility", 0.0)
    assert not det.allows("kakao", 0.0)


def test_other_domains_are_unaffected() -> None:
    """Opening one domain leaves another, sharing capability names, closed."""
    det = make()
    det.record_failure("naver", "chat", 0.0)
    open_kakao(det)
    assert det.allows("naver", 0.0)
    assert det.state("naver", 0.0) is D.CLOSED
    assert det.failing("naver", 0.0) == ()
    assert {c.domain for c in det.changes} == {"kakao"}


def test_unknown_domain_is_closed() -> None:
    """A domain never heard of is closed and allows calls."""
    det = make()
    assert det.state("daum", 0.0) is D.CLOSED
    assert det.allows("daum", 0.0)
    assert det.retry_after("daum", 0.0) is None
    assert not det.try_probe("daum", 0.0)


# -- recovery --------------------------------------------------------------------------


def test_open_turns_half_open_after_open_time() -> None:
    """The domain stays open for ``open_seconds``, then is half-open."""
    det = make(open_seconds=15.0)
    open_kakao(det, 1.0)
    assert det.retry_after("kakao", 10.0) == 6.0
    assert det.state("kakao", 15.9) is D.OPEN
    assert det.state("kakao", 16.0) is D.HALF_OPEN
    assert det.retry_after("kakao", 16.0) is None
    assert not det.allows("kakao", 16.0)


def test_half_open_admits_probe_successes_probes() -> None:
    """A half-open domain hands out ``probe_successes`` probe slots."""
    det = make(probe_successes=2)
    open_kakao(det)
    assert not det.try_probe("kakao", 14.0)
    assert [det.try_probe("kakao", 15.0) for _ in range(3)] == [True, True, False]


def test_probe_successes_close_the_domain() -> None:
    """``probe_successes`` successful probes close the domain and forget its failures."""
    det = make(probe_successes=2)
    open_kakao(det)
    assert det.try_probe("kakao", 15.0)
    assert det.try_probe("kakao", 15.0)
    det.record_success("kakao", "chat", 15.5, probe=True)
    assert det.state("kakao", 15.5) is D.HALF_OPEN
    det.record_success("kakao", "identity", 16.0, probe=True)
    assert det.state("kakao", 16.0) is D.CLOSED
    assert det.failing("kakao", 16.0) == ()
    assert det.changes[-1].reason == "probes succeeded"


def test_probe_failure_reopens_with_grown_open_time() -> None:
    """A failed probe reopens the domain for ``open_backoff`` times longer."""
    det = make(open_seconds=15.0, open_backoff=2.0)
    open_kakao(det)
    assert det.try_probe("kakao", 15.0)
    det.record_failure("kakao", "chat", 16.0, probe=True)
    assert det.state("kakao", 16.0) is D.OPEN
    assert det.retry_after("kakao", 16.0) == 30.0
    assert det.changes[-1].reason == "half-open probe failed"


def test_open_time_is_capped_and_resets_on_close() -> None:
    """The open time grows to ``max_open_seconds`` and starts over once closed."""
    det = make(open_seconds=10.0, open_backoff=2.0, max_open_seconds=25.0, probe_successes=1)
    open_kakao(det)
    now, spans = 0.0, []
    for _ in range(3):
        now += det.retry_after("kakao", now) or 0.0
        assert det.try_probe("kakao", now)
        det.record_failure("kakao", "chat", now, probe=True)
        spans.append(det.retry_after("kakao", now))
    assert spans == [20.0, 25.0, 25.0]
    now += 25.0
    assert det.try_probe("kakao", now)
    det.record_success("kakao", "chat", now, probe=True)
    det.force_open("kakao", now)
    assert det.retry_after("kakao", now) == 10.0


def test_open_time_survives_a_very_long_outage() -> None:
    """Over a thousand failed probes keep the open time at the cap instead of overflowing."""
    det = make(open_seconds=10.0, open_backoff=2.0, max_open_seconds=120.0, probe_successes=1)
    open_kakao(det)
    now = 0.0
    for _ in range(1100):
        now += det.retry_after("kakao", now) or 0.0
        assert det.try_probe("kakao", now)
        det.record_failure("kakao", "chat", now, probe=True)
    assert det.retry_after("kakao", now) == 120.0


@pytest.mark.parametrize("seed", range(10))
def test_jittered_open_time_within_bounds(seed: int) -> None:
    """Jitter moves the open time by at most ``jitter`` either way."""
    det = FailureDomainDetector(
        DomainOptions(open_seconds=10.0, jitter=0.5), rng=random.Random(seed)
    )
    det.force_open("kakao", 0.0)
    span = det.retry_after("kakao", 0.0)
    assert span is not None
    assert 5.0 <= span <= 15.0


def test_release_probe_returns_a_slot() -> None:
    """A probe handed back without a result lets another probe go."""
    det = make(probe_successes=1)
    open_kakao(det)
    assert det.try_probe("kakao", 15.0)
    assert not det.try_probe("kakao", 15.0)
    det.release_probe("kakao")
    assert det.try_probe("kakao", 15.0)


def test_stale_probe_release_adds_no_slot() -> None:
    """A probe from an earlier half-open period, released now, does not add a slot."""
    det = make(probe_successes=2)
    open_kakao(det)
    assert det.try_probe("kakao", 15.0)
    assert det.try_probe("kakao", 15.0)  # the stale probe, still in flight
    stale = det.probe_epoch("kakao")
    det.record_failure("kakao", "chat", 15.0, probe=True)
    reopened = 15.0 + (det.retry_after("kakao", 15.0) or 0.0)
    assert det.try_probe("kakao", reopened)
    assert det.try_probe("kakao", reopened)
    det.release_probe("kakao", stale)  # the stale one comes back
    assert not det.try_probe("kakao", reopened)


def test_release_with_the_current_epoch_returns_a_slot() -> None:
    """A probe released in the period it was taken gives its slot back."""
    det = make(probe_successes=2)
    open_kakao(det)
    assert det.try_probe("kakao", 15.0)
    assert det.try_probe("kakao", 15.0)
    det.release_probe("kakao", det.probe_epoch("kakao"))
    assert det.try_probe("kakao", 15.0)


# -- manual control and reporting ------------------------------------------------------


def test_force_open_and_reset() -> None:
    """An operator can open a domain and close it again, forgetting its failures."""
    det = make()
    det.force_open("kakao", 2.0)
    assert det.changes[-1].reason == "forced open"
    fail(det, "chat", 3.0)
    det.reset("kakao", 4.0)
    assert det.allows("kakao", 4.0)
    assert det.failing("kakao", 4.0) == ()
    assert det.changes[-1] == DomainChange("kakao", D.OPEN, D.CLOSED, 4.0, "reset")


def test_reset_of_a_closed_domain_records_no_change() -> None:
    """Only real transitions are queued."""
    det = make()
    det.reset("kakao", 0.0)
    assert det.changes == []


def test_repr_lists_domains() -> None:
    """The repr lists the domains seen."""
    det = make()
    det.record_failure("naver", "chat", 0.0)
    det.record_failure("kakao", "chat", 0.0)
    assert repr(det) == "FailureDomainDetector(domains=['kakao', 'naver'])"


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("window_seconds", {"window_seconds": 0.0}),
        ("window_seconds", {"window_seconds": math.inf}),
        ("window_seconds", {"window_seconds": math.nan}),
        ("min_capabilities", {"min_capabilities": 1}),
        ("failures_per_capability", {"failures_per_capability": 0}),
        ("open_seconds", {"open_seconds": 0.0}),
        ("open_seconds", {"open_seconds": math.inf}),
        ("open_backoff", {"open_backoff": 0.9}),
        ("max_open_seconds", {"max_open_seconds": 1.0}),
        ("max_open_seconds", {"max_open_seconds": math.inf}),
        ("jitter", {"jitter": -0.5}),
        ("jitter", {"jitter": 1.0}),
        ("probe_successes", {"probe_successes": 0}),
    ],
)
def test_invalid_options_name_the_field(field: str, changes: dict[str, Any]) -> None:
    """Every invalid option raises ValueError naming the field."""
    with pytest.raises(ValueError, match=rf"^DomainOptions\.{field} must be .+, got "):
        DomainOptions(**changes)


# -- stateful --------------------------------------------------------------------------


class _ModelDomain:
    def __init__(self) -> None:
        self.state = D.CLOSED
        self.open_until = 0.0
        self.consecutive_opens = 0
        self.probes_left = 0
        self.probe_successes = 0
        #: (time, capability, "failure" | "success" | "breaker_open") since the last clear.
        self.events: list[tuple[float, str, str]] = []


class DomainModel:
    """The detector as an event log per domain; failing is computed from the log."""

    def __init__(self, options: DomainOptions) -> None:
        self.o = options
        self.domains = {name: _ModelDomain() for name in DOMAINS}
        self.changes: list[tuple[str, D, D, float, tuple[str, ...]]] = []

    def is_failing(self, domain: str, capability: str, now: float) -> bool:
        since_success: list[tuple[float, str]] = []
        for t, cap, kind in self.domains[domain].events:
            if cap != capability:
                continue
            if kind == "success":
                since_success.clear()
            else:
                since_success.append((t, kind))
        recent = [kind for t, kind in since_success if t >= now - self.o.window_seconds]
        return "breaker_open" in recent or recent.count("failure") >= (
            self.o.failures_per_capability
        )

    def failing(self, domain: str, now: float) -> tuple[str, ...]:
        return tuple(c for c in CAPABILITIES if self.is_failing(domain, c, now))

    def to(self, domain: str, new: D, now: float, capabilities: tuple[str, ...] = ()) -> None:
        d = self.domains[domain]
        if d.state is not new:
            self.changes.append((domain, d.state, new, now, capabilities))
        d.state = new

    def open(self, domain: str, now: float, open_until: float, caps: tuple[str, ...]) -> None:
        d = self.domains[domain]
        d.open_until = open_until
        d.consecutive_opens += 1
        self.to(domain, D.OPEN, now, caps)

    def query(self, domain: str, now: float) -> D:
        d = self.domains[domain]
        if d.state is D.OPEN and now >= d.open_until:
            d.probes_left = self.o.probe_successes
            d.probe_successes = 0
            self.to(domain, D.HALF_OPEN, now)
        return d.state

    def evaluate(self, domain: str, now: float, open_until: float) -> None:
        if self.domains[domain].state is not D.CLOSED:
            return
        failing = self.failing(domain, now)
        if len(failing) >= self.o.min_capabilities:
            self.open(domain, now, open_until, failing)

    def clear(self, domain: str) -> None:
        d = self.domains[domain]
        d.events.clear()
        d.consecutive_opens = 0


def _open_until(det: FailureDomainDetector, domain: str) -> float:
    # Read the exact instant: ``now + retry_after`` can differ from it by rounding, and the
    # model must turn half-open on exactly the same clock reading as the detector.
    return det._domains[domain].open_until


class DomainStateMachine(RuleBasedStateMachine):
    """A FailureDomainDetector and its model, fed the same events over two domains."""

    det: FailureDomainDetector
    model: DomainModel

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.probes: list[str] = []  # domains of probe slots held
        self.probe_results: dict[str, int] = dict.fromkeys(DOMAINS, 0)
        self.seen = 0

    @initialize(options=domain_options(), seed=st.integers(0, 2**32 - 1))
    def create(self, options: DomainOptions, seed: int) -> None:
        self.det = FailureDomainDetector(options, rng=random.Random(seed))
        self.model = DomainModel(options)

    def _after(self, domain: str) -> None:
        """Checks the changes one rule on ``domain`` made."""
        new = self.det.changes[self.seen :]
        self.seen = len(self.det.changes)
        o = self.model.o
        for change in new:
            assert change.domain == domain  # other domains unaffected
            if change.old is not change.new:
                # The held probes belonged to the period that just ended.
                self.probes = [p for p in self.probes if p != domain]
                self.probe_results[domain] = 0
            if change.new is D.OPEN:
                if change.reason.endswith("capabilities failing"):
                    assert len(change.capabilities) >= o.min_capabilities
                    assert change.capabilities == self.model.failing(domain, change.at)
                span = self.det.retry_after(domain, self.now)
                assert span is not None
                base = grown_open_seconds(
                    o.open_seconds,
                    o.open_backoff,
                    o.max_open_seconds,
                    self.model.domains[domain].consecutive_opens - 1,
                )
                slack = 1e-9 * max(1.0, self.now)
                assert base * (1 - o.jitter) - slack <= span <= base * (1 + o.jitter) + slack

    @rule(domain=st.sampled_from(DOMAINS), capability=st.sampled_from(CAPABILITIES))
    def record_failure(self, domain: str, capability: str) -> None:
        self.det.record_failure(domain, capability, self.now)
        self.model.domains[domain].events.append((self.now, capability, "failure"))
        self.model.evaluate(domain, self.now, _open_until(self.det, domain))
        self._after(domain)

    @rule(domain=st.sampled_from(DOMAINS), capability=st.sampled_from(CAPABILITIES))
    def record_success(self, domain: str, capability: str) -> None:
        self.det.record_success(domain, capability, self.now)
        self.model.domains[domain].events.append((self.now, capability, "success"))
        self._after(domain)

    @rule(domain=st.sampled_from(DOMAINS), capability=st.sampled_from(CAPABILITIES))
    def record_breaker_open(self, domain: str, capability: str) -> None:
        self.det.record_breaker_open(domain, capability, self.now)
        self.model.domains[domain].events.append((self.now, capability, "breaker_open"))
        self.model.evaluate(domain, self.now, _open_until(self.det, domain))
        self._after(domain)

    @rule(seconds=time_steps())
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: any(d.state is D.OPEN for d in self.model.domains.values()))
    @rule(domain=st.sampled_from(DOMAINS))
    def advance_to_open_until(self, domain: str) -> None:
        d = self.model.domains[domain]
        if d.state is D.OPEN:
            self.now = max(self.now, d.open_until)

    @rule(domain=st.sampled_from(DOMAINS))
    def query_state(self, domain: str) -> None:
        assert self.det.state(domain, self.now) is self.model.query(domain, self.now)
        self._after(domain)

    @rule(
        domain=st.sampled_from(DOMAINS),
        then=st.sampled_from(["hold", "succeed", "fail"]),
        capability=st.sampled_from(CAPABILITIES),
    )
    def try_probe(self, domain: str, then: str, capability: str) -> None:
        """Take a probe slot, and either hold it or report its result straight away."""
        got = self.det.try_probe(domain, self.now)
        d = self.model.domains[domain]
        expected = self.model.query(domain, self.now) is D.HALF_OPEN and d.probes_left > 0
        self._after(domain)
        assert got is expected
        if got:
            event(f"probe taken, then {then}")
            d.probes_left -= 1
            self.probes.append(domain)
            if then != "hold":
                self._probe_result(len(self.probes) - 1, then == "succeed", capability)

    @precondition(lambda self: self.probes)
    @rule(
        index=st.integers(0, 10), succeeded=st.booleans(), capability=st.sampled_from(CAPABILITIES)
    )
    def probe_result(self, index: int, succeeded: bool, capability: str) -> None:
        self._probe_result(index, succeeded, capability)

    def _probe_result(self, index: int, succeeded: bool, capability: str) -> None:
        domain = self.probes.pop(index % len(self.probes))
        d = self.model.domains[domain]
        if succeeded:
            self.det.record_success(domain, capability, self.now, probe=True)
            d.events.append((self.now, capability, "success"))
            d.probe_successes += 1
            self.probe_results[domain] += 1
            if d.probe_successes >= self.model.o.probe_successes:
                self.model.clear(domain)
                self.model.to(domain, D.CLOSED, self.now)
        else:
            self.det.record_failure(domain, capability, self.now, probe=True)
            self.model.open(domain, self.now, _open_until(self.det, domain), ())
        self._after(domain)

    @precondition(lambda self: self.probes)
    @rule(index=st.integers(0, 10))
    def release_probe(self, index: int) -> None:
        domain = self.probes.pop(index % len(self.probes))
        self.det.release_probe(domain)
        d = self.model.domains[domain]
        d.probes_left = min(d.probes_left + 1, self.model.o.probe_successes)
        self._after(domain)

    @rule(domain=st.sampled_from(DOMAINS), action=st.sampled_from(["force_open", "reset"]))
    def manual(self, domain: str, action: str) -> None:
        if action == "force_open":
            self.det.force_open(domain, self.now)
            self.model.open(domain, self.now, _open_until(self.det, domain), ())
        else:
            self.det.reset(domain, self.now)
            self.model.clear(domain)
            self.model.to(domain, D.CLOSED, self.now)
        self._after(domain)

    @invariant()
    def same_changes(self) -> None:
        got = [(c.domain, c.old, c.new, c.at, c.capabilities) for c in self.det.changes]
        assert got == self.model.changes

    @invariant()
    def same_view_of_each_domain(self) -> None:
        for domain in DOMAINS:
            d = self.model.domains[domain]
            assert self.det.allows(domain, self.now) is (d.state is D.CLOSED)
            expected = max(0.0, d.open_until - self.now) if d.state is D.OPEN else None
            assert self.det.retry_after(domain, self.now) == expected
            assert self.det.failing(domain, self.now) == self.model.failing(domain, self.now)

    @invariant()
    def probes_bounded(self) -> None:
        for domain in DOMAINS:
            held = self.probes.count(domain)
            assert held + self.probe_results[domain] <= self.model.o.probe_successes


TestDomainStateMachine = DomainStateMachine.TestCase
