"""Tiny in-process alternate providers, one per capability, to test failover.

Each echo provider implements its capability's Protocol with
:class:`~superapp_sdk.providers._http.DirectCall` operations that serve from memory, so a
test can fail over from the simulated Kakao data center without running a second
server::

    chat = EchoChat(recipients=["lee@example.com"])
    app = SuperApp(chat=[KakaoTalk(...), chat], ...)
    chat.fail = ProviderConnectError("echo is down too", provider=chat.name)  # burn it
    chat.fail = None                                                          # restore
    assert [c.operation for c in chat.calls] == ["chat.send", ...]

They are honest doubles: they validate arguments like the real adapters (``ValueError``
before anything is sent), refuse on business grounds with
:class:`~superapp_sdk._errors.Declined` (unknown recipient, configured card decline,
invalid authorization code), and deduplicate writes by idempotency key like Stripe does
(the same key and payload answer the first result again; the same key with another
payload raises :class:`~superapp_sdk._errors.IdempotencyConflict`). Keys are scoped per
operation, so one key per order may serve an order's ready, approve and cancel.

Deduplication is declared, not only done: ``deduplicates`` names the operations a provider
promises to deduplicate by idempotency key, which is what the SDK trusts when it decides
whether a write whose answer was lost may be sent to it again. By default it is empty, so
the SDK treats the double like KakaoPay or KakaoTalk, which promise nothing (the double
still replays a repeated key as above, and ``EchoPay`` refuses a second charge of an order
already charged). With ``dedupe="key"`` it names the double's writes, as Stripe, Toss and
LINE document theirs, and ``EchoPay`` deduplicates by key alone: a new key charges an
order again.

``fail``, when set, makes every network operation raise that exception (a fresh
traceback each time) before it touches any state; operations without I/O
(``authorize_url``, ``deep_links``) are unaffected, as they are for every provider.
:meth:`~_Echo.lose_next` instead lets the next operations execute and then raises, as when
the answer of a write that ran is lost. Every attempt is recorded in ``calls``, with the
idempotency key it carried; every executed charge, refund, message, ride and rental end
in ``effects()``. All of it is thread-safe.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from superapp_sdk._errors import (
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    ProviderConnectError,
    SuperAppError,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.chat import Message, MessageReceipt
from superapp_sdk.capabilities.identity import LoginRedirect, TokenSet, UserInfo
from superapp_sdk.capabilities.mobility import (
    MOBILITY_OPERATIONS,
    DeepLink,
    Driver,
    Estimate,
    Place,
    RentalReceipt,
    Ride,
    RideStatus,
)
from superapp_sdk.capabilities.payment import (
    PAYMENT_OPERATIONS,
    Approval,
    Checkout,
    Payment,
    PaymentStatus,
)
from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.providers._http import DirectCall
from superapp_sdk.testing.kakao._effects import Effect, EffectLog
from superapp_sdk.testing.kakao.mobility import TaxiTariff, haversine_m

if TYPE_CHECKING:
    from superapp_sdk.capabilities.chat import ChatProvider
    from superapp_sdk.capabilities.identity import IdentityProvider
    from superapp_sdk.capabilities.mobility import MobilityProvider
    from superapp_sdk.capabilities.payment import PaymentProvider

__all__ = ["Dedupe", "EchoCall", "EchoChat", "EchoLogin", "EchoMobility", "EchoPay"]

T = TypeVar("T")

Dedupe = Literal["key"] | None
"""What an echo provider promises to deduplicate by: ``None`` (nothing declared) or
``"key"`` (its writes, by idempotency key)."""


def _require(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _require_optional(name: str, value: object) -> str | None:
    return None if value is None else _require(name, value)


def _require_place(name: str, value: object) -> Place:
    if not isinstance(value, Place):
        raise ValueError(f"{name} must be a Place, got {value!r}")
    return value


def _require_money(name: str, value: object) -> Money:
    if not isinstance(value, Money):
        raise ValueError(f"{name} must be Money, got {value!r}")
    if value.amount <= 0:
        raise ValueError(f"{name} must be > 0, got {value.amount}")
    return value


def _require_url(name: str, value: object) -> str:
    url = _require(name, value)
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{name} must be an absolute http(s) URL, got {url!r}")
    return url


@dataclass(frozen=True, slots=True)
class EchoCall:
    """One attempt at an echo provider's operation.

    Attributes:
        operation: the operation name (``"chat.send"``).
        arguments: the arguments it was called with, read-only.
        failed: True when the ``fail`` switch made it raise (nothing executed).
        lost: True when :meth:`~_Echo.lose_next` made it raise after it executed.
    """

    operation: str
    arguments: Mapping[str, object] = field(hash=False)
    failed: bool = False
    lost: bool = False

    @property
    def idempotency_key(self) -> str | None:
        """The idempotency key the call carried, if the operation takes one."""
        key = self.arguments.get("idempotency_key")
        return key if isinstance(key, str) else None


@dataclass(frozen=True, slots=True)
class _Stored:
    fingerprint: tuple[object, ...]
    outcome: object  # the model answered, or the Declined raised


class _Echo:
    """What every echo provider shares: identity, the fail and lose switches, the record of
    calls and effects, the lock."""

    #: The operations this provider implements.
    operations: frozenset[str]
    #: The operations this provider deduplicates by idempotency key with ``dedupe="key"``.
    keyed_operations: frozenset[str] = frozenset()

    def __init__(
        self, *, name: str, failure_domain: str, clock: Clock | None, dedupe: Dedupe = None
    ) -> None:
        self.name = _require("name", name)
        self.failure_domain = _require("failure_domain", failure_domain)
        if dedupe not in (None, "key"):
            raise ValueError(f"dedupe must be None or 'key', got {dedupe!r}")
        self.dedupe: Dedupe = dedupe
        #: The operations this provider promises to deduplicate by idempotency key (see
        #: the module docstring): empty unless ``dedupe="key"``.
        self.deduplicates: frozenset[str] = (
            self.keyed_operations if dedupe == "key" else frozenset()
        )
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._fail: Exception | None = None
        self._losses: list[tuple[Exception | None, str | None]] = []
        self._calls: list[EchoCall] = []
        self._effects = EffectLog()
        self._keys: dict[tuple[str, str], _Stored] = {}
        self._ids = itertools.count(1)

    @property
    def fail(self) -> Exception | None:
        """The exception every network operation raises while set; ``None``: healthy."""
        with self._lock:
            return self._fail

    @fail.setter
    def fail(self, error: Exception | None) -> None:
        if error is not None and not isinstance(error, Exception):
            raise ValueError(f"fail must be an Exception or None, got {error!r}")
        with self._lock:
            self._fail = error

    @property
    def calls(self) -> list[EchoCall]:
        """Every attempt so far, oldest first (a copy)."""
        with self._lock:
            return list(self._calls)

    def effects(
        self, kind: str | None = None, *, order_id: str | None = None, key: str | None = None
    ) -> tuple[Effect, ...]:
        """Every effect this provider executed, oldest first; only those of ``kind``,
        ``order_id`` and ``key`` (the idempotency key it executed under) when given.

        A call answered from a stored idempotency key, refused, or stopped by ``fail``
        executed nothing and is not listed; one stopped by :meth:`lose_next` is.
        """
        return self._effects.effects(kind, order_id=order_id, key=key)

    def lose_next(
        self, error: Exception | None = None, *, count: int = 1, operation: str | None = None
    ) -> None:
        """Let the next ``count`` network operations (of ``operation`` only, when given)
        execute and then raise ``error`` instead of answering: the effect is applied and
        the answer lost.

        Args:
            error: what each raises; by default a
                :class:`~superapp_sdk._errors.ProviderConnectError` with
                ``request_sent=True`` (a connection reset after the request was sent).
            count: how many operations lose their answer (>= 1).
            operation: the operation name (``"payment.charge"``); any when not given.

        ``fail`` wins over a pending loss: an operation it stops executes nothing and does
        not spend the loss.
        """
        if error is not None and not isinstance(error, Exception):
            raise ValueError(f"error must be an Exception or None, got {error!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        if operation is not None and operation not in self.operations:
            raise ValueError(
                f"operation must be one of {sorted(self.operations)}, got {operation!r}"
            )
        with self._lock:
            self._losses.extend([(error, operation)] * count)

    def _record(
        self, operation: str, arguments: Mapping[str, object], *, failed: bool, lost: bool = False
    ) -> None:
        self._calls.append(EchoCall(operation, MappingProxyType(dict(arguments)), failed, lost))

    def _take_loss(self, operation: str) -> Exception | None:
        """The error that replaces this operation's answer, if a loss is pending for it."""
        for i, (error, wanted) in enumerate(self._losses):
            if wanted is None or wanted == operation:
                del self._losses[i]
                return error or ProviderConnectError(
                    "connection reset after the request was sent (injected: answer lost)",
                    provider=self.name,
                    operation=operation,
                    request_sent=True,
                )
        return None

    def _call(
        self, operation: str, arguments: Mapping[str, object], body: Callable[[], T]
    ) -> DirectCall[T]:
        def run(timeout: float | None) -> T:
            # In memory: nothing to wait for, so ``timeout`` never runs out.
            with self._lock:
                error = self._fail
                if error is not None:
                    self._record(operation, arguments, failed=True)
                else:
                    error = self._take_loss(operation)
                    self._record(operation, arguments, failed=False, lost=error is not None)
                    if error is None:
                        return body()
                    # The operation runs; its answer, a result or a refusal, is lost.
                    with contextlib.suppress(SuperAppError):
                        body()
            raise error.with_traceback(None)

        async def arun(timeout: float | None) -> T:
            return run(timeout)

        return DirectCall(run, arun)

    def _once(
        self, operation: str, key: str, fingerprint: tuple[object, ...], body: Callable[[], T]
    ) -> T:
        """Run ``body`` once per ``(operation, key)``; replay its answer or refusal after.

        Like Stripe's idempotency keys: a refusal is kept and replayed too, because the
        request executed; a different payload under a used key is a conflict.
        """
        stored = self._keys.get((operation, key))
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was used for a different {operation} request",
                    provider=self.name,
                    operation=operation,
                    code="idempotency_conflict",
                    request_sent=True,
                )
            if isinstance(stored.outcome, Declined):
                raise stored.outcome.with_traceback(None)
            return cast("T", stored.outcome)
        try:
            result = body()
        except Declined as refusal:
            self._keys[(operation, key)] = _Stored(fingerprint, refusal)
            raise
        self._keys[(operation, key)] = _Stored(fingerprint, result)
        return result

    def _declined(self, operation: str, message: str, code: str) -> Declined:
        return Declined(
            message, provider=self.name, operation=operation, code=code, request_sent=True
        )

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def __repr__(self) -> str:
        state = "failing" if self._fail is not None else "healthy"
        return f"{type(self).__name__}(name={self.name!r}, {state})"


