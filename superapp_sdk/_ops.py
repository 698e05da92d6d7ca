"""The operations of the four capabilities, written once for the sync and async facades.

Each operation is a generator: it validates its input, reads and writes local state, and
*yields* an :class:`Invoke` whenever it needs a provider; the facade routes that call
(``Router.call`` or ``await Router.acall``) and sends the result back in, or throws the
error in. So ``SuperApp`` and ``AsyncSuperApp`` share every decision and differ only in
how they wait, as httpx's auth flows serve its sync and async clients.

Local state (records, the outbox, the read cache, the directory) is reached directly: it
is a local sqlite file, a fraction of a millisecond per operation.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from superapp_sdk import _codec
from superapp_sdk._directory import Directory
from superapp_sdk._errors import (
    ConfigError,
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    NotApplicable,
    OfflineCapExceeded,
    OutcomeUnknown,
    StoreError,
    Unauthorized,
    Unavailable,
    Undeliverable,
)
from superapp_sdk._outcome import Attempt, Outcome, Via
from superapp_sdk.capabilities._common import (
    Capability,
    Money,
    Provider,
    deduplicated_operations,
)
from superapp_sdk.capabilities.chat import ChatProvider, Message, MessageReceipt
from superapp_sdk.capabilities.identity import Claims, LoginRedirect, Session, TokenSet
from superapp_sdk.capabilities.mobility import DeepLink, Estimate, Place, RentalReceipt, Ride
from superapp_sdk.capabilities.payment import (
    Approval,
    Checkout,
    Payment,
    PaymentProvider,
    PaymentStatus,
)
from superapp_sdk.core.clock import Clock
from superapp_sdk.core.routing import OperationKind
from superapp_sdk.offline.cache import ReadCache
from superapp_sdk.offline.outbox import Outbox
from superapp_sdk.providers._http import Call, DirectCall, Flow
from superapp_sdk.resilience._router import Routed
from superapp_sdk.store._protocol import Store
from superapp_sdk.tokens import JwksCache, JwksCacheOptions, token_claims, verify_id_token
from superapp_sdk.tokens._seal import Sealer

__all__ = [
    "ChatPolicy",
    "Invoke",
    "NeedsReconciliation",
    "OfflinePolicy",
    "Op",
    "State",
]

T = TypeVar("T")

#: The name an Outcome's value carries when it was queued rather than served.
OUTBOX = "superapp.outbox"


class OfflinePolicy(enum.Enum):
    """What ``payment.charge`` may do when no provider can take the charge now.

    ``DENY`` raises :class:`~superapp_sdk.Unavailable`. ``QUEUE`` persists the charge in
    the outbox and answers ``Via.QUEUED``: it is made, once, when a provider is back.
    ``ALLOW`` is meant for capped offline vouchers; until they are configured it behaves
    as ``QUEUE``.
    """

    DENY = "deny"
    QUEUE = "queue"
    ALLOW = "allow"


class ChatPolicy(enum.Enum):
    """What ``chat.send`` does after a send whose outcome is unknown at a provider that
    cannot deduplicate it (KakaoTalk: a reset or timeout after the request was written).

    The message is never sent to that provider again, either way.

    ``FAIL_OVER`` (the default) sends it through the next channel that has the user (LINE,
    e-mail): the user may get it twice, once per channel, and the ``Outcome`` says so in
    ``possible_duplicates``. A message that arrives twice in two apps is a nuisance; a
    message that never arrives during a day-long outage ("your ride is here", "your code
    is 4512") is a failure, and a send that timed out while a data center burns most
    likely never executed.

    ``HOLD`` raises :class:`~superapp_sdk.OutcomeUnknown` and keeps the message for an
    operator (``needs_reconciliation``): for apps where a duplicate does harm.
    """

    FAIL_OVER = "fail_over"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class NeedsReconciliation:
    """An at-most-once write may have executed and no lookup can tell: it is held.

    Emitted once when it enters that state. Settle it with ``app.payment.reconcile`` (or
    ``superapp outbox reconcile TICKET``) once the provider's records are checked.

    Attributes:
        ticket: names the held write.
        operation: ``"payment.charge"``, ``"chat.send"``, ...
        provider: where it may have executed.
        entity: the order id, or the message's idempotency key.
    """

    ticket: str
    operation: str
    provider: str
    entity: str


@dataclass(frozen=True, slots=True)
class Invoke:
    """A provider call an operation needs; the facade routes it.

    Attributes:
        capability: whose router serves it.
        operation: the provider operation (``"payment.charge"``), used to pick providers.
        kind: read, write or payment: decides retries, hedging and failover.
        build: the provider call for one provider; raises :class:`NotApplicable` when that
            provider cannot serve this user.
        resolve: for payments, a status query whose result is the value when the payment
            executed, or ``None`` when it provably did not.
        hedge: hedge idempotent reads to the next provider.
        providers: restrict to these providers.
        once: an at-most-once write (default: ``kind`` is ``PAYMENT``); see
            :mod:`superapp_sdk.core.routing`.
        ambiguous: ``"hold"`` or ``"fail_over"`` after a try that may have executed and
            that no lookup can settle (see :class:`ChatPolicy`).
    """

    capability: Capability
    operation: str
    kind: OperationKind
    build: Callable[[Any], Call[Any]]
    resolve: Callable[[Any], Call[Any] | None] | None = None
    hedge: bool = False
    providers: Collection[str] | None = None
    once: bool | None = None
    ambiguous: str = "hold"


#: An operation: yields Invokes, receives Routed results, returns its value.
Op = Generator[Invoke, Routed[Any], T]


def _text(name: str, value: object, *, limit: int = 4096) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters, over the limit of {limit}")
    return value


def _opt_text(name: str, value: object) -> str | None:
    return None if value is None else _text(name, value)


def _outcome(routed: Routed[T], value: T | None = None, also: tuple[str, ...] = ()) -> Outcome[T]:
    return Outcome(
        value=routed.value if value is None else value,
        via=Via.PRIMARY if routed.primary else Via.ALTERNATE,
        provider=routed.provider,
        attempts=routed.attempts,
        possible_duplicates=tuple(dict.fromkeys((*also, *routed.maybe_executed))),
    )


# -- local records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """What the SDK keeps per order: the one idempotency key, and where the order is.

    ``payment`` is kept without its ``billing_key``; a billing key issued with the payment
    (KakaoPay ``sid``) is kept sealed in ``sealed_billing_key``. ``refunded`` is the
    refunded total as the provider last reported it; ``cancels`` maps each caller's
    ``cancel_id`` to the amount that cancel refunded. ``held`` marks a write that may
    have executed and that no lookup can settle (needs reconciliation).
    """

    order_id: str
    idempotency_key: str
    amount: Money
    user_id: str
    provider: str | None = None
    provider_ref: str | None = None
    status: PaymentStatus = PaymentStatus.PENDING
    payment: Payment | None = None
    sealed_billing_key: str | None = None
    refunded: int = 0
    cancels: dict[str, int] = dataclasses.field(default_factory=dict)
    held: str | None = None
    reconciled_by: str | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """An at-most-once write, persisted *before* any byte of it is sent.

    While it exists the write may be in flight or may have executed at ``provider``;
    the next call for the same order or message settles it there first, by that
    provider's own answer, and never sends it anywhere else before.

    Attributes:
        operation: the write (``"payment.charge"``).
        key: its idempotency key, the one every try and replay sends.
        provider: where the latest try went; ``None`` before the first send.
        amount: for cancels, the amount asked.
        base: for cancels, the refunded total before this cancel.
    """

    operation: str
    key: str
    provider: str | None = None
    amount: int | None = None
    base: int | None = None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """What the SDK keeps per message key: where it may have gone, and its receipt.

    Attributes:
        pending: the provider the latest send went to, until it answers.
        maybe: providers where an earlier send may have executed (never sent there
            again).
        receipt: the provider's receipt once one accepted it.
        held: the send is held for reconciliation (:class:`ChatPolicy` ``HOLD``).
    """

    key: str
    pending: str | None = None
    maybe: tuple[str, ...] = ()
    receipt: MessageReceipt | None = None
    provider: str | None = None
    held: bool = False


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session and its provider tokens (sealed at rest)."""

    session: Session
    sealed_tokens: str
    grace_started: float | None = None


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """How sessions behave.

    Attributes:
        session_seconds: a new session's lifetime.
        grace_seconds: how long one refresh extends a session locally while its identity
            provider is down.
        max_grace_seconds: the longest a session lives on grace extensions in a row.
        grace_scopes: what a grace session may do (reads yes, money no).
    """

    session_seconds: float = 24 * 3600.0
    grace_seconds: float = 3600.0
    max_grace_seconds: float = 24 * 3600.0
    grace_scopes: frozenset[str] = frozenset({"read"})

    def __post_init__(self) -> None:
        for name in ("session_seconds", "grace_seconds", "max_grace_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"IdentityPolicy.{name} must be > 0, got {getattr(self, name)!r}")


class State:
    """Local state shared by every operation."""

    def __init__(
        self,
        *,
        store: Store,
        outbox: Outbox,
        cache: ReadCache,
        directory: Directory,
        sealer: Sealer,
        clock: Clock,
        providers: dict[Capability, tuple[Provider, ...]],
        identity_policy: IdentityPolicy,
        chat_policy: ChatPolicy = ChatPolicy.FAIL_OVER,
        emit: Callable[[object], None] | None = None,
        jwks_options: JwksCacheOptions | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.cache = cache
        self.directory = directory
        self.sealer = sealer
        self.clock = clock
        self.providers = providers
        self.identity_policy = identity_policy
        self.chat_policy = chat_policy
        self.emit: Callable[[object], None] = emit or (lambda event: None)
        self.jwks_options = jwks_options or JwksCacheOptions()
        self.jwks: dict[str, JwksCache] = {}

    def provider(self, capability: Capability, name: str) -> Provider:
        for p in self.providers.get(capability, ()):
            if p.name == name:
                return p
        raise InvalidRequest(f"no {capability.value} provider named {name!r} is configured")

    # records
    def load(self, cls: type[T], key: str, what: str) -> T | None:
        raw = self.store.get(key)
        return None if raw is None else _codec.loads(cls, raw, what=what)

    def save(self, key: str, value: object) -> None:
        self.store.set(key, _codec.dumps(value))

    def cache_put(self, key: str, value: object, operation: str) -> None:
        self.cache.put(key, _codec.encode(value), operation=operation)

    def cache_get(self, cls: type[T], key: str, exc: Unavailable) -> Outcome[T]:
        try:
            hit = self.cache.get(key)
            if hit is None:
                raise exc
            value = _codec.decode(cls, hit.value)
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            raise StoreError(
                f"cached answer {key!r} is unreadable ({type(err).__name__}: {err})"
            ) from err
        return Outcome(value=value, via=Via.CACHE, stale_for=hit.stale_for, attempts=exc.attempts)

    def enqueue(self, entity: str, operation: str, payload: dict[str, Any], key: str) -> str:
        return self.outbox.enqueue(
            entity=entity, operation=operation, payload=payload, idempotency_key=key
        ).ticket


def new_key(prefix: str) -> str:
    """A fresh idempotency key."""
    return f"{prefix}_{secrets.token_urlsafe(18)}"


#: How long a caller's idempotency key stays bound to its request (Stripe keeps keys for
#: 24 hours).
_KEY_SECONDS = 24 * 3600.0


def _claim_key(st: State, operation: str, key: str, payload: object) -> None:
    """Bind a caller's idempotency ``key`` to this request before anything is sent.

    A provider that has seen the key refuses another payload under it, but the router
    would then fail over to a provider that has not, and send it there; so a key reused
    with a different payload is refused here, for every provider at once.

    Raises:
        IdempotencyConflict: ``key`` was used for a different ``operation`` request.
    """
    canonical = json.dumps(_codec.encode(payload), sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest().encode()
    name = f"idempotency:{operation}:{key}"
    if st.store.add(name, fingerprint, ttl=_KEY_SECONDS):
        return
    stored = st.store.get(name)
    if stored is None:  # expired between add and get
        st.store.set(name, fingerprint, ttl=_KEY_SECONDS)
    elif stored != fingerprint:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different {operation} request;"
            " nothing was sent",
            operation=operation,
            code="idempotency_conflict",
        )


# -- chat --------------------------------------------------------------------------------


def chat_send(
    st: State,
    *,
    to: str,
    text: str,
    conversation: str | None,
    idempotency_key: str | None,
    defer: bool,
    replay: bool = False,
) -> Op[Outcome[MessageReceipt]]:
    """``app.chat.send``: see :meth:`~superapp_sdk.SuperApp.chat`.

    At most once per provider: the message's record is written before each send, a
    provider whose send may have executed is never sent it again (unless it deduplicates
    by the key), and a repeated key returns the first receipt.
    """
    _text("to", to, limit=256)
    _text("text", text)
    _opt_text("conversation", conversation)
    key = (
        _text("idempotency_key", idempotency_key, limit=255) if idempotency_key else new_key("msg")
    )
    entity = f"chat:{conversation or to}"
    payload = {"to": to, "text": text, "conversation": conversation}
    contact = st.directory.get(to)
    _reachable(st, Capability.CHAT, "chat.send", lambda p: p.name in contact.addresses, to)
    if idempotency_key and not replay:
        _claim_key(st, "chat.send", key, payload)
    name = f"message:{key}"
    record = st.load(MessageRecord, name, f"message {key!r}") or MessageRecord(key)
    if record.receipt is not None:
        return Outcome(
            value=record.receipt,
            via=Via.PRIMARY,
            provider=record.provider,
            possible_duplicates=record.maybe,
        )
    if record.held:
        raise _held_message(record)
    if record.pending is not None:
        # A send to ``pending`` was under way when the process stopped, or its answer was
        # lost: it may have executed there, so it is never sent there again.
        record = dataclasses.replace(
            record, pending=None, maybe=tuple(dict.fromkeys((*record.maybe, record.pending)))
        )
        st.save(name, record)
    if not replay and defer and st.outbox.has_pending(entity):
        # Earlier messages of this conversation are still queued: keep their order.
        ticket = st.enqueue(entity, "chat.send", payload, key)
        return _queued_receipt(ticket, to, conversation, st, ())
    maybe = record.maybe
    if record.maybe and st.chat_policy is ChatPolicy.HOLD:
        raise _hold_message(st, record, record.maybe[-1], ())

    def build(p: ChatProvider) -> Call[MessageReceipt]:
        address = contact.addresses.get(p.name)
        if address is None:
            raise NotApplicable(f"user {to!r} has no address at {p.name}", provider=p.name)
        if p.name in maybe and "chat.send" not in deduplicated_operations(p):
            raise NotApplicable(
                f"message {key!r} may already have been delivered by {p.name}", provider=p.name
            )
        call = p.send(to=address, text=text, conversation=conversation, idempotency_key=key)
        st.save(name, dataclasses.replace(record, pending=p.name))
        return call

    try:
        routed = yield Invoke(
            Capability.CHAT,
            "chat.send",
            OperationKind.WRITE,
            build,
            once=True,
            ambiguous=st.chat_policy.value,
        )
    except OutcomeUnknown as exc:
        raise _hold_message(st, record, exc.provider or "", exc.attempts) from exc
    except Unavailable as exc:
        record = dataclasses.replace(
            record, pending=None, maybe=tuple(dict.fromkeys((*record.maybe, *exc.maybe_executed)))
        )
        st.save(name, record)
        if record.maybe and not _deliverable_elsewhere(st, contact.addresses, record.maybe):
            raise _hold_message(st, record, record.maybe[-1], exc.attempts) from exc
        if not defer or replay:
            raise
        ticket = st.enqueue(entity, "chat.send", payload, key)
        return _queued_receipt(ticket, to, conversation, st, exc.attempts)
    also = tuple(dict.fromkeys((*record.maybe, *routed.maybe_executed)))
    st.save(
        name,
        dataclasses.replace(
            record, pending=None, maybe=also, receipt=routed.value, provider=routed.provider
        ),
    )
    return _outcome(routed, also=also)


def _reachable(
    st: State,
    capability: Capability,
    operation: str,
    serves: Callable[[Any], bool],
    user_id: str,
) -> None:
    """Refuse at once a write no configured provider could ever take (it would sit in the
    outbox for good and hold back its conversation or order).

    Raises:
        Undeliverable: no provider offers ``operation``, or none of them ``serves`` the
            user (no address or billing key there).
    """
    offering = [p for p in st.providers.get(capability, ()) if operation in p.operations]
    if not offering:
        raise Undeliverable(
            f"{operation}: no {capability.value} provider that offers it is configured;"
            " nothing was sent or queued",
            operation=operation,
            code="no_provider",
        )
    if not any(serves(p) for p in offering):
        what = "billing key" if capability is Capability.PAYMENT else "address"
        names = ", ".join(p.name for p in offering)
        raise Undeliverable(
            f"{operation}: user {user_id!r} has no {what} at any provider ({names});"
            f" nothing was sent or queued (app.directory.put adds one)",
            operation=operation,
            code=f"no_{what.replace(' ', '_')}",
        )


def _deliverable_elsewhere(st: State, addresses: Mapping[str, str], maybe: tuple[str, ...]) -> bool:
    """Whether a chat provider other than those in ``maybe`` can reach the user."""
    return any(
        p.name in addresses and p.name not in maybe for p in st.providers.get(Capability.CHAT, ())
    )


def _held_message(record: MessageRecord) -> OutcomeUnknown:
    where = ", ".join(record.maybe) or "a provider"
    return OutcomeUnknown(
        f"message {record.key!r} may have been delivered by {where}, which cannot say and"
        " cannot deduplicate; it is held and will not be sent again",
        provider=record.maybe[-1] if record.maybe else None,
        operation="chat.send",
        ticket=record.key,
        needs_reconciliation=True,
        code="needs_reconciliation",
    )


def _hold_message(
    st: State, record: MessageRecord, provider: str, attempts: tuple[Attempt, ...]
) -> OutcomeUnknown:
    """Hold a message whose delivery is unknown; emits :class:`NeedsReconciliation`."""
    maybe = tuple(dict.fromkeys((*record.maybe, provider))) if provider else record.maybe
    held = dataclasses.replace(record, pending=None, maybe=maybe, held=True)
    st.save(f"message:{record.key}", held)
    st.emit(NeedsReconciliation(record.key, "chat.send", maybe[-1] if maybe else "", record.key))
    err = _held_message(held)
    err.attempts = attempts
    return err


def _queued_receipt(
    ticket: str, to: str, conversation: str | None, st: State, attempts: tuple[Attempt, ...]
) -> Outcome[MessageReceipt]:
    receipt = MessageReceipt(
        message_id=ticket,
        provider=OUTBOX,
        to=to,
        conversation=conversation,
        accepted_at=st.clock.time(),
    )
    return Outcome(value=receipt, via=Via.QUEUED, ticket=ticket, attempts=attempts)


def chat_history(st: State, *, conversation: str, limit: int) -> Op[Outcome[list[Message]]]:
    """``app.chat.history``."""
    _text("conversation", conversation, limit=256)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be an int in [1, 1000], got {limit!r}")
    cache_key = f"chat.history:{conversation}:{limit}"
    try:
        routed = yield Invoke(
            Capability.CHAT,
            "chat.history",
            OperationKind.READ,
            lambda p: p.history(conversation, limit=limit),
            hedge=True,
        )
    except Unavailable as exc:
        return st.cache_get(list[Message], cache_key, exc)
    st.cache_put(cache_key, routed.value, "chat.history")
    return _outcome(routed)


# -- payment -----------------------------------------------------------------------------


def _record_key(order_id: str) -> str:
    return f"payment:{order_id}"


def _payment_record(st: State, order_id: str) -> PaymentRecord | None:
    return st.load(PaymentRecord, _record_key(order_id), f"payment record of {order_id!r}")


def _new_record(st: State, order_id: str, amount: Money, user_id: str) -> PaymentRecord:
    """The order's record, created (with its one idempotency key) before any send."""
    record = PaymentRecord(order_id, new_key("pay"), amount, user_id)
    if st.store.add(_record_key(order_id), _codec.dumps(record)):
        return record
    existing = _payment_record(st, order_id)
    if existing is None:  # expired between add and get: create again
        st.save(_record_key(order_id), record)
        return record
    if existing.amount != amount or existing.user_id != user_id:
        # One meaning, one error: an order id is the payment's idempotency key, reused here
        # with another payload (as a chat key reused for another message).
        raise IdempotencyConflict(
            f"order {order_id!r} exists with another amount or user; an order id is one"
            " payment, nothing was sent",
            operation="payment",
            code="idempotency_conflict",
        )
    return existing


def _payable(amount: int, currency: str) -> Money:
    """The amount to charge, validated before anything is recorded."""
    money = Money(amount, currency)
    if money.amount == 0:
        raise ValueError(f"amount must be > 0 minor units of {currency}, got 0")
    return money


def payment_start(
    st: State,
    *,
    order_id: str,
    amount: int,
    currency: str,
    item_name: str,
    user_id: str,
    return_url: str,
) -> Op[Outcome[Checkout]]:
    """``app.payment.start``: a checkout the user approves at the provider."""
    _text("order_id", order_id, limit=100)
    _text("item_name", item_name, limit=100)
    _text("user_id", user_id, limit=100)
    _text("return_url", return_url)
    if urlsplit(return_url).scheme not in ("http", "https") or not urlsplit(return_url).netloc:
        raise ValueError(f"return_url must be an absolute http(s) URL, got {return_url!r}")
    money = _payable(amount, currency)
    record = _new_record(st, order_id, money, user_id)
    if record.status is PaymentStatus.APPROVED:
        raise InvalidRequest(f"order {order_id!r} is already paid", code="already_paid")
    routed = yield Invoke(
        Capability.PAYMENT,
        "payment.ready",
        OperationKind.WRITE,
        lambda p: p.ready(
            order_id=order_id,
            amount=money,
            item_name=item_name,
            user_id=user_id,
            return_url=return_url,
            idempotency_key=record.idempotency_key,
        ),
    )
    checkout: Checkout = routed.value
    st.save(
        _record_key(order_id),
        dataclasses.replace(record, provider=routed.provider, provider_ref=checkout.provider_ref),
    )
    return _outcome(routed)


def _lookup_call(p: Any, order_id: str, provider_ref: str | None) -> Call[Payment] | None:
    """The lookup of ``order_id`` at ``p``: by the provider's payment id when one is
    known, else by the order id where the provider can find payments by it; ``None``
    when it cannot (a KakaoPay subscription charge whose answer, and ``tid``, was lost)."""
    if provider_ref is not None:
        return p.status(order_id=order_id, provider_ref=provider_ref)  # type: ignore[no-any-return]
    lookup = getattr(p, "lookup", None)
    if lookup is None:
        return None
    return lookup(order_id=order_id)  # type: ignore[no-any-return]


def _resolver(
    order_id: str, provider_ref: str | None, executed: Callable[[Payment], bool]
) -> Callable[[Any], Call[Payment | None] | None]:
    """For the router: the lookup that settles an ambiguous write of ``order_id`` at one
    provider, answering the Payment when ``executed`` says the write ran there."""

    def resolve(p: Any) -> Call[Payment | None] | None:
        call = _lookup_call(p, order_id, provider_ref)
        return None if call is None else _status_then(call, executed)

    return resolve


def _status_then(call: Call[Payment], executed: Callable[[Payment], bool]) -> Call[Payment | None]:
    """A status query whose result is the Payment when ``executed(payment)``, else
    ``None`` (the operation provably did not execute)."""

    def pick(payment: Payment) -> Payment | None:
        return payment if executed(payment) else None

    if isinstance(call, DirectCall):
        direct = call

        async def arun(timeout: float | None) -> Payment | None:
            return pick(await direct.arun(timeout))

        return DirectCall(run=lambda timeout: pick(direct.run(timeout)), arun=arun)

    def flow() -> Flow[Payment | None]:
        return pick((yield from call))

    return flow()


def _approved(payment: Payment) -> bool:
    return payment.status in _CHARGED


#: Statuses of a payment that was charged (and may since have been refunded).
_CHARGED = frozenset(
    {PaymentStatus.APPROVED, PaymentStatus.PARTIALLY_CANCELED, PaymentStatus.CANCELED}
)


def _pending_key(order_id: str, operation: str) -> str:
    return f"pending:{operation}:{order_id}"


def _load_pending(st: State, order_id: str, operation: str) -> Pending | None:
    return st.load(Pending, _pending_key(order_id, operation), f"pending {operation} {order_id!r}")


def _settle_pending(
    st: State,
    record: PaymentRecord,
    pending: Pending,
    executed: Callable[[Payment], bool],
) -> Op[Payment | None]:
    """Settle an earlier try of ``pending`` that may have executed at its provider, by
    that provider's answer: the Payment when it executed, ``None`` when it provably did
    not. Nothing is sent before this answers."""
    assert pending.provider is not None
    operation = pending.operation
    holder = pending.provider
    try:
        p = st.provider(Capability.PAYMENT, holder)
    except InvalidRequest:
        p = None
    lookup = None if p is None else _lookup_call(p, record.order_id, record.provider_ref)
    if lookup is None:
        raise _hold_payment(st, record, operation, holder, ())
    ref = record.provider_ref
    try:
        routed = yield Invoke(
            Capability.PAYMENT,
            "payment.status",
            OperationKind.READ,
            lambda q: _status_then(_lookup_call(q, record.order_id, ref), executed),  # type: ignore[arg-type]
            providers=(holder,),
        )
    except Declined:
        # The provider answered that it has no such payment: it never executed.
        routed = None
    except Unavailable as exc:
        raise OutcomeUnknown(
            f"{operation} of order {record.order_id!r} may have executed at {holder}, and "
            f"{holder} cannot be asked now; nothing is sent until it answers",
            provider=holder,
            operation=operation,
            attempts=exc.attempts,
            ticket=record.idempotency_key,
            code="outcome_unknown",
        ) from exc
    if routed is None or routed.value is None:
        st.store.delete(_pending_key(record.order_id, operation))
        return None
    payment: Payment = routed.value
    return payment


def _held_payment(record: PaymentRecord) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"{record.held} of order {record.order_id!r} may have executed at {record.provider},"
        " which has no lookup that can tell; it is held until an operator reconciles it"
        f" (superapp outbox reconcile {record.idempotency_key})",
        provider=record.provider,
        operation=record.held,
        ticket=record.idempotency_key,
        needs_reconciliation=True,
        code="needs_reconciliation",
    )


def _hold_payment(
    st: State, record: PaymentRecord, operation: str, provider: str, attempts: tuple[Attempt, ...]
) -> OutcomeUnknown:
    """Hold an order whose write may have executed where no lookup can tell; emits
    :class:`NeedsReconciliation` when it enters that state."""
    held = dataclasses.replace(record, held=operation, provider=provider)
    st.save(_record_key(record.order_id), held)
    st.store.set(f"reconcile:{record.idempotency_key}", record.order_id.encode())
    if record.held is None:
        st.emit(NeedsReconciliation(record.idempotency_key, operation, provider, record.order_id))
    err = _held_payment(held)
    err.attempts = attempts
    return err


def _billing_purpose(order_id: str) -> str:
    return f"payment-billing:{order_id}"


def _settle(st: State, record: PaymentRecord, routed: Routed[Payment]) -> Outcome[Payment]:
    payment = routed.value
    sealed = None
    if payment.billing_key is not None:
        # A billing key is a secret: never at rest in plain text (DESIGN.md section 6).
        sealed = st.sealer.seal(
            payment.billing_key.encode(), purpose=_billing_purpose(record.order_id)
        ).hex()
    st.save(
        _record_key(record.order_id),
        dataclasses.replace(
            record,
            provider=routed.provider,
            provider_ref=payment.provider_ref,
            status=payment.status,
            payment=dataclasses.replace(payment, billing_key=None),
            sealed_billing_key=sealed,
        ),
    )
    return _outcome(routed)


def _kept_payment(st: State, record: PaymentRecord) -> Payment | None:
    """The order's recorded Payment, with its billing key unsealed."""
    if record.payment is None or record.sealed_billing_key is None:
        return record.payment
    try:
        raw = bytes.fromhex(record.sealed_billing_key)
    except ValueError as exc:
        raise StoreError(f"billing key of order {record.order_id!r} is corrupted") from exc
    key = st.sealer.open(raw, purpose=_billing_purpose(record.order_id)).decode()
    return dataclasses.replace(record.payment, billing_key=key)


def payment_confirm(
    st: State, *, order_id: str, approval: Approval, replay: bool = False
) -> Op[Outcome[Payment]]:
    """``app.payment.confirm``: approve what the user authorised at the provider."""
    _text("order_id", order_id, limit=100)
    if not isinstance(approval, Approval):
        raise ValueError(f"approval must be an Approval, got {type(approval).__name__}")
    record = _payment_record(st, order_id)
    if record is None or record.provider is None:
        raise InvalidRequest(f"order {order_id!r} was not started with payment.start")
    kept = _kept_payment(st, record)
    if record.status in _CHARGED and kept is not None:
        return Outcome(value=kept, via=Via.PRIMARY, provider=record.provider)
    holder: str = record.provider
    record = dataclasses.replace(record, provider_ref=approval.provider_ref)
    try:
        # KakaoPay refuses a second approval of a tid (-702, AlreadyExecuted): the router
        # settles that, and any lost answer, by looking the tid up.
        routed = yield Invoke(
            Capability.PAYMENT,
            "payment.approve",
            OperationKind.PAYMENT,
            lambda p: p.approve(
                order_id=order_id,
                approval=approval,
                user_id=record.user_id,
                idempotency_key=record.idempotency_key,
            ),
            resolve=_resolver(order_id, approval.provider_ref, _approved),
            providers=(holder,),
            once=True,
        )
    except (Unavailable, OutcomeUnknown) as exc:
        if replay:
            raise
        payload = {"order_id": order_id, "approval": _codec.encode(approval)}
        ticket = st.enqueue(
            f"payment:{order_id}", "payment.confirm", payload, record.idempotency_key
        )
        return _queued_payment(record, ticket, getattr(exc, "attempts", ()))
    return _settle(st, record, routed)


def _queued_payment(
    record: PaymentRecord, ticket: str, attempts: tuple[Attempt, ...]
) -> Outcome[Payment]:
    payment = Payment(
        order_id=record.order_id,
        provider=record.provider or OUTBOX,
        status=PaymentStatus.PENDING,
        amount=record.amount,
        approved_at=None,
        provider_ref=record.provider_ref or ticket,
    )
    return Outcome(value=payment, via=Via.QUEUED, ticket=ticket, attempts=attempts)


def payment_charge(
    st: State,
    *,
    order_id: str,
    amount: int,
    currency: str,
    user_id: str,
    offline: OfflinePolicy,
    replay: bool = False,
) -> Op[Outcome[Payment]]:
    """``app.payment.charge``: a server-side charge with the user's stored billing key.

    At most one successful charge per ``order_id``, across every provider: the charge is
    recorded as pending at a provider before any byte is sent there, and a charge whose
    answer was lost is settled by that provider's lookup before anything is sent again.
    """
    _text("order_id", order_id, limit=100)
    _text("user_id", user_id, limit=100)
    if not isinstance(offline, OfflinePolicy):
        raise ValueError(f"offline must be an OfflinePolicy, got {offline!r}")
    money = _payable(amount, currency)
    _reachable(
        st,
        Capability.PAYMENT,
        "payment.charge",
        lambda p: st.directory.billing_key(user_id, p.name) is not None,
        user_id,
    )
    record = _new_record(st, order_id, money, user_id)
    kept = _kept_payment(st, record)
    if record.status in _CHARGED and kept is not None:
        # At most one successful charge per order: a repeat returns the first.
        return Outcome(value=kept, via=Via.PRIMARY, provider=record.provider)
    if record.held is not None:
        raise _held_payment(record)
    operation = "payment.charge"
    pending = _load_pending(st, order_id, operation)
    if pending is not None and pending.provider is not None:
        try:
            found = yield from _settle_pending(st, record, pending, _approved)
        except OutcomeUnknown as exc:
            if exc.needs_reconciliation or replay or offline is OfflinePolicy.DENY:
                raise
            return _queue_charge(st, record, money, exc.attempts)
        if found is not None:
            outcome = _settle(st, record, Routed(found, pending.provider, False, ()))
            st.store.delete(_pending_key(order_id, operation))
            return outcome
    intent = Pending(operation, record.idempotency_key)
    pending_key = _pending_key(order_id, operation)

    def build(p: PaymentProvider) -> Call[Payment]:
        key = st.directory.billing_key(user_id, p.name)
        if key is None:
            raise NotApplicable(f"user {user_id!r} has no billing key at {p.name}", provider=p.name)
        call = p.charge(
            order_id=order_id,
            amount=money,
            item_name=f"order {order_id}",
            user_id=user_id,
            billing_key=key,
            idempotency_key=record.idempotency_key,
        )
        st.save(pending_key, dataclasses.replace(intent, provider=p.name))
        return call

    try:
        routed = yield Invoke(
            Capability.PAYMENT,
            operation,
            OperationKind.PAYMENT,
            build,
            resolve=_resolver(order_id, None, _approved),
            providers=(record.provider,) if record.provider else None,
            once=True,
        )

    except OutcomeUnknown as exc:
        if exc.needs_reconciliation:
            raise _hold_payment(st, record, operation, exc.provider or "", exc.attempts) from exc
        exc.ticket = record.idempotency_key
        if replay or offline is OfflinePolicy.DENY:
            raise
        return _queue_charge(st, record, money, exc.attempts)
    except Unavailable as exc:
        if not exc.maybe_executed:
            st.store.delete(pending_key)  # no try can have executed anywhere
        if replay or offline is OfflinePolicy.DENY:
            raise
        return _queue_charge(st, record, money, exc.attempts)
    outcome = _settle(st, record, routed)
    st.store.delete(pending_key)
    return outcome


def _queue_charge(
    st: State, record: PaymentRecord, money: Money, attempts: tuple[Attempt, ...]
) -> Outcome[Payment]:
    payload = {
        "order_id": record.order_id,
        "amount": money.amount,
        "currency": money.currency,
        "user_id": record.user_id,
    }
    ticket = st.enqueue(
        f"payment:{record.order_id}", "payment.charge", payload, record.idempotency_key
    )
    return _queued_payment(record, ticket, attempts)


def payment_cancel(
    st: State, *, order_id: str, amount: int | None, reason: str, cancel_id: str | None = None
) -> Op[Outcome[Payment]]:
    """``app.payment.cancel``: refund ``amount`` of an order, or all that remains.

    Keyed like a charge: with ``cancel_id`` a repeated cancel refunds once and returns
    the same answer; without one, a cancel whose outcome is unknown is settled by the
    provider's lookup before any new cancel of the order is sent.
    """
    _text("order_id", order_id, limit=100)
    _text("reason", reason, limit=200)
    _opt_text("cancel_id", cancel_id)
    record = _payment_record(st, order_id)
    if record is None or record.provider is None or record.payment is None:
        raise InvalidRequest(f"order {order_id!r} has no payment to cancel")
    if amount is not None:
        asked: Money | None = Money(amount, record.amount.currency)
    else:
        asked = None
    operation = "payment.cancel"
    holder: str = record.provider
    if cancel_id is not None and cancel_id in record.cancels:
        if asked is not None and record.cancels[cancel_id] != asked.amount:
            raise IdempotencyConflict(
                f"cancel_id {cancel_id!r} of order {order_id!r} refunded"
                f" {record.cancels[cancel_id]}, not {asked.amount}; nothing was sent",
                operation=operation,
                code="idempotency_conflict",
            )
        return Outcome(value=_kept_payment(st, record), via=Via.PRIMARY, provider=holder)  # type: ignore[arg-type]
    pending = _load_pending(st, order_id, operation)
    if pending is not None and pending.provider is not None:
        base, was = pending.base or 0, pending.amount or 0
        found = yield from _settle_pending(
            st, record, pending, lambda q: _refunded(q) >= base + was
        )
        if found is not None:
            done_id = pending.key.rpartition(":cancel:")[2]
            record = _refund_settled(st, record, found, done_id, was)
            if done_id == cancel_id:
                return Outcome(value=found, via=Via.PRIMARY, provider=holder)
        record = _payment_record(st, order_id) or record
    remaining = record.amount.amount - record.refunded
    money = Money(remaining, record.amount.currency) if asked is None else asked
    if remaining <= 0:
        raise InvalidRequest(
            f"order {order_id!r} is already refunded in full", code="already_refunded"
        )
    if money.amount > remaining:
        raise InvalidRequest(
            f"cannot cancel {money.amount} of order {order_id!r}: {remaining} remains of"
            f" {record.amount.amount}",
            code="cancel_over_remaining",
        )
    key = f"{record.idempotency_key}:cancel:{cancel_id or new_key('c')}"
    intent = Pending(operation, key, amount=money.amount, base=record.refunded)
    pending_key = _pending_key(order_id, operation)
    base = record.refunded

    def build(p: PaymentProvider) -> Call[Payment]:
        call = p.cancel(
            order_id=order_id,
            provider_ref=record.provider_ref or "",
            amount=money,
            reason=reason,
            idempotency_key=key,
        )
        st.save(pending_key, dataclasses.replace(intent, provider=p.name))
        return call

    try:
        routed = yield Invoke(
            Capability.PAYMENT,
            operation,
            OperationKind.PAYMENT,
            build,
            resolve=_resolver(
                order_id, record.provider_ref, lambda q: _refunded(q) >= base + money.amount
            ),
            providers=(holder,),
            once=True,
        )
    except OutcomeUnknown as exc:
        exc.ticket = key
        raise
    except Unavailable as exc:
        if not exc.maybe_executed:
            st.store.delete(pending_key)
        raise
    _refund_settled(st, record, routed.value, key.rpartition(":cancel:")[2], money.amount)
    return _outcome(routed)


def _refunded(payment: Payment) -> int:
    return 0 if payment.canceled_amount is None else payment.canceled_amount.amount


def _refund_settled(
    st: State, record: PaymentRecord, payment: Payment, cancel_id: str, amount: int
) -> PaymentRecord:
    """Record a cancel the provider executed: its refunded total, as the provider says."""
    settled = dataclasses.replace(
        record,
        status=payment.status,
        refunded=max(record.refunded, _refunded(payment)),
        cancels={**record.cancels, cancel_id: amount},
        payment=dataclasses.replace(payment, billing_key=None),
        sealed_billing_key=record.sealed_billing_key,
    )
    st.save(_record_key(record.order_id), settled)
    st.store.delete(_pending_key(record.order_id, "payment.cancel"))
    return settled


def reconcile(
    store: Store,
    *,
    ticket: str,
    executed: bool,
    by: str,
    now: float,
    provider_ref: str | None = None,
) -> Payment | MessageReceipt | None:
    """An operator settles a held write (:class:`~superapp_sdk.OutcomeUnknown` with
    ``needs_reconciliation``) after checking the provider's own records: its merchant
    console or settlement file for a charge, the recipient for a message.

    Needs only the state directory's store, so ``superapp outbox reconcile`` can run it
    with no provider configured.

    Args:
        ticket: the error's ``ticket``.
        executed: whether the provider executed the held write.
        by: who decided; kept with the record.
        now: the time of the decision (epoch seconds).
        provider_ref: for a charge, the provider's payment id, when the operator found it.

    Returns:
        For a charge: the Payment now recorded (``executed``), or ``None``, and the order
        may be charged again, at any provider. For a message: ``None``; ``executed=True``
        records it as delivered (a repeat with its key sends nothing), ``executed=False``
        lets a repeat with its key send it again, through the same provider too.

    Raises:
        InvalidRequest: nothing is held under ``ticket``.
    """
    _text("ticket", ticket, limit=255)
    _text("by", by, limit=200)
    _opt_text("provider_ref", provider_ref)
    if not isinstance(executed, bool):
        raise ValueError(f"executed must be True or False, got {executed!r}")
    note = f"{by} at {now:.0f}"
    raw = store.get(f"reconcile:{ticket}")
    if raw is not None:
        return _reconcile_payment(store, raw.decode(), ticket, executed, note, provider_ref)
    message = store.get(f"message:{ticket}")
    if message is not None:
        record = _codec.loads(MessageRecord, message, what=f"message {ticket!r}")
        if record.held:
            held_at = record.maybe[-1] if record.maybe else None
            settled = dataclasses.replace(
                record,
                held=False,
                maybe=record.maybe if executed else record.maybe[:-1],
                provider=held_at if executed else None,
            )
            if executed and held_at is not None:
                settled = dataclasses.replace(
                    settled,
                    receipt=MessageReceipt(
                        message_id=f"reconciled:{ticket}",
                        provider=held_at,
                        to="",
                        conversation=None,
                        accepted_at=now,
                    ),
                )
            store.set(f"message:{ticket}", _codec.dumps(settled))
            return None
    raise InvalidRequest(f"nothing is held under ticket {ticket!r}", code="unknown_ticket")


def _reconcile_payment(
    store: Store,
    order_id: str,
    ticket: str,
    executed: bool,
    note: str,
    provider_ref: str | None,
) -> Payment | None:
    raw = store.get(_record_key(order_id))
    record = None if raw is None else _codec.loads(PaymentRecord, raw, what=f"order {order_id!r}")
    if record is None or record.held is None:
        raise InvalidRequest(f"nothing is held under ticket {ticket!r}", code="unknown_ticket")
    operation = record.held
    payment = None
    if executed:
        payment = Payment(
            order_id=record.order_id,
            provider=record.provider or OUTBOX,
            status=PaymentStatus.APPROVED,
            amount=record.amount,
            approved_at=None,
            provider_ref=provider_ref or f"reconciled:{ticket}",
        )
        record = dataclasses.replace(
            record,
            held=None,
            status=PaymentStatus.APPROVED,
            payment=payment,
            provider_ref=payment.provider_ref,
            reconciled_by=note,
        )
    else:
        record = dataclasses.replace(record, held=None, provider=None, reconciled_by=note)
    store.set(_record_key(order_id), _codec.dumps(record))
    store.delete(_pending_key(order_id, operation))
    store.delete(f"reconcile:{ticket}")
    return payment


def payment_status(st: State, *, order_id: str) -> Op[Outcome[Payment]]:
    """``app.payment.status``: the order as its provider sees it (cached when down)."""
    _text("order_id", order_id, limit=100)
    record = _payment_record(st, order_id)
    if record is None or record.provider is None:
        raise InvalidRequest(f"order {order_id!r} is unknown")
    cache_key = f"payment.status:{order_id}"
    try:
        routed = yield Invoke(
            Capability.PAYMENT,
            "payment.status",
            OperationKind.READ,
            lambda p: p.status(order_id=order_id, provider_ref=record.provider_ref or ""),
            providers=(record.provider,),
        )
    except Unavailable as exc:
        return st.cache_get(Payment, cache_key, exc)
    # Secrets never go into the read cache: a cached status comes without its billing key.
    st.cache_put(cache_key, dataclasses.replace(routed.value, billing_key=None), "payment.status")
    return _outcome(routed)


# -- identity ----------------------------------------------------------------------------


def _jwks_key(provider: str) -> str:
    return f"jwks:{provider}"


def _jwks_cache(st: State, p: Any) -> JwksCache:
    """The provider's key-set cache, loaded from disk (with its fetch time) on first use."""
    cache = st.jwks.get(p.name)
    if cache is not None:
        return cache
    cache = JwksCache(clock=st.clock, options=st.jwks_options)
    raw = st.store.get(_jwks_key(p.name))
    if raw is not None:
        try:
            data = json.loads(raw)
            cache.update(data["jwks"], fetched_at=float(data["fetched_at"]))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise StoreError(f"cached key set of {p.name} is unreadable: {exc}") from exc
    return st.jwks.setdefault(p.name, cache)


def _jwks(st: State, p: Any, *, force: bool) -> Op[tuple[dict[str, Any], float | None]]:
    """The provider's key set, and its age when it is served past its freshness.

    Fresh keys (younger than ``refresh_after``) are used as they are. Otherwise one
    fetch is made (single-flight, never more often than ``min_refetch_interval``, which
    also bounds refetches for unknown ``kid`` values); while the provider is down the
    cached keys are used up to ``max_stale`` old, and never after.
    """
    cache = _jwks_cache(st, p)
    now = st.clock.time()
    if not force and not cache.needs_refresh(now):
        doc = cache.document(now)
        if doc is not None:
            return doc, None
    if cache.begin_fetch(now, force=force):
        try:
            routed = yield Invoke(
                Capability.IDENTITY,
                "identity.jwks",
                OperationKind.READ,
                lambda q: q.jwks(),
                providers=(p.name,),
            )
        except Unavailable:
            cache.end_fetch(None)
            routed = None
        except BaseException:
            cache.end_fetch(None)
            raise
        if routed is not None:
            try:
                cache.end_fetch(routed.value)
            except ValueError as exc:
                raise Unauthorized(
                    f"{p.name} served a malformed key set: {exc}",
                    provider=p.name,
                    code="id_token_jwks",
                ) from exc
            fetched = st.clock.time()
            st.store.set(
                _jwks_key(p.name),
                json.dumps({"jwks": routed.value, "fetched_at": fetched}).encode(),
            )
            return cache.document(fetched) or routed.value, None
    now = st.clock.time()
    doc = cache.document(now)
    if doc is None:
        age = cache.age(now)
        why = (
            "no key set has been fetched"
            if age is None
            else f"the cached key set is {age:.0f}s old, past max_stale"
            f" ({st.jwks_options.max_stale:.0f}s)"
        )
        raise Unavailable(
            f"identity.jwks: {p.name} cannot be asked now and {why}; tokens are not"
            " verified with keys that old",
            operation="identity.jwks",
        )
    return doc, cache.age(now) if cache.needs_refresh(now) else None


def _verify(st: State, p: Any, token: str, nonce: str | None) -> Op[tuple[Claims, float | None]]:
    jwks, stale = yield from _jwks(st, p, force=False)
    try:
        claims = verify_id_token(
            token,
            jwks=jwks,
            issuer=p.issuer,
            audience=p.client_id,
            nonce=nonce,
            now=st.clock.time(),
            provider=p.name,
        )
    except Unauthorized as exc:
        if exc.code != "id_token_kid" or stale is not None:
            raise
        # An unknown key id: the provider may have rotated keys; refetch once.
        jwks, stale = yield from _jwks(st, p, force=True)
        claims = verify_id_token(
            token,
            jwks=jwks,
            issuer=p.issuer,
            audience=p.client_id,
            nonce=nonce,
            now=st.clock.time(),
            provider=p.name,
        )
    return claims, stale


def identity_complete(
    st: State, *, provider: str, code: str, nonce: str | None, redirect_uri: str | None
) -> Op[Outcome[Session]]:
    """``app.identity.complete_login``: exchange the code, verify the ID token, and open a
    session for the app-level user linked to the provider's subject."""
    _text("code", code, limit=2048)
    p = st.provider(Capability.IDENTITY, provider)
    routed = yield Invoke(
        Capability.IDENTITY,
        "identity.exchange_code",
        OperationKind.PAYMENT,  # single-use code: never blindly resent after it left
        lambda q: q.exchange_code(code=code, redirect_uri=redirect_uri, nonce=nonce),
        providers=(provider,),
    )
    tokens: TokenSet = routed.value
    if tokens.id_token is None:
        raise ConfigError(
            f"{provider} returned no id_token: enable OpenID Connect for the app at the"
            " provider (Kakao Developers: Kakao Login > OpenID Connect) and request the"
            " 'openid' scope",
            key=f"identity.{provider}.scopes",
        )
    claims, _ = yield from _verify(st, p, tokens.id_token, nonce)
    user_id = st.directory.user_for(provider, claims.subject)
    if user_id is None:
        user_id = new_key("u")
        st.directory.link(user_id, provider=provider, subject=claims.subject)
    now = st.clock.time()
    session = Session(
        session_id=new_key("s"),
        user_id=user_id,
        provider=provider,
        subject=claims.subject,
        expires_at=now + st.identity_policy.session_seconds,
        scopes=frozenset({"read", "write", "payment"}),
    )
    _save_session(st, session, tokens)
    return _outcome(routed, session)


def _save_session(
    st: State, session: Session, tokens: TokenSet, grace: float | None = None
) -> None:
    sealed = st.sealer.seal(_codec.dumps(tokens), purpose=f"session:{session.session_id}")
    st.save(f"session:{session.session_id}", SessionRecord(session, sealed.hex(), grace))


def _load_session(st: State, session_id: str) -> tuple[SessionRecord, TokenSet]:
    _text("session_id", session_id, limit=128)
    record = st.load(SessionRecord, f"session:{session_id}", f"session {session_id!r}")
    if record is None:
        raise Unauthorized(f"session {session_id!r} is unknown or logged out", code="no_session")
    raw = st.sealer.open(bytes.fromhex(record.sealed_tokens), purpose=f"session:{session_id}")
    return record, _codec.loads(TokenSet, raw, what=f"tokens of session {session_id!r}")


def identity_verify(st: State, *, token: str) -> Op[Outcome[Claims]]:
    """``app.identity.verify``: check an ID token offline against the issuer's key set.

    Every rejection, of a malformed token too (empty, over ``MAX_TOKEN_CHARS``, not
    strict base64url JSON), is :class:`~superapp_sdk.Unauthorized` with a ``code``.
    """
    iss = token_claims(token).get("iss")  # unverified: only picks the provider's keys
    if not isinstance(iss, str):
        raise Unauthorized("id_token has no issuer", code="id_token_iss")
    for p in st.providers.get(Capability.IDENTITY, ()):
        if getattr(p, "issuer", None) == iss:
            claims, stale = yield from _verify(st, p, token, None)
            if stale is None:
                return Outcome(value=claims, via=Via.PRIMARY, provider=p.name)
            return Outcome(value=claims, via=Via.CACHE, provider=p.name, stale_for=stale)
    raise Unauthorized(f"id_token issuer {iss!r} is not a configured provider", code="id_token_iss")


def identity_refresh(st: State, *, session_id: str) -> Op[Outcome[Session]]:
    """``app.identity.refresh``: new tokens from the provider, or, while it is down, a
    grace extension of the session, limited in time and scope."""
    record, tokens = _load_session(st, session_id)
    session = record.session
    now = st.clock.time()
    policy = st.identity_policy
    if tokens.refresh_token is None:
        raise Unauthorized(f"session {session_id!r} has no refresh token", code="no_refresh_token")
    try:
        routed = yield Invoke(
            Capability.IDENTITY,
            "identity.refresh",
            OperationKind.WRITE,
            lambda q: q.refresh(refresh_token=tokens.refresh_token),
            providers=(session.provider,),
        )
    except Unavailable as exc:
        started = record.grace_started if record.grace_started is not None else now
        if now - started >= policy.max_grace_seconds:
            raise OfflineCapExceeded(
                f"session {session_id!r} has lived {now - started:.0f}s on grace, the limit "
                f"is {policy.max_grace_seconds:.0f}s (max_grace_seconds)"
            ) from exc
        grace = dataclasses.replace(
            session,
            expires_at=min(now + policy.grace_seconds, started + policy.max_grace_seconds),
            scopes=session.scopes & policy.grace_scopes,
            grace=True,
        )
        _save_session(st, grace, tokens, started)
        return Outcome(value=grace, via=Via.OFFLINE, attempts=exc.attempts)
    fresh: TokenSet = routed.value
    merged = dataclasses.replace(fresh, refresh_token=fresh.refresh_token or tokens.refresh_token)
    renewed = dataclasses.replace(
        session,
        expires_at=now + policy.session_seconds,
        scopes=session.scopes | frozenset({"read", "write", "payment"}),
        grace=False,
    )
    _save_session(st, renewed, merged)
    return _outcome(routed, renewed)


def identity_logout(st: State, *, session_id: str) -> None:
    """``app.identity.logout``: forget the session and its tokens."""
    _text("session_id", session_id, limit=128)
    st.store.delete(f"session:{session_id}")


def identity_login_url(
    redirect: LoginRedirect, provider: str, primary: bool, attempts: tuple[Attempt, ...]
) -> Outcome[LoginRedirect]:
    """The Outcome of ``login_url`` for the provider the router chose."""
    return Outcome(
        value=redirect,
        via=Via.PRIMARY if primary else Via.ALTERNATE,
        provider=provider,
        attempts=attempts,
    )


# -- mobility ----------------------------------------------------------------------------


def _place(name: str, value: object) -> Place:
    if not isinstance(value, Place):
        raise ValueError(f"{name} must be a Place, got {type(value).__name__}")
    return value


def mobility_estimate(st: State, *, origin: Place, destination: Place) -> Op[Outcome[Estimate]]:
    """``app.mobility.estimate``: fare and duration, hedged; cached when every provider is
    down."""
    _place("origin", origin)
    _place("destination", destination)
    cache_key = (
        f"mobility.estimate:{origin.lat:.4f},{origin.lng:.4f}:"
        f"{destination.lat:.4f},{destination.lng:.4f}"
    )
    try:
        routed = yield Invoke(
            Capability.MOBILITY,
            "mobility.estimate",
            OperationKind.READ,
            lambda p: p.estimate(origin=origin, destination=destination),
            hedge=True,
        )
    except Unavailable as exc:
        return st.cache_get(Estimate, cache_key, exc)
    st.cache_put(cache_key, routed.value, "mobility.estimate")
    return _outcome(routed)


def _ride_owner(st: State, ride_id: str) -> str:
    raw = st.store.get(f"ride:{_text('ride_id', ride_id, limit=128)}")
    if raw is None:
        raise InvalidRequest(f"ride {ride_id!r} is unknown")
    return raw.decode()


def mobility_request_ride(
    st: State, *, rider: str, origin: Place, destination: Place, idempotency_key: str | None
) -> Op[Outcome[Ride]]:
    """``app.mobility.request_ride``."""
    _text("rider", rider, limit=128)
    _place("origin", origin)
    _place("destination", destination)
    key = (
        _text("idempotency_key", idempotency_key, limit=255) if idempotency_key else new_key("ride")
    )
    if idempotency_key:
        _claim_key(
            st,
            "mobility.request_ride",
            key,
            {"rider": rider, "origin": origin, "destination": destination},
        )
    routed = yield Invoke(
        Capability.MOBILITY,
        "mobility.request_ride",
        OperationKind.WRITE,
        lambda p: p.request_ride(
            rider=rider, origin=origin, destination=destination, idempotency_key=key
        ),
        once=True,
    )
    st.store.set(f"ride:{routed.value.ride_id}", routed.provider.encode())
    return _outcome(routed)


def mobility_ride(st: State, *, ride_id: str) -> Op[Outcome[Ride]]:
    """``app.mobility.ride``: the ride from the provider that has it."""
    owner = _ride_owner(st, ride_id)
    cache_key = f"mobility.ride:{ride_id}"
    try:
        routed = yield Invoke(
            Capability.MOBILITY,
            "mobility.ride",
            OperationKind.READ,
            lambda p: p.ride(ride_id),
            providers=(owner,),
        )
    except Unavailable as exc:
        return st.cache_get(Ride, cache_key, exc)
    st.cache_put(cache_key, routed.value, "mobility.ride")
    return _outcome(routed)


def mobility_cancel_ride(st: State, *, ride_id: str) -> Op[Outcome[Ride]]:
    """``app.mobility.cancel_ride``."""
    owner = _ride_owner(st, ride_id)
    routed = yield Invoke(
        Capability.MOBILITY,
        "mobility.cancel_ride",
        OperationKind.WRITE,
        lambda p: p.cancel_ride(ride_id, idempotency_key=f"cancel:{ride_id}"),
        providers=(owner,),
    )
    return _outcome(routed)


def mobility_end_rental(
    st: State, *, rental_id: str, location: Place, at: float, replay: bool = False
) -> Op[Outcome[RentalReceipt]]:
    """``app.mobility.end_rental``: ends now, or is queued (``Via.QUEUED``) and ended, once,
    when a provider is back; the rider is never stuck paying for a scooter."""
    _text("rental_id", rental_id, limit=128)
    _place("location", location)
    if isinstance(at, bool) or not isinstance(at, int | float) or at <= 0:
        raise ValueError(f"at must be epoch seconds > 0, got {at!r}")
    key = f"rental:{rental_id}:end"
    try:
        routed = yield Invoke(
            Capability.MOBILITY,
            "mobility.end_rental",
            OperationKind.WRITE,
            lambda p: p.end_rental(
                rental_id=rental_id, location=location, at=float(at), idempotency_key=key
            ),
            once=True,
        )
    except Unavailable as exc:
        if replay:
            raise
        payload = {"rental_id": rental_id, "location": _codec.encode(location), "at": float(at)}
        ticket = st.enqueue(f"rental:{rental_id}", "mobility.end_rental", payload, key)
        receipt = RentalReceipt(
            rental_id=rental_id,
            provider=OUTBOX,
            ended_at=float(at),
            location=location,
            fare=None,
            receipt_id=ticket,
            signature=None,
            reconciled=False,
        )
        return Outcome(value=receipt, via=Via.QUEUED, ticket=ticket, attempts=exc.attempts)
    return _outcome(routed)


def mobility_handoff(st: State, *, origin: Place, destination: Place) -> list[DeepLink]:
    """``app.mobility.handoff``: deep links into every configured mobility app."""
    _place("origin", origin)
    _place("destination", destination)
    links: list[DeepLink] = []
    for p in st.providers.get(Capability.MOBILITY, ()):
        deep_links = getattr(p, "deep_links", None)
        if deep_links is not None:
            links.extend(deep_links(origin=origin, destination=destination))
    return links


# -- probes --------------------------------------------------------------------------------

_PROBE_ROUTE = (Place(37.5665, 126.9780), Place(37.5547, 126.9707))
_PROBE_ORDER = "superapp-health-probe"


def default_probe(capability: Capability) -> Callable[[Any], Call[Any]] | None:
    """A cheap, harmless call that tells whether a recovering provider answers again.

    Probes run in the background, so no user waits on a provider that is still dead. A
    refusal counts as an answer (the status of an order that does not exist). Chat has no
    harmless call: its recovery is probed by a user's message with a short timeout.
    """
    if capability is Capability.IDENTITY:
        return lambda p: p.jwks()
    if capability is Capability.PAYMENT:
        return lambda p: p.status(order_id=_PROBE_ORDER, provider_ref=_PROBE_ORDER)
    if capability is Capability.MOBILITY:
        return lambda p: p.estimate(origin=_PROBE_ROUTE[0], destination=_PROBE_ROUTE[1])
    return None


# -- outbox replay -----------------------------------------------------------------------


def replay(st: State, operation: str, payload: Any, key: str) -> Op[object]:
    """Deliver one outbox item: the same operation, with the same idempotency key."""
    if not isinstance(payload, dict):
        raise StoreError(f"outbox payload of {operation} is not an object")
    if operation == "chat.send":
        result: object = yield from chat_send(
            st,
            to=payload["to"],
            text=payload["text"],
            conversation=payload.get("conversation"),
            idempotency_key=key,
            defer=False,
            replay=True,
        )
    elif operation == "payment.confirm":
        result = yield from payment_confirm(
            st,
            order_id=payload["order_id"],
            approval=_codec.decode(Approval, payload["approval"]),
            replay=True,
        )
    elif operation == "payment.charge":
        result = yield from payment_charge(
            st,
            order_id=payload["order_id"],
            amount=payload["amount"],
            currency=payload["currency"],
            user_id=payload["user_id"],
            offline=OfflinePolicy.DENY,
            replay=True,
        )
    elif operation == "mobility.end_rental":
        result = yield from mobility_end_rental(
            st,
            rental_id=payload["rental_id"],
            location=_codec.decode(Place, payload["location"]),
            at=payload["at"],
            replay=True,
        )
    else:
        raise StoreError(f"outbox holds an unknown operation {operation!r}")
    return result
