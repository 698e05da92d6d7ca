"""The payment contract, run against every payment provider and its simulator.

Each provider joins the suite through a :class:`PaymentHarness`: the provider pointed at
its simulator, plus the simulator's controls (the user approving at the provider, a
stored billing key, a declined user, the ledger of executed charges). Every test speaks
through the :class:`PaymentProvider` Protocol only. Async tests run the simulator
in-process (``httpx.ASGITransport``); the ``network`` tests run it on a real loopback
uvicorn server and drive the same flows with a sync client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest

from superapp_sdk._errors import Declined, ProviderError
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.payment import (
    Approval,
    Checkout,
    Payment,
    PaymentProvider,
    PaymentStatus,
)
from superapp_sdk.providers._http import Call, arun_call, run_call
from superapp_sdk.providers.kakao.pay import KakaoPay
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing._servers import UvicornServer
from superapp_sdk.testing.kakao._asgi import App, Fire
from superapp_sdk.testing.kakao.payment import PaymentState, routes
from tests._contract import Driver

T = TypeVar("T")

RETURN_URL = "https://app.example/payments/return"


@dataclass(frozen=True, slots=True)
class PaymentHarness:
    """A payment provider wired to its simulator, with the simulator's controls."""

    provider: PaymentProvider
    provider_at: Callable[[str], PaymentProvider]  # the provider for a simulator root URL
    app: App
    approve_at_provider: Callable[[Checkout, str], Approval]  # the user approves the checkout
    billing_key_for: Callable[[str], str]  # a stored billing key for a user
    decline_user: Callable[[str], None]  # every later charge of this user is refused
    successful_charges: Callable[[str], int]  # executed charges of an order, ever
    advance: Callable[[float], None]  # move the simulator's clock


def kakao_pay() -> PaymentHarness:
    """KakaoPay against the simulated KakaoPay open API."""
    clock = FakeClock()
    state = PaymentState(clock=clock)

    def provider_at(root: str) -> KakaoPay:
        return KakaoPay(secret_key=state.secret_key, pay_base_url=f"{root}/pay")

    def approve_at_provider(checkout: Checkout, user_id: str) -> Approval:
        token = state.authorize(checkout.provider_ref)
        return Approval(provider_ref=checkout.provider_ref, token=token, user_id=user_id)

    return PaymentHarness(
        provider=provider_at("http://kakao.sim"),
        provider_at=provider_at,
        app=App(routes(state)),
        approve_at_provider=approve_at_provider,
        billing_key_for=state.issue_sid,
        decline_user=lambda user_id: state.decline(user_id=user_id),
        successful_charges=lambda order_id: len(state.charges(order_id)),
        advance=clock.advance,
    )


#: Every payment provider of the SDK; alternates append their harness here.
HARNESSES = [pytest.param(kakao_pay, id="kakao.pay")]


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest) -> PaymentHarness:
    factory: Callable[[], PaymentHarness] = request.param
    return factory()


@pytest.fixture
async def client(harness: PaymentHarness) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app)) as http:
        yield http


class Payments(Driver[PaymentProvider]):
    """Drives calls of one provider through one async client."""

    def __init__(self, harness: PaymentHarness, http: httpx.AsyncClient) -> None:
        super().__init__(harness.provider, http)
        self.harness = harness

    async def checkout(
        self, order_id: str, user_id: str = "user-1", total: int = 12_000
    ) -> Checkout:
        return await self(
            self.provider.ready(
                order_id=order_id,
                amount=Money(total),
                item_name="Americano x2",
                user_id=user_id,
                return_url=RETURN_URL,
                idempotency_key=f"ready:{order_id}",
            ),
            "payment.ready",
        )

    async def approve(self, order_id: str, approval: Approval) -> Payment:
        return await self(
            self.provider.approve(
                order_id=order_id,
                approval=approval,
                user_id=approval.user_id,
                idempotency_key=f"approve:{order_id}",
            ),
            "payment.approve",
        )

    async def paid(self, order_id: str, user_id: str = "user-1", total: int = 12_000) -> Payment:
        checkout = await self.checkout(order_id, user_id, total)
        approval = self.harness.approve_at_provider(checkout, user_id)
        return await self.approve(order_id, approval)

    async def charge(self, order_id: str, user_id: str, billing_key: str, total: int) -> Payment:
        return await self(
            self.provider.charge(
                order_id=order_id,
                amount=Money(total),
                item_name="monthly plan",
                user_id=user_id,
                billing_key=billing_key,
                idempotency_key=f"charge:{order_id}",
            ),
            "payment.charge",
        )

    async def cancel(self, order_id: str, ref: str, total: int, key: str) -> Payment:
        return await self(
            self.provider.cancel(
                order_id=order_id,
                provider_ref=ref,
                amount=Money(total),
                reason="customer request",
                idempotency_key=key,
            ),
            "payment.cancel",
        )

    async def status(self, order_id: str, ref: str) -> Payment:
        return await self(
            self.provider.status(order_id=order_id, provider_ref=ref), "payment.status"
        )


