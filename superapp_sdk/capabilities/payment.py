"""Payment: the models every payment provider returns, and the provider Protocol.

A one-time payment takes two steps with the user in between::

    checkout = provider.ready(order_id=..., amount=Money(12_000), ...)   # -> Checkout
    # the app sends the user to checkout.redirect_url; the provider sends them back to
    # return_url with what the app needs to confirm (an Approval)
    payment = provider.approve(order_id=..., approval=Approval(...), ...)  # -> Payment

A server-side charge with a stored billing key (KakaoPay ``sid``, Toss ``billingKey``,
Stripe customer + payment method) is one step: ``provider.charge(...)``.

Every write takes an ``idempotency_key``: one key per order, persisted by the SDK before
the first send and reused by every retry, failover and replay. Providers with an
idempotency header (Toss, Stripe) send it; providers without one (KakaoPay) rely on the
SDK querying ``status`` before any retry or failover of a write whose outcome is unknown.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from superapp_sdk.capabilities._common import Money, Provider, require_seconds, require_text

if TYPE_CHECKING:
    from superapp_sdk.providers._http import Call

__all__ = [
    "PAYMENT_OPERATIONS",
    "Approval",
    "Checkout",
    "Payment",
    "PaymentProvider",
    "PaymentStatus",
]

#: The operations of a full payment provider, as listed in ``Provider.operations``.
PAYMENT_OPERATIONS = frozenset(
    {"payment.ready", "payment.approve", "payment.charge", "payment.cancel", "payment.status"}
)


def _require_optional_text(owner: str, name: str, value: object) -> None:
    require_text(owner, name, value, optional=True)


def _require_time(owner: str, name: str, value: object) -> None:
    require_seconds(owner, name, value, optional=True)


class PaymentStatus(enum.Enum):
    """Where a payment stands at its provider."""

    #: Created, waiting for the user (or for the provider) to finish; nothing charged yet.
    PENDING = "pending"
    #: Charged.
    APPROVED = "approved"
    #: Charged, then refunded in full.
    CANCELED = "canceled"
    #: Charged, then refunded in part; ``Payment.canceled_amount`` says how much.
    PARTIALLY_CANCELED = "partially_canceled"
    #: Given up: the user quit, authentication failed, or the charge was refused.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Checkout:
    """A prepared payment the user must approve at the provider.

    Attributes:
        order_id: the app's order id.
        provider: the provider that prepared it (``"kakao.pay"``).
        redirect_url: where to send the user on a desktop browser.
        mobile_url: where to send the user on a mobile browser, when the provider has one.
        app_url: where to send the user inside a mobile app, when the provider has one.
        provider_ref: the provider's id of the payment (KakaoPay ``tid``); keep it to
            confirm, cancel or query.
        expires_at: epoch seconds after which the provider refuses to approve it.
    """

    order_id: str
    provider: str
    redirect_url: str
    mobile_url: str | None
    app_url: str | None
    provider_ref: str
    expires_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("order_id", "provider", "redirect_url", "provider_ref"):
            require_text("Checkout", name, getattr(self, name))
        _require_optional_text("Checkout", "mobile_url", self.mobile_url)
        _require_optional_text("Checkout", "app_url", self.app_url)
        _require_time("Checkout", "expires_at", self.expires_at)


@dataclass(frozen=True, slots=True)
class Approval:
    """What the app's return URL received once the user approved a :class:`Checkout`.

    Attributes:
        provider_ref: the provider's payment id (KakaoPay ``tid``, Toss ``paymentKey``,
            Stripe PaymentIntent id).
        token: the one-time proof of the user's approval (KakaoPay ``pg_token``); empty
            for providers that need none.
        user_id: the app-level user who approved.
        amount: the amount the app expects; providers that can check it against their
            record (KakaoPay ``total_amount``, Toss ``amount``) send it.
    """

    provider_ref: str
    token: str
    user_id: str
    amount: Money | None = None

    def __post_init__(self) -> None:
        require_text("Approval", "provider_ref", self.provider_ref)
        if not isinstance(self.token, str):
            raise ValueError(f"Approval.token must be a string, got {self.token!r}")
        require_text("Approval", "user_id", self.user_id)
        if self.amount is not None and not isinstance(self.amount, Money):
            raise ValueError(f"Approval.amount must be Money or None, got {self.amount!r}")


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment as its provider records it.

    Attributes:
        order_id: the app's order id.
        provider: the provider that holds it.
        status: where it stands.
        amount: the amount charged (or to be charged, while ``PENDING``).
        approved_at: epoch seconds of the charge, when charged.
        provider_ref: the provider's payment id (KakaoPay ``tid``).
        approval_id: the provider's id of this particular approval or cancel request
            (KakaoPay ``aid``), when it gives one.
        billing_key: a billing key issued with this payment (KakaoPay ``sid``), to charge
            the same user later without them.
        canceled_amount: how much has been refunded, when anything has.
    """

    order_id: str
    provider: str
    status: PaymentStatus
    amount: Money
    approved_at: float | None
    provider_ref: str
    approval_id: str | None = None
    billing_key: str | None = field(default=None, repr=False)
    canceled_amount: Money | None = None

    def __post_init__(self) -> None:
        for name in ("order_id", "provider", "provider_ref"):
            require_text("Payment", name, getattr(self, name))
        if not isinstance(self.status, PaymentStatus):
            raise ValueError(f"Payment.status must be a PaymentStatus, got {self.status!r}")
        if not isinstance(self.amount, Money):
            raise ValueError(f"Payment.amount must be Money, got {self.amount!r}")
        _require_time("Payment", "approved_at", self.approved_at)
        _require_optional_text("Payment", "approval_id", self.approval_id)
        _require_optional_text("Payment", "billing_key", self.billing_key)
        if self.canceled_amount is not None:
            if not isinstance(self.canceled_amount, Money):
                raise ValueError(
                    f"Payment.canceled_amount must be Money or None, got {self.canceled_amount!r}"
                )
            if self.canceled_amount.currency != self.amount.currency:
                raise ValueError(
                    "Payment.canceled_amount must be in the currency of Payment.amount "
                    f"({self.amount.currency}), got {self.canceled_amount.currency}"
                )
            if self.canceled_amount.amount > self.amount.amount:
                raise ValueError(
                    f"Payment.canceled_amount ({self.canceled_amount.amount}) must be <= "
                    f"Payment.amount ({self.amount.amount})"
                )


