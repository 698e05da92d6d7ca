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

import base64
import dataclasses
import enum
import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from superapp_sdk import _codec
from superapp_sdk._directory import Directory
from superapp_sdk._errors import (
    IdempotencyConflict,
    InvalidRequest,
    NotApplicable,
    OfflineCapExceeded,
    StoreError,
    Unauthorized,
    Unavailable,
)
from superapp_sdk._outcome import Attempt, Outcome, Via
from superapp_sdk.capabilities._common import Capability, Money, Provider
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
from superapp_sdk.resilience._router import OutcomeUnknown, Routed
from superapp_sdk.store._protocol import Store
from superapp_sdk.tokens import token_header, verify_id_token
from superapp_sdk.tokens._seal import Sealer

__all__ = ["Invoke", "OfflinePolicy", "Op", "State"]

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
    """

    capability: Capability
    operation: str
    kind: OperationKind
    build: Callable[[Any], Call[Any]]
    resolve: Callable[[Any], Call[Any]] | None = None
    hedge: bool = False
    providers: Collection[str] | None = None


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


def _outcome(routed: Routed[T], value: T | None = None) -> Outcome[T]:
    return Outcome(
        value=routed.value if value is None else value,
        via=Via.PRIMARY if routed.primary else Via.ALTERNATE,
        provider=routed.provider,
        attempts=routed.attempts,
    )


# -- local records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """What the SDK keeps per order: the one idempotency key, and where the order is.

    ``payment`` is kept without its ``billing_key``; a billing key issued with the payment
    (KakaoPay ``sid``) is kept sealed in ``sealed_billing_key``.
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
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.cache = cache
        self.directory = directory
        self.sealer = sealer
        self.clock = clock
        self.providers = providers
        self.identity_policy = identity_policy

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
    """``app.chat.send``: see :meth:`~superapp_sdk.SuperApp.chat`."""
    _text("to", to, limit=256)
    _text("text", text)
    _opt_text("conversation", conversation)
    key = (
        _text("idempotency_key", idempotency_key, limit=255) if idempotency_key else new_key("msg")
    )
    entity = f"chat:{conversation or to}"
    payload = {"to": to, "text": text, "conversation": conversation}
    if idempotency_key and not replay:
        _claim_key(st, "chat.send", key, payload)
    if not replay and defer and st.outbox.has_pending(entity):
        # Earlier messages of this conversation are still queued: keep their order.
        ticket = st.enqueue(entity, "chat.send", payload, key)
        return _queued_receipt(ticket, to, conversation, st, ())
    contact = st.directory.get(to)

    def build(p: ChatProvider) -> Call[MessageReceipt]:
        address = contact.addresses.get(p.name)
        if address is None:
            raise NotApplicable(f"user {to!r} has no address at {p.name}", provider=p.name)
        return p.send(to=address, text=text, conversation=conversation, idempotency_key=key)

    try:
        routed = yield Invoke(Capability.CHAT, "chat.send", OperationKind.WRITE, build)
    except Unavailable as exc:
        if not defer or replay:
            raise
        ticket = st.enqueue(entity, "chat.send", payload, key)
        return _queued_receipt(ticket, to, conversation, st, exc.attempts)
    return _outcome(routed)


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
        raise InvalidRequest(
            f"order {order_id!r} exists with another amount or user; an order id is one payment"
        )
    return existing


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
    money = Money(amount, currency)
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


def _resolver(order_id: str, record: PaymentRecord, done: Collection[PaymentStatus]) -> Any:
    def resolve(p: Any) -> Call[Payment | None]:
        return _status_then(
            p.status(order_id=order_id, provider_ref=record.provider_ref or ""), done
        )

    return resolve