@pytest.fixture
def drive(harness: PaymentHarness, client: httpx.AsyncClient) -> Payments:
    return Payments(harness, client)


# -- identity of the provider ------------------------------------------------------------


def test_provider_is_a_payment_provider(harness: PaymentHarness) -> None:
    """Every provider satisfies the Protocol and names its capability and domain."""
    assert isinstance(harness.provider, PaymentProvider)
    assert harness.provider.capability is Capability.PAYMENT
    assert harness.provider.failure_domain
    assert "payment.charge" in harness.provider.operations


# -- one-time payments -------------------------------------------------------------------


async def test_ready_gives_a_checkout_for_the_order(drive: Payments) -> None:
    """ready answers a Checkout for this order with an https redirect."""
    checkout = await drive.checkout("order-1")
    assert checkout.order_id == "order-1"
    assert checkout.provider == drive.provider.name
    assert checkout.redirect_url.startswith("https://")
    assert checkout.provider_ref


async def test_a_prepared_payment_is_pending(drive: Payments) -> None:
    """Before the user approves, the payment is PENDING and nothing is charged."""
    checkout = await drive.checkout("order-1")
    payment = await drive.status("order-1", checkout.provider_ref)
    assert payment.status is PaymentStatus.PENDING
    assert drive.harness.successful_charges("order-1") == 0


async def test_an_approved_checkout_is_charged_once(drive: Payments) -> None:
    """Approving charges the amount once, and status agrees."""
    payment = await drive.paid("order-1", total=12_000)
    assert payment.status is PaymentStatus.APPROVED
    assert payment.amount == Money(12_000)
    assert payment.order_id == "order-1"
    assert (await drive.status("order-1", payment.provider_ref)).status is PaymentStatus.APPROVED
    assert drive.harness.successful_charges("order-1") == 1


async def test_a_second_approval_is_declined_and_charges_nothing(drive: Payments) -> None:
    """Approving a charged payment again is refused; still one charge."""
    checkout = await drive.checkout("order-1")
    approval = drive.harness.approve_at_provider(checkout, "user-1")
    await drive.approve("order-1", approval)
    with pytest.raises(Declined):
        await drive.approve("order-1", approval)
    assert drive.harness.successful_charges("order-1") == 1


async def test_a_forged_approval_token_is_declined(drive: Payments) -> None:
    """An approval the user never gave is refused and charges nothing."""
    checkout = await drive.checkout("order-1")
    drive.harness.approve_at_provider(checkout, "user-1")
    forged = Approval(provider_ref=checkout.provider_ref, token="forged-token", user_id="user-1")
    with pytest.raises(Declined):
        await drive.approve("order-1", forged)
    assert drive.harness.successful_charges("order-1") == 0


async def test_approving_before_the_user_did_is_declined(drive: Payments) -> None:
    """A checkout the user has not approved cannot be charged."""
    checkout = await drive.checkout("order-1")
    early = Approval(provider_ref=checkout.provider_ref, token="guess", user_id="user-1")
    with pytest.raises(Declined):
        await drive.approve("order-1", early)
    assert drive.harness.successful_charges("order-1") == 0


async def test_an_expired_checkout_cannot_be_approved(drive: Payments) -> None:
    """A checkout approved after its expiry is refused."""
    checkout = await drive.checkout("order-1")
    approval = drive.harness.approve_at_provider(checkout, "user-1")
    assert checkout.expires_at is not None
    drive.harness.advance(16 * 60)
    with pytest.raises(Declined):
        await drive.approve("order-1", approval)
    assert drive.harness.successful_charges("order-1") == 0


