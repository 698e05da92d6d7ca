"""``SuperApp`` and ``AsyncSuperApp``: the four capabilities behind one object.

Both build the same machinery from the same arguments (a router per capability, a
breaker and latency tracker per provider, a retry budget per failure domain, one
failure-domain detector, the outbox, the read cache, the directory) and run the same
operations (``superapp_sdk._ops``); they differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from superapp_sdk import _ops
from superapp_sdk._directory import Contact, Directory
from superapp_sdk._errors import ConfigError, InvalidRequest, Unavailable
from superapp_sdk._health import HEALTH_DIR, AsyncHealthPublisher, HealthPublisher
from superapp_sdk._ops import ChatPolicy, IdentityPolicy, Invoke, OfflinePolicy, Op, State
from superapp_sdk._outcome import Outcome
from superapp_sdk.capabilities._common import Capability, Provider
from superapp_sdk.capabilities.chat import Message, MessageReceipt
from superapp_sdk.capabilities.identity import Claims, LoginRedirect, Session
from superapp_sdk.capabilities.mobility import DeepLink, Estimate, Place, RentalReceipt, Ride
from superapp_sdk.capabilities.payment import Approval, Checkout, Payment
from superapp_sdk.core.breaker import _FREE_STATES, BreakerOptions, BreakerState, StateChange
from superapp_sdk.core.budget import BudgetOptions, RetryBudget
from superapp_sdk.core.domains import (
    DomainChange,
    DomainOptions,
    DomainState,
    FailureDomainDetector,
)
from superapp_sdk.core.latency import LatencyTracker
from superapp_sdk.core.routing import OperationKind
from superapp_sdk.offline.cache import ReadCache
from superapp_sdk.offline.outbox import (
    AsyncOutboxWorker,
    Outbox,
    OutboxItem,
    OutboxPolicy,
    OutboxWorker,
)
from superapp_sdk.providers._http import arun_call, run_call
from superapp_sdk.resilience import (
    CallContext,
    CircuitBreaker,
    Pipeline,
    Route,
    Routed,
    Router,
    SharedBudget,
    SharedDetector,
    SystemTimer,
    Timer,
)
from superapp_sdk.store import DiskStore
from superapp_sdk.tokens import JwksCacheOptions
from superapp_sdk.tokens._seal import Sealer

__all__ = [
    "AsyncSuperApp",
    "CapabilityHealth",
    "DeadLettered",
    "DomainHealth",
    "Health",
    "ProviderHealth",
    "ServiceLevel",
    "SuperApp",
    "Timeouts",
]

T = TypeVar("T")


# -- options and reports -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-try maxima and overall deadlines, in seconds, per kind of operation.

    Reads and writes use an adaptive per-try timeout (3x the provider's recent p99, never
    above these maxima); payments use a fixed one: a slow payment is not a dead provider.
    """

    read: float = 2.0
    write: float = 5.0
    payment: float = 15.0
    read_deadline: float = 6.0
    write_deadline: float = 15.0
    payment_deadline: float = 40.0
    #: The adaptive timeout never goes below this.
    floor: float = 0.05

    def __post_init__(self) -> None:
        for f in (
            "read",
            "write",
            "payment",
            "read_deadline",
            "write_deadline",
            "payment_deadline",
        ):
            if not getattr(self, f) > 0:
                raise ValueError(f"Timeouts.{f} must be > 0, got {getattr(self, f)!r}")
        if not 0 < self.floor <= self.read:
            raise ValueError(f"Timeouts.floor must be in (0, read={self.read}], got {self.floor!r}")


class ServiceLevel(enum.Enum):
    """How well a capability is served right now, judged as the router would route a call
    now: a provider counts when its failure domain lets user calls in (closed, not
    suspect) and its breaker is closed (or disabled, or metrics only)."""

    FULL = "full"  #: the primary provider would be tried first
    DEGRADED = "degraded"  #: the primary would be skipped; only alternates would be tried
    OFFLINE = "offline"  #: every provider would be skipped: cache, outbox and local fallbacks


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """One provider's state.

    Attributes:
        breaker: its breaker's state.
        available: the router would try it now (the reverse of ``skip_reason``).
        failure_rate: failed calls over calls in the breaker's window (0.0 when empty).
        calls: calls in the breaker's window.
        skip_reason: why the router would skip it now, as its attempts would say:
            ``"DomainOpen"`` (its failure domain is open, half-open or suspect) or
            ``"CircuitOpen"`` (its breaker is not closed); ``None`` when it would be tried.
    """

    name: str
    capability: str
    failure_domain: str
    breaker: BreakerState
    available: bool
    failure_rate: float = 0.0
    calls: int = 0
    skip_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DomainHealth:
    """One failure domain's state as routing sees it.

    Attributes:
        state: closed, open or half-open.
        suspect: closed but suspect after a timeout: user calls skip it while one probe
            finds out whether it is dark (see ``DomainOptions.suspect_seconds``).
        allows: user calls may go to its providers now (closed and not suspect).
        retry_after: seconds until an open domain turns half-open, else ``None``.
    """

    name: str
    state: DomainState
    suspect: bool
    allows: bool
    retry_after: float | None = None

    @property
    def label(self) -> str:
        """``"suspect"`` for a suspect domain, else its state's value (``"closed"``...)."""
        return "suspect" if self.suspect else self.state.value