# -- chat --------------------------------------------------------------------------------


class EchoChat(_Echo):
    """An in-memory :class:`~superapp_sdk.capabilities.chat.ChatProvider` with history.

    Args:
        recipients: the addresses it can deliver to; ``None`` delivers to any address.
            A message to any other address is refused as ``"unknown recipient"``.
        sender: the ``sender`` of the messages it records.
        name: the provider name.
        failure_domain: the failure domain.
        clock: time for receipts and messages.
        dedupe: ``"key"`` declares ``chat.send`` in ``deduplicates``, as LINE's
            ``X-Line-Retry-Key`` is: a repeated key is not delivered again (the double
            behaves so either way; see the module docstring).

    Messages sent without a ``conversation`` are kept under the recipient's address.
    Every delivery is a ``"chat.send"`` effect (``to``, ``text``, ``key``, ``ref`` the
    message id) in :meth:`effects`.
    """

    capability = Capability.CHAT
    operations = frozenset({"chat.send", "chat.history"})
    keyed_operations = frozenset({"chat.send"})

    def __init__(
        self,
        *,
        recipients: Iterable[str] | None = None,
        sender: str = "app",
        name: str = "echo.chat",
        failure_domain: str = "echo",
        clock: Clock | None = None,
        dedupe: Dedupe = None,
    ) -> None:
        super().__init__(name=name, failure_domain=failure_domain, clock=clock, dedupe=dedupe)
        if isinstance(recipients, str):
            raise ValueError(f"recipients must be a collection of addresses, got {recipients!r}")
        self._recipients = None if recipients is None else set(recipients)
        self.sender = _require("sender", sender)
        self._log: dict[str, list[Message]] = {}

    def add_recipient(self, address: str) -> None:
        """Make ``address`` deliverable."""
        _require("address", address)
        with self._lock:
            if self._recipients is not None:
                self._recipients.add(address)

    def messages(self, conversation: str | None = None) -> list[Message]:
        """Every delivered message (of ``conversation`` when given), oldest first."""
        with self._lock:
            if conversation is not None:
                return list(self._log.get(conversation, ()))
            return sorted((m for log in self._log.values() for m in log), key=lambda m: m.sent_at)

    def send(
        self, *, to: str, text: str, conversation: str | None = None, idempotency_key: str
    ) -> DirectCall[MessageReceipt]:
        """Deliver ``text`` to ``to``; the same key delivers once.

        Raises:
            Declined: ``to`` is not a known recipient (``"unknown recipient"``).
            IdempotencyConflict: the key was used for another message.
        """
        _require("to", to)
        _require("text", text)
        _require_optional("conversation", conversation)
        _require("idempotency_key", idempotency_key)
        operation = "chat.send"

        def deliver() -> MessageReceipt:
            if self._recipients is not None and to not in self._recipients:
                raise self._declined(operation, f"unknown recipient: {to}", "unknown_recipient")
            now = self._clock.time()
            message_id = f"{self.name}:{idempotency_key}"
            thread = conversation or to
            self._log.setdefault(thread, []).append(
                Message(message_id, thread, self.sender, text, now)
            )
            self._effects.record(
                Effect(operation, now, key=idempotency_key, ref=message_id, to=to, text=text)
            )
            return MessageReceipt(message_id, self.name, to, conversation, now)

        fingerprint = (to, text, conversation)
        return self._call(
            operation,
            {
                "to": to,
                "text": text,
                "conversation": conversation,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, fingerprint, deliver),
        )

    def history(self, conversation: str, *, limit: int = 50) -> DirectCall[list[Message]]:
        """The last ``limit`` messages of ``conversation``, oldest first (empty if none)."""
        _require("conversation", conversation)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        return self._call(
            "chat.history",
            {"conversation": conversation, "limit": limit},
            lambda: list(self._log.get(conversation, ())[-limit:]),
        )


