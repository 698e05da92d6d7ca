"""The router against a small reference model, driven by hypothesis.

Two or three in-memory providers in one or two failure domains each sit behind a real
pipeline (breaker, retry, timeout) on a ``FakeClock``. Rules change what each provider
does, move time, let another capability of a domain fail, and make reads, writes and
payments. Before every call the machine looks at each breaker and domain; the model
predicts from that what the router must do (whom it skips, whom it calls and how often,
who answers, what it raises) and the invariants check what must hold whatever the model
says: no request to a provider whose breaker was open unless it is an explicit probe,
``Routed`` names who really answered, no payment executes on two providers, a Declined
stops the call, and ``Unavailable`` lists everyone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from superapp_sdk._errors import Declined, Unavailable
from superapp_sdk.core.breaker import BreakerState
from superapp_sdk.core.domains import DomainState
from superapp_sdk.core.routing import FailbackRamp, OperationKind
from superapp_sdk.resilience import OutcomeUnknown, Route, Routed, Router
from superapp_sdk.testing import FakeClock
from tests.strategies import time_steps
from tests.test_router import (
    BEHAVIOURS,
    FakeProvider,
    Ledger,
    Sent,
    brief,
    call,
    join_probe,
    make_detector,
    make_route,
    pay,
    resolve,
)

READ, WRITE, PAYMENT = OperationKind.READ, OperationKind.WRITE, OperationKind.PAYMENT
OPERATION = {READ: "x.read", WRITE: "x.write", PAYMENT: "x.pay"}
ERROR = {
    "refused": "ProviderConnectError",
    "timeout": "OperationTimeout",
    "hang": "OperationTimeout",
    "declined": "Declined",
}
#: Domains of the providers, first to last; the last of three offers no payments.
LAYOUTS = (
    ("kakao", "alt"),
    ("kakao", "kakao"),
    ("kakao", "alt", "alt"),
    ("kakao", "alt", "kakao"),
    ("kakao", "kakao", "alt"),
)


class DeferredProbes(Router[FakeProvider]):
    """A router whose background probes start only once the user call has returned, one
    at a time, each on the real probe thread.

    A probe thread may always be scheduled that late, so this is a schedule the real
    router can take; fixing it makes every run reproducible.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued: list[tuple[Route[FakeProvider], Any, bool, str]] = []

    def _spawn_probe(
        self, r: Route[FakeProvider], prober: Any, *, domain: bool, operation: str
    ) -> None:
        self.queued.append((r, prober, domain, operation))

    def run_probes(self) -> list[tuple[str, bool]]:
        """Run the queued probes in order, each to its end; returns (provider, domain?)."""
        queued, self.queued = self.queued, []
        for r, prober, domain, operation in queued:
            super()._spawn_probe(r, prober, domain=domain, operation=operation)
            join_probe(r.name)
        return [(r.name, domain) for r, _, domain, _ in queued]


@dataclass(frozen=True, slots=True)
class BreakerSeen:
    state: BreakerState
    probe_due: bool


@dataclass(frozen=True, slots=True)
class DomainSeen:
    allows: bool
    probing: bool  # half-open or suspect: a probe may go in
    slots: int  # probe slots free


@dataclass(slots=True)
class Sends:
    """The requests one provider should get during a call."""

    count: int
    probe: bool | None
    capped: bool
    last_resort: bool


@dataclass(slots=True)
class Expected:
    attempts: list[tuple[str, str | None, bool]] = field(default_factory=list)
    sends: dict[str, Sends] = field(default_factory=dict)
    background: list[tuple[str, bool]] = field(default_factory=list)
    served_by: str | None = None
    raises: type[Exception] | None = None
    raised_by: str | None = None
    executes: str | None = None


def tries(kind: OperationKind, behaviour: str, last: bool) -> int:
    """Requests one pipeline call makes (two tries at most; retries never wait)."""
    if behaviour == "refused":
        return 2  # nothing was sent: always worth another try
    if behaviour in ("timeout", "hang") and kind is not PAYMENT and last:
        return 2  # no alternate left: a timeout is retried rather than given up
    return 1