async def test_a_declined_user_is_refused_at_approval(drive: Payments) -> None:
    """A card or wallet refusal is Declined, never a provider error."""
    drive.harness.decline_user("user-broke")
    with pytest.raises(Declined) as caught:
        await drive.paid("order-1", user_id="user-broke")
    assert caught.value.retryable is False
    assert drive.harness.successful_charges("order-1") == 0


async def test_approval_for_another_order_is_declined(drive: Payments) -> None:
    """An approval cannot be spent on a different order."""
    checkout = await drive.checkout("order-1")
    approval = drive.harness.approve_at_provider(checkout, "user-1")
    with pytest.raises(Declined):
        await drive.approve("order-2", approval)
    assert drive.harness.successful_charges("order-2") == 0


# -- server-side charges -----------------------------------------------------------------


async def test_a_charge_with_a_billing_key_is_approved(drive: Payments) -> None:
    """A stored billing key charges without the user, once."""
    key = drive.harness.billing_key_for("user-1")
    payment = await drive.charge("order-9", "user-1", key, 9_900)
    assert payment.status is PaymentStatus.APPROVED
    assert payment.amount == Money(9_900)
    assert (await drive.status("order-9", payment.provider_ref)).status is PaymentStatus.APPROVED
    assert drive.harness.successful_charges("order-9") == 1


async def test_a_charge_of_a_declined_user_is_refused(drive: Payments) -> None:
    """A refused charge raises Declined and leaves no charge."""
    key = drive.harness.billing_key_for("user-1")
    drive.harness.decline_user("user-1")
    with pytest.raises(Declined):
        await drive.charge("order-9", "user-1", key, 9_900)
    assert drive.harness.successful_charges("order-9") == 0


async def test_a_charge_with_an_unknown_billing_key_is_declined(drive: Payments) -> None:
    """A billing key the provider never issued is refused."""
    with pytest.raises(Declined):
        await drive.charge("order-9", "user-1", "S0000000000000099999", 9_900)


async def test_a_billing_key_of_another_user_is_declined(drive: Payments) -> None:
    """One user's billing key cannot charge another user."""
    key = drive.harness.billing_key_for("user-1")
    with pytest.raises(Declined):
        await drive.charge("order-9", "user-2", key, 9_900)
    assert drive.harness.successful_charges("order-9") == 0


# -- cancels -----------------------------------------------------------------------------


async def test_a_partial_then_a_full_cancel(drive: Payments) -> None:
    """Refunds accumulate: partial first, then the rest."""
    payment = await drive.paid("order-1", total=12_000)
    partial = await drive.cancel("order-1", payment.provider_ref, 2_000, "cancel:1")
    assert partial.status is PaymentStatus.PARTIALLY_CANCELED
    assert partial.canceled_amount == Money(2_000)
    full = await drive.cancel("order-1", payment.provider_ref, 10_000, "cancel:2")
    assert full.status is PaymentStatus.CANCELED
    assert full.canceled_amount == Money(12_000)
    assert (await drive.status("order-1", payment.provider_ref)).status is PaymentStatus.CANCELED


async def test_canceling_more_than_was_charged_is_declined(drive: Payments) -> None:
    """A refund larger than the payment is refused and refunds nothing."""
    payment = await drive.paid("order-1", total=12_000)
    with pytest.raises(Declined):
        await drive.cancel("order-1", payment.provider_ref, 12_001, "cancel:1")
    assert (await drive.status("order-1", payment.provider_ref)).status is PaymentStatus.APPROVED


async def test_canceling_an_unpaid_checkout_is_declined(drive: Payments) -> None:
    """Nothing was charged, so nothing can be refunded."""
    checkout = await drive.checkout("order-1")
    with pytest.raises(Declined):
        await drive.cancel("order-1", checkout.provider_ref, 1_000, "cancel:1")


async def test_a_subscription_charge_can_be_canceled(drive: Payments) -> None:
    """A server-side charge is refundable through the same cancel."""
    key = drive.harness.billing_key_for("user-1")
    payment = await drive.charge("order-9", "user-1", key, 9_900)
    canceled = await drive.cancel("order-9", payment.provider_ref, 9_900, "cancel:9")
    assert canceled.status is PaymentStatus.CANCELED