# -- payment -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Payment:
    ref: str
    order_id: str
    user_id: str
    amount: Money
    token: str
    expires_at: float = math.inf
    status: PaymentStatus = PaymentStatus.PENDING
    approved_at: float | None = None
    approval_id: str | None = None
    billing_key: str | None = None
    canceled: int = 0


@dataclass(frozen=True, slots=True)
class _DeclineRule:
    user_id: str | None
    amount: int | None
    reason: str

    def matches(self, user_id: str, amount: Money) -> bool:
        return (self.user_id is None or self.user_id == user_id) and (
            self.amount is None or self.amount == amount.amount
        )


_CHARGED = (PaymentStatus.APPROVED, PaymentStatus.PARTIALLY_CANCELED, PaymentStatus.CANCELED)


class EchoPay(_Echo):
    """An in-memory :class:`~superapp_sdk.capabilities.payment.PaymentProvider`.

    The user "approves" at once: :attr:`Checkout.redirect_url` is the app's return URL
    with ``provider_ref``, ``token`` and ``order_id`` in its query, ready for an
    :class:`~superapp_sdk.capabilities.payment.Approval`. Billing keys come from
    :meth:`issue_billing_key`; :meth:`decline` configures card refusals. By default, like
    Toss's ``orderId``, an order charged once is never charged again by this provider.

    Args:
        name: the provider name.
        failure_domain: the failure domain.
        clock: time for approvals and checkout expiry.
        dedupe: ``"key"`` makes it deduplicate by idempotency key only, as Stripe and
            Toss do: a repeated key with the same payload answers the stored result, a new
            key executes again, even for an order already charged. ``deduplicates`` then
            names ``payment.ready``, ``payment.approve``, ``payment.charge`` and
            ``payment.cancel``.

    Every executed approval, charge and cancel is an effect in :meth:`effects`
    (``"payment.approve"``, ``"payment.charge"``, ``"payment.cancel"``, with ``order_id``,
    ``key``, ``ref`` the ``provider_ref``, and ``amount`` charged or refunded).
    """

    capability = Capability.PAYMENT
    operations = PAYMENT_OPERATIONS
    keyed_operations = frozenset(
        {"payment.ready", "payment.approve", "payment.charge", "payment.cancel"}
    )

    #: Seconds a checkout stays approvable (KakaoPay's 15 minutes).
    checkout_ttl = 15 * 60

    def __init__(
        self,
        *,
        name: str = "echo.pay",
        failure_domain: str = "echo",
        clock: Clock | None = None,
        dedupe: Dedupe = None,
    ) -> None:
        super().__init__(name=name, failure_domain=failure_domain, clock=clock, dedupe=dedupe)
        self._payments: dict[str, _Payment] = {}
        self._billing_keys: dict[str, str] = {}
        self._rules: list[_DeclineRule] = []

    # -- test helpers ----------------------------------------------------------------

    def issue_billing_key(self, user_id: str) -> str:
        """A billing key for ``user_id``, for :meth:`charge`."""
        _require("user_id", user_id)
        with self._lock:
            key = self._next_id(f"{self.name}-billing-")
            self._billing_keys[key] = user_id
            return key

    def decline(
        self, *, user_id: str | None = None, amount: int | None = None, reason: str = "declined"
    ) -> None:
        """Refuse approvals and charges for ``user_id`` and/or ``amount`` from now on."""
        if user_id is None and amount is None:
            raise ValueError("decline needs a user_id, an amount, or both")
        with self._lock:
            self._rules.append(_DeclineRule(user_id, amount, _require("reason", reason)))

    def payments(self, order_id: str) -> list[Payment]:
        """Every payment of ``order_id`` as recorded now, oldest first."""
        with self._lock:
            return [self._model(p) for p in self._payments.values() if p.order_id == order_id]

    def charges(self, order_id: str) -> list[Payment]:
        """The payments of ``order_id`` that charged money (refunded or not)."""
        return [p for p in self.payments(order_id) if p.status in _CHARGED]

    # -- operations --------------------------------------------------------------------

    def ready(
        self,
        *,
        order_id: str,
        amount: Money,
        item_name: str,
        user_id: str,
        return_url: str,
        idempotency_key: str,
    ) -> DirectCall[Checkout]:
        """Prepare a payment; the user approves it at once (see the class docstring)."""
        _require("order_id", order_id)
        _require_money("amount", amount)
        _require("item_name", item_name)
        _require("user_id", user_id)
        _require_url("return_url", return_url)
        _require("idempotency_key", idempotency_key)
        operation = "payment.ready"

        def prepare() -> Checkout:
            ref = self._next_id(f"{self.name}-pay-")
            token = hashlib.sha256(f"{ref}:{idempotency_key}".encode()).hexdigest()[:16]
            expires_at = self._clock.time() + self.checkout_ttl
            self._payments[ref] = _Payment(ref, order_id, user_id, amount, token, expires_at)
            query = urlencode({"provider_ref": ref, "token": token, "order_id": order_id})
            separator = "&" if "?" in return_url else "?"
            return Checkout(
                order_id=order_id,
                provider=self.name,
                redirect_url=f"{return_url}{separator}{query}",
                mobile_url=None,
                app_url=None,
                provider_ref=ref,
                expires_at=expires_at,
            )

        fingerprint = (order_id, amount, item_name, user_id, return_url)
        return self._call(
            operation,
            {
                "order_id": order_id,
                "amount": amount,
                "item_name": item_name,
                "user_id": user_id,
                "return_url": return_url,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, fingerprint, prepare),
        )

    def approve(
        self, *, order_id: str, approval: Approval, user_id: str, idempotency_key: str
    ) -> DirectCall[Payment]:
        """Charge a prepared payment with the token from the return URL.

        Raises:
            Declined: unknown payment, another order or user, already processed, wrong
                token, amount mismatch, order already charged, or a configured decline.
        """
        _require("order_id", order_id)
        _require("user_id", user_id)
        _require("idempotency_key", idempotency_key)
        if not isinstance(approval, Approval):
            raise ValueError(f"approval must be an Approval, got {approval!r}")
        if approval.user_id != user_id:
            raise ValueError(
                f"user_id {user_id!r} differs from approval.user_id {approval.user_id!r}"
            )
        operation = "payment.approve"

        def execute() -> Payment:
            record = self._find(operation, order_id, approval.provider_ref)
            if record.user_id != user_id:
                raise self._declined(operation, "payment of another user", "user_mismatch")
            if record.status is not PaymentStatus.PENDING:
                raise self._declined(
                    operation, f"payment is {record.status.value}", "already_processed"
                )
            if self._clock.time() > record.expires_at:
                record.status = PaymentStatus.FAILED
                raise self._declined(operation, "checkout expired", "expired")
            if approval.token != record.token:
                raise self._declined(operation, "invalid approval token", "invalid_token")
            if approval.amount is not None and approval.amount != record.amount:
                raise self._declined(
                    operation,
                    f"amount {approval.amount} differs from the checkout's {record.amount}",
                    "amount_mismatch",
                )
            return self._execute(operation, record, idempotency_key)

        return self._call(
            operation,
            {
                "order_id": order_id,
                "approval": approval,
                "user_id": user_id,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, (order_id, approval), execute),
        )

    def charge(
        self,
        *,
        order_id: str,
        amount: Money,
        item_name: str,
        user_id: str,
        billing_key: str,
        idempotency_key: str,
    ) -> DirectCall[Payment]:
        """Charge ``user_id`` with a billing key from :meth:`issue_billing_key`.

        Raises:
            Declined: unknown billing key or one of another user, order already charged,
                or a configured decline.
        """
        _require("order_id", order_id)
        _require_money("amount", amount)
        _require("item_name", item_name)
        _require("user_id", user_id)
        _require("billing_key", billing_key)
        _require("idempotency_key", idempotency_key)
        operation = "payment.charge"

        def execute() -> Payment:
            owner = self._billing_keys.get(billing_key)
            if owner is None:
                raise self._declined(operation, "unknown billing key", "invalid_billing_key")
            if owner != user_id:
                raise self._declined(
                    operation, "billing key of another user", "invalid_billing_key"
                )
            record = _Payment(
                self._next_id(f"{self.name}-pay-"),
                order_id,
                user_id,
                amount,
                token="",
                billing_key=billing_key,
            )
            self._payments[record.ref] = record
            return self._execute(operation, record, idempotency_key)

        fingerprint = (order_id, amount, item_name, user_id, billing_key)
        return self._call(
            operation,
            {
                "order_id": order_id,
                "amount": amount,
                "item_name": item_name,
                "user_id": user_id,
                "billing_key": billing_key,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, fingerprint, execute),
        )

    def cancel(
        self, *, order_id: str, provider_ref: str, amount: Money, reason: str, idempotency_key: str
    ) -> DirectCall[Payment]:
        """Refund ``amount`` of a charged payment.

        Raises:
            Declined: unknown payment or another order's, nothing charged, or more than
                what is left to refund.
            InvalidRequest: ``amount`` is in another currency than the payment.
        """
        _require("order_id", order_id)
        _require("provider_ref", provider_ref)
        _require_money("amount", amount)
        _require("reason", reason)
        _require("idempotency_key", idempotency_key)
        operation = "payment.cancel"

        def refund() -> Payment:
            record = self._find(operation, order_id, provider_ref)
            if record.status not in (PaymentStatus.APPROVED, PaymentStatus.PARTIALLY_CANCELED):
                raise self._declined(
                    operation, f"payment is {record.status.value}", "not_cancelable"
                )
            if amount.currency != record.amount.currency:
                raise InvalidRequest(
                    f"cancel in {amount.currency} of a payment in {record.amount.currency}",
                    provider=self.name,
                    operation=operation,
                    code="currency_mismatch",
                    request_sent=True,
                )
            left = record.amount.amount - record.canceled
            if amount.amount > left:
                raise self._declined(
                    operation,
                    f"cancel of {amount.amount} exceeds the {left} left to refund",
                    "exceeds_cancelable",
                )
            record.canceled += amount.amount
            record.status = (
                PaymentStatus.CANCELED
                if left == amount.amount
                else PaymentStatus.PARTIALLY_CANCELED
            )
            self._effects.record(
                Effect(
                    operation,
                    self._clock.time(),
                    key=idempotency_key,
                    order_id=order_id,
                    ref=provider_ref,
                    amount=amount.amount,
                )
            )
            return self._model(record)

        fingerprint = (order_id, provider_ref, amount)
        return self._call(
            operation,
            {
                "order_id": order_id,
                "provider_ref": provider_ref,
                "amount": amount,
                "reason": reason,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, fingerprint, refund),
        )

    def status(self, *, order_id: str, provider_ref: str) -> DirectCall[Payment]:
        """The payment as recorded now.

        Raises:
            Declined: unknown payment, or one of another order.
        """
        _require("order_id", order_id)
        _require("provider_ref", provider_ref)
        operation = "payment.status"
        return self._call(
            operation,
            {"order_id": order_id, "provider_ref": provider_ref},
            lambda: self._model(self._find(operation, order_id, provider_ref)),
        )

    def lookup(self, *, order_id: str) -> DirectCall[Payment]:
        """The latest payment of ``order_id``, found by the merchant's order id (as Toss's
        ``GET /v1/payments/orders/{orderId}`` does): what settles a write of unknown
        outcome before its payment id is known.

        Raises:
            Declined: no payment of that order (``not_found``): it never executed.
        """
        _require("order_id", order_id)
        operation = "payment.status"

        def find() -> Payment:
            found = [p for p in self._payments.values() if p.order_id == order_id]
            if not found:
                raise self._declined(operation, f"no payment of order {order_id}", "not_found")
            return self._model(found[-1])

        return self._call(operation, {"order_id": order_id}, find)

    # -- internals ---------------------------------------------------------------------

    def _find(self, operation: str, order_id: str, provider_ref: str) -> _Payment:
        record = self._payments.get(provider_ref)
        if record is None:
            raise self._declined(operation, f"unknown payment {provider_ref}", "not_found")
        if record.order_id != order_id:
            raise self._declined(operation, "payment of another order", "order_mismatch")
        return record

    def _execute(self, operation: str, record: _Payment, key: str) -> Payment:
        if self.dedupe is None and any(
            p.order_id == record.order_id and p.status in _CHARGED for p in self._payments.values()
        ):
            record.status = PaymentStatus.FAILED
            raise self._declined(
                operation, f"order {record.order_id} is already charged", "duplicated_order"
            )
        for rule in self._rules:
            if rule.matches(record.user_id, record.amount):
                record.status = PaymentStatus.FAILED
                raise self._declined(operation, f"card declined: {rule.reason}", "declined")
        record.status = PaymentStatus.APPROVED
        record.approved_at = self._clock.time()
        record.approval_id = self._next_id(f"{self.name}-approval-")
        self._effects.record(
            Effect(
                operation,
                record.approved_at,
                key=key,
                order_id=record.order_id,
                ref=record.ref,
                amount=record.amount.amount,
            )
        )
        return self._model(record)

    def _model(self, record: _Payment) -> Payment:
        currency = record.amount.currency
        return Payment(
            order_id=record.order_id,
            provider=self.name,
            status=record.status,
            amount=record.amount,
            approved_at=record.approved_at,
            provider_ref=record.ref,
            approval_id=record.approval_id,
            billing_key=record.billing_key,
            canceled_amount=Money(record.canceled, currency) if record.canceled else None,
        )