@dataclass(frozen=True, slots=True)
class CapabilityHealth:
    """One capability's service level and its providers, in priority order."""

    level: ServiceLevel
    providers: tuple[ProviderHealth, ...]


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of everything the SDK knows about its providers.

    Attributes:
        capabilities: per capability name, its service level and providers.
        domains: per failure domain, its state (a suspect domain is still CLOSED here;
            ``domain_health`` says it is suspect).
        outbox_depth: writes waiting for delivery.
        dead_letters: writes that exhausted their limits (see ``superapp outbox``).
        domain_health: per failure domain, its state, whether it is suspect and whether
            user calls may go to it now.
    """

    capabilities: Mapping[str, CapabilityHealth]
    domains: Mapping[str, DomainState]
    outbox_depth: int
    dead_letters: int
    domain_health: Mapping[str, DomainHealth] = field(default_factory=dict)

    @property
    def level(self) -> ServiceLevel:
        """The worst level of any configured capability."""
        levels = [c.level for c in self.capabilities.values()]
        for level in (ServiceLevel.OFFLINE, ServiceLevel.DEGRADED):
            if level in levels:
                return level
        return ServiceLevel.FULL


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """An outbox item moved to the dead-letter store."""

    item: OutboxItem


# -- the shared machinery --------------------------------------------------------------------


@dataclass
class _Parts:
    state: State
    routers: dict[Capability, Router[Any]]
    breakers: dict[str, CircuitBreaker]
    detector: SharedDetector
    disk: DiskStore
    cache_disk: DiskStore
    listeners: dict[object, list[Callable[[Any], None]]] = field(default_factory=dict)


class _Base:
    """Construction, events, health and the directory: everything that does not wait."""

    def __init__(
        self,
        *,
        identity: Sequence[Provider] = (),
        chat: Sequence[Provider] = (),
        payment: Sequence[Provider] = (),
        mobility: Sequence[Provider] = (),
        state_dir: str | os.PathLike[str] = ".superapp",
        store: str | None = None,
        durable: bool = True,
        timeouts: Timeouts | None = None,
        breaker: BreakerOptions | None = None,
        domains: DomainOptions | None = None,
        budget: BudgetOptions | None = None,
        outbox_policies: Mapping[str, OutboxPolicy] | None = None,
        identity_policy: IdentityPolicy | None = None,
        chat_policy: ChatPolicy = ChatPolicy.FAIL_OVER,
        jwks: JwksCacheOptions | None = None,
        timer: Timer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(chat_policy, ChatPolicy):
            raise ConfigError(
                f"chat_policy must be a ChatPolicy, got {chat_policy!r}", key="chat_policy"
            )
        if store is not None:
            raise ConfigError(
                f"store={store!r}: only the embedded store (state_dir) is available in this "
                "release; the shared Redis backend is not implemented yet",
                key="store",
            )
        self.timer: Timer = timer or SystemTimer()
        self.timeouts = timeouts or Timeouts()
        rng = rng or random.Random()
        providers = {
            Capability.IDENTITY: tuple(identity),
            Capability.CHAT: tuple(chat),
            Capability.PAYMENT: tuple(payment),
            Capability.MOBILITY: tuple(mobility),
        }
        names: set[str] = set()
        for capability, group in providers.items():
            for p in group:
                if p.capability is not capability:
                    raise ConfigError(
                        f"{p.name!r} is a {p.capability.value} provider, "
                        f"given as {capability.value}",
                        key=capability.value,
                    )
                if p.name in names:
                    raise ConfigError(f"two providers are named {p.name!r}", key=capability.value)
                names.add(p.name)
        path = Path(state_dir)
        disk = DiskStore(path, durable=durable, clock=self.timer)
        # The read cache is refilled by every successful read: it is not worth an fsync
        # each time (measured: 220 us of a 460 us in-process estimate). Losing its last
        # writes to a power cut only makes a later CACHE answer older.
        cache_disk = DiskStore(path / "cache", durable=False, clock=self.timer)
        sealer = Sealer(path / "keys" / "seal.key")
        policies = {
            "payment.confirm": OutboxPolicy(max_age_seconds=15 * 60.0, backoff_cap=60.0),
            "chat.send": OutboxPolicy(max_age_seconds=24 * 3600.0),
            **(outbox_policies or {}),
        }
        outbox = Outbox(disk, clock=self.timer, policies=policies, rng=rng)
        state = State(
            store=disk.namespace("state"),
            outbox=outbox,
            cache=ReadCache(cache_disk.namespace("cache"), clock=self.timer),
            directory=Directory(disk.namespace("directory"), sealer),
            sealer=sealer,
            clock=self.timer,
            providers=providers,
            identity_policy=identity_policy or IdentityPolicy(),
            chat_policy=chat_policy,
            emit=self._emit,
            jwks_options=jwks,
        )
        detector = SharedDetector(FailureDomainDetector(domains, rng=rng), timer=self.timer)
        budgets: dict[str, SharedBudget] = {}
        breakers: dict[str, CircuitBreaker] = {}
        routers: dict[Capability, Router[Any]] = {}
        self._parts = _Parts(state, routers, breakers, detector, disk, cache_disk)
        self._publisher = HealthPublisher(path / HEALTH_DIR, self.health, self.timer)
        for capability, group in providers.items():
            if not group:
                continue
            routes = []
            for p in group:
                shared = budgets.setdefault(
                    p.failure_domain, SharedBudget(RetryBudget(p.failure_domain, budget))
                )
                br = CircuitBreaker(
                    breaker or BreakerOptions(minimum_calls=5, window_size=20),
                    name=p.name,
                    background_probe=True,
                    rng=rng,
                    timer=self.timer,
                )
                breakers[p.name] = br
                routes.append(Route(p, *self._pipelines(p, br, shared)))
            routers[capability] = Router(
                capability.value, routes, detector=detector, timer=self.timer
            )
        for br in breakers.values():
            br.on(self._emit)
        detector.listeners.append(self._emit)
        outbox.on_dead_letter(lambda item: self._emit(DeadLettered(item)))

    def _pipelines(
        self, p: Provider, br: CircuitBreaker, budget: SharedBudget
    ) -> tuple[Pipeline, dict[OperationKind, Pipeline]]:
        t = self.timeouts
        shared: dict[str, Any] = {
            "budget": budget,
            "breaker": br,
            "latency": LatencyTracker(),
            "timer": self.timer,
            "floor": t.floor,
        }
        read = Pipeline.for_read(
            p.name, timeout=t.read, deadline=t.read_deadline, alternates=True, **shared
        )
        write = Pipeline.for_write(
            p.name, timeout=t.write, deadline=t.write_deadline, alternates=True, **shared
        )
        payment = Pipeline.for_payment(
            p.name, timeout=t.payment, deadline=t.payment_deadline, **shared
        )
        return read, {
            OperationKind.READ: read,
            OperationKind.WRITE: write,
            OperationKind.PAYMENT: payment,
        }

    @classmethod
    def from_config(
        cls, source: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any
    ) -> Self:
        """Build from a TOML file or a dict (see :mod:`superapp_sdk._config`)."""
        from superapp_sdk._config import load_config

        return cls(**{**load_config(source), **overrides})

    def _router(self, eff: Invoke) -> Router[Any]:
        router = self._parts.routers.get(eff.capability)
        if router is None:
            raise Unavailable(
                f"no {eff.capability.value} provider is configured", operation=eff.operation
            )
        return router

    # -- events --------------------------------------------------------------------------

    def on(self, event_type: type[Any] | str, callback: Callable[[Any], None]) -> None:
        """Call ``callback(event)`` for every event of ``event_type``.

        Event types: :class:`~superapp_sdk.core.breaker.StateChange` (a provider's breaker),
        :class:`~superapp_sdk.core.domains.DomainChange` (a failure domain),
        :class:`DeadLettered` (an outbox item gave up),
        :class:`~superapp_sdk.NeedsReconciliation` (a write is held for an operator);
        ``"*"`` for all of them. Callbacks run in the thread that caused the event; keep
        them quick. An exception in one is counted in ``listener_errors`` and does not
        break the call.

        Raises:
            ValueError: ``event_type`` is a string other than ``"*"`` (a class name as a
                string would never match), or ``callback`` is not callable.
        """
        if isinstance(event_type, str) and event_type != "*":
            raise ValueError(
                f"event_type must be an event class or '*', got the string {event_type!r}"
            )
        if not callable(callback):
            raise ValueError(f"callback must be callable, got {callback!r}")
        self._parts.listeners.setdefault(event_type, []).append(callback)

    listener_errors = 0

    def _emit(self, event: object) -> None:
        listeners = self._parts.listeners
        for key in (type(event), "*"):
            for callback in listeners.get(key, ()):
                try:
                    callback(event)
                except Exception:  # noqa: BLE001 - a listener must not break a call
                    self.listener_errors += 1
        if (isinstance(event, StateChange) and event.new is BreakerState.CLOSED) or (
            isinstance(event, DomainChange) and event.new is DomainState.CLOSED
        ):
            self._wake()

    def _wake(self) -> None:
        """Wake the outbox worker: a provider is back, so backed-off writes go now."""

    # -- health and directory ------------------------------------------------------------

    def health(self) -> Health:
        """Per capability FULL / DEGRADED / OFFLINE, per provider breaker state, recent
        failure rate and whether the router would skip it now, per failure domain its
        state (suspect included), outbox depth and dead letters."""
        return self._health_from(self._routing_health())

    def _health_from(
        self, routing: tuple[dict[str, CapabilityHealth], dict[str, DomainHealth]]
    ) -> Health:
        """:meth:`health` from a routing snapshot, with the outbox counts (read on disk)."""
        capabilities, domains = routing
        outbox = self._parts.state.outbox
        return Health(
            capabilities,
            {name: d.state for name, d in domains.items()},
            outbox.depth(),
            outbox.dead_count(),
            domains,
        )

    def _routing_health(self) -> tuple[dict[str, CapabilityHealth], dict[str, DomainHealth]]:
        """The in-memory part of :meth:`health` (no disk): what the router would do now.

        The skip rules are the router's (``Router._plan``): a domain that does not allow
        user calls, or a breaker outside its free states, is skipped.
        """
        parts = self._parts
        domains: dict[str, DomainHealth] = {}
        capabilities: dict[str, CapabilityHealth] = {}
        detector = parts.detector
        for capability, router in parts.routers.items():
            providers = []
            for route in router.routes:
                domain = domains.get(route.domain)
                if domain is None:
                    state = detector.state(route.domain)
                    domain = domains[route.domain] = DomainHealth(
                        route.domain,
                        state,
                        detector.is_suspect(route.domain),
                        detector.allows(route.domain),
                        detector.retry_after(route.domain),
                    )
                metrics = parts.breakers[route.name].metrics()
                skip: str | None = None
                if not domain.allows:
                    skip = "DomainOpen"
                elif metrics.state not in _FREE_STATES:
                    skip = "CircuitOpen"
                providers.append(
                    ProviderHealth(
                        route.name,
                        capability.value,
                        route.domain,
                        metrics.state,
                        skip is None,
                        metrics.failure_rate,
                        metrics.calls,
                        skip,
                    )
                )
            if providers and providers[0].available:
                level = ServiceLevel.FULL
            elif any(p.available for p in providers):
                level = ServiceLevel.DEGRADED
            else:
                level = ServiceLevel.OFFLINE
            capabilities[capability.value] = CapabilityHealth(level, tuple(providers))
        return capabilities, domains

    @property
    def outbox(self) -> Outbox:
        """The durable outbox (for operators: list, retry, drop)."""
        return self._parts.state.outbox

    def breaker(self, provider: str) -> CircuitBreaker:
        """The circuit breaker of ``provider`` (to isolate, force open, reset)."""
        try:
            return self._parts.breakers[provider]
        except KeyError:
            raise InvalidRequest(f"no provider named {provider!r} is configured") from None

    @property
    def domains(self) -> SharedDetector:
        """The failure-domain detector (to force a domain open in a drill, or reset it)."""
        return self._parts.detector

    def _close_state(self) -> None:
        self._parts.state.outbox.close()
        self._parts.disk.close()
        self._parts.cache_disk.close()


class _DirectoryService:
    """``app.directory``: app-level users mapped to every provider's identity."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    def put(
        self,
        user_id: str,
        *,
        provider: str,
        address: str | None = None,
        billing_key: str | None = None,
    ) -> None:
        """Record the user's address (Kakao uuid, LINE userId, e-mail) and/or billing key
        (KakaoPay ``sid``, Toss ``billingKey``, Stripe customer/payment method) at
        ``provider``. Billing keys are sealed at rest."""
        self._directory.put(user_id, provider=provider, address=address, billing_key=billing_key)

    def get(self, user_id: str) -> Contact:
        """Every provider's address, identity subject and billing-key holder for the user."""
        return self._directory.get(user_id)