@runtime_checkable
class PaymentProvider(Provider, Protocol):
    """What the payment service needs from a provider (KakaoPay, Toss, Stripe).

    Every method returns a :data:`~superapp_sdk.providers._http.Call`: nothing is sent
    until the SDK drives it. Business refusals (declined card, invalid approval token,
    amount mismatch, unknown payment) raise :class:`~superapp_sdk._errors.Declined`.
    """

    def ready(
        self,
        *,
        order_id: str,
        amount: Money,
        item_name: str,
        user_id: str,
        return_url: str,
        idempotency_key: str,
    ) -> Call[Checkout]:
        """Prepare a one-time payment the user approves at the provider."""
        ...

    def approve(
        self, *, order_id: str, approval: Approval, user_id: str, idempotency_key: str
    ) -> Call[Payment]:
        """Charge a prepared payment the user has approved."""
        ...

    def charge(
        self,
        *,
        order_id: str,
        amount: Money,
        item_name: str,
        user_id: str,
        billing_key: str,
        idempotency_key: str,
    ) -> Call[Payment]:
        """Charge a user server-side with a stored billing key."""
        ...

    def cancel(
        self, *, order_id: str, provider_ref: str, amount: Money, reason: str, idempotency_key: str
    ) -> Call[Payment]:
        """Refund ``amount`` (all or part) of a charged payment."""
        ...

    def status(self, *, order_id: str, provider_ref: str) -> Call[Payment]:
        """The payment as the provider records it now."""
        ...