# -- identity ----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class _User:
    subject: str
    email: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class _Code:
    subject: str
    redirect_uri: str
    nonce: str | None
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Grant:
    subject: str
    expires_at: float


class EchoLogin(_Echo):
    """An in-memory OpenID Connect :class:`~superapp_sdk.capabilities.identity.IdentityProvider`.

    ID tokens are real JWTs signed with an Ed25519 key (``alg`` ``EdDSA``, RFC 8037)
    published by :meth:`jwks`, so :func:`superapp_sdk.tokens.verify_id_token` accepts
    them. The browser step is :meth:`authorize`: it takes the :class:`LoginRedirect` and
    returns the code the provider would send back.

    Args:
        issuer: the ``iss`` of its ID tokens.
        client_id: our client id, the ``aud`` of its ID tokens.
        redirect_uri: the default redirect URI.
        signing_key: the Ed25519 key to sign with (a new one when not given).
        token_ttl: lifetime of access and ID tokens, seconds (> 0).
        refresh_ttl: lifetime of refresh tokens, seconds (> 0).
        name: the provider name.
        failure_domain: the failure domain.
        clock: time for token lifetimes.
        rng: randomness for codes and tokens.
    """

    capability = Capability.IDENTITY
    operations = frozenset(
        {
            "identity.authorize_url",
            "identity.exchange_code",
            "identity.refresh",
            "identity.userinfo",
            "identity.jwks",
        }
    )

    #: Seconds an authorization code stays redeemable.
    code_ttl = 600

    def __init__(
        self,
        *,
        issuer: str = "https://login.echo.invalid",
        client_id: str = "echo-client",
        redirect_uri: str | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        token_ttl: int = 3600,
        refresh_ttl: int = 30 * 24 * 3600,
        name: str = "echo.login",
        failure_domain: str = "echo",
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name=name, failure_domain=failure_domain, clock=clock)
        self.issuer = _require_url("issuer", issuer)
        self.client_id = _require("client_id", client_id)
        self.redirect_uri = _require_optional("redirect_uri", redirect_uri)
        for label, ttl in (("token_ttl", token_ttl), ("refresh_ttl", refresh_ttl)):
            if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
                raise ValueError(f"{label} must be an int of seconds > 0, got {ttl!r}")
        self.token_ttl = token_ttl
        self.refresh_ttl = refresh_ttl
        self._key = signing_key or Ed25519PrivateKey.generate()
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(public).hexdigest()[:16]
        self._jwk = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(public),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }
        self._rng = rng or random.Random()
        self._users: dict[str, _User] = {}
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}

    # -- test helpers ----------------------------------------------------------------

    def add_user(self, subject: str, *, email: str | None = None, name: str | None = None) -> None:
        """An account at this provider; the first one added logs in by default."""
        _require("subject", subject)
        with self._lock:
            self._users[subject] = _User(subject, email, name)

    def authorize(self, redirect: LoginRedirect | str, *, subject: str | None = None) -> str:
        """The browser step: log ``subject`` (default: the first user) in; return the code.

        Raises:
            ValueError: the URL is not this provider's, or there is no such user.
        """
        url = redirect.url if isinstance(redirect, LoginRedirect) else redirect
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        if not url.startswith(f"{self.issuer}/authorize?") or query.get("client_id") != (
            self.client_id
        ):
            raise ValueError(f"not an authorization URL of {self.name}: {url!r}")
        with self._lock:
            chosen = subject if subject is not None else next(iter(self._users), None)
            if chosen is None or chosen not in self._users:
                raise ValueError(f"no user {chosen!r} at {self.name}; add_user() first")
            code = self._token("code-")
            self._codes[code] = _Code(
                chosen,
                query.get("redirect_uri", ""),
                query.get("nonce"),
                self._clock.time() + self.code_ttl,
            )
            return code

    def sign(self, claims: Mapping[str, Any], *, header: Mapping[str, Any] | None = None) -> str:
        """``claims`` as a compact JWT signed with this provider's key."""
        head = {"alg": "EdDSA", "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (head, claims)
        )
        return f"{signing_input}.{_b64url(self._key.sign(signing_input.encode('ascii')))}"

    # -- operations --------------------------------------------------------------------

    def authorize_url(
        self, *, state: str, nonce: str, redirect_uri: str | None = None
    ) -> LoginRedirect:
        """The authorization URL (no I/O)."""
        _require("state", state)
        _require("nonce", nonce)
        params = {
            "client_id": self.client_id,
            "redirect_uri": self._redirect(redirect_uri),
            "response_type": "code",
            "scope": "openid",
            "state": state,
            "nonce": nonce,
        }
        with self._lock:
            self._record("identity.authorize_url", params, failed=False)
        url = f"{self.issuer}/authorize?{urlencode(params)}"
        return LoginRedirect(url=url, state=state, nonce=nonce, provider=self.name)

    def exchange_code(
        self, *, code: str, redirect_uri: str | None = None, nonce: str | None = None
    ) -> DirectCall[TokenSet]:
        """Redeem a code from :meth:`authorize` for tokens, with a signed ID token.

        Raises:
            Declined: the code is unknown, used, expired or for another redirect URI.
        """
        _require("code", code)
        chosen = self._redirect(redirect_uri)
        _require_optional("nonce", nonce)
        operation = "identity.exchange_code"

        def redeem() -> TokenSet:
            grant = self._codes.pop(code, None)
            if grant is None or grant.expires_at <= self._clock.time():
                raise self._declined(operation, "unknown, used or expired code", "invalid_grant")
            if grant.redirect_uri != chosen:
                raise self._declined(operation, "redirect_uri mismatch", "invalid_grant")
            return self._tokens(grant.subject, grant.nonce, id_token=True)

        arguments = {"code": code, "redirect_uri": chosen, "nonce": nonce}
        return self._call(operation, arguments, redeem)

    def refresh(self, *, refresh_token: str) -> DirectCall[TokenSet]:
        """New tokens; the refresh token rotates (the old one stops working).

        Raises:
            Declined: the refresh token is unknown, used or expired.
        """
        _require("refresh_token", refresh_token)
        operation = "identity.refresh"

        def renew() -> TokenSet:
            grant = self._refresh.pop(refresh_token, None)
            if grant is None or grant.expires_at <= self._clock.time():
                raise self._declined(operation, "invalid refresh token", "invalid_grant")
            return self._tokens(grant.subject, None, id_token=False)

        return self._call(operation, {"refresh_token": "***"}, renew)

    def userinfo(self, *, access_token: str) -> DirectCall[UserInfo]:
        """The profile of the access token's user.

        Raises:
            Unauthorized: the access token is unknown or expired.
        """
        _require("access_token", access_token)
        operation = "identity.userinfo"

        def profile() -> UserInfo:
            grant = self._access.get(access_token)
            if grant is None or grant.expires_at <= self._clock.time():
                raise Unauthorized(
                    "invalid access token",
                    provider=self.name,
                    operation=operation,
                    http_status=401,
                    code="invalid_token",
                    request_sent=True,
                )
            user = self._users.get(grant.subject) or _User(grant.subject, None, None)
            return UserInfo(subject=user.subject, email=user.email, name=user.name)

        return self._call(operation, {"access_token": "***"}, profile)

    def jwks(self) -> DirectCall[dict[str, Any]]:
        """The key set that verifies this provider's ID tokens."""
        return self._call("identity.jwks", {}, lambda: {"keys": [dict(self._jwk)]})

    # -- internals ---------------------------------------------------------------------

    def _redirect(self, redirect_uri: str | None) -> str:
        chosen = redirect_uri or self.redirect_uri
        if not chosen:
            raise ValueError("redirect_uri is required: pass it or set it on EchoLogin")
        return chosen

    def _token(self, prefix: str) -> str:
        return f"{prefix}{self._rng.getrandbits(128):032x}"

    def _tokens(self, subject: str, nonce: str | None, *, id_token: bool) -> TokenSet:
        now = self._clock.time()
        access, refresh = self._token("at-"), self._token("rt-")
        self._access[access] = _Grant(subject, now + self.token_ttl)
        self._refresh[refresh] = _Grant(subject, now + self.refresh_ttl)
        token = None
        if id_token:
            user = self._users.get(subject) or _User(subject, None, None)
            claims: dict[str, Any] = {
                "iss": self.issuer,
                "aud": self.client_id,
                "sub": subject,
                "iat": int(now),
                "auth_time": int(now),
                "exp": int(now) + self.token_ttl,
            }
            optional = {"nonce": nonce, "email": user.email, "name": user.name}
            claims.update({k: v for k, v in optional.items() if v is not None})
            token = self.sign(claims)
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            id_token=token,
            expires_in=self.token_ttl,
            refresh_token_expires_in=self.refresh_ttl,
            scope="openid",
        )


