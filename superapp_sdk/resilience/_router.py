"""The router shell: try providers in priority order through their pipelines, skip what
is known to be down, hedge idempotent reads, probe recovering providers in the
background, and say who answered.

Decisions come from ``core/routing.py`` (what an error means, failback hysteresis) and
``core/domains.py`` (correlated outages); this module only does the calling and waiting.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from superapp_sdk._errors import (
    CircuitOpen,
    OutcomeUnknown,
    ProviderRefused,
    RateLimited,
    Rejected,
    Unavailable,
)
from superapp_sdk._outcome import Attempt
from superapp_sdk.capabilities._common import Provider, deduplicated_operations
from superapp_sdk.core.breaker import BreakerState, StateChange
from superapp_sdk.core.domains import DomainChange, DomainState, FailureDomainDetector
from superapp_sdk.core.routing import (
    Action,
    Classification,
    FailbackRamp,
    OperationKind,
    classify,
)
from superapp_sdk.resilience._base import CallContext, Event, SystemTimer, Timer, default_failure
from superapp_sdk.resilience._pipeline import Pipeline
from superapp_sdk.resilience._strategies import Timeout, arun_hedged, hedge_delay, run_hedged

__all__ = ["DomainOpen", "OutcomeUnknown", "Route", "Routed", "Router", "SharedDetector"]

T = TypeVar("T")
P = TypeVar("P", bound=Provider)


class DomainOpen(CircuitOpen):
    """The provider's whole failure domain is open (a correlated outage)."""


@dataclass(frozen=True, slots=True)
class Route(Generic[P]):
    """One provider and the pipelines its calls go through.

    ``pipeline`` serves every kind of operation unless ``pipelines`` names one for the
    kind (reads, writes and payments want different retry and timeout rules). They
    should share the provider's breaker and latency tracker.
    """

    provider: P
    pipeline: Pipeline
    pipelines: Mapping[OperationKind, Pipeline] = field(default_factory=dict)

    def for_kind(self, kind: OperationKind) -> Pipeline:
        """The pipeline for operations of ``kind``."""
        return self.pipelines.get(kind, self.pipeline)

    @property
    def name(self) -> str:
        """The provider's name."""
        return self.provider.name

    @property
    def domain(self) -> str:
        """The provider's failure domain."""
        return self.provider.failure_domain


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """What the router got: the value, who gave it, and every try on the way."""

    value: T
    provider: str
    primary: bool
    attempts: tuple[Attempt, ...]
    #: Providers an earlier try may have executed at (``ambiguous="fail_over"``): the
    #: effect may have happened there as well.
    maybe_executed: tuple[str, ...] = ()


