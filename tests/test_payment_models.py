"""The payment capability's models and Protocol."""

from __future__ import annotations

import dataclasses

import pytest

from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.payment import (
    PAYMENT_OPERATIONS,
    Approval,
    Checkout,
    Payment,
    PaymentProvider,
    PaymentStatus,
)
from superapp_sdk.providers.kakao.pay import KakaoPay


def _payment(**changes: object) -> Payment:
    fields: dict[str, object] = {
        "order_id": "order-1",
        "provider": "kakao.pay",
        "status": PaymentStatus.APPROVED,
        "amount": Money(10_000),
        "approved_at": 1_700_000_000.0,
        "provider_ref": "T1234567890123456789",
    }
    fields.update(changes)
    return Payment(**fields)  # type: ignore[arg-type]


def _checkout(**changes: object) -> Checkout:
    fields: dict[str, object] = {
        "order_id": "order-1",
        "provider": "kakao.pay",
        "redirect_url": "https://pay.example/info",
        "mobile_url": None,
        "app_url": None,
        "provider_ref": "T1",
    }
    fields.update(changes)
    return Checkout(**fields)  # type: ignore[arg-type]


def test_payment_keeps_its_fields() -> None:
    """A valid Payment keeps every field as given."""
    payment = _payment(approval_id="A1", billing_key="S1", canceled_amount=Money(500))
    assert (payment.order_id, payment.status, payment.amount) == (
        "order-1",
        PaymentStatus.APPROVED,
        Money(10_000),
    )
    assert (payment.approval_id, payment.billing_key, payment.canceled_amount) == (
        "A1",
        "S1",
        Money(500),
    )


def test_payment_is_frozen() -> None:
    """Payments cannot be modified after construction."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        _payment().status = PaymentStatus.CANCELED  # type: ignore[misc]


def test_payment_is_slotted() -> None:
    """Payments carry no per-instance __dict__."""
    assert not hasattr(_payment(), "__dict__")


@pytest.mark.parametrize("name", ["order_id", "provider", "provider_ref"])
def test_payment_rejects_an_empty_identifier(name: str) -> None:
    """An empty identifier is refused, naming the field."""
    with pytest.raises(ValueError, match=rf"Payment\.{name}"):
        _payment(**{name: ""})


def test_payment_rejects_a_status_that_is_not_the_enum() -> None:
    """A raw string status is refused."""
    with pytest.raises(ValueError, match=r"Payment\.status"):
        _payment(status="approved")


def test_payment_rejects_an_amount_that_is_not_money() -> None:
    """A bare int amount is refused."""
    with pytest.raises(ValueError, match=r"Payment\.amount"):
        _payment(amount=10_000)


def test_payment_rejects_a_refund_larger_than_the_charge() -> None:
    """canceled_amount may not exceed amount."""
    with pytest.raises(ValueError, match="canceled_amount"):
        _payment(canceled_amount=Money(10_001))


def test_payment_rejects_a_refund_in_another_currency() -> None:
    """canceled_amount must share amount's currency."""
    with pytest.raises(ValueError, match="currency"):
        _payment(canceled_amount=Money(5, "USD"))


def test_payment_rejects_a_nan_approval_time() -> None:
    """approved_at must be a number of seconds, not NaN."""
    with pytest.raises(ValueError, match="approved_at"):
        _payment(approved_at=float("nan"))


def test_payment_accepts_no_approval_time_while_pending() -> None:
    """A pending payment has no approval time."""
    assert _payment(status=PaymentStatus.PENDING, approved_at=None).approved_at is None


def test_checkout_keeps_the_app_and_mobile_urls() -> None:
    """Optional redirect URLs are kept when given."""
    checkout = _checkout(mobile_url="https://m.example", app_url="https://a.example")
    assert (checkout.mobile_url, checkout.app_url) == ("https://m.example", "https://a.example")


@pytest.mark.parametrize("name", ["order_id", "provider", "redirect_url", "provider_ref"])
def test_checkout_rejects_an_empty_required_field(name: str) -> None:
    """Required Checkout strings may not be empty."""
    with pytest.raises(ValueError, match=rf"Checkout\.{name}"):
        _checkout(**{name: ""})


def test_checkout_rejects_an_empty_optional_url() -> None:
    """An optional URL is None or a real string, never empty."""
    with pytest.raises(ValueError, match=r"Checkout\.mobile_url"):
        _checkout(mobile_url="")


def test_checkout_rejects_a_boolean_expiry() -> None:
    """expires_at must be seconds, and a bool is not."""
    with pytest.raises(ValueError, match="expires_at"):
        _checkout(expires_at=True)


def test_approval_accepts_an_empty_token() -> None:
    """Providers that need no one-time token take an empty one."""
    assert Approval(provider_ref="pi_1", token="", user_id="u1").token == ""


def test_approval_rejects_an_empty_user() -> None:
    """The approving user must be named."""
    with pytest.raises(ValueError, match=r"Approval\.user_id"):
        Approval(provider_ref="T1", token="tok", user_id="")


def test_approval_rejects_an_amount_that_is_not_money() -> None:
    """An expected amount must be Money."""
    with pytest.raises(ValueError, match=r"Approval\.amount"):
        Approval(provider_ref="T1", token="tok", user_id="u1", amount=100)  # type: ignore[arg-type]


def test_payment_statuses_are_the_five_documented() -> None:
    """PaymentStatus has exactly the five states of the design."""
    assert {s.name for s in PaymentStatus} == {
        "PENDING",
        "APPROVED",
        "CANCELED",
        "PARTIALLY_CANCELED",
        "FAILED",
    }


def test_kakaopay_satisfies_the_payment_provider_protocol() -> None:
    """KakaoPay is a PaymentProvider with every payment operation."""
    pay = KakaoPay(secret_key="secret")
    assert isinstance(pay, PaymentProvider)
    assert pay.capability is Capability.PAYMENT
    assert pay.operations == PAYMENT_OPERATIONS


def test_an_object_without_payment_methods_is_not_a_payment_provider() -> None:
    """The runtime check looks for the payment methods, not just the attributes."""

    class NameOnly:
        name = "x"
        capability = Capability.PAYMENT
        failure_domain = "x"
        operations = frozenset[str]()

    assert not isinstance(NameOnly(), PaymentProvider)