# -- mobility ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Ride:
    ride_id: str
    rider: str
    origin: Place
    destination: Place
    fare: Money
    status: RideStatus = RideStatus.REQUESTED
    driver: Driver | None = None
    eta_s: int | None = None


_FINISHED = (RideStatus.COMPLETED, RideStatus.FAILED)


class EchoMobility(_Echo):
    """An in-memory :class:`~superapp_sdk.capabilities.mobility.MobilityProvider`.

    Estimates are live-labelled great-circle distances times ``detour`` at
    ``speed_mps``, priced by ``tariff``. Rides start ``REQUESTED``;
    :meth:`dispatch` and :meth:`set_status` move them on. Rentals must be opened with
    :meth:`start_rental` before they can end.

    Args:
        speed_mps: average speed for durations (> 0).
        detour: road distance over great-circle distance (>= 1).
        tariff: the taxi meter for fares.
        unlock_fare: rental fare charged on every rental, KRW.
        per_minute_fare: rental fare per started minute, KRW.
        name: the provider name.
        failure_domain: the failure domain.
        clock: time for rentals.
        dedupe: ``"key"`` declares its writes (ride requests and cancels, rental ends) in
            ``deduplicates``; it deduplicates them by key either way.

    Attributes:
        no_route: when True, estimates are refused (``"no_route"``).
        drivers_available: when False, ride requests are refused (``"no_drivers"``).

    Every booked ride (``"mobility.request_ride"``: ``ref`` the ride id, ``rider``),
    canceled ride and ended rental (``ref`` the rental id, ``amount`` the fare) is an
    effect in :meth:`effects`, with the key it executed under.
    """

    capability = Capability.MOBILITY
    operations = MOBILITY_OPERATIONS
    keyed_operations = frozenset(
        {"mobility.request_ride", "mobility.cancel_ride", "mobility.end_rental"}
    )

    def __init__(
        self,
        *,
        speed_mps: float = 8.0,
        detour: float = 1.3,
        tariff: TaxiTariff | None = None,
        unlock_fare: int = 1_000,
        per_minute_fare: int = 150,
        name: str = "echo.mobility",
        failure_domain: str = "echo",
        clock: Clock | None = None,
        dedupe: Dedupe = None,
    ) -> None:
        super().__init__(name=name, failure_domain=failure_domain, clock=clock, dedupe=dedupe)
        if not speed_mps > 0:
            raise ValueError(f"speed_mps must be > 0, got {speed_mps!r}")
        if not detour >= 1:
            raise ValueError(f"detour must be >= 1, got {detour!r}")
        for label, fare in (("unlock_fare", unlock_fare), ("per_minute_fare", per_minute_fare)):
            if isinstance(fare, bool) or not isinstance(fare, int) or fare < 0:
                raise ValueError(f"{label} must be an int >= 0, got {fare!r}")
        self.speed_mps = speed_mps
        self.detour = detour
        self.tariff = tariff or TaxiTariff()
        self.unlock_fare = unlock_fare
        self.per_minute_fare = per_minute_fare
        self.no_route = False
        self.drivers_available = True
        self._rides: dict[str, _Ride] = {}
        self._rentals: dict[str, float] = {}
        self._ended: dict[str, str] = {}  # rental id -> the key it was ended under

    # -- test helpers ----------------------------------------------------------------

    def start_rental(self, rental_id: str, *, started_at: float | None = None) -> None:
        """Open a rental that :meth:`end_rental` can close."""
        _require("rental_id", rental_id)
        with self._lock:
            self._rentals[rental_id] = self._clock.time() if started_at is None else started_at

    def dispatch(self, ride_id: str, *, driver: Driver | None = None, eta_s: int = 240) -> None:
        """A driver accepts ``ride_id``."""
        with self._lock:
            ride = self._rides[ride_id]
            ride.status = RideStatus.DISPATCHED
            ride.driver = driver or Driver("Echo Driver", "Echo Cab", "00가0000")
            ride.eta_s = eta_s

    def set_status(self, ride_id: str, status: RideStatus) -> None:
        """Move ``ride_id`` to ``status``."""
        with self._lock:
            self._rides[ride_id].status = RideStatus(status)

    # -- operations --------------------------------------------------------------------

    def estimate(self, *, origin: Place, destination: Place) -> DirectCall[Estimate]:
        """Distance, duration and taxi fare from ``origin`` to ``destination``.

        Raises:
            Declined: :attr:`no_route` is set (``"no_route"``).
        """
        _require_place("origin", origin)
        _require_place("destination", destination)
        operation = "mobility.estimate"

        def compute() -> Estimate:
            if self.no_route:
                raise self._declined(operation, "no route found", "no_route")
            distance = self._distance(origin, destination)
            return Estimate(
                origin=origin,
                destination=destination,
                distance_m=distance,
                duration_s=math.ceil(distance / self.speed_mps),
                fare=Money(self.tariff.fare(distance), "KRW"),
                provider=self.name,
                live=True,
            )

        return self._call(operation, {"origin": origin, "destination": destination}, compute)

    def request_ride(
        self, *, rider: str, origin: Place, destination: Place, idempotency_key: str
    ) -> DirectCall[Ride]:
        """Request a ride; the same key always answers the same ride.

        Raises:
            Declined: :attr:`drivers_available` is False (``"no_drivers"``).
            IdempotencyConflict: the key was used for another ride request.
        """
        _require("rider", rider)
        _require_place("origin", origin)
        _require_place("destination", destination)
        _require("idempotency_key", idempotency_key)
        operation = "mobility.request_ride"

        def book() -> Ride:
            if not self.drivers_available:
                raise self._declined(operation, "no driver available", "no_drivers")
            fare = Money(self.tariff.fare(self._distance(origin, destination)), "KRW")
            ride = _Ride(self._next_id(f"{self.name}-ride-"), rider, origin, destination, fare)
            self._rides[ride.ride_id] = ride
            self._effects.record(
                Effect(
                    operation,
                    self._clock.time(),
                    key=idempotency_key,
                    ref=ride.ride_id,
                    rider=rider,
                )
            )
            return self._model(ride)

        fingerprint = (rider, origin, destination)
        return self._call(
            operation,
            {
                "rider": rider,
                "origin": origin,
                "destination": destination,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, fingerprint, book),
        )

    def ride(self, ride_id: str) -> DirectCall[Ride]:
        """A ride's current state.

        Raises:
            Declined: no such ride (``"ride_not_found"``).
        """
        _require("ride_id", ride_id)
        operation = "mobility.ride"
        return self._call(
            operation, {"ride_id": ride_id}, lambda: self._model(self._find(operation, ride_id))
        )

    def cancel_ride(self, ride_id: str, *, idempotency_key: str) -> DirectCall[Ride]:
        """Cancel a ride; canceling a canceled ride answers it unchanged.

        Raises:
            Declined: no such ride, or it already finished (``"ride_not_cancelable"``).
        """
        _require("ride_id", ride_id)
        _require("idempotency_key", idempotency_key)
        operation = "mobility.cancel_ride"

        def cancel() -> Ride:
            ride = self._find(operation, ride_id)
            if ride.status in _FINISHED:
                raise self._declined(
                    operation, f"ride is {ride.status.value}", "ride_not_cancelable"
                )
            if ride.status is not RideStatus.CANCELED:
                self._effects.record(
                    Effect(operation, self._clock.time(), key=idempotency_key, ref=ride_id)
                )
            ride.status = RideStatus.CANCELED
            ride.eta_s = None
            return self._model(ride)

        return self._call(
            operation,
            {"ride_id": ride_id, "idempotency_key": idempotency_key},
            lambda: self._once(operation, idempotency_key, (ride_id,), cancel),
        )

    def end_rental(
        self, *, rental_id: str, location: Place, at: float, idempotency_key: str
    ) -> DirectCall[RentalReceipt]:
        """End a rental; the same key answers the same receipt.

        Raises:
            Declined: no such rental (``"rental_not_found"``), or it was ended under
                another key (``"rental_already_ended"``).
            InvalidRequest: ``at`` is before the rental started.
        """
        _require("rental_id", rental_id)
        _require_place("location", location)
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValueError(f"at must be epoch seconds, got {at!r}")
        if at < 0:
            raise ValueError(f"at must be >= 0, got {at!r}")
        _require("idempotency_key", idempotency_key)
        operation = "mobility.end_rental"

        def end() -> RentalReceipt:
            started = self._rentals.get(rental_id)
            if started is None:
                raise self._declined(operation, f"no rental {rental_id}", "rental_not_found")
            if rental_id in self._ended:
                raise self._declined(
                    operation, f"rental {rental_id} already ended", "rental_already_ended"
                )
            if at < started:
                raise InvalidRequest(
                    f"at ({at}) is before the rental started ({started})",
                    provider=self.name,
                    operation=operation,
                    code="invalid_request",
                    request_sent=True,
                )
            self._ended[rental_id] = idempotency_key
            minutes = math.ceil((at - started) / 60)
            fare = self.unlock_fare + minutes * self.per_minute_fare
            self._effects.record(
                Effect(
                    operation,
                    self._clock.time(),
                    key=idempotency_key,
                    ref=rental_id,
                    amount=fare,
                )
            )
            return RentalReceipt(
                rental_id=rental_id,
                provider=self.name,
                ended_at=float(at),
                location=location,
                fare=Money(fare, "KRW"),
                receipt_id=self._next_id(f"{self.name}-receipt-"),
            )

        return self._call(
            operation,
            {
                "rental_id": rental_id,
                "location": location,
                "at": at,
                "idempotency_key": idempotency_key,
            },
            lambda: self._once(operation, idempotency_key, (rental_id, location, at), end),
        )

    def deep_links(self, *, origin: Place, destination: Place) -> list[DeepLink]:
        """A link to the echo ride app with a web fallback (no I/O, never fails)."""
        _require_place("origin", origin)
        _require_place("destination", destination)
        query = urlencode(
            {
                "from": f"{origin.lat},{origin.lng}",
                "to": f"{destination.lat},{destination.lng}",
            },
            safe=",",
        )
        with self._lock:
            self._record(
                "mobility.deep_links", {"origin": origin, "destination": destination}, failed=False
            )
        return [
            DeepLink(
                app="echo",
                url=f"echo-ride://trip?{query}",
                fallback_url=f"https://ride.echo.invalid/trip?{query}",
            )
        ]

    # -- internals ---------------------------------------------------------------------

    def _distance(self, origin: Place, destination: Place) -> int:
        great_circle = haversine_m(origin.lat, origin.lng, destination.lat, destination.lng)
        return round(great_circle * self.detour)

    def _find(self, operation: str, ride_id: str) -> _Ride:
        ride = self._rides.get(ride_id)
        if ride is None:
            raise self._declined(operation, f"no ride {ride_id}", "ride_not_found")
        return ride

    def _model(self, ride: _Ride) -> Ride:
        return Ride(
            ride_id=ride.ride_id,
            provider=self.name,
            status=ride.status,
            rider=ride.rider,
            origin=ride.origin,
            destination=ride.destination,
            driver=ride.driver,
            eta_s=ride.eta_s,
            fare=ride.fare,
        )


if TYPE_CHECKING:
    # mypy proves each echo provider satisfies its capability's Protocol.
    def _conforms(
        chat: EchoChat, pay: EchoPay, login: EchoLogin, mobility: EchoMobility
    ) -> tuple[ChatProvider, PaymentProvider, IdentityProvider, MobilityProvider]:
        return chat, pay, login, mobility