class SharedDetector:
    """A :class:`FailureDomainDetector` shared by every router of an app, with a lock and
    listeners for domain changes."""

    def __init__(
        self, detector: FailureDomainDetector | None = None, *, timer: Timer | None = None
    ) -> None:
        self.detector = detector or FailureDomainDetector()
        self.timer: Timer = timer or SystemTimer()
        self._lock = threading.Lock()
        self.listeners: list[Callable[[DomainChange], None]] = []
        self.listener_errors = 0

    def _flush(self) -> None:
        if not self.detector.changes:
            return
        with self._lock:
            changes, self.detector.changes = self.detector.changes, []
        for change in changes:
            for listener in self.listeners:
                try:
                    listener(change)
                except Exception:  # noqa: BLE001 - a listener must not break a call
                    self.listener_errors += 1

    def allows(self, domain: str) -> bool:
        """True when the domain is closed."""
        with self._lock:
            return self.detector.allows(domain, self.timer.monotonic())

    def state(self, domain: str) -> DomainState:
        """The domain's state now."""
        with self._lock:
            state = self.detector.state(domain, self.timer.monotonic())
        self._flush()
        return state

    def try_probe(self, domain: str) -> bool:
        """Take a probe slot of a half-open domain."""
        with self._lock:
            ok = self.detector.try_probe(domain, self.timer.monotonic())
        self._flush()
        return ok

    def record(
        self,
        domain: str,
        capability: str,
        *,
        ok: bool,
        probe: bool = False,
        timeout: bool = False,
    ) -> None:
        """Feed one result (``timeout``: the failure was a timeout)."""
        now = self.timer.monotonic()
        with self._lock:
            if ok:
                self.detector.record_success(domain, capability, now, probe=probe)
            else:
                self.detector.record_failure(domain, capability, now, probe=probe, timeout=timeout)
        self._flush()

    def probe_epoch(self, domain: str) -> int:
        """The domain's current probe period (see :meth:`release_probe`)."""
        with self._lock:
            return self.detector.probe_epoch(domain)

    def release_probe(self, domain: str, epoch: int | None = None) -> None:
        """Give back a probe slot taken by :meth:`try_probe` that produced no result;
        with ``epoch``, only to the period it was taken in."""
        with self._lock:
            self.detector.release_probe(domain, epoch)

    def is_suspect(self, domain: str) -> bool:
        """True while the domain is suspect after a timeout."""
        with self._lock:
            return self.detector.is_suspect(domain, self.timer.monotonic())

    def breaker_opened(self, domain: str, capability: str) -> None:
        """A breaker of a provider of ``capability`` in ``domain`` opened."""
        with self._lock:
            self.detector.record_breaker_open(domain, capability, self.timer.monotonic())
        self._flush()

    def retry_after(self, domain: str) -> float | None:
        """Seconds until the domain turns half-open."""
        with self._lock:
            return self.detector.retry_after(domain, self.timer.monotonic())

    def force_open(self, domain: str) -> None:
        """Open a domain by hand."""
        with self._lock:
            self.detector.force_open(domain, self.timer.monotonic())
        self._flush()

    def reset(self, domain: str) -> None:
        """Close a domain by hand."""
        with self._lock:
            self.detector.reset(domain, self.timer.monotonic())
        self._flush()


MakeSync = Callable[[Route[Any]], Callable[[CallContext], Any]]
MakeAsync = Callable[[Route[Any]], Callable[[CallContext], Awaitable[Any]]]


#: Background probes in a row while a breaker or domain stays half-open (a breaker needs
#: ``half_open_successes`` of them to close).
_PROBE_ROUNDS = 8