# -- status and faults -------------------------------------------------------------------


async def test_status_of_an_unknown_payment_is_declined(drive: Payments) -> None:
    """A payment the provider never saw is a refusal, not an error to retry."""
    with pytest.raises(Declined):
        await drive.status("order-1", "T0000000000000099999")


async def test_status_of_a_payment_under_another_order_is_declined(drive: Payments) -> None:
    """A provider ref of another order is never reported as this order's payment."""
    payment = await drive.paid("order-1")
    with pytest.raises(Declined):
        await drive.status("order-2", payment.provider_ref)


async def test_a_burning_provider_gives_a_retryable_provider_error(drive: Payments) -> None:
    """5xx pages while the data center burns are retryable ProviderErrors."""
    drive.harness.app.fire.set("payment", Fire.ERROR_5XX)
    with pytest.raises(ProviderError) as caught:
        await drive.checkout("order-1")
    assert caught.value.retryable is True
    assert caught.value.http_status == 503


# -- the same flows, sync, over a real loopback socket -----------------------------------


@pytest.fixture
def served(harness: PaymentHarness) -> Iterator[tuple[PaymentProvider, httpx.Client]]:
    with UvicornServer(harness.app) as server, httpx.Client() as http:
        yield harness.provider_at(server.url), http


@pytest.mark.network
def test_sync_one_time_payment_over_loopback(
    harness: PaymentHarness, served: tuple[PaymentProvider, httpx.Client]
) -> None:
    """ready, approve and status work with a sync client on a real socket."""
    provider, http = served

    def run(call: Call[T], operation: str) -> T:
        return run_call(http, call, provider=provider.name, operation=operation, timeout=10)

    checkout = run(
        provider.ready(
            order_id="order-1",
            amount=Money(5_000),
            item_name="Latte",
            user_id="user-1",
            return_url=RETURN_URL,
            idempotency_key="ready:order-1",
        ),
        "payment.ready",
    )
    approval = harness.approve_at_provider(checkout, "user-1")
    payment = run(
        provider.approve(
            order_id="order-1", approval=approval, user_id="user-1", idempotency_key="a"
        ),
        "payment.approve",
    )
    assert payment.status is PaymentStatus.APPROVED
    status = run(provider.status(order_id="order-1", provider_ref=payment.provider_ref), "s")
    assert status.status is PaymentStatus.APPROVED
    assert harness.successful_charges("order-1") == 1


@pytest.mark.network
def test_sync_declined_charge_over_loopback(
    harness: PaymentHarness, served: tuple[PaymentProvider, httpx.Client]
) -> None:
    """A refusal crosses a real socket as Declined."""
    provider, http = served
    key = harness.billing_key_for("user-1")
    harness.decline_user("user-1")
    call = provider.charge(
        order_id="order-9",
        amount=Money(9_900),
        item_name="monthly",
        user_id="user-1",
        billing_key=key,
        idempotency_key="charge:order-9",
    )
    with pytest.raises(Declined):
        run_call(http, call, provider=provider.name, operation="payment.charge", timeout=10)
    assert harness.successful_charges("order-9") == 0


# -- the KakaoPay simulator itself -------------------------------------------------------


@pytest.fixture
def kakao_sim() -> tuple[PaymentState, App, FakeClock]:
    clock = FakeClock()
    state = PaymentState(clock=clock)
    return state, App(routes(state)), clock


async def test_simulator_refuses_a_wrong_secret_key_with_kakaopay_body(
    kakao_sim: tuple[PaymentState, App, FakeClock],
) -> None:
    """A wrong SECRET_KEY gets 401 and KakaoPay's error body."""
    _, app, _ = kakao_sim
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        answer = await http.post(
            "http://kakao.sim/pay/online/v1/payment/order",
            json={"cid": "TC0ONETIME", "tid": "T1"},
            headers={"Authorization": "SECRET_KEY wrong"},
        )
    assert answer.status_code == 401
    assert answer.json()["error_code"] == -401


