"""The router: priority order, skipping what is down, hedging, failing now on business
refusals, resolving ambiguous payments, restrictions, failback, last resort, background
probes; sync and async.

The in-memory providers and route builders defined here (``FakeProvider``, ``make_route``,
``make_router``, ...) are shared with the other router test modules.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import tenacity

from superapp_sdk._errors import (
    Declined,
    OperationTimeout,
    ProviderConnectError,
    Unavailable,
)
from superapp_sdk._outcome import Attempt
from superapp_sdk.capabilities._common import Capability
from superapp_sdk.core.breaker import BreakerOptions, BreakerState
from superapp_sdk.core.domains import DomainOptions, FailureDomainDetector
from superapp_sdk.core.routing import FailbackRamp, OperationKind
from superapp_sdk.resilience import (
    CallContext,
    CircuitBreaker,
    OutcomeUnknown,
    Pipeline,
    Retry,
    Route,
    Router,
    SharedDetector,
    Timeout,
    default_retryable,
    retryable_unless_timeout,
)
from superapp_sdk.testing import FakeClock

READ, WRITE, PAYMENT = OperationKind.READ, OperationKind.WRITE, OperationKind.PAYMENT
OPS = frozenset({"x.read", "x.write", "x.pay"})
#: What a fake provider does with a call: answer; refuse the connection (nothing sent);
#: time out after sending, having executed it ("timeout") or not ("hang"); say no.
BEHAVIOURS = ("healthy", "refused", "timeout", "hang", "declined")
#: Bound on every wait for another thread or task in these tests.
WAIT = 5.0


# -- in-memory providers ---------------------------------------------------------------


class Ledger:
    """A sequence shared by providers, so calls at different providers can be ordered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0

    def next(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    @property
    def seq(self) -> int:
        """The last number handed out."""
        return self._seq


@dataclass(frozen=True, slots=True)
class Sent:
    """One request that reached a provider (recorded when it ended)."""

    provider: str
    operation: str
    tag: object
    started: int
    ended: int
    outcome: str
    probe: bool | None
    capped: float | None
    last_resort: bool
    thread: str

    @property
    def background(self) -> bool:
        """A background probe made it, not a user call."""
        return self.operation.endswith(".probe")


class FakeProvider:
    """A provider whose calls are plain callables taking a :class:`CallContext`.

    ``behaviour`` decides each answer (see :data:`BEHAVIOURS`); ``payments`` is its own
    ledger of executed payments by idempotency key, deduplicated as a real one is;
    ``status_up`` says whether its status query answers. ``gate`` (or ``agate`` for async
    calls) holds every call until set. Every request that reaches it is in ``sent``.
    """

    capability = Capability.CHAT

    def __init__(
        self,
        name: str,
        failure_domain: str,
        *,
        ledger: Ledger | None = None,
        clock: FakeClock | None = None,
        operations: Iterable[str] = OPS,
    ) -> None:
        self.name = name
        self.failure_domain = failure_domain
        self.operations = frozenset(operations)
        self.ledger = ledger or Ledger()
        #: Timeouts advance this clock by the try's timeout, as a real timeout takes it.
        self.clock = clock
        self.behaviour = "healthy"
        self.status_up = True
        self.gate: threading.Event | None = None
        self.agate: asyncio.Event | None = None
        self.tag: object = None
        self.sent: list[Sent] = []
        self.payments: dict[str, str] = {}
        self.status_queries = 0
        self.entered = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FakeProvider({self.name!r}, {self.failure_domain!r}, {self.behaviour!r})"

    def _answer(self, ctx: CallContext, key: str | None) -> str:
        b = self.behaviour
        if b in ("healthy", "timeout") and key is not None:
            self.payments.setdefault(key, f"{self.name}/{key}")
        if b == "healthy":
            return f"{self.name}/{key}" if key is not None else f"{self.name}:{ctx.operation}"
        if b == "refused":
            raise ProviderConnectError("connection refused", provider=self.name, request_sent=False)
        if b in ("timeout", "hang"):
            if self.clock is not None:
                self.clock.advance(ctx.timeout or 0.0)
            raise OperationTimeout("no answer", provider=self.name, request_sent=True)
        if b == "declined":
            raise Declined("card declined", provider=self.name, code="DECLINED")
        raise AssertionError(f"unknown behaviour {b!r}")

    def _record(self, ctx: CallContext, started: int, outcome: str) -> None:
        with self._lock:
            self.sent.append(
                Sent(
                    self.name,
                    ctx.operation,
                    self.tag,
                    started,
                    self.ledger.next(),
                    outcome,
                    ctx.probe,
                    ctx.max_timeout,
                    ctx.last_resort,
                    threading.current_thread().name,
                )
            )
        self.finished.set()

    def run(self, ctx: CallContext, key: str | None = None) -> str:
        """Serve one call (``key``: the idempotency key of a payment)."""
        started = self.ledger.next()
        self.entered.set()
        outcome = "ok"
        try:
            if self.gate is not None:
                assert self.gate.wait(WAIT), "gate never opened"
            return self._answer(ctx, key)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._record(ctx, started, outcome)

    async def arun(self, ctx: CallContext, key: str | None = None) -> str:
        """The async form of :meth:`run`."""
        started = self.ledger.next()
        self.entered.set()
        outcome = "ok"
        try:
            if self.agate is not None:
                await asyncio.wait_for(self.agate.wait(), WAIT)
            return self._answer(ctx, key)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._record(ctx, started, outcome)

    def status(self, key: str) -> str | None:
        """The status query: the payment if it executed here, ``None`` if it did not."""
        self.status_queries += 1
        if not self.status_up:
            raise ProviderConnectError("status unavailable", provider=self.name)
        return self.payments.get(key)

    def user_calls(self, since: int = 0) -> list[Sent]:
        """Requests made for user calls (not background probes) that started after ``since``."""
        return [s for s in self.sent if not s.background and s.started > since]


# -- what the router is handed ---------------------------------------------------------


def call(route: Route[FakeProvider]) -> Callable[[CallContext], str]:
    """``make`` for a read or a write."""
    return route.provider.run


def pay(key: str) -> Callable[[Route[FakeProvider]], Callable[[CallContext], str]]:
    """``make`` for a payment with idempotency key ``key``."""
    return lambda route: functools.partial(route.provider.run, key=key)


def resolve(key: str) -> Callable[[Route[FakeProvider]], Callable[[CallContext], str | None]]:
    """``resolve`` for a payment: the provider's own ledger says whether it executed."""
    return lambda route: lambda ctx: route.provider.status(key)


def acall(route: Route[FakeProvider]) -> Callable[[CallContext], Awaitable[str]]:
    """``make`` for an async read or write."""
    return route.provider.arun


def apay(key: str) -> Callable[[Route[FakeProvider]], Callable[[CallContext], Awaitable[str]]]:
    """``make`` for an async payment."""
    return lambda route: functools.partial(route.provider.arun, key=key)


def aresolve(
    key: str,
) -> Callable[[Route[FakeProvider]], Callable[[CallContext], Awaitable[str | None]]]:
    """``resolve`` for an async payment."""

    def build(route: Route[FakeProvider]) -> Callable[[CallContext], Awaitable[str | None]]:
        async def query(ctx: CallContext) -> str | None:
            return route.provider.status(key)

        return query

    return build


def not_sent(exc: BaseException) -> bool:
    """Retry a payment only when the request provably never left."""
    return getattr(exc, "request_sent", None) is False


def make_route(
    provider: FakeProvider,
    clock: FakeClock,
    *,
    open_seconds: float = 10.0,
    half_open_successes: int = 1,
    seed: int = 0,
) -> Route[FakeProvider]:
    """A route shaped as the app builds one: one breaker shared by a read, a write and a
    payment pipeline, each with its own retry rule; retries do not wait."""
    breaker = CircuitBreaker(
        BreakerOptions(
            minimum_calls=2,
            window_size=4,
            open_seconds=open_seconds,
            max_open_seconds=max(120.0, open_seconds),
            jitter=0.0,
            half_open_probes=2,
            half_open_successes=half_open_successes,
        ),
        background_probe=True,
        rng=random.Random(seed),
    )

    def pipeline(retry: Retry, seconds: float) -> Pipeline:
        return Pipeline(
            breaker,
            retry,
            Timeout(seconds, adaptive=False, floor=min(0.05, seconds)),
            name=provider.name,
            timer=clock,
        )

    def user_retry() -> Retry:
        return Retry(
            2,
            wait=tenacity.wait_none(),
            retry_on=retryable_unless_timeout,
            retry_on_last_resort=default_retryable,
        )

    read = pipeline(user_retry(), 1.0)
    write = pipeline(user_retry(), 1.0)
    payment = pipeline(Retry(2, wait=tenacity.wait_none(), retry_on=not_sent), 5.0)
    return Route(provider, read, {READ: read, WRITE: write, PAYMENT: payment})


def make_detector(clock: FakeClock, **options: Any) -> SharedDetector:
    """A shared detector without jitter, on ``clock``."""
    options.setdefault("jitter", 0.0)
    return SharedDetector(
        FailureDomainDetector(DomainOptions(**options), rng=random.Random(1)), timer=clock
    )


def make_router(
    providers: Sequence[FakeProvider],
    clock: FakeClock,
    *,
    detector: SharedDetector | None = None,
    capability: str = "x",
    ramp: FailbackRamp | None = None,
    **route_options: Any,
) -> Router[FakeProvider]:
    """A router over ``providers`` in that order; without ``ramp``, a recovered primary
    takes all its calls back at once (the default ramp draws from an unseeded Random)."""
    return Router(
        capability,
        [make_route(p, clock, **route_options) for p in providers],
        detector=detector or make_detector(clock),
        timer=clock,
        ramp=ramp or FailbackRamp(0.0),
    )


def breaker(router: Router[FakeProvider], name: str) -> CircuitBreaker:
    """The breaker of provider ``name``."""
    for r in router.routes:
        if r.name == name:
            assert r.pipeline.breaker is not None
            return r.pipeline.breaker
    raise KeyError(name)


def join_probe(name: str) -> None:
    """Wait (bounded) for the background probe thread of provider ``name`` to end."""
    for t in threading.enumerate():
        if t.name == f"superapp-probe-{name}":
            t.join(WAIT)
            assert not t.is_alive(), f"probe of {name} still running"


def brief(attempts: Iterable[Attempt]) -> list[tuple[str, str | None, bool]]:
    """Attempts without their durations."""
    return [(a.provider, a.error, a.skipped) for a in attempts]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def two(clock: FakeClock) -> tuple[FakeProvider, FakeProvider]:
    ledger = Ledger()
    return (
        FakeProvider("a", "kakao", ledger=ledger, clock=clock),
        FakeProvider("b", "alt", ledger=ledger, clock=clock),
    )


# -- priority order --------------------------------------------------------------------


def test_first_route_serves_when_healthy(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """With every provider healthy, the first configured one serves and the next is idle."""
    _, b = two
    routed = make_router(two, clock).call("x.write", WRITE, call)
    assert (routed.provider, routed.primary, routed.value) == ("a", True, "a:x.write")
    assert brief(routed.attempts) == [("a", None, False)]
    assert b.sent == []


def test_next_route_serves_when_the_first_refuses(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A refused connection at the first provider fails over to the second, in order."""
    a, b = two
    a.behaviour = "refused"
    routed = make_router(two, clock).call("x.write", WRITE, call)
    assert (routed.provider, routed.primary) == ("b", False)
    assert brief(routed.attempts) == [("a", "ProviderConnectError", False), ("b", None, False)]
    assert max(s.ended for s in a.sent) < min(s.started for s in b.sent)


def test_open_breaker_is_skipped_without_a_network_call(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A provider whose breaker is open is never called; its attempt says CircuitOpen."""
    a, _ = two
    router = make_router(two, clock)
    breaker(router, "a").force_open()
    routed = router.call("x.write", WRITE, call)
    assert routed.provider == "b"
    assert routed.attempts[0] == Attempt("a", "CircuitOpen", 0.0, skipped=True)
    assert a.sent == []


def test_domain_open_skips_every_capability_in_it(clock: FakeClock) -> None:
    """An open failure domain sends every capability to its alternates, calling no one in
    the domain, each attempt saying DomainOpen."""
    ledger = Ledger()
    detector = make_detector(clock)
    talk, line = FakeProvider("kakao.talk", "kakao", ledger=ledger), FakeProvider("line", "line")
    kpay, toss = FakeProvider("kakao.pay", "kakao", ledger=ledger), FakeProvider("toss", "toss")
    chat = make_router([talk, line], clock, detector=detector, capability="chat")
    payment = make_router([kpay, toss], clock, detector=detector, capability="payment")
    detector.force_open("kakao")
    sent = chat.call("x.write", WRITE, call)
    paid = payment.call("x.pay", PAYMENT, pay("order-1"), resolve=resolve("order-1"))
    assert (sent.provider, paid.provider) == ("line", "toss")
    for routed in (sent, paid):
        assert routed.attempts[0].error == "DomainOpen"
        assert routed.attempts[0].skipped
    assert talk.sent == kpay.sent == []


def test_two_failing_capabilities_send_a_third_straight_to_its_alternate(
    clock: FakeClock,
) -> None:
    """Chat and payment failing in one domain open it; identity then skips that domain
    without paying a call there."""
    detector = make_detector(clock)
    routers, primaries = [], []
    for capability in ("chat", "payment", "identity"):
        primary = FakeProvider(f"kakao.{capability}", "kakao")
        primaries.append(primary)
        routers.append(
            make_router(
                [primary, FakeProvider(f"alt.{capability}", "alt")],
                clock,
                detector=detector,
                capability=capability,
            )
        )
    for router, primary in zip(routers[:2], primaries[:2], strict=True):
        primary.behaviour = "refused"
        for _ in range(2):
            assert router.call("x.write", WRITE, call).provider.startswith("alt.")
    routed = routers[2].call("x.read", READ, call)
    assert routed.provider == "alt.identity"
    assert routed.attempts[0] == Attempt("kakao.identity", "DomainOpen", 0.0, skipped=True)
    assert primaries[2].sent == []


# -- hedging ---------------------------------------------------------------------------


def test_hedged_read_backup_wins_over_a_slow_primary(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A hedged read whose primary hangs is answered by the backup, which Routed names."""
    a, b = two
    router = make_router(two, clock)
    for _ in range(20):  # a known-fast primary: the hedge fires at once
        router.routes[0].pipeline.latency.record(0.0)
    a.gate = threading.Event()
    try:
        routed = router.call("x.read", READ, call, hedge=True)
    finally:
        a.gate.set()
    assert (routed.provider, routed.primary, routed.value) == ("b", False, "b:x.read")
    assert a.finished.wait(WAIT)
    assert len(b.sent) == 1


def test_hedged_read_fails_now_on_a_declined_primary(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A business refusal from the primary of a hedged read is raised, not hedged away."""
    a, b = two
    a.behaviour = "declined"
    b.gate = threading.Event()  # a backup launched before the refusal would wait here
    router = make_router(two, clock)
    try:
        with pytest.raises(Declined):
            router.call("x.read", READ, call, hedge=True)
    finally:
        b.gate.set()
    assert all(s.started < a.sent[0].ended for s in b.sent)


def test_writes_are_never_hedged(clock: FakeClock, two: tuple[FakeProvider, FakeProvider]) -> None:
    """``hedge=True`` on a write sends it to one provider only."""
    a, b = two
    router = make_router(two, clock)
    for _ in range(20):
        router.routes[0].pipeline.latency.record(0.0)
    assert router.call("x.write", WRITE, call, hedge=True).provider == "a"
    assert (len(a.sent), len(b.sent)) == (1, 0)


# -- business refusals -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [READ, WRITE, PAYMENT])
def test_declined_fails_now(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider], kind: OperationKind
) -> None:
    """A Declined is raised at once, for every kind, and no other provider is called."""
    a, b = two
    a.behaviour = "declined"
    make = pay("o") if kind is PAYMENT else call
    with pytest.raises(Declined) as info:
        make_router(two, clock).call("x.pay", kind, make, resolve=resolve("o"))
    assert info.value.provider == "a"
    assert len(a.sent) == 1
    assert b.sent == []


# -- payments: resolve before failover -------------------------------------------------


def test_payment_that_executed_returns_its_status(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A payment timing out after it executed is resolved by a status query to the same
    provider, whose answer is the value; nobody else is charged."""
    a, b = two
    a.behaviour = "timeout"
    routed = make_router(two, clock).call("x.pay", PAYMENT, pay("o1"), resolve=resolve("o1"))
    assert (routed.provider, routed.value) == ("a", "a/o1")
    assert a.status_queries == 1
    assert b.sent == []
    assert brief(routed.attempts) == [("a", "OperationTimeout", False)]


def test_payment_that_did_not_execute_fails_over(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A payment whose status query says it never executed fails over to the next."""
    a, b = two
    a.behaviour = "hang"
    routed = make_router(two, clock).call("x.pay", PAYMENT, pay("o1"), resolve=resolve("o1"))
    assert (routed.provider, routed.value) == ("b", "b/o1")
    assert a.payments == {}
    assert b.payments == {"o1": "b/o1"}


def test_payment_of_unknown_outcome_raises_outcome_unknown(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """When the status cannot be learned, OutcomeUnknown carries the attempts and no other
    provider is charged."""
    a, b = two
    a.behaviour, a.status_up = "timeout", False
    with pytest.raises(OutcomeUnknown) as info:
        make_router(two, clock).call("x.pay", PAYMENT, pay("o1"), resolve=resolve("o1"))
    err = info.value
    assert err.provider == "a"
    assert brief(err.attempts) == [
        ("a", "OperationTimeout", False),
        ("a", "ProviderConnectError", False),
    ]
    assert isinstance(err.__cause__, OperationTimeout)
    assert b.sent == []


def test_payment_without_a_resolver_is_outcome_unknown(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """With no status query available, an ambiguous payment is never failed over."""
    a, b = two
    a.behaviour = "hang"
    with pytest.raises(OutcomeUnknown):
        make_router(two, clock).call("x.pay", PAYMENT, pay("o1"))
    assert b.sent == []


def test_payment_refused_before_sending_fails_over_without_a_status_query(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A refused connection proves nothing executed: fail over, no status query needed."""
    a, _ = two
    a.behaviour = "refused"
    routed = make_router(two, clock).call("x.pay", PAYMENT, pay("o1"), resolve=resolve("o1"))
    assert routed.provider == "b"
    assert a.status_queries == 0


# -- restriction, choice, unavailability -----------------------------------------------


def test_providers_restricts_who_may_serve(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``providers=`` keeps every other provider out, even a healthy primary."""
    a, _ = two
    routed = make_router(two, clock).call("x.write", WRITE, call, providers=("b",))
    assert routed.provider == "b"
    assert brief(routed.attempts) == [("b", None, False)]
    assert a.sent == []


def test_operations_a_provider_lacks_are_not_routed_to_it(clock: FakeClock) -> None:
    """A provider that does not list the operation is neither called nor listed."""
    a = FakeProvider("a", "kakao", operations={"x.read"})
    b = FakeProvider("b", "alt")
    routed = make_router([a, b], clock).call("x.write", WRITE, call)
    assert routed.provider == "b"
    assert brief(routed.attempts) == [("b", None, False)]


def test_choose_names_the_first_eligible_route_without_calling(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``choose`` returns the route a call would take now, and what it skipped."""
    a, b = two
    router = make_router(two, clock)
    breaker(router, "a").force_open()
    route, skipped = router.choose("x.write")
    assert route.name == "b"
    assert brief(skipped) == [("a", "CircuitOpen", True)]
    assert a.sent == b.sent == []


def test_choose_raises_unavailable_when_nothing_is_eligible(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``choose`` with every provider skipped raises Unavailable listing them."""
    router = make_router(two, clock)
    router.detector.force_open("kakao")
    breaker(router, "b").force_open()
    with pytest.raises(Unavailable) as info:
        router.choose("x.write")
    assert brief(info.value.attempts) == [("a", "DomainOpen", True), ("b", "CircuitOpen", True)]


def test_unavailable_lists_every_provider_tried_or_skipped(clock: FakeClock) -> None:
    """When nothing serves, Unavailable lists each provider: skipped ones and tried ones."""
    ledger = Ledger()
    providers = [FakeProvider(n, d, ledger=ledger) for n, d in (("a", "k"), ("b", "k"), ("c", "n"))]
    providers[1].behaviour = providers[2].behaviour = "refused"
    router = make_router(providers, clock)
    breaker(router, "a").force_open()
    with pytest.raises(Unavailable) as info:
        router.call("x.write", WRITE, call)
    assert brief(info.value.attempts) == [
        ("a", "CircuitOpen", True),
        ("b", "ProviderConnectError", False),
        ("c", "ProviderConnectError", False),
    ]


def test_router_needs_a_route(clock: FakeClock) -> None:
    """A router without providers is refused at construction, naming the capability."""
    with pytest.raises(ValueError, match="'chat'"):
        Router("chat", [], detector=make_detector(clock))


# -- failback --------------------------------------------------------------------------


def _recover_primary(router: Router[FakeProvider], clock: FakeClock) -> None:
    """Open the primary's breaker, let its open time pass, and let a write probe it."""
    breaker(router, "a").force_open()
    clock.advance(11.0)
    assert router.call("x.write", WRITE, call).provider == "a"
    assert breaker(router, "a").state is BreakerState.CLOSED


def test_failback_ramp_gives_a_recovered_primary_a_growing_share(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """After recovery the primary serves a small share of calls, then more, then all."""
    ramp = FailbackRamp(10.0, initial_share=0.1, rng=random.Random(7))
    router = make_router(two, clock, ramp=ramp)
    _recover_primary(router, clock)
    shares = []
    for _ in range(3):
        served = [router.call("x.write", WRITE, call).provider for _ in range(200)]
        shares.append(served.count("a") / len(served))
        clock.advance(5.0)
    assert shares[0] < 0.25
    assert shares[0] < shares[1] < shares[2] == 1.0


def test_a_primary_failing_again_ends_its_ramp(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A breaker opening again drops the ramp: the next recovery starts from the start."""
    ramp = FailbackRamp(10.0, initial_share=0.1, rng=random.Random(7))
    router = make_router(two, clock, ramp=ramp)
    _recover_primary(router, clock)
    assert ramp.share("a", clock.monotonic()) == pytest.approx(0.1)
    breaker(router, "a").force_open()
    assert ramp.share("a", clock.monotonic()) == 1.0


# -- last resort -----------------------------------------------------------------------


def test_last_resort_is_passed_only_to_the_last_eligible_route(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """Only the last provider left gets ``last_resort``: it alone retries timeouts."""
    a, b = two
    a.behaviour = b.behaviour = "hang"
    with pytest.raises(Unavailable):
        make_router(two, clock).call("x.write", WRITE, call)
    assert [s.last_resort for s in a.sent] == [False]
    assert [s.last_resort for s in b.sent] == [True, True]


def test_last_resort_goes_to_the_primary_when_the_rest_are_skipped(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """With the alternate's breaker open, the primary is the last eligible route."""
    a, _ = two
    router = make_router(two, clock)
    breaker(router, "b").force_open()
    router.call("x.write", WRITE, call)
    assert [s.last_resort for s in a.sent] == [True]


# -- background probes -----------------------------------------------------------------


def test_background_probe_closes_a_recovered_breaker_without_a_user_waiting(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A read skips a recovering primary at once and probes it in the background; the
    probe's success closes the breaker."""
    a, _ = two
    router = make_router(two, clock)
    breaker(router, "a").force_open()
    clock.advance(11.0)
    a.gate = threading.Event()  # the probe cannot finish until the user call is back
    try:
        routed = router.call("x.read", READ, call)
        assert routed.provider == "b"
        assert routed.attempts[0] == Attempt("a", "CircuitOpen", 0.0, skipped=True)
    finally:
        a.gate.set()
    join_probe("a")
    assert breaker(router, "a").state is BreakerState.CLOSED
    assert [(s.operation, s.probe) for s in a.sent] == [("x.read.probe", True)]


def test_background_probe_goes_on_until_a_half_open_breaker_closes(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A breaker that needs two probe successes closes after one user call: the probe
    goes on while it stays half-open, instead of waiting for user traffic to trigger
    each one (case 6: recovery must not depend on traffic)."""
    a, _ = two
    router = make_router(two, clock, half_open_successes=2)
    breaker(router, "a").force_open()
    clock.advance(11.0)
    routed = router.call("x.read", READ, call)
    assert routed.provider == "b"
    join_probe("a")
    assert breaker(router, "a").state is BreakerState.CLOSED
    assert [(s.operation, s.probe) for s in a.sent] == [("x.read.probe", True)] * 2


def test_writes_probe_inline_with_the_short_probe_timeout(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A write with no probe call available probes a recovering primary itself, under the
    router's short probe timeout, and a payment never does."""
    a, _ = two
    router = make_router(two, clock)
    breaker(router, "a").force_open()
    clock.advance(11.0)
    assert router.call("x.pay", PAYMENT, pay("o"), resolve=resolve("o")).provider == "b"
    assert a.sent == []
    assert router.call("x.write", WRITE, call).provider == "a"
    assert [(s.probe, s.capped) for s in a.sent] == [(True, router.probe_timeout)]


def test_domain_probe_refused_by_the_breaker_gives_its_slot_back(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A write taking a half-open domain's probe slot for a provider whose breaker is still
    open hands the slot back, so the domain can still be probed."""
    a, _ = two
    router = make_router(two, clock, open_seconds=100.0)
    breaker(router, "a").force_open()
    router.detector.force_open("kakao")
    clock.advance(20.0)  # the domain (15 s) is half-open; the breaker (100 s) is not
    for _ in range(3):  # more writes than the domain has probe slots
        routed = router.call("x.write", WRITE, call)
        assert brief(routed.attempts) == [("a", "CircuitOpen", True), ("b", None, False)]
    assert a.sent == []
    assert router.detector.try_probe("kakao")


def test_a_write_recovers_a_half_open_domain_and_its_open_breaker_together(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """Once the breaker's open time is up too, a write's inline probe closes both the
    half-open domain and the breaker, instead of leaving the provider dark for good."""
    router = make_router(two, clock, open_seconds=100.0)
    breaker(router, "a").force_open()
    router.detector.force_open("kakao")
    clock.advance(20.0)
    for _ in range(3):
        assert router.call("x.write", WRITE, call).provider == "b"
    clock.advance(100.0)
    for _ in range(2):  # the detector's default asks for two successful probes
        assert router.call("x.write", WRITE, call).provider == "a"
    assert breaker(router, "a").state is BreakerState.CLOSED
    assert router.detector.allows("kakao")


# -- async -----------------------------------------------------------------------------


async def test_async_first_route_serves_and_failover_follows_order(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``acall`` serves from the first provider, then fails over in order."""
    a, _ = two
    router = make_router(two, clock)
    routed = await router.acall("x.write", WRITE, acall)
    assert (routed.provider, routed.primary) == ("a", True)
    a.behaviour = "refused"
    routed = await router.acall("x.write", WRITE, acall)
    assert (routed.provider, routed.primary) == ("b", False)
    assert brief(routed.attempts) == [("a", "ProviderConnectError", False), ("b", None, False)]


async def test_async_open_breaker_is_skipped(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``acall`` skips an open breaker without a call."""
    a, _ = two
    router = make_router(two, clock)
    breaker(router, "a").force_open()
    routed = await router.acall("x.write", WRITE, acall)
    assert routed.attempts[0] == Attempt("a", "CircuitOpen", 0.0, skipped=True)
    assert a.sent == []


async def test_async_declined_fails_now(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``acall`` raises a Declined at once without calling anyone else."""
    a, b = two
    a.behaviour = "declined"
    with pytest.raises(Declined):
        await make_router(two, clock).acall("x.write", WRITE, acall)
    assert b.sent == []


@pytest.mark.parametrize(
    ("behaviour", "status_up", "expected"),
    [("timeout", True, "a/o1"), ("hang", True, "b/o1"), ("timeout", False, None)],
    ids=["executed", "not-executed", "unknown"],
)
async def test_async_payment_resolve_paths(
    clock: FakeClock,
    two: tuple[FakeProvider, FakeProvider],
    behaviour: str,
    status_up: bool,
    expected: str | None,
) -> None:
    """``acall`` resolves an ambiguous payment: executed returns its status, not executed
    fails over, unknown raises OutcomeUnknown; never two charges."""
    a, b = two
    a.behaviour, a.status_up = behaviour, status_up
    router = make_router(two, clock)
    if expected is None:
        with pytest.raises(OutcomeUnknown) as info:
            await router.acall("x.pay", PAYMENT, apay("o1"), resolve=aresolve("o1"))
        assert [x.provider for x in info.value.attempts] == ["a", "a"]
    else:
        routed = await router.acall("x.pay", PAYMENT, apay("o1"), resolve=aresolve("o1"))
        assert routed.value == expected
    assert len([p for p in (a, b) if "o1" in p.payments]) <= 1


async def test_async_hedged_read_backup_wins_and_the_loser_is_cancelled(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """An async hedged read is answered by the backup; the hanging primary is cancelled."""
    a, _ = two
    router = make_router(two, clock)
    for _ in range(20):
        router.routes[0].pipeline.latency.record(0.0)
    a.agate = asyncio.Event()
    routed = await router.acall("x.read", READ, acall, hedge=True)
    assert routed.provider == "b"
    assert [s.outcome for s in a.sent] == ["CancelledError"]


async def test_async_hedged_read_fails_now_on_a_declined_primary(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """A business refusal from the primary of an async hedged read is raised."""
    a, b = two
    a.behaviour = "declined"
    b.agate = asyncio.Event()
    with pytest.raises(Declined):
        await make_router(two, clock).acall("x.read", READ, acall, hedge=True)
    assert all(s.started < a.sent[0].ended for s in b.sent)


async def test_async_unavailable_lists_every_provider(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """``acall`` with nothing serving raises Unavailable listing every provider."""
    for p in two:
        p.behaviour = "refused"
    with pytest.raises(Unavailable) as info:
        await make_router(two, clock).acall("x.write", WRITE, acall)
    assert [x.provider for x in info.value.attempts] == ["a", "b"]


async def test_async_background_probe_closes_a_recovered_breaker(
    clock: FakeClock, two: tuple[FakeProvider, FakeProvider]
) -> None:
    """An async read skips a recovering primary and probes it in a task that closes it."""
    a, _ = two
    router = make_router(two, clock)
    breaker(router, "a").force_open()
    clock.advance(11.0)
    a.agate = asyncio.Event()
    routed = await router.acall("x.read", READ, acall)
    assert routed.provider == "b"
    assert breaker(router, "a").state is not BreakerState.CLOSED
    a.agate.set()
    for _ in range(100):
        if breaker(router, "a").state is BreakerState.CLOSED:
            break
        await asyncio.sleep(0)
    await router.aclose()
    assert breaker(router, "a").state is BreakerState.CLOSED
    assert [(s.operation, s.probe) for s in a.sent] == [("x.read.probe", True)]