class _Stop(Exception):
    """Carries a FAIL_NOW error through a hedge race as a result."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


def _stop_as_result(attempt: Callable[[Any], Any], item: Any) -> Any:
    # A hedge race treats a raised error as "try the next one": a business refusal must
    # instead end the race, so it is returned, and the first result wins.
    try:
        return attempt(item)
    except _Stop as stop:
        return stop


async def _astop_as_result(attempt: Callable[[Any], Awaitable[Any]], item: Any) -> Any:
    try:
        return await attempt(item)
    except _Stop as stop:
        return stop


class Router(Generic[P]):
    """Routes the calls of one capability over its providers.

    Args:
        capability: the capability name, fed to the failure-domain detector.
        routes: providers in priority order with their pipelines. Their breakers should
            use ``background_probe=True`` so no user call waits on a dead provider.
        detector: the app's shared failure-domain detector.
        ramp: failback hysteresis.
        classification: overrides of the error classification.
        probe_timeout: the per-try timeout of a probe, so a probe of a dead provider is
            short even when it has to be a user call.
    """

    def __init__(
        self,
        capability: str,
        routes: Sequence[Route[P]],
        *,
        detector: SharedDetector,
        timer: Timer | None = None,
        ramp: FailbackRamp | None = None,
        classification: Classification | None = None,
        probe_timeout: float = 0.25,
    ) -> None:
        if not routes:
            raise ValueError(f"Router({capability!r}) needs at least one provider")
        self.capability = capability
        self.routes = tuple(routes)
        self.detector = detector
        self.timer: Timer = timer or detector.timer
        self.ramp = ramp or FailbackRamp()
        self.classification = classification
        self.probe_timeout = probe_timeout
        self._lock = threading.Lock()
        self._probing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        for route in self.routes:
            breaker = route.pipeline.breaker
            if breaker is not None:
                breaker.on(self._listener(route))

    # -- bookkeeping shared by the sync and async paths --------------------------------

    def _listener(self, route: Route[P]) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            if not isinstance(event, StateChange):
                return
            if event.new is BreakerState.OPEN:
                self.ramp.failed(route.name)
                self.detector.breaker_opened(route.domain, self.capability)
            elif event.new is BreakerState.CLOSED and event.old is BreakerState.HALF_OPEN:
                self.ramp.recovered(route.name, self.timer.monotonic())

        return on_event

    def _order(self, operation: str, providers: Collection[str] | None = None) -> list[Route[P]]:
        routes = [
            r
            for r in self.routes
            if operation in r.provider.operations and (providers is None or r.name in providers)
        ]
        if len(routes) > 1 and not self.ramp.admit(routes[0].name, self.timer.monotonic()):
            routes.append(routes.pop(0))
        return routes

    def _plan(
        self,
        operation: str,
        attempts: list[Attempt],
        *,
        can_probe_aside: bool,
        providers: Collection[str] | None = None,
        inline_probes: bool = True,
        taken: dict[str, tuple[str, int]] | None = None,
    ) -> tuple[list[tuple[Route[P], str]], list[Route[P]], list[Route[P]]]:
        """Split the routes into (eligible, to probe aside, domains to probe aside).

        Each eligible route carries its mode: ``""`` for a normal call, ``"probe"`` or
        ``"domain"`` when the call itself must be the probe (no probe call is available
        for this operation) and so runs with the short probe timeout. Payments are never
        used as probes (``inline_probes=False``): a probe cut short by its timeout would
        leave a charge of unknown outcome. A domain probe slot taken here is noted in
        ``taken`` (route name -> domain and probe period), to be given back if the call
        never reaches that route.
        """
        eligible: list[tuple[Route[P], str]] = []
        probes: list[Route[P]] = []
        domain_probes: list[Route[P]] = []
        for r in self._order(operation, providers):
            if not self.detector.allows(r.domain):
                if self.detector.state(
                    r.domain
                ) is DomainState.HALF_OPEN or self.detector.is_suspect(r.domain):
                    if can_probe_aside:
                        domain_probes.append(r)
                    elif inline_probes and self.detector.try_probe(r.domain):
                        if taken is not None:
                            taken[r.name] = (r.domain, self.detector.probe_epoch(r.domain))
                        eligible.append((r, "domain"))
                        continue
                attempts.append(Attempt(r.name, "DomainOpen", 0.0, skipped=True))
                continue
            breaker = r.pipeline.breaker
            if (
                breaker is not None
                and breaker.background_probe
                and breaker.state
                not in (
                    BreakerState.CLOSED,
                    BreakerState.DISABLED,
                    BreakerState.METRICS_ONLY,
                )
            ):
                if breaker.probe_due():
                    if can_probe_aside:
                        probes.append(r)
                    elif inline_probes:
                        eligible.append((r, "probe"))
                        continue
                attempts.append(Attempt(r.name, "CircuitOpen", 0.0, skipped=True))
                continue
            eligible.append((r, ""))
        return eligible, probes, domain_probes

    @staticmethod
    def _options(
        item: tuple[Route[P], str],
        eligible: list[tuple[Route[P], str]],
        operation: str,
        once: bool,
    ) -> dict[str, Any]:
        route, mode = item
        options: dict[str, Any] = {"last_resort": route is eligible[-1][0]}
        if once:
            options["resend"] = operation in deduplicated_operations(route.provider)
        if mode:
            # A domain probe may also be its breaker's half-open probe: otherwise a
            # provider whose breaker and domain both wait for a probe gets neither.
            options["probe"] = True
        return options

    def _give_back(self, taken: dict[str, tuple[str, int]]) -> None:
        # Probe slots planned for routes the call never reached (an earlier one
        # answered, or refused for good): a half-open domain has few, and needs them back.
        for domain, epoch in taken.values():
            self.detector.release_probe(domain, epoch)

    def _probe_cap(self, mode: str) -> dict[str, Any]:
        return {"max_timeout": self.probe_timeout} if mode else {}

    def choose(
        self, operation: str, *, providers: Collection[str] | None = None
    ) -> tuple[Route[P], tuple[Attempt, ...]]:
        """The provider a call would go to now, without calling it (for operations that
        need no network, such as building a login URL); raises :class:`Unavailable`."""
        attempts: list[Attempt] = []
        eligible, _, _ = self._plan(operation, attempts, can_probe_aside=True, providers=providers)
        if not eligible:
            raise self._unavailable(operation, attempts)
        return eligible[0][0], tuple(attempts)

    def _claim_probe(self, key: str) -> bool:
        with self._lock:
            if key in self._probing:
                return False
            self._probing.add(key)
            return True

    def _end_probe(self, key: str) -> None:
        with self._lock:
            self._probing.discard(key)

    def _record(
        self,
        route: Route[P],
        exc: BaseException | None,
        mode: str = "",
        epoch: int | None = None,
    ) -> None:
        probe = mode == "domain"
        if exc is None:
            self.detector.record(route.domain, self.capability, ok=True, probe=probe)
        elif (
            isinstance(exc, Exception) and default_failure(exc) and not isinstance(exc, CircuitOpen)
        ):
            self.detector.record(
                route.domain,
                self.capability,
                ok=False,
                probe=probe,
                timeout=isinstance(exc, TimeoutError | httpx.TimeoutException),
            )
        elif isinstance(exc, ProviderRefused) and not isinstance(exc, RateLimited):
            # A refusal is an answer: the domain is alive.
            self.detector.record(route.domain, self.capability, ok=True, probe=probe)
        elif probe:
            # No word on the domain (the breaker refused the call, a 429): hand the probe
            # slot back, or a half-open domain runs out of probes and never closes.
            self.detector.release_probe(route.domain, epoch)

    def _routed(
        self, value: Any, route: Route[P], attempts: list[Attempt], maybe: Sequence[str] = ()
    ) -> Routed[Any]:
        return Routed(value, route.name, route is self.routes[0], tuple(attempts), tuple(maybe))

    def _unavailable(
        self, operation: str, attempts: list[Attempt], maybe: Sequence[str] = ()
    ) -> Unavailable:
        tried = ", ".join(f"{a.provider}: {a.error}" for a in attempts) or "no provider offers it"
        retry_after = None
        for r in self.routes:
            ra = self.detector.retry_after(r.domain)
            if ra is not None:
                retry_after = ra if retry_after is None else min(retry_after, ra)
        err = Unavailable(
            f"{operation}: no provider could serve ({tried})",
            attempts=attempts,
            operation=operation,
            retry_after=retry_after,
        )
        err.maybe_executed = tuple(maybe)
        return err

    # -- sync --------------------------------------------------------------------------

    def _begin(
        self,
        operation: str,
        kind: OperationKind,
        prober: Any,
        providers: Collection[str] | None,
        attempts: list[Attempt],
        taken: dict[str, tuple[str, int]],
        *,
        spawn: Callable[..., None],
        once: bool = False,
    ) -> list[tuple[Route[P], str]]:
        """Plan a call: start the background probes it allows, and return the providers
        to try in order (raises :class:`Unavailable` when there is none)."""
        eligible, probes, domain_probes = self._plan(
            operation,
            attempts,
            can_probe_aside=prober is not None,
            providers=providers,
            # A payment is never a probe: a probe cut short by its short timeout would
            # leave a charge of unknown outcome. Other at-most-once writes may be (chat
            # has no harmless call to probe with); an ambiguous one follows the rule.
            inline_probes=kind is not OperationKind.PAYMENT,
            taken=taken,
        )
        for r in probes:
            spawn(r, prober, domain=False, operation=operation)
        for r in domain_probes:
            spawn(r, prober, domain=True, operation=operation)
        if not eligible:
            raise self._unavailable(operation, attempts)
        return eligible

    def _failed(
        self,
        r: Route[P],
        exc: Exception,
        kind: OperationKind,
        operation: str,
        mode: str,
        epoch: int | None,
        start: float,
        attempts: list[Attempt],
        lock: threading.Lock,
        once: bool,
    ) -> bool:
        """Record a failed try; raise :class:`_Stop` when nothing else may be tried;
        return whether the outcome must be resolved (an at-most-once write that may have
        executed) rather than failed over."""
        elapsed = self.timer.monotonic() - start
        with lock:
            attempts.append(Attempt(r.name, type(exc).__name__, elapsed, isinstance(exc, Rejected)))
        self._record(r, exc, mode, epoch)
        action = classify(
            kind,
            exc,
            provider=r.name,
            operation=operation,
            overrides=self.classification,
            once=once,
        )
        if action is Action.FAIL_NOW:
            raise _Stop(exc) from exc
        return action is Action.RESOLVE

    def _succeeded(
        self,
        r: Route[P],
        value: Any,
        mode: str,
        start: float,
        attempts: list[Attempt],
        lock: threading.Lock,
    ) -> _Found:
        with lock:
            attempts.append(Attempt(r.name, None, self.timer.monotonic() - start))
        self._record(r, None, mode)
        return _Found(value, r)

    def call(
        self,
        operation: str,
        kind: OperationKind,
        make: MakeSync,
        *,
        resolve: MakeSync | None = None,
        probe: MakeSync | None = None,
        hedge: bool = False,
        providers: Collection[str] | None = None,
        once: bool | None = None,
        ambiguous: str = "hold",
    ) -> Routed[Any]:
        """Serve ``operation``: ``make(route)`` builds the call for one provider.

        Args:
            resolve: for at-most-once writes, ``resolve(route)`` builds a lookup at that
                provider whose result is the value when the write executed, or ``None``
                when it provably did not; ``resolve(route)`` itself returns ``None`` when
                that provider has no lookup that can tell.
            once: the operation is an at-most-once write (default: ``kind`` is
                ``PAYMENT``): a try that may have executed is never sent again, to the
                same provider (unless it deduplicates the operation) or another.
            ambiguous: what to do when such a try cannot be resolved: ``"hold"`` raises
                :class:`OutcomeUnknown`; ``"fail_over"`` goes on to the next provider
                (never back to this one) and names this one in ``maybe_executed``.
            probe: builds a cheap call used to probe a recovering provider in the
                background; reads default to the call itself.
            hedge: hedge to the next provider after the primary's p95 latency.
            providers: only these providers may serve (the one holding an order, the
                one that issued a login code).

        Raises:
            the provider's error for a business refusal; :class:`OutcomeUnknown` for an
            at-most-once write whose outcome cannot be learned; :class:`Unavailable` when
            every provider failed or was skipped.
        """
        attempts: list[Attempt] = []
        taken: dict[str, tuple[str, int]] = {}
        maybe: list[str] = []
        once_ = kind is OperationKind.PAYMENT if once is None else once
        prober = probe or (make if kind is OperationKind.READ else None)
        eligible = self._begin(
            operation, kind, prober, providers, attempts, taken, spawn=self._spawn_probe
        )
        lock = threading.Lock()

        def attempt(item: tuple[Route[P], str]) -> Any:
            r, mode = item
            slot = taken.pop(r.name, None)
            epoch = slot[1] if slot is not None else None
            start = self.timer.monotonic()
            try:
                value = r.for_kind(kind).call(
                    make(r),
                    operation=operation,
                    **self._options(item, eligible, operation, once_),
                    **self._probe_cap(mode),
                )
            except Exception as exc:
                if self._failed(r, exc, kind, operation, mode, epoch, start, attempts, lock, once_):
                    lookup = resolve(r) if resolve is not None else None
                    if lookup is None:
                        self._hold(r, exc, operation, attempts, maybe, ambiguous)
                        raise
                    return self._resolve(r, exc, lookup, operation, attempts, lock)
                raise
            return self._succeeded(r, value, mode, start, attempts, lock)

        try:
            if hedge and kind is OperationKind.READ and len(eligible) > 1:
                first = eligible[0][0].pipeline.latency
                delay = hedge_delay(first, 0.95, 0.05, 20)
                fns = [functools.partial(_stop_as_result, attempt, item) for item in eligible]
                found = run_hedged(fns[0], fns[1:], delay)
                if isinstance(found, _Stop):
                    raise found
            else:
                found = None
                for item in eligible:
                    try:
                        found = attempt(item)
                        break
                    except _Stop:
                        raise
                    except Exception:  # noqa: BLE001, S112 - recorded; fail over to the next
                        continue
        except _Stop as stop:
            # Keep the error's own cause (the timeout behind an OutcomeUnknown, the HTTP
            # error behind a Declined); hide only the internal _Stop.
            raise stop.error from stop.error.__cause__
        except Exception:  # noqa: BLE001 - every hedged try failed and was recorded
            found = None
        finally:
            self._give_back(taken)
        if isinstance(found, _Found):
            return self._routed(found.value, found.route, attempts, maybe)
        raise self._unavailable(operation, attempts, maybe)

    def _hold(
        self,
        r: Route[P],
        exc: BaseException,
        operation: str,
        attempts: list[Attempt],
        maybe: list[str],
        ambiguous: str,
    ) -> None:
        """An at-most-once try that may have executed and that no lookup can settle:
        held as unknown (raises :class:`_Stop`), or, with ``ambiguous="fail_over"``,
        noted in ``maybe`` so the caller goes on to the next provider."""
        if ambiguous == "fail_over":
            maybe.append(r.name)
            return
        raise _Stop(self._unknown(r, exc, operation, attempts, needs_reconciliation=True)) from exc

    def _resolve(
        self,
        r: Route[P],
        exc: BaseException,
        lookup: Callable[[CallContext], Any],
        operation: str,
        attempts: list[Attempt],
        lock: threading.Lock,
    ) -> Any:
        start = self.timer.monotonic()
        try:
            value = lookup(CallContext(operation + ".resolve"))
        except Exception as err:
            raise self._unresolved(r, exc, err, start, operation, attempts, lock) from err
        return self._resolved(r, exc, value)

    def _unresolved(
        self,
        r: Route[P],
        exc: BaseException,
        err: BaseException,
        start: float,
        operation: str,
        attempts: list[Attempt],
        lock: threading.Lock,
    ) -> _Stop:
        """The status query after an ambiguous payment failed too: the outcome is unknown."""
        with lock:
            attempts.append(Attempt(r.name, type(err).__name__, self.timer.monotonic() - start))
        return _Stop(self._unknown(r, exc, operation, attempts))

    @staticmethod
    def _resolved(r: Route[P], exc: BaseException, value: Any) -> _Found:
        """The status query's answer: the payment's result, or ``None`` when it provably
        did not execute (then ``exc`` is raised, and the router fails over)."""
        if value is None:
            raise exc
        return _Found(value, r)

    @staticmethod
    def _unknown(
        r: Route[P],
        exc: BaseException,
        operation: str,
        attempts: list[Attempt],
        *,
        needs_reconciliation: bool = False,
    ) -> OutcomeUnknown:
        how = (
            f"{r.name} has no lookup that can settle it"
            if needs_reconciliation
            else f"its status could not be learned from {r.name}"
        )
        err = OutcomeUnknown(
            f"{operation} at {r.name}: outcome unknown after {type(exc).__name__} and {how};"
            " held, not sent again to it or to another provider, so it cannot run twice",
            provider=r.name,
            operation=operation,
            attempts=attempts,
            needs_reconciliation=needs_reconciliation,
            code="needs_reconciliation" if needs_reconciliation else "outcome_unknown",
        )
        err.__cause__ = exc
        return err

    def _probe_ctx(self, r: Route[P], operation: str) -> CallContext:
        # Nobody waits on a background probe, so it gets the provider's full configured
        # timeout: a provider that came back slower than before can still prove it lives.
        ctx = CallContext(operation + ".probe")
        ctx.probe = True
        timeout = r.pipeline.find(Timeout)
        ctx.timeout = timeout.seconds if timeout is not None else self.probe_timeout
        return ctx

    def _probe_begin(
        self, r: Route[P], prober: Any, *, domain: bool, ctx: CallContext
    ) -> _ProbeSlot | None:
        """Take the probe slot of ``r``'s domain or breaker; ``None`` when no probe may run."""
        if prober is None:
            return None
        if domain:
            return _ProbeSlot(None, 0.0) if self.detector.try_probe(r.domain) else None
        breaker = r.pipeline.breaker
        if breaker is None:
            return None
        try:
            permit = breaker.acquire(ctx, probe=True)
        except CircuitOpen:
            return None
        return _ProbeSlot(permit, breaker._now())

    def _probe_end(
        self, r: Route[P], slot: _ProbeSlot, *, domain: bool, exc: BaseException | None
    ) -> None:
        """Record a probe's result. A refusal is an answer: the provider is alive."""
        alive = exc is None or isinstance(exc, ProviderRefused)
        if domain:
            if alive or isinstance(exc, Exception):
                self.detector.record(r.domain, self.capability, ok=alive, probe=True)
            return
        breaker = r.pipeline.breaker
        assert breaker is not None
        breaker.settle(slot.permit, slot.start, None if alive else exc)

    def _probe_once(
        self, r: Route[P], prober: MakeSync | None, *, domain: bool, operation: str
    ) -> None:
        ctx = self._probe_ctx(r, operation)
        slot = self._probe_begin(r, prober, domain=domain, ctx=ctx)
        if slot is None or prober is None:
            return
        try:
            prober(r)(ctx)
        except BaseException as exc:
            self._probe_end(r, slot, domain=domain, exc=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._probe_end(r, slot, domain=domain, exc=None)

    def _half_open(self, r: Route[P], *, domain: bool) -> bool:
        """Whether ``r``'s domain (or breaker) still waits for probes: the background
        probe goes on, so recovery does not wait for user traffic to trigger each one."""
        if domain:
            return self.detector.state(r.domain) is DomainState.HALF_OPEN
        breaker = r.pipeline.breaker
        return breaker is not None and breaker.state is BreakerState.HALF_OPEN

    def _spawn_probe(
        self, r: Route[P], prober: MakeSync | None, *, domain: bool, operation: str
    ) -> None:
        key = ("domain:" if domain else "provider:") + r.name
        if prober is None or not self._claim_probe(key):
            return

        def run() -> None:
            try:
                for _ in range(_PROBE_ROUNDS):
                    self._probe_once(r, prober, domain=domain, operation=operation)
                    if not self._half_open(r, domain=domain):
                        break
            finally:
                self._end_probe(key)

        threading.Thread(target=run, name=f"superapp-probe-{r.name}", daemon=True).start()

    # -- async -------------------------------------------------------------------------

    async def acall(
        self,
        operation: str,
        kind: OperationKind,
        make: MakeAsync,
        *,
        resolve: MakeAsync | None = None,
        probe: MakeAsync | None = None,
        hedge: bool = False,
        providers: Collection[str] | None = None,
        once: bool | None = None,
        ambiguous: str = "hold",
    ) -> Routed[Any]:
        """The async form of :meth:`call`; hedged losers are cancelled."""
        attempts: list[Attempt] = []
        taken: dict[str, tuple[str, int]] = {}
        maybe: list[str] = []
        once_ = kind is OperationKind.PAYMENT if once is None else once
        aprober = probe or (make if kind is OperationKind.READ else None)
        eligible = self._begin(
            operation, kind, aprober, providers, attempts, taken, spawn=self._aspawn_probe
        )
        lock = threading.Lock()

        async def attempt(item: tuple[Route[P], str]) -> Any:
            r, mode = item
            slot = taken.pop(r.name, None)
            epoch = slot[1] if slot is not None else None
            start = self.timer.monotonic()
            try:
                value = await r.for_kind(kind).acall(
                    make(r),
                    operation=operation,
                    **self._options(item, eligible, operation, once_),
                    **self._probe_cap(mode),
                )
            except asyncio.CancelledError:
                if mode == "domain":
                    # The caller gave up: the probe has no result; free the slot for the
                    # next one, or a half-open domain could run out of probes for good.
                    self.detector.release_probe(r.domain, epoch)
                raise
            except Exception as exc:
                if self._failed(r, exc, kind, operation, mode, epoch, start, attempts, lock, once_):
                    lookup = resolve(r) if resolve is not None else None
                    if lookup is None:
                        self._hold(r, exc, operation, attempts, maybe, ambiguous)
                        raise
                    return await self._aresolve(r, exc, lookup, operation, attempts, lock)
                raise
            return self._succeeded(r, value, mode, start, attempts, lock)

        found: Any = None
        try:
            if hedge and kind is OperationKind.READ and len(eligible) > 1:
                delay = hedge_delay(eligible[0][0].pipeline.latency, 0.95, 0.05, 20)
                fns = [functools.partial(_astop_as_result, attempt, item) for item in eligible]
                found = await arun_hedged(fns[0], fns[1:], delay)
                if isinstance(found, _Stop):
                    raise found
            else:
                for item in eligible:
                    try:
                        found = await attempt(item)
                        break
                    except _Stop:
                        raise
                    except Exception:  # noqa: BLE001, S112 - recorded; fail over to the next
                        continue
        except _Stop as stop:
            # Keep the error's own cause (the timeout behind an OutcomeUnknown, the HTTP
            # error behind a Declined); hide only the internal _Stop.
            raise stop.error from stop.error.__cause__
        except Exception:  # noqa: BLE001 - every hedged try failed and was recorded
            found = None
        finally:
            self._give_back(taken)
        if isinstance(found, _Found):
            return self._routed(found.value, found.route, attempts, maybe)
        raise self._unavailable(operation, attempts, maybe)

    async def _aresolve(
        self,
        r: Route[P],
        exc: BaseException,
        lookup: Callable[[CallContext], Awaitable[Any]],
        operation: str,
        attempts: list[Attempt],
        lock: threading.Lock,
    ) -> Any:
        start = self.timer.monotonic()
        try:
            value = await lookup(CallContext(operation + ".resolve"))
        except Exception as err:
            raise self._unresolved(r, exc, err, start, operation, attempts, lock) from err
        return self._resolved(r, exc, value)

    async def _aprobe_once(
        self, r: Route[P], prober: MakeAsync, *, domain: bool, operation: str
    ) -> None:
        ctx = self._probe_ctx(r, operation)
        slot = self._probe_begin(r, prober, domain=domain, ctx=ctx)
        if slot is None:
            return
        try:
            async with asyncio.timeout(ctx.timeout):
                await prober(r)(ctx)
        except BaseException as exc:
            self._probe_end(r, slot, domain=domain, exc=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._probe_end(r, slot, domain=domain, exc=None)

    def _aspawn_probe(
        self, r: Route[P], prober: MakeAsync | None, *, domain: bool, operation: str
    ) -> None:
        key = ("domain:" if domain else "provider:") + r.name
        if prober is None or not self._claim_probe(key):
            return

        async def run() -> None:
            try:
                for _ in range(_PROBE_ROUNDS):
                    await self._aprobe_once(r, prober, domain=domain, operation=operation)
                    if not self._half_open(r, domain=domain):
                        break
            finally:
                self._end_probe(key)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel background probes still running."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class _ProbeSlot:
    """A probe's claim: the breaker's permit and start time (``None``, 0 for a domain)."""

    permit: Any
    start: float


@dataclass(frozen=True, slots=True)
class _Found:
    value: Any
    route: Route[Any]