# -- sync ------------------------------------------------------------------------------------


class SuperApp(_Base):
    """The SDK, for synchronous code.

    ::

        app = SuperApp(
            identity=[KakaoLogin(...), OIDCIdentity(...)],
            chat=[KakaoTalk(...), LineMessaging(...)],
            payment=[KakaoPay(...), TossPayments(...)],
            mobility=[KakaoMobility(...), GTFSTransit(...)],
            state_dir=".superapp",
        )
        with app:                                    # starts the outbox replay worker
            outcome = app.chat.send(to="user-1", text="Your ride is here")
            outcome.via                              # PRIMARY, ALTERNATE or QUEUED

    Every operation returns an :class:`~superapp_sdk.Outcome`. Business refusals raise at
    once; when nothing can serve a call that cannot be deferred it raises
    :class:`~superapp_sdk.Unavailable` with every attempt.

    Args:
        identity, chat, payment, mobility: providers in priority order.
        state_dir: where durable state lives (0700).
        http_client: the ``httpx.Client`` adapters' requests go through (default: one
            created here, closed by :meth:`close`).
        timeouts, breaker, domains, budget: resilience options.
        outbox_policies: retry limits per queued operation.
        identity_policy: session and grace limits.
        chat_policy: after a send of unknown outcome at a provider that cannot
            deduplicate, deliver through the next channel (``FAIL_OVER``, the default)
            or hold it (``HOLD``); see :class:`~superapp_sdk.ChatPolicy`.
        jwks: how long identity providers' key sets are trusted and how often they are
            refetched (:class:`~superapp_sdk.tokens.JwksCacheOptions`; ``max_stale``
            bounds how long tokens verify while a provider is down).
        timer, rng: time and randomness (``FakeClock`` in tests).
    """

    def __init__(self, *, http_client: httpx.Client | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._own_client = http_client is None
        self._client = http_client or httpx.Client(timeout=httpx.Timeout(10.0))
        self._worker = OutboxWorker(self.outbox, self._deliver, poll_floor=1.0)
        self.chat = _Chat(self)
        self.payment = _Payment(self)
        self.identity = _Identity(self)
        self.mobility = _Mobility(self)
        self.directory = _DirectoryService(self._parts.state.directory)

    # -- driving operations ----------------------------------------------------------------

    def _invoke(self, eff: Invoke) -> Routed[Any]:
        router = self._router(eff)
        client = self._client

        def direct(
            build: Callable[[Any], Any], timeout: float | None
        ) -> Callable[[Route[Any]], Callable[[CallContext], Any]]:
            def for_route(r: Route[Any]) -> Callable[[CallContext], Any]:
                return lambda ctx: run_call(
                    client,
                    build(r.provider),
                    provider=r.name,
                    operation=eff.operation,
                    timeout=ctx.timeout if timeout is None else timeout,
                )

            return for_route

        resolve = _lookup(eff, direct, self.timeouts.read)
        probe_build = _ops.default_probe(eff.capability)
        probe = direct(probe_build, None) if probe_build is not None else None
        return router.call(
            eff.operation,
            eff.kind,
            direct(eff.build, None),
            resolve=resolve,
            probe=probe,
            hedge=eff.hedge,
            providers=eff.providers,
            once=eff.once,
            ambiguous=eff.ambiguous,
        )

    def _run(self, op: Op[T]) -> T:
        try:
            eff = next(op)
            while True:
                try:
                    result = self._invoke(eff)
                except Exception as exc:  # noqa: BLE001 - handed to the operation to decide
                    eff = op.throw(exc)
                else:
                    eff = op.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            op.close()

    def _deliver(self, item: OutboxItem) -> None:
        self._run(
            _ops.replay(self._parts.state, item.operation, item.payload, item.idempotency_key)
        )

    # -- lifecycle -------------------------------------------------------------------------

    def _wake(self) -> None:
        self._worker.wake(recovered=True)

    def start(self) -> None:
        """Start the outbox replay worker and the health publication that ``superapp
        status`` reads (``with app:`` does this)."""
        self._worker.start()
        self._publisher.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the outbox is empty; False when ``timeout`` passed first."""
        if not self._worker.running:
            self._worker.start()
        return self._worker.drain(timeout)

    def close(self) -> None:
        """Stop the worker and the health publication, close the HTTP client (if ours)
        and the state."""
        self._worker.stop()
        self._publisher.stop()
        if self._own_client:
            self._client.close()
        self._close_state()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Service:
    def __init__(self, app: SuperApp) -> None:
        self._app = app
        self._st = app._parts.state


class _Chat(_Service):
    """``app.chat``."""

    def send(
        self,
        *,
        to: str,
        text: str,
        conversation: str | None = None,
        idempotency_key: str | None = None,
        defer: bool = True,
    ) -> Outcome[MessageReceipt]:
        """Send ``text`` to app-level user ``to`` through the first provider that has an
        address for them. When none can take it now and ``defer`` is true, the message is
        persisted and ``Via.QUEUED`` returned with a ``ticket``; it is delivered, in order
        within its conversation, when a provider is back."""
        return self._app._run(
            _ops.chat_send(
                self._st,
                to=to,
                text=text,
                conversation=conversation,
                idempotency_key=idempotency_key,
                defer=defer,
            )
        )

    def history(self, conversation: str, *, limit: int = 50) -> Outcome[list[Message]]:
        """The last ``limit`` messages of ``conversation``; from the cache (``Via.CACHE``,
        with ``stale_for``) when no provider can answer."""
        return self._app._run(_ops.chat_history(self._st, conversation=conversation, limit=limit))


class _Payment(_Service):
    """``app.payment``."""

    def start(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str = "KRW",
        item_name: str,
        user_id: str,
        return_url: str,
    ) -> Outcome[Checkout]:
        """Begin a payment the user approves at the provider (redirect to
        ``outcome.value.redirect_url``)."""
        return self._app._run(
            _ops.payment_start(
                self._st,
                order_id=order_id,
                amount=amount,
                currency=currency,
                item_name=item_name,
                user_id=user_id,
                return_url=return_url,
            )
        )

    def confirm(self, *, order_id: str, approval: Approval) -> Outcome[Payment]:
        """Complete a payment the user approved; queued (``Via.QUEUED``) when its provider
        is down, within the approval's validity."""
        return self._app._run(_ops.payment_confirm(self._st, order_id=order_id, approval=approval))

    def charge(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str = "KRW",
        user_id: str,
        offline: OfflinePolicy = OfflinePolicy.DENY,
    ) -> Outcome[Payment]:
        """Charge the user's stored billing key. At most one successful charge per
        ``order_id``, ever, across all providers: one idempotency key per order is
        persisted before the first send, and failover happens only when the first
        provider provably did not execute."""
        return self._app._run(
            _ops.payment_charge(
                self._st,
                order_id=order_id,
                amount=amount,
                currency=currency,
                user_id=user_id,
                offline=offline,
            )
        )

    def cancel(
        self,
        *,
        order_id: str,
        amount: int | None = None,
        reason: str,
        cancel_id: str | None = None,
    ) -> Outcome[Payment]:
        """Refund ``amount`` of the order, or all that remains (``amount=None``), at the
        provider that charged it.

        ``cancel_id`` keys the cancel like an idempotency key: a repeat with the same id
        refunds once and answers the same. Without one, a cancel whose outcome is unknown
        is settled by the provider's lookup before another cancel of the order is sent.

        Raises:
            InvalidRequest: nothing to cancel, or more than what remains.
            IdempotencyConflict: ``cancel_id`` was used for another amount.
            OutcomeUnknown: the cancel may have executed and its provider cannot say now.
        """
        return self._app._run(
            _ops.payment_cancel(
                self._st, order_id=order_id, amount=amount, reason=reason, cancel_id=cancel_id
            )
        )

    def reconcile(
        self, ticket: str, *, executed: bool, by: str, provider_ref: str | None = None
    ) -> Payment | MessageReceipt | None:
        """Settle a write held as *needs reconciliation* (an
        :class:`~superapp_sdk.OutcomeUnknown` with that flag and a ``ticket``), after
        checking the provider's own records.

        For a charge, ``executed=True`` records it as paid (with ``provider_ref`` when
        known) and returns the Payment: a repeat of the charge returns it, and nothing is
        sent. ``executed=False`` releases the order: the next charge runs, at any
        provider. For a held message, ``executed=True`` records it as delivered and
        ``executed=False`` lets a repeat with its key send it again. ``by`` names who
        decided and is kept. The CLI's ``superapp outbox reconcile TICKET`` does the same.

        Raises:
            InvalidRequest: nothing is held under ``ticket``.
        """
        return _ops.reconcile(
            self._st.store,
            ticket=ticket,
            executed=executed,
            by=by,
            now=self._st.clock.time(),
            provider_ref=provider_ref,
        )

    def status(self, order_id: str) -> Outcome[Payment]:
        """The order as its provider sees it; cached when the provider is down."""
        return self._app._run(_ops.payment_status(self._st, order_id=order_id))


class _Identity(_Service):
    """``app.identity``."""

    def login_url(
        self,
        *,
        state: str,
        nonce: str,
        redirect_uri: str | None = None,
        provider: str | None = None,
    ) -> Outcome[LoginRedirect]:
        """Where to send the user to log in: ``provider``'s, or the first available one's."""
        return _login_url(self._app, state, nonce, redirect_uri, provider)

    def complete_login(
        self,
        *,
        provider: str,
        code: str,
        nonce: str | None = None,
        redirect_uri: str | None = None,
    ) -> Outcome[Session]:
        """Exchange the authorization code, verify the ID token, open a session for the
        app-level user linked to the provider's subject."""
        return self._app._run(
            _ops.identity_complete(
                self._st, provider=provider, code=code, nonce=nonce, redirect_uri=redirect_uri
            )
        )

    def verify(self, token: str) -> Outcome[Claims]:
        """Verify an ID token against its issuer's key set (cached on disk, so this works
        while the issuer is down: ``Via.CACHE``)."""
        return self._app._run(_ops.identity_verify(self._st, token=token))

    def refresh(self, session_id: str) -> Outcome[Session]:
        """Renew a session; while its provider is down, extend it as a grace session
        (``Via.OFFLINE``, read scope, bounded time)."""
        return self._app._run(_ops.identity_refresh(self._st, session_id=session_id))

    def logout(self, session_id: str) -> None:
        """End a session and forget its tokens."""
        _ops.identity_logout(self._st, session_id=session_id)

    def link(self, user_id: str, *, provider: str, subject: str) -> None:
        """Link ``subject`` at identity ``provider`` to app-level ``user_id``."""
        self._st.directory.link(user_id, provider=provider, subject=subject)


class _Mobility(_Service):
    """``app.mobility``."""

    def estimate(self, *, origin: Place, destination: Place) -> Outcome[Estimate]:
        """Fare and duration; hedged across providers, cached when all are down."""
        return self._app._run(
            _ops.mobility_estimate(self._st, origin=origin, destination=destination)
        )

    def request_ride(
        self,
        *,
        rider: str,
        origin: Place,
        destination: Place,
        idempotency_key: str | None = None,
    ) -> Outcome[Ride]:
        """Request a ride from the first available provider."""
        return self._app._run(
            _ops.mobility_request_ride(
                self._st,
                rider=rider,
                origin=origin,
                destination=destination,
                idempotency_key=idempotency_key,
            )
        )

    def ride(self, ride_id: str) -> Outcome[Ride]:
        """A ride's current state, from the provider that has it."""
        return self._app._run(_ops.mobility_ride(self._st, ride_id=ride_id))

    def cancel_ride(self, ride_id: str) -> Outcome[Ride]:
        """Cancel a ride at the provider that has it."""
        return self._app._run(_ops.mobility_cancel_ride(self._st, ride_id=ride_id))

    def end_rental(self, *, rental_id: str, location: Place, at: float) -> Outcome[RentalReceipt]:
        """End a rental now, or queue the end (``Via.QUEUED``) so the rider is not billed
        for a scooter they parked while the provider was down."""
        return self._app._run(
            _ops.mobility_end_rental(self._st, rental_id=rental_id, location=location, at=at)
        )

    def handoff(self, *, origin: Place, destination: Place) -> list[DeepLink]:
        """Deep links into every configured mobility app, for the user to take over."""
        return _ops.mobility_handoff(self._st, origin=origin, destination=destination)


def _login_url(
    app: _Base, state: str, nonce: str, redirect_uri: str | None, provider: str | None
) -> Outcome[LoginRedirect]:
    _ops._text("state", state, limit=512)
    _ops._text("nonce", nonce, limit=512)
    router = app._parts.routers.get(Capability.IDENTITY)
    if router is None:
        raise Unavailable("no identity provider is configured", operation="identity.login_url")
    route, attempts = router.choose(
        "identity.authorize_url", providers=(provider,) if provider else None
    )
    redirect = route.provider.authorize_url(state=state, nonce=nonce, redirect_uri=redirect_uri)
    return _ops.identity_login_url(redirect, route.name, route is router.routes[0], attempts)


# -- async -----------------------------------------------------------------------------------


class AsyncSuperApp(_Base):
    """The SDK for asyncio: the same API as :class:`SuperApp`, every operation awaitable.

    ::

        async with AsyncSuperApp(chat=[KakaoTalk(...), LineMessaging(...)]) as app:
            outcome = await app.chat.send(to="user-1", text="hi")
    """

    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._own_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self._worker = AsyncOutboxWorker(self.outbox, self._deliver, poll_floor=1.0)
        self._async_publisher = AsyncHealthPublisher(
            self._publisher, self._routing_health, self._health_from
        )
        self.chat = _AsyncChat(self)
        self.payment = _AsyncPayment(self)
        self.identity = _AsyncIdentity(self)
        self.mobility = _AsyncMobility(self)
        self.directory = _DirectoryService(self._parts.state.directory)

    async def _invoke(self, eff: Invoke) -> Routed[Any]:
        router = self._router(eff)
        client = self._client

        def direct(
            build: Callable[[Any], Any], timeout: float | None
        ) -> Callable[[Route[Any]], Callable[[CallContext], Any]]:
            def for_route(r: Route[Any]) -> Callable[[CallContext], Any]:
                async def fn(ctx: CallContext) -> Any:
                    return await arun_call(
                        client,
                        build(r.provider),
                        provider=r.name,
                        operation=eff.operation,
                        timeout=ctx.timeout if timeout is None else timeout,
                    )

                return fn

            return for_route

        resolve = _lookup(eff, direct, self.timeouts.read)
        probe_build = _ops.default_probe(eff.capability)
        probe = direct(probe_build, None) if probe_build is not None else None
        return await router.acall(
            eff.operation,
            eff.kind,
            direct(eff.build, None),
            resolve=resolve,
            probe=probe,
            hedge=eff.hedge,
            providers=eff.providers,
            once=eff.once,
            ambiguous=eff.ambiguous,
        )

    async def _run(self, op: Op[T], *, offload: bool = True) -> T:
        # The steps of an operation that writes durable state (a payment record, a session,
        # the outbox) wait for an fsync: with ``offload`` they run in a worker thread so the
        # event loop never waits on the disk (about 0.1 ms a step on a busy 2-core machine).
        # Reads only touch the page cache and the fsync-free read cache, and run inline.
        async def step(result: Any, exc: BaseException | None) -> tuple[bool, Any]:
            if offload:
                return await asyncio.to_thread(_advance, op, result, exc)
            return _advance(op, result, exc)

        try:
            done, value = await step(None, None)
            while not done:
                try:
                    result = await self._invoke(value)
                except Exception as exc:  # noqa: BLE001 - handed to the operation to decide
                    done, value = await step(None, exc)
                else:
                    done, value = await step(result, None)
            return value  # type: ignore[no-any-return]
        finally:
            op.close()

    async def _deliver(self, item: OutboxItem) -> None:
        await self._run(
            _ops.replay(self._parts.state, item.operation, item.payload, item.idempotency_key)
        )

    def _wake(self) -> None:
        self._worker.wake(recovered=True)

    async def start(self) -> None:
        """Start the outbox replay task and the health publication that ``superapp
        status`` reads (``async with app:`` does this)."""
        self._worker.start()
        self._async_publisher.start()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until the outbox is empty; False when ``timeout`` passed first."""
        self._worker.start()
        return await self._worker.drain(timeout)

    async def aclose(self) -> None:
        """Stop the worker and the health publication, cancel background probes, close
        the client (if ours) and state."""
        await self._worker.stop()
        await self._async_publisher.stop()
        for router in self._parts.routers.values():
            await router.aclose()
        if self._own_client:
            await self._client.aclose()
        self._close_state()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _lookup(eff: Invoke, direct: Callable[..., Any], timeout: float) -> Any:
    """The router's ``resolve``: for each route, the lookup that settles an ambiguous
    at-most-once write there, or ``None`` where that provider has none."""
    build = eff.resolve
    if build is None:
        return None
    at = direct(build, timeout)

    def for_route(r: Route[Any]) -> Any:
        return None if build(r.provider) is None else at(r)

    return for_route


def _advance(op: Op[Any], result: Any, exc: BaseException | None) -> tuple[bool, Any]:
    """One step of an operation: ``(True, its value)`` when it finished, else ``(False, the
    next Invoke)``. StopIteration cannot cross a future, so it is turned into a flag."""
    try:
        if exc is not None:
            return False, op.throw(exc)
        return False, (next(op) if result is None else op.send(result))
    except StopIteration as stop:
        return True, stop.value


class _AsyncService:
    def __init__(self, app: AsyncSuperApp) -> None:
        self._app = app
        self._st = app._parts.state


class _AsyncChat(_AsyncService):
    """``app.chat`` (async); see :class:`SuperApp`'s ``chat``."""

    async def send(
        self,
        *,
        to: str,
        text: str,
        conversation: str | None = None,
        idempotency_key: str | None = None,
        defer: bool = True,
    ) -> Outcome[MessageReceipt]:
        """As :meth:`_Chat.send`."""
        return await self._app._run(
            _ops.chat_send(
                self._st,
                to=to,
                text=text,
                conversation=conversation,
                idempotency_key=idempotency_key,
                defer=defer,
            )
        )

    async def history(self, conversation: str, *, limit: int = 50) -> Outcome[list[Message]]:
        """As :meth:`_Chat.history`."""
        return await self._app._run(
            _ops.chat_history(self._st, conversation=conversation, limit=limit), offload=False
        )


class _AsyncPayment(_AsyncService):
    """``app.payment`` (async)."""

    async def start(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str = "KRW",
        item_name: str,
        user_id: str,
        return_url: str,
    ) -> Outcome[Checkout]:
        """As :meth:`_Payment.start`."""
        return await self._app._run(
            _ops.payment_start(
                self._st,
                order_id=order_id,
                amount=amount,
                currency=currency,
                item_name=item_name,
                user_id=user_id,
                return_url=return_url,
            )
        )

    async def confirm(self, *, order_id: str, approval: Approval) -> Outcome[Payment]:
        """As :meth:`_Payment.confirm`."""
        return await self._app._run(
            _ops.payment_confirm(self._st, order_id=order_id, approval=approval)
        )

    async def charge(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str = "KRW",
        user_id: str,
        offline: OfflinePolicy = OfflinePolicy.DENY,
    ) -> Outcome[Payment]:
        """As :meth:`_Payment.charge`."""
        return await self._app._run(
            _ops.payment_charge(
                self._st,
                order_id=order_id,
                amount=amount,
                currency=currency,
                user_id=user_id,
                offline=offline,
            )
        )

    async def cancel(
        self,
        *,
        order_id: str,
        amount: int | None = None,
        reason: str,
        cancel_id: str | None = None,
    ) -> Outcome[Payment]:
        """As :meth:`_Payment.cancel`."""
        return await self._app._run(
            _ops.payment_cancel(
                self._st, order_id=order_id, amount=amount, reason=reason, cancel_id=cancel_id
            )
        )

    async def reconcile(
        self, ticket: str, *, executed: bool, by: str, provider_ref: str | None = None
    ) -> Payment | MessageReceipt | None:
        """As :meth:`_Payment.reconcile`."""
        return await asyncio.to_thread(
            _ops.reconcile,
            self._st.store,
            ticket=ticket,
            executed=executed,
            by=by,
            now=self._st.clock.time(),
            provider_ref=provider_ref,
        )

    async def status(self, order_id: str) -> Outcome[Payment]:
        """As :meth:`_Payment.status`."""
        return await self._app._run(_ops.payment_status(self._st, order_id=order_id), offload=False)


class _AsyncIdentity(_AsyncService):
    """``app.identity`` (async)."""

    async def login_url(
        self,
        *,
        state: str,
        nonce: str,
        redirect_uri: str | None = None,
        provider: str | None = None,
    ) -> Outcome[LoginRedirect]:
        """As :meth:`_Identity.login_url`."""
        return _login_url(self._app, state, nonce, redirect_uri, provider)

    async def complete_login(
        self,
        *,
        provider: str,
        code: str,
        nonce: str | None = None,
        redirect_uri: str | None = None,
    ) -> Outcome[Session]:
        """As :meth:`_Identity.complete_login`."""
        return await self._app._run(
            _ops.identity_complete(
                self._st, provider=provider, code=code, nonce=nonce, redirect_uri=redirect_uri
            )
        )

    async def verify(self, token: str) -> Outcome[Claims]:
        """As :meth:`_Identity.verify`."""
        return await self._app._run(_ops.identity_verify(self._st, token=token))

    async def refresh(self, session_id: str) -> Outcome[Session]:
        """As :meth:`_Identity.refresh`."""
        return await self._app._run(_ops.identity_refresh(self._st, session_id=session_id))

    async def logout(self, session_id: str) -> None:
        """As :meth:`_Identity.logout`."""
        _ops.identity_logout(self._st, session_id=session_id)

    async def link(self, user_id: str, *, provider: str, subject: str) -> None:
        """As :meth:`_Identity.link`."""
        self._st.directory.link(user_id, provider=provider, subject=subject)


class _AsyncMobility(_AsyncService):
    """``app.mobility`` (async)."""

    async def estimate(self, *, origin: Place, destination: Place) -> Outcome[Estimate]:
        """As :meth:`_Mobility.estimate`."""
        return await self._app._run(
            _ops.mobility_estimate(self._st, origin=origin, destination=destination),
            offload=False,
        )

    async def request_ride(
        self,
        *,
        rider: str,
        origin: Place,
        destination: Place,
        idempotency_key: str | None = None,
    ) -> Outcome[Ride]:
        """As :meth:`_Mobility.request_ride`."""
        return await self._app._run(
            _ops.mobility_request_ride(
                self._st,
                rider=rider,
                origin=origin,
                destination=destination,
                idempotency_key=idempotency_key,
            )
        )

    async def ride(self, ride_id: str) -> Outcome[Ride]:
        """As :meth:`_Mobility.ride`."""
        return await self._app._run(_ops.mobility_ride(self._st, ride_id=ride_id), offload=False)

    async def cancel_ride(self, ride_id: str) -> Outcome[Ride]:
        """As :meth:`_Mobility.cancel_ride`."""
        return await self._app._run(_ops.mobility_cancel_ride(self._st, ride_id=ride_id))

    async def end_rental(
        self, *, rental_id: str, location: Place, at: float
    ) -> Outcome[RentalReceipt]:
        """As :meth:`_Mobility.end_rental`."""
        return await self._app._run(
            _ops.mobility_end_rental(self._st, rental_id=rental_id, location=location, at=at)
        )

    async def handoff(self, *, origin: Place, destination: Place) -> list[DeepLink]:
        """As :meth:`_Mobility.handoff`."""
        return _ops.mobility_handoff(self._st, origin=origin, destination=destination)
