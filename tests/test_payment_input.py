"""Bad payment input is refused with an error naming the field, before anything is
recorded; and no secret appears in what a payment prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from superapp_sdk import IdempotencyConflict, Money, SuperApp
from superapp_sdk.capabilities.payment import Payment, PaymentStatus
from superapp_sdk.testing.echo import EchoPay

USER = "user-minji"


@pytest.fixture
def app_pay(tmp_path: Path) -> tuple[SuperApp, EchoPay]:
    pay = EchoPay()
    app = SuperApp(payment=[pay], state_dir=tmp_path / "state")
    app.directory.put(USER, provider="echo.pay", billing_key=pay.issue_billing_key(USER))
    return app, pay


def test_a_zero_amount_leaves_no_order_behind(app_pay: tuple[SuperApp, EchoPay]) -> None:
    """amount=0 is refused naming the field, and the order can then be charged."""
    app, pay = app_pay
    with app:
        with pytest.raises(ValueError, match="amount"):
            app.payment.charge(order_id="o-1", amount=0, user_id=USER)
        out = app.payment.charge(order_id="o-1", amount=100, user_id=USER)
    assert out.value.status is PaymentStatus.APPROVED
    assert len(pay.effects("payment.charge", order_id="o-1")) == 1


def test_a_javascript_return_url_leaves_no_order_behind(
    app_pay: tuple[SuperApp, EchoPay],
) -> None:
    """A return_url that is not an absolute http(s) URL is refused before recording."""
    app, _ = app_pay
    with app:
        with pytest.raises(ValueError, match="return_url"):
            app.payment.start(
                order_id="o-2",
                amount=100,
                item_name="Ride",
                user_id=USER,
                return_url="javascript:alert(1)",
            )
        out = app.payment.start(
            order_id="o-2",
            amount=100,
            item_name="Ride",
            user_id=USER,
            return_url="https://app.example/pay/done",
        )
    assert out.value.order_id == "o-2"


@pytest.mark.parametrize("currency", [None, 410, b"KRW", "XXX", "XTS", "XAU", "krw", "KRWX", ""])
def test_a_currency_that_is_not_chargeable_is_refused(
    app_pay: tuple[SuperApp, EchoPay], currency: object
) -> None:
    """Only chargeable ISO 4217 codes pass; the error names the field (no bare TypeError)."""
    app, pay = app_pay
    with app, pytest.raises(ValueError, match="currency"):
        app.payment.charge(order_id="o-3", amount=100, currency=currency, user_id=USER)  # type: ignore[arg-type]
    assert pay.effects("payment.charge") == ()


@pytest.mark.parametrize(
    ("amount", "currency", "ok"),
    [
        (10**9, "KRW", True),
        (10**9 + 1, "KRW", False),
        (10**11, "USD", True),
        (10**11 + 1, "USD", False),
        (10**12, "KWD", True),
        (10**30, "KRW", False),
    ],
)
def test_amounts_are_bounded_per_currency(amount: int, currency: str, ok: bool) -> None:
    """At most a billion major units of any currency, counted in its minor units."""
    if ok:
        assert Money(amount, currency).amount == amount
    else:
        with pytest.raises(ValueError, match=r"Money\.amount .* over the limit"):
            Money(amount, currency)


def test_a_reused_order_id_is_an_idempotency_conflict(
    app_pay: tuple[SuperApp, EchoPay],
) -> None:
    """An order id reused with another amount is the error a reused chat key gives."""
    app, pay = app_pay
    with app:
        app.payment.charge(order_id="o-4", amount=100, user_id=USER)
        with pytest.raises(IdempotencyConflict):
            app.payment.charge(order_id="o-4", amount=200, user_id=USER)
    assert len(pay.effects("payment.charge", order_id="o-4")) == 1


def test_a_payment_never_prints_its_billing_key() -> None:
    """repr of a Payment (and so of an Outcome holding one) hides the billing key."""
    payment = Payment(
        "o-5", "kakao.pay", PaymentStatus.APPROVED, Money(100), 1.0, "T1", billing_key="S-SECRET"
    )
    assert "S-SECRET" not in repr(payment)
    assert payment.billing_key == "S-SECRET"


def test_a_charge_outcome_never_prints_the_billing_key(
    app_pay: tuple[SuperApp, EchoPay],
) -> None:
    """The outcome of a charge that issued a billing key does not show it."""
    app, _ = app_pay
    with app:
        out = app.payment.charge(order_id="o-6", amount=100, user_id=USER)
    key = out.value.billing_key
    assert key is None or key not in repr(out)