def _status_then(call: Call[Payment], done: Collection[PaymentStatus]) -> Call[Payment | None]:
    """A status query whose result is the Payment when its status is in ``done``, else
    ``None`` (the operation provably did not execute)."""

    def pick(payment: Payment) -> Payment | None:
        return payment if payment.status in done else None

    if isinstance(call, DirectCall):
        direct = call

        async def arun(timeout: float | None) -> Payment | None:
            return pick(await direct.arun(timeout))

        return DirectCall(run=lambda timeout: pick(direct.run(timeout)), arun=arun)

    def flow() -> Flow[Payment | None]:
        return pick((yield from call))

    return flow()


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
    if record.status is PaymentStatus.APPROVED and kept is not None:
        return Outcome(value=kept, via=Via.PRIMARY, provider=record.provider)
    holder: str = record.provider
    record = dataclasses.replace(record, provider_ref=approval.provider_ref)
    try:
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
            resolve=_resolver(order_id, record, {PaymentStatus.APPROVED}),
            providers=(holder,),
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
    """``app.payment.charge``: a server-side charge with the user's stored billing key."""
    _text("order_id", order_id, limit=100)
    _text("user_id", user_id, limit=100)
    if not isinstance(offline, OfflinePolicy):
        raise ValueError(f"offline must be an OfflinePolicy, got {offline!r}")
    money = Money(amount, currency)
    record = _new_record(st, order_id, money, user_id)
    kept = _kept_payment(st, record)
    if record.status is PaymentStatus.APPROVED and kept is not None:
        # At most one successful charge per order: a repeat returns the first.
        return Outcome(value=kept, via=Via.PRIMARY, provider=record.provider)

    def build(p: PaymentProvider) -> Call[Payment]:
        key = st.directory.billing_key(user_id, p.name)
        if key is None:
            raise NotApplicable(f"user {user_id!r} has no billing key at {p.name}", provider=p.name)
        return p.charge(
            order_id=order_id,
            amount=money,
            item_name=f"order {order_id}",
            user_id=user_id,
            billing_key=key,
            idempotency_key=record.idempotency_key,
        )

    try:
        routed = yield Invoke(
            Capability.PAYMENT,
            "payment.charge",
            OperationKind.PAYMENT,
            build,
            resolve=_resolver(order_id, record, {PaymentStatus.APPROVED}),
            providers=(record.provider,) if record.provider else None,
        )
    except (Unavailable, OutcomeUnknown) as exc:
        if replay or offline is OfflinePolicy.DENY:
            raise
        payload = {"order_id": order_id, "amount": amount, "currency": currency, "user_id": user_id}
        ticket = st.enqueue(
            f"payment:{order_id}", "payment.charge", payload, record.idempotency_key
        )
        return _queued_payment(record, ticket, getattr(exc, "attempts", ()))
    return _settle(st, record, routed)


def payment_cancel(
    st: State, *, order_id: str, amount: int | None, reason: str
) -> Op[Outcome[Payment]]:
    """``app.payment.cancel``: refund all of an order, or ``amount`` of it."""
    _text("order_id", order_id, limit=100)
    _text("reason", reason, limit=200)
    record = _payment_record(st, order_id)
    if record is None or record.provider is None or record.payment is None:
        raise InvalidRequest(f"order {order_id!r} has no payment to cancel")
    money = record.amount if amount is None else Money(amount, record.amount.currency)
    if money.amount > record.amount.amount:
        raise InvalidRequest(f"cannot cancel {money.amount}, the order is {record.amount.amount}")
    key = f"{record.idempotency_key}:cancel:{money.amount}"
    routed = yield Invoke(
        Capability.PAYMENT,
        "payment.cancel",
        OperationKind.PAYMENT,
        lambda p: p.cancel(
            order_id=order_id,
            provider_ref=record.provider_ref or "",
            amount=money,
            reason=reason,
            idempotency_key=key,
        ),
        resolve=_resolver(
            order_id, record, {PaymentStatus.CANCELED, PaymentStatus.PARTIALLY_CANCELED}
        ),
        providers=(record.provider,),
    )
    return _settle(st, record, routed)


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


def _jwks(st: State, p: Any, *, force: bool) -> Op[tuple[dict[str, Any], float | None]]:
    """The provider's key set: fetched (and cached on disk) or, when it is down, the cached
    copy with its age."""
    cached = st.store.get(_jwks_key(p.name))
    if cached is not None and not force:
        data = json.loads(cached)
        if st.clock.time() - data["fetched_at"] < 3600:
            return data["jwks"], None
    try:
        routed = yield Invoke(
            Capability.IDENTITY,
            "identity.jwks",
            OperationKind.READ,
            lambda q: q.jwks(),
            providers=(p.name,),
        )
    except Unavailable:
        if cached is None:
            raise
        data = json.loads(cached)
        return data["jwks"], st.clock.time() - data["fetched_at"]
    st.store.set(
        _jwks_key(p.name),
        json.dumps({"jwks": routed.value, "fetched_at": st.clock.time()}).encode(),
    )
    return routed.value, None


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
        raise Unauthorized(
            f"{provider} returned no id_token; enable OpenID Connect", provider=provider
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
    """``app.identity.verify``: check an ID token offline against the issuer's key set."""
    _text("token", token, limit=16384)
    token_header(token)  # refuses what is not a compact JWS before anything else
    issuer = _unverified_issuer(token)
    for p in st.providers.get(Capability.IDENTITY, ()):
        if getattr(p, "issuer", None) == issuer:
            claims, stale = yield from _verify(st, p, token, None)
            if stale is None:
                return Outcome(value=claims, via=Via.PRIMARY, provider=p.name)
            return Outcome(value=claims, via=Via.CACHE, provider=p.name, stale_for=stale)
    raise Unauthorized(
        f"id_token issuer {issuer!r} is not a configured provider", code="id_token_iss"
    )


def _unverified_issuer(token: str) -> str:
    try:
        body = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        iss = data["iss"]
        if not isinstance(iss, str):
            raise TypeError("iss is not a string")
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise Unauthorized("id_token payload is unreadable", code="id_token_format") from exc
    return iss


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