async def test_simulator_refuses_a_form_body(
    kakao_sim: tuple[PaymentState, App, FakeClock],
) -> None:
    """The open API takes JSON; a form body is an invalid parameter (-2)."""
    state, app, _ = kakao_sim
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        answer = await http.post(
            "http://kakao.sim/pay/online/v1/payment/ready",
            data={"cid": "TC0ONETIME"},
            headers={"Authorization": f"SECRET_KEY {state.secret_key}"},
        )
    assert (answer.status_code, answer.json()["error_code"]) == (400, -2)


async def test_simulator_redirects_the_user_with_the_pg_token(
    kakao_sim: tuple[PaymentState, App, FakeClock],
) -> None:
    """After the user approves, the return URL carries kakaopay=approve and pg_token."""
    state, app, _ = kakao_sim
    pay = KakaoPay(secret_key=state.secret_key, pay_base_url="http://kakao.sim/pay")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        checkout = await arun_call(
            http,
            pay.ready(
                order_id="order-1",
                amount=Money(1000),
                item_name="tea",
                user_id="user-1",
                return_url=RETURN_URL,
                idempotency_key="k",
            ),
            provider=pay.name,
            operation="payment.ready",
        )
    token = state.authorize(checkout.provider_ref)
    redirect = httpx.URL(state.approval_redirect(checkout.provider_ref))
    assert redirect.params["kakaopay"] == "approve"
    assert redirect.params["order_id"] == "order-1"
    assert redirect.params["pg_token"] == token


async def test_simulator_quit_payment_reads_as_failed(
    kakao_sim: tuple[PaymentState, App, FakeClock],
) -> None:
    """A user who closes the KakaoPay window leaves a FAILED payment."""
    state, app, _ = kakao_sim
    pay = KakaoPay(secret_key=state.secret_key, pay_base_url="http://kakao.sim/pay")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        driver = Driver(pay, http)
        checkout = await driver(
            pay.ready(
                order_id="order-1",
                amount=Money(1000),
                item_name="tea",
                user_id="user-1",
                return_url=RETURN_URL,
                idempotency_key="k",
            ),
            "payment",
        )
        state.quit(checkout.provider_ref)
        payment = await driver(
            pay.status(order_id="order-1", provider_ref=checkout.provider_ref), "payment"
        )
    assert payment.status is PaymentStatus.FAILED


async def test_simulator_recurring_approval_issues_a_usable_sid(
    kakao_sim: tuple[PaymentState, App, FakeClock],
) -> None:
    """A recurring first payment issues a sid that later charges use."""
    state, app, _ = kakao_sim
    pay = KakaoPay(secret_key=state.secret_key, pay_base_url="http://kakao.sim/pay")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        driver = Driver(pay, http)
        checkout = await driver(
            pay.ready(
                order_id="sub-1",
                amount=Money(9_900),
                item_name="plan",
                user_id="user-1",
                return_url=RETURN_URL,
                idempotency_key="k",
                recurring=True,
            ),
            "payment",
        )
        token = state.authorize(checkout.provider_ref)
        first = await driver(
            pay.approve(
                order_id="sub-1",
                approval=Approval(checkout.provider_ref, token, "user-1"),
                user_id="user-1",
                idempotency_key="k",
            ),
            "payment",
        )
        assert first.billing_key is not None
        assert state.sids("user-1") == [first.billing_key]
        second = await driver(
            pay.charge(
                order_id="sub-2",
                amount=Money(9_900),
                item_name="plan",
                user_id="user-1",
                billing_key=first.billing_key,
                idempotency_key="k2",
            ),
            "payment",
        )
    assert second.status is PaymentStatus.APPROVED
    assert [c.kind for c in state.ledger["sub-1"] + state.ledger["sub-2"]] == [
        "approve",
        "subscription",
    ]


async def test_simulator_refuses_a_deactivated_sid(
    kakao_sim: tuple[PaymentState, App, FakeClock],
) -> None:
    """A deactivated sid is declined with -751."""
    state, app, _ = kakao_sim
    pay = KakaoPay(secret_key=state.secret_key, pay_base_url="http://kakao.sim/pay")
    sid = state.issue_sid("user-1")
    state.deactivate_sid(sid)
    call = pay.charge(
        order_id="o",
        amount=Money(100),
        item_name="x",
        user_id="user-1",
        billing_key=sid,
        idempotency_key="k",
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        with pytest.raises(Declined) as caught:
            await arun_call(http, call, provider=pay.name, operation="payment.charge")
    assert caught.value.code == "-751"