class RouterMachine(RuleBasedStateMachine):
    """Drives one router; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.ledger = Ledger()
        self.providers: list[FakeProvider] = []
        self.pinned: dict[str, str] = {}
        self.calls = 0

    @initialize(
        layout=st.sampled_from(LAYOUTS),
        open_seconds=st.sampled_from([1.0, 5.0, 30.0]),
        half_open_successes=st.integers(1, 2),
        suspect_seconds=st.sampled_from([0.0, 2.0, 10.0]),
        domain_open_seconds=st.sampled_from([3.0, 15.0]),
        probe_successes=st.integers(1, 2),
        ramp_seconds=st.sampled_from([0.0, 10.0]),
        seed=st.integers(0, 1000),
        behaviours=st.lists(st.sampled_from(BEHAVIOURS[:4]), min_size=3, max_size=3),
        status_up=st.lists(st.booleans(), min_size=3, max_size=3),
    )
    def setup(
        self,
        layout: tuple[str, ...],
        open_seconds: float,
        half_open_successes: int,
        suspect_seconds: float,
        domain_open_seconds: float,
        probe_successes: int,
        ramp_seconds: float,
        seed: int,
        behaviours: list[str],
        status_up: list[bool],
    ) -> None:
        for i, domain in enumerate(layout):
            ops = {"x.read", "x.write"} if i == 2 else {"x.read", "x.write", "x.pay"}
            p = FakeProvider(f"p{i}", domain, ledger=self.ledger, operations=ops)
            p.behaviour, p.status_up = behaviours[i], status_up[i]
            self.providers.append(p)
        detector = make_detector(
            self.clock,
            suspect_seconds=suspect_seconds,
            open_seconds=domain_open_seconds,
            probe_successes=probe_successes,
        )
        self.half_open_successes = half_open_successes
        self.probe_successes = probe_successes
        self.router = DeferredProbes(
            "x",
            [
                make_route(
                    p,
                    self.clock,
                    open_seconds=open_seconds,
                    half_open_successes=half_open_successes,
                    seed=seed + i,
                )
                for i, p in enumerate(self.providers)
            ],
            detector=detector,
            timer=self.clock,
            ramp=FailbackRamp(ramp_seconds, initial_share=0.3, rng=random.Random(seed)),
        )
        #: Draws the same numbers as the ramp's Random, to know when it rotates the order.
        self.ramp_rng = random.Random(seed)

    # -- the world ---------------------------------------------------------------------

    def provider(self, index: int) -> FakeProvider:
        return self.providers[index % len(self.providers)]

    @rule(index=st.integers(0, 2), behaviour=st.sampled_from(BEHAVIOURS))
    def behave(self, index: int, behaviour: str) -> None:
        self.provider(index).behaviour = behaviour

    @rule(index=st.integers(0, 2), up=st.booleans())
    def status(self, index: int, up: bool) -> None:
        self.provider(index).status_up = up

    @rule(seconds=time_steps(30.0))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(
        domain=st.sampled_from(["kakao", "alt"]), result=st.sampled_from(["fail", "timeout", "ok"])
    )
    def other_capability(self, domain: str, result: str) -> None:
        """Another capability's call in ``domain`` ended (a second failing capability can
        open the domain; a timeout makes it suspect; an answer clears suspicion)."""
        self.router.detector.record(domain, "other", ok=result == "ok", timeout=result == "timeout")

    # -- calls -------------------------------------------------------------------------

    @rule()
    def read(self) -> None:
        self.route(READ)

    @rule()
    def write(self) -> None:
        self.route(WRITE)

    @rule(order=st.integers(0, 3))
    def payment(self, order: int) -> None:
        self.route(PAYMENT, f"order-{order}")

    def route(self, kind: OperationKind, key: str | None = None) -> None:
        operation = OPERATION[kind]
        # A payment that may have executed somewhere stays with that provider, as the
        # payment facade does; the router itself cannot know about earlier calls.
        providers = (self.pinned[key],) if key in self.pinned else None
        breakers = self.look_at_breakers()
        domains = self.look_at_domains()
        expected = self.expect(kind, key, providers, breakers, domains)
        self.calls += 1
        for p in self.providers:
            p.tag = self.calls
        paid_before = self.paid(key)
        mark = self.ledger.seq
        result: Routed[Any] | Exception
        try:
            if key is None:
                result = self.router.call(operation, kind, call)
            else:
                result = self.router.call(
                    operation, kind, pay(key), resolve=resolve(key), providers=providers
                )
        except (Declined, OutcomeUnknown, Unavailable) as exc:
            result = exc
        queued = [(r.name, domain) for r, _, domain, _ in self.router.queued]
        sent = {p.name: p.user_calls(since=mark) for p in self.providers}

        self.check_breakers_respected(sent, breakers)
        self.check_domains_respected(kind, sent, domains)
        self.check_result(kind, key, providers, result, sent, paid_before)
        self.check_model(expected, result, sent, queued)
        self.check_background(self.router.run_probes(), breakers, domains)

        if key is not None and isinstance(result, Routed | OutcomeUnknown):
            self.pinned[key] = (
                result.provider if isinstance(result, Routed) else str(result.provider)
            )
        event(f"{kind.value}: {type(result).__name__}")

    # -- what the machine sees before a call -------------------------------------------

    def look_at_breakers(self) -> dict[str, BreakerSeen]:
        seen = {}
        for r in self.router.routes:
            b = r.pipeline.breaker
            assert b is not None
            seen[r.name] = BreakerSeen(b.state, b.probe_due())
        return seen

    def look_at_domains(self) -> dict[str, DomainSeen]:
        det = self.router.detector
        seen = {}
        for domain in {p.failure_domain for p in self.providers}:
            state = det.state(domain)
            suspect = det.is_suspect(domain)
            # The detector offers no read-only view of its probe slots; peek.
            d = det.detector._domains.get(domain)
            slots = 0
            if d is not None and suspect:
                slots = 0 if d.suspect_probing else 1
            elif d is not None and state is DomainState.HALF_OPEN:
                slots = d.probes_left
            seen[domain] = DomainSeen(
                det.allows(domain), state is DomainState.HALF_OPEN or suspect, slots
            )
        return seen

    def paid(self, key: str | None) -> set[str]:
        return {p.name for p in self.providers if key is not None and key in p.payments}

    # -- the reference model -----------------------------------------------------------

    def expect(
        self,
        kind: OperationKind,
        key: str | None,
        providers: tuple[str, ...] | None,
        breakers: dict[str, BreakerSeen],
        domains: dict[str, DomainSeen],
    ) -> Expected:
        """What the router must do, from what was seen and what each provider will do."""
        operation = OPERATION[kind]
        routes = [
            r
            for r in self.router.routes
            if operation in r.provider.operations and (providers is None or r.name in providers)
        ]
        if len(routes) > 1:
            share = self.router.ramp.share(routes[0].name, self.clock.monotonic())
            if share < 1.0 and not self.ramp_rng.random() < share:
                routes.append(routes.pop(0))  # a recovering primary not admitted this time
        # Reads probe in the background (the read itself is the probe call); writes probe
        # inline under the short probe timeout; payments never probe.
        aside, inline = kind is READ, kind is WRITE
        slots = {d: seen.slots for d, seen in domains.items()}
        x = Expected()
        plan: list[tuple[Route[FakeProvider], str]] = []
        for r in routes:
            dom, br = domains[r.domain], breakers[r.name]
            if not dom.allows:
                if dom.probing and aside:
                    x.background.append((r.name, True))
                elif dom.probing and inline and slots[r.domain] > 0:
                    slots[r.domain] -= 1
                    plan.append((r, "domain"))
                    continue
                x.attempts.append((r.name, "DomainOpen", True))
            elif br.state is not BreakerState.CLOSED:
                if br.probe_due and aside:
                    x.background.append((r.name, False))
                elif br.probe_due and inline:
                    plan.append((r, "probe"))
                    continue
                x.attempts.append((r.name, "CircuitOpen", True))
            else:
                plan.append((r, ""))
        for i, (r, mode) in enumerate(plan):
            br, p = breakers[r.name], r.provider
            if mode == "domain" and not (br.state is BreakerState.CLOSED or br.probe_due):
                x.attempts.append((r.name, "CircuitOpen", True))  # the breaker says no
                continue
            if mode:
                event("inline breaker probe" if mode == "probe" else "inline domain probe")
            last = i == len(plan) - 1
            x.sends[r.name] = Sends(
                tries(kind, p.behaviour, last), True if mode else None, bool(mode), last
            )
            if p.behaviour == "healthy":
                x.attempts.append((r.name, None, False))
                x.served_by = r.name
                x.executes = r.name if key is not None else None
                return x
            x.attempts.append((r.name, ERROR[p.behaviour], False))
            if p.behaviour == "declined":
                x.raises, x.raised_by = Declined, r.name
                return x
            if kind is PAYMENT and p.behaviour in ("timeout", "hang"):
                assert key is not None
                executed = p.behaviour == "timeout" or key in p.payments
                if p.behaviour == "timeout":
                    x.executes = r.name
                if not p.status_up:
                    x.attempts.append((r.name, "ProviderConnectError", False))
                    x.raises, x.raised_by = OutcomeUnknown, r.name
                    return x
                if executed:
                    x.served_by = r.name
                    return x
        x.raises = Unavailable
        return x

    # -- checks ------------------------------------------------------------------------

    def check_breakers_respected(
        self, sent: dict[str, list[Sent]], breakers: dict[str, BreakerSeen]
    ) -> None:
        """A provider whose breaker was not closed gets a request only as an explicit
        probe, and only when its probe was due."""
        for name, requests in sent.items():
            seen = breakers[name]
            if seen.state is BreakerState.CLOSED:
                continue
            for s in requests:
                assert s.probe is True, (name, seen, s)
                assert seen.probe_due, (name, seen, s)

    def check_domains_respected(
        self, kind: OperationKind, sent: dict[str, list[Sent]], domains: dict[str, DomainSeen]
    ) -> None:
        """A domain that did not allow calls gets only probes under the short probe
        timeout, and never a payment."""
        for p in self.providers:
            if domains[p.failure_domain].allows:
                continue
            for s in sent[p.name]:
                assert kind is not PAYMENT, s
                assert s.capped == self.router.probe_timeout, s

    def check_result(
        self,
        kind: OperationKind,
        key: str | None,
        providers: tuple[str, ...] | None,
        result: Routed[Any] | Exception,
        sent: dict[str, list[Sent]],
        paid_before: set[str],
    ) -> None:
        """``Routed`` names who answered; a Declined ends the call; Unavailable lists
        every provider that offers the operation; skipped means not called."""
        called = {name for name, requests in sent.items() if requests}
        if isinstance(result, Routed):
            attempts = result.attempts
            assert result.primary == (result.provider == self.router.routes[0].name)
            answered = [s for s in sent[result.provider] if s.outcome == "ok"]
            if key is None:
                assert answered, f"{result.provider} never answered"
                assert result.value == f"{result.provider}:{OPERATION[kind]}"
            else:
                assert self.providers_by_name[result.provider].payments.get(key) == result.value
                assert result.value == f"{result.provider}/{key}"
        elif isinstance(result, Declined):
            refusals = [
                s for requests in sent.values() for s in requests if s.outcome == "Declined"
            ]
            assert [s.provider for s in refusals] == [result.provider]
            after = [
                s for requests in sent.values() for s in requests if s.started > refusals[0].ended
            ]
            assert after == [], "called after a business refusal"
            return  # a Declined carries no attempts
        else:
            attempts = result.attempts
        if isinstance(result, Unavailable):
            offered = {
                r.name
                for r in self.router.routes
                if OPERATION[kind] in r.provider.operations
                and (providers is None or r.name in providers)
            }
            assert {a.provider for a in attempts} == offered
            assert self.paid(key) == paid_before, "a payment executed, yet Unavailable"
        tried = {a.provider for a in attempts if not a.skipped}
        skipped = {a.provider for a in attempts if a.skipped}
        assert called <= tried
        assert not (skipped & called), "a skipped provider was called"
        assert len(self.paid(key)) <= 1

    def check_model(
        self,
        x: Expected,
        result: Routed[Any] | Exception,
        sent: dict[str, list[Sent]],
        queued: list[tuple[str, bool]],
    ) -> None:
        if x.raises is None:
            assert isinstance(result, Routed), result
            assert result.provider == x.served_by
            assert brief(result.attempts) == x.attempts
        else:
            assert isinstance(result, x.raises), (x, result)
            if x.raised_by is not None:
                assert getattr(result, "provider", None) == x.raised_by
            if not isinstance(result, Declined):
                assert brief(result.attempts) == x.attempts  # type: ignore[union-attr]
        for name, requests in sent.items():
            want = x.sends.get(name)
            if want is None:
                assert requests == [], (name, requests)
                continue
            assert len(requests) == want.count, (name, want, requests)
            for s in requests:
                assert s.probe == want.probe, (name, want, s)
                assert (s.capped == self.router.probe_timeout) == want.capped, (name, want, s)
                assert s.last_resort == want.last_resort, (name, want, s)
        # Breaker probes are started before domain probes, each in route order.
        assert queued == sorted(x.background, key=lambda probe: probe[1])

    def check_background(
        self,
        ran: list[tuple[str, bool]],
        breakers: dict[str, BreakerSeen],
        domains: dict[str, DomainSeen],
    ) -> None:
        """Each background probe was due and said it was one; it goes on while its breaker
        or domain stays half-open, so it makes at most as many requests as closing takes."""
        for name, domain in ran:
            event("background domain probe" if domain else "background breaker probe")
            p = self.providers_by_name[name]
            probes = [s for s in p.sent if s.background and s.tag == self.calls]
            assert all(s.probe is True for s in probes)
            if domain:
                assert domains[p.failure_domain].probing
                assert len(probes) <= self.probe_successes
            else:
                assert breakers[name].probe_due
                assert 1 <= len(probes) <= self.half_open_successes

    @property
    def providers_by_name(self) -> dict[str, FakeProvider]:
        return {p.name: p for p in self.providers}

    # -- always ------------------------------------------------------------------------

    def teardown(self) -> None:
        event(f"calls made: {min(self.calls // 10 * 10, 30)}+")

    @invariant()
    def no_payment_executes_on_two_providers(self) -> None:
        keys = {k for p in self.providers for k in p.payments}
        for key in keys:
            assert len(self.paid(key)) == 1, (key, self.paid(key))

    @invariant()
    def no_probe_slot_is_held_between_calls(self) -> None:
        """Every probe has ended (background ones were joined), so every slot it took was
        given back or spent on a result; a slot lost here would keep a domain dark."""
        det = self.router.detector
        for domain in {p.failure_domain for p in self.providers}:
            state = det.state(domain)
            d = det.detector._domains.get(domain)
            if d is None:
                continue
            assert not d.suspect_probing, domain
            if state is DomainState.HALF_OPEN:
                wanted = det.detector.options.probe_successes
                assert d.probes_left + d.probe_successes == wanted, (domain, d)

    @invariant()
    def pinned_orders_are_where_they_may_have_executed(self) -> None:
        for key, name in self.pinned.items():
            assert self.paid(key) <= {name}


TestRouter = RouterMachine.TestCase
