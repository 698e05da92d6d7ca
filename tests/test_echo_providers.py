"""The in-process echo alternates: every Protocol operation, the fail switch, the call
record, idempotent dedupe, and ID tokens that the SDK's verifier accepts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

from superapp_sdk._errors import (
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    ProviderConnectError,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability, Money, Provider
from superapp_sdk.capabilities.chat import ChatProvider
from superapp_sdk.capabilities.identity import IdentityProvider, TokenSet
from superapp_sdk.capabilities.mobility import MobilityProvider, Place, RentalReceipt, RideStatus
from superapp_sdk.capabilities.payment import (
    Approval,
    Checkout,
    Payment,
    PaymentProvider,
    PaymentStatus,
)
from superapp_sdk.providers._http import DirectCall
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay
from superapp_sdk.tokens import verify_id_token

T = TypeVar("T")

PANGYO = Place(37.402056, 127.108212, "Pangyo")
GANGNAM = Place(37.497942, 127.027621, "Gangnam")
RETURN = "https://app.example/pay/return"
CALLBACK = "https://app.example/login/callback"


def run(call: DirectCall[T]) -> T:
    return call.run(5.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- every echo provider -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "protocol", "name", "capability"),
    [
        (EchoChat(), ChatProvider, "echo.chat", Capability.CHAT),
        (EchoPay(), PaymentProvider, "echo.pay", Capability.PAYMENT),
        (EchoLogin(), IdentityProvider, "echo.login", Capability.IDENTITY),
        (EchoMobility(), MobilityProvider, "echo.mobility", Capability.MOBILITY),
    ],
)
def test_echo_provider_declares_itself(
    provider: Provider, protocol: type, name: str, capability: Capability
) -> None:
    """Each echo provider satisfies its Protocol, with its name, capability and domain."""
    assert isinstance(provider, protocol)
    assert provider.name == name
    assert provider.capability is capability
    assert provider.failure_domain == "echo"


def test_operations_are_complete() -> None:
    """Each echo provider lists every operation of its capability."""
    assert EchoChat().operations == {"chat.send", "chat.history"}
    assert EchoPay().operations == {
        "payment.ready",
        "payment.approve",
        "payment.charge",
        "payment.cancel",
        "payment.status",
    }
    assert EchoLogin().operations == {
        "identity.authorize_url",
        "identity.exchange_code",
        "identity.refresh",
        "identity.userinfo",
        "identity.jwks",
    }
    assert EchoMobility().operations == {
        "mobility.estimate",
        "mobility.request_ride",
        "mobility.ride",
        "mobility.cancel_ride",
        "mobility.end_rental",
        "mobility.deep_links",
    }


def test_failure_domain_and_name_are_configurable() -> None:
    """name and failure_domain can be set, and must not be empty."""
    chat = EchoChat(name="echo.chat2", failure_domain="dc-2")
    assert (chat.name, chat.failure_domain) == ("echo.chat2", "dc-2")
    with pytest.raises(ValueError, match="failure_domain"):
        EchoChat(failure_domain="")


# -- the fail switch and the record --------------------------------------------------------


def test_fail_switch_makes_every_call_raise_without_effect() -> None:
    """With fail set, a send raises that error, is recorded as failed, and delivers nothing."""
    chat = EchoChat()
    chat.fail = ProviderConnectError("echo is dark", provider=chat.name)
    with pytest.raises(ProviderConnectError, match="echo is dark"):
        run(chat.send(to="lee", text="hi", idempotency_key="k1"))
    assert chat.messages() == []
    assert [(c.operation, c.failed) for c in chat.calls] == [("chat.send", True)]


def test_clearing_the_fail_switch_restores_service() -> None:
    """Setting fail back to None serves calls again."""
    chat = EchoChat()
    chat.fail = ProviderConnectError("dark", provider=chat.name)
    chat.fail = None
    receipt = run(chat.send(to="lee", text="hi", idempotency_key="k1"))
    assert receipt.to == "lee"


def test_fail_switch_accepts_only_exceptions() -> None:
    """fail must be an Exception or None."""
    with pytest.raises(ValueError, match="fail"):
        EchoPay().fail = "down"  # type: ignore[assignment]


def test_fail_switch_covers_every_capability() -> None:
    """Each provider's network operations raise the fail error."""
    error = ProviderConnectError("down")
    pay, login, mobility = EchoPay(), EchoLogin(), EchoMobility()
    for provider in (pay, login, mobility):
        provider.fail = error
    with pytest.raises(ProviderConnectError):
        run(pay.status(order_id="o", provider_ref="r"))
    with pytest.raises(ProviderConnectError):
        run(login.jwks())
    with pytest.raises(ProviderConnectError):
        run(mobility.estimate(origin=PANGYO, destination=GANGNAM))


async def test_async_run_serves_the_same_operation() -> None:
    """arun() serves a call like run() does."""
    chat = EchoChat()
    receipt = await chat.send(to="lee", text="hi", idempotency_key="k-async").arun(1.0)
    assert receipt.message_id == "echo.chat:k-async"


def test_calls_record_arguments_in_order() -> None:
    """calls lists each attempt with its operation and arguments, oldest first."""
    chat = EchoChat()
    run(chat.send(to="lee", text="one", idempotency_key="k1"))
    run(chat.history("lee", limit=5))
    calls = chat.calls
    assert [c.operation for c in calls] == ["chat.send", "chat.history"]
    assert calls[0].arguments["text"] == "one"
    assert calls[1].arguments["limit"] == 5


def test_nothing_runs_until_the_call_is_driven() -> None:
    """Building a call records and changes nothing; running it does."""
    chat = EchoChat()
    call = chat.send(to="lee", text="hi", idempotency_key="k1")
    assert chat.calls == []
    assert chat.messages() == []
    run(call)
    assert len(chat.messages()) == 1


# -- chat ----------------------------------------------------------------------------------


def test_chat_send_returns_a_receipt(clock: FakeClock) -> None:
    """send() answers a receipt naming the key, the recipient and the conversation."""
    chat = EchoChat(clock=clock)
    receipt = run(chat.send(to="lee", text="hi", conversation="c-1", idempotency_key="k1"))
    assert receipt.message_id == "echo.chat:k1"
    assert (receipt.to, receipt.conversation, receipt.provider) == ("lee", "c-1", "echo.chat")
    assert receipt.accepted_at == clock.time()


def test_chat_history_returns_the_last_messages_oldest_first(clock: FakeClock) -> None:
    """history() serves the conversation's last ``limit`` messages, oldest first."""
    chat = EchoChat(clock=clock)
    for i in range(4):
        run(chat.send(to="lee", text=f"m{i}", conversation="c-1", idempotency_key=f"k{i}"))
        clock.advance(1)
    run(chat.send(to="lee", text="other", conversation="c-2", idempotency_key="k-other"))
    history = run(chat.history("c-1", limit=3))
    assert [m.text for m in history] == ["m1", "m2", "m3"]
    assert all(m.conversation == "c-1" for m in history)


def test_chat_history_of_an_unknown_conversation_is_empty() -> None:
    """A conversation nobody wrote to has an empty history."""
    assert run(EchoChat().history("nobody", limit=10)) == []


def test_chat_without_conversation_files_under_the_recipient() -> None:
    """A message without a conversation is kept under the recipient's address."""
    chat = EchoChat()
    run(chat.send(to="lee", text="hi", idempotency_key="k1"))
    assert [m.text for m in run(chat.history("lee"))] == ["hi"]


def test_chat_same_key_delivers_once() -> None:
    """A retried send with the same key and text delivers once and answers the same receipt."""
    chat = EchoChat()
    first = run(chat.send(to="lee", text="hi", idempotency_key="k1"))
    second = run(chat.send(to="lee", text="hi", idempotency_key="k1"))
    assert first == second
    assert len(chat.messages()) == 1


def test_chat_same_key_other_text_conflicts() -> None:
    """Reusing a key for another message raises IdempotencyConflict."""
    chat = EchoChat()
    run(chat.send(to="lee", text="hi", idempotency_key="k1"))
    with pytest.raises(IdempotencyConflict):
        run(chat.send(to="lee", text="bye", idempotency_key="k1"))


def test_chat_unknown_recipient_is_declined() -> None:
    """A recipient outside ``recipients`` is declined as an unknown recipient."""
    chat = EchoChat(recipients=["lee"])
    with pytest.raises(Declined, match="unknown recipient") as caught:
        run(chat.send(to="park", text="hi", idempotency_key="k1"))
    assert caught.value.code == "unknown_recipient"
    chat.add_recipient("park")
    assert run(chat.send(to="park", text="hi", idempotency_key="k2")).to == "park"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"to": "", "text": "hi", "idempotency_key": "k"}, "to"),
        ({"to": "lee", "text": "", "idempotency_key": "k"}, "text"),
        ({"to": "lee", "text": "hi", "idempotency_key": ""}, "idempotency_key"),
        ({"to": "lee", "text": "hi", "conversation": "", "idempotency_key": "k"}, "conversation"),
    ],
)
def test_chat_send_validates_arguments(kwargs: dict[str, str], field: str) -> None:
    """Empty arguments are a ValueError naming the argument, before anything is sent."""
    with pytest.raises(ValueError, match=field):
        EchoChat().send(**kwargs)


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
def test_chat_history_validates_limit(limit: object) -> None:
    """limit must be an int >= 1."""
    with pytest.raises(ValueError, match="limit"):
        EchoChat().history("c", limit=limit)  # type: ignore[arg-type]


def test_chat_concurrent_retries_deliver_once() -> None:
    """Sends with one key from many threads at once deliver exactly one message."""
    chat = EchoChat()
    barrier = threading.Barrier(8, timeout=5)

    def attempt(_: int) -> str:
        barrier.wait()
        return run(chat.send(to="lee", text="hi", idempotency_key="k-race")).message_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(attempt, range(8), timeout=10))
    assert ids == {"echo.chat:k-race"}
    assert len(chat.messages()) == 1


# -- payment ---------------------------------------------------------------------------------


def checkout(pay: EchoPay, order_id: str = "o-1", amount: int = 12_000) -> Checkout:
    return run(
        pay.ready(
            order_id=order_id,
            amount=Money(amount),
            item_name="Americano",
            user_id="u-1",
            return_url=RETURN,
            idempotency_key=f"ready-{order_id}",
        )
    )


def approval_of(prepared: Checkout, amount: int | None = None) -> Approval:
    query = parse_qs(urlsplit(prepared.redirect_url).query)
    return Approval(
        provider_ref=query["provider_ref"][0],
        token=query["token"][0],
        user_id="u-1",
        amount=Money(amount) if amount is not None else None,
    )


def test_pay_ready_then_approve_charges(clock: FakeClock) -> None:
    """ready() sends the user back with what approve() needs; approve() charges once."""
    pay = EchoPay(clock=clock)
    prepared = checkout(pay)
    assert prepared.redirect_url.startswith(RETURN + "?")
    assert prepared.expires_at == clock.time() + EchoPay.checkout_ttl
    payment = run(
        pay.approve(
            order_id="o-1",
            approval=approval_of(prepared, 12_000),
            user_id="u-1",
            idempotency_key="ap-1",
        )
    )
    assert payment.status is PaymentStatus.APPROVED
    assert payment.provider_ref == prepared.provider_ref
    assert payment.approved_at == clock.time()
    assert len(pay.charges("o-1")) == 1


def test_pay_ready_is_pending_until_approved() -> None:
    """status() of a prepared payment is PENDING with nothing charged."""
    pay = EchoPay()
    prepared = checkout(pay)
    status = run(pay.status(order_id="o-1", provider_ref=prepared.provider_ref))
    assert status.status is PaymentStatus.PENDING
    assert pay.charges("o-1") == []


def test_pay_approve_retry_with_same_key_replays() -> None:
    """A retried approve with the same key answers the same payment, charging once."""
    pay = EchoPay()
    approval = approval_of(checkout(pay))
    first = run(pay.approve(order_id="o-1", approval=approval, user_id="u-1", idempotency_key="a"))
    again = run(pay.approve(order_id="o-1", approval=approval, user_id="u-1", idempotency_key="a"))
    assert first == again
    assert len(pay.charges("o-1")) == 1


def test_pay_second_approve_with_a_new_key_is_declined() -> None:
    """Approving an approved payment again under another key is declined."""
    pay = EchoPay()
    approval = approval_of(checkout(pay))
    run(pay.approve(order_id="o-1", approval=approval, user_id="u-1", idempotency_key="a"))
    with pytest.raises(Declined) as caught:
        run(pay.approve(order_id="o-1", approval=approval, user_id="u-1", idempotency_key="b"))
    assert caught.value.code == "already_processed"


def test_pay_wrong_token_is_declined() -> None:
    """An approval token that is not the checkout's is declined."""
    pay = EchoPay()
    prepared = checkout(pay)
    forged = Approval(prepared.provider_ref, "forged", "u-1")
    with pytest.raises(Declined) as caught:
        run(pay.approve(order_id="o-1", approval=forged, user_id="u-1", idempotency_key="a"))
    assert caught.value.code == "invalid_token"
    assert pay.charges("o-1") == []


def test_pay_amount_mismatch_is_declined() -> None:
    """An approval expecting another amount than the checkout's is declined."""
    pay = EchoPay()
    approval = approval_of(checkout(pay, amount=12_000), amount=1_000)
    with pytest.raises(Declined, match="amount"):
        run(pay.approve(order_id="o-1", approval=approval, user_id="u-1", idempotency_key="a"))


def test_pay_expired_checkout_is_declined(clock: FakeClock) -> None:
    """A checkout approved after its expiry is declined and fails."""
    pay = EchoPay(clock=clock)
    prepared = checkout(pay)
    clock.advance(EchoPay.checkout_ttl + 1)
    with pytest.raises(Declined) as caught:
        run(
            pay.approve(
                order_id="o-1", approval=approval_of(prepared), user_id="u-1", idempotency_key="a"
            )
        )
    assert caught.value.code == "expired"


def test_pay_configured_decline_refuses_and_fails_the_payment() -> None:
    """A configured decline refuses the approval and leaves the payment FAILED."""
    pay = EchoPay()
    pay.decline(user_id="u-1")
    prepared = checkout(pay)
    with pytest.raises(Declined, match="card declined"):
        run(
            pay.approve(
                order_id="o-1", approval=approval_of(prepared), user_id="u-1", idempotency_key="a"
            )
        )
    status = run(pay.status(order_id="o-1", provider_ref=prepared.provider_ref))
    assert status.status is PaymentStatus.FAILED


def test_pay_charge_with_a_billing_key() -> None:
    """charge() with the user's billing key charges without the user."""
    pay = EchoPay()
    key = pay.issue_billing_key("u-1")
    payment = run(
        pay.charge(
            order_id="o-9",
            amount=Money(5_000),
            item_name="Pass",
            user_id="u-1",
            billing_key=key,
            idempotency_key="c-9",
        )
    )
    assert payment.status is PaymentStatus.APPROVED
    assert payment.billing_key == key
    assert len(pay.charges("o-9")) == 1


def test_pay_charge_dedupes_by_idempotency_key() -> None:
    """A charge retried with the same key and payload charges once, like Stripe."""
    pay = EchoPay()
    key = pay.issue_billing_key("u-1")

    def attempt() -> Payment:
        return run(
            pay.charge(
                order_id="o-9",
                amount=Money(5_000),
                item_name="Pass",
                user_id="u-1",
                billing_key=key,
                idempotency_key="c-9",
            )
        )

    assert attempt() == attempt()
    assert len(pay.charges("o-9")) == 1


def test_pay_charge_same_key_other_amount_conflicts() -> None:
    """The same key with another amount raises IdempotencyConflict and charges nothing more."""
    pay = EchoPay()
    key = pay.issue_billing_key("u-1")
    for amount, expect_conflict in ((5_000, False), (6_000, True)):
        call = pay.charge(
            order_id="o-9",
            amount=Money(amount),
            item_name="Pass",
            user_id="u-1",
            billing_key=key,
            idempotency_key="c-9",
        )
        if expect_conflict:
            with pytest.raises(IdempotencyConflict):
                run(call)
        else:
            run(call)
    assert [p.amount.amount for p in pay.charges("o-9")] == [5_000]


def test_pay_charged_order_is_never_charged_again() -> None:
    """A second charge of a charged order under a new key is declined (duplicated order)."""
    pay = EchoPay()
    key = pay.issue_billing_key("u-1")
    for idempotency_key in ("c-1", "c-2"):
        call = pay.charge(
            order_id="o-9",
            amount=Money(5_000),
            item_name="Pass",
            user_id="u-1",
            billing_key=key,
            idempotency_key=idempotency_key,
        )
        if idempotency_key == "c-1":
            run(call)
        else:
            with pytest.raises(Declined) as caught:
                run(call)
            assert caught.value.code == "duplicated_order"
    assert len(pay.charges("o-9")) == 1


@pytest.mark.parametrize("owner", [None, "u-2"])
def test_pay_unknown_or_foreign_billing_key_is_declined(owner: str | None) -> None:
    """A billing key that is unknown, or another user's, is declined."""
    pay = EchoPay()
    key = pay.issue_billing_key(owner) if owner else "no-such-key"
    with pytest.raises(Declined) as caught:
        run(
            pay.charge(
                order_id="o-9",
                amount=Money(5_000),
                item_name="Pass",
                user_id="u-1",
                billing_key=key,
                idempotency_key="c-9",
            )
        )
    assert caught.value.code == "invalid_billing_key"


def test_pay_partial_then_full_cancel() -> None:
    """Cancels refund in parts until nothing is left; more is declined."""
    pay = EchoPay()
    key = pay.issue_billing_key("u-1")
    charged = run(
        pay.charge(
            order_id="o-9",
            amount=Money(5_000),
            item_name="Pass",
            user_id="u-1",
            billing_key=key,
            idempotency_key="c-9",
        )
    )

    def cancel(amount: int, idempotency_key: str) -> Payment:
        return run(
            pay.cancel(
                order_id="o-9",
                provider_ref=charged.provider_ref,
                amount=Money(amount),
                reason="refund",
                idempotency_key=idempotency_key,
            )
        )

    partial = cancel(2_000, "x-1")
    assert partial.status is PaymentStatus.PARTIALLY_CANCELED
    assert partial.canceled_amount == Money(2_000)
    with pytest.raises(Declined) as caught:
        cancel(3_001, "x-2")
    assert caught.value.code == "exceeds_cancelable"
    full = cancel(3_000, "x-3")
    assert full.status is PaymentStatus.CANCELED
    assert cancel(3_000, "x-3") == full  # a retry of the last cancel refunds nothing more


def test_pay_cancel_of_a_pending_payment_is_declined() -> None:
    """Nothing charged means nothing to cancel."""
    pay = EchoPay()
    prepared = checkout(pay)
    with pytest.raises(Declined) as caught:
        run(
            pay.cancel(
                order_id="o-1",
                provider_ref=prepared.provider_ref,
                amount=Money(1),
                reason="r",
                idempotency_key="x",
            )
        )
    assert caught.value.code == "not_cancelable"


def test_pay_cancel_in_another_currency_is_invalid() -> None:
    """A cancel in another currency than the payment's is an InvalidRequest."""
    pay = EchoPay()
    key = pay.issue_billing_key("u-1")
    charged = run(
        pay.charge(
            order_id="o-9",
            amount=Money(5_000),
            item_name="Pass",
            user_id="u-1",
            billing_key=key,
            idempotency_key="c-9",
        )
    )
    with pytest.raises(InvalidRequest):
        run(
            pay.cancel(
                order_id="o-9",
                provider_ref=charged.provider_ref,
                amount=Money(100, "USD"),
                reason="r",
                idempotency_key="x",
            )
        )


@pytest.mark.parametrize(("order_id", "ref"), [("o-1", "nope"), ("o-other", None)])
def test_pay_status_of_unknown_or_foreign_payment_is_declined(
    order_id: str, ref: str | None
) -> None:
    """status() of an unknown payment, or of another order's, is declined."""
    pay = EchoPay()
    prepared = checkout(pay)
    with pytest.raises(Declined):
        run(pay.status(order_id=order_id, provider_ref=ref or prepared.provider_ref))


def test_pay_validates_arguments() -> None:
    """Bad arguments are a ValueError before anything is sent."""
    pay = EchoPay()
    with pytest.raises(ValueError, match="amount"):
        pay.ready(
            order_id="o",
            amount=12_000,  # type: ignore[arg-type]
            item_name="i",
            user_id="u",
            return_url=RETURN,
            idempotency_key="k",
        )
    with pytest.raises(ValueError, match="return_url"):
        pay.ready(
            order_id="o",
            amount=Money(1),
            item_name="i",
            user_id="u",
            return_url="/relative",
            idempotency_key="k",
        )
    with pytest.raises(ValueError, match="user_id"):
        pay.approve(
            order_id="o", approval=Approval("r", "t", "u-2"), user_id="u-1", idempotency_key="k"
        )
    with pytest.raises(ValueError, match="decline"):
        pay.decline()


# -- identity --------------------------------------------------------------------------------


@pytest.fixture
def login(clock: FakeClock) -> EchoLogin:
    provider = EchoLogin(redirect_uri=CALLBACK, clock=clock)
    provider.add_user("echo-user-1", email="kim@example.com", name="Kim")
    return provider


def tokens_for(login: EchoLogin, nonce: str = "n-1") -> TokenSet:
    code = login.authorize(login.authorize_url(state="s-1", nonce=nonce))
    return run(login.exchange_code(code=code, nonce=nonce))


def test_login_id_token_verifies_with_the_sdk_verifier(login: EchoLogin, clock: FakeClock) -> None:
    """The ID token of a login verifies offline against the JWKS, with nonce and claims."""
    tokens = tokens_for(login)
    assert tokens.id_token is not None
    jwks = run(login.jwks())
    claims = verify_id_token(
        tokens.id_token,
        jwks=jwks,
        issuer=login.issuer,
        audience=login.client_id,
        nonce="n-1",
        now=clock.time(),
    )
    assert claims.subject == "echo-user-1"
    assert claims.email == "kim@example.com"
    assert claims.name == "Kim"


def test_login_id_token_with_a_forged_signature_is_refused(
    login: EchoLogin, clock: FakeClock
) -> None:
    """The signature is real: a token signed by another key does not verify."""
    impostor = EchoLogin(redirect_uri=CALLBACK, clock=clock)
    forged = impostor.sign(
        {"iss": login.issuer, "aud": login.client_id, "sub": "x", "iat": 0, "exp": 2e9},
        header={"kid": login.kid},
    )
    jwks = run(login.jwks())
    with pytest.raises(Unauthorized):
        verify_id_token(
            forged,
            jwks=jwks,
            issuer=login.issuer,
            audience=login.client_id,
            now=clock.time(),
        )


def test_login_authorize_url_names_state_nonce_and_client(login: EchoLogin) -> None:
    """authorize_url() carries our state, nonce, client id and redirect URI."""
    redirect = login.authorize_url(state="s-1", nonce="n-1")
    query = parse_qs(urlsplit(redirect.url).query)
    assert query["state"] == ["s-1"]
    assert query["nonce"] == ["n-1"]
    assert query["client_id"] == [login.client_id]
    assert query["redirect_uri"] == [CALLBACK]


def test_login_code_is_single_use(login: EchoLogin) -> None:
    """A code redeemed once is declined the second time."""
    code = login.authorize(login.authorize_url(state="s", nonce="n"))
    run(login.exchange_code(code=code, nonce="n"))
    with pytest.raises(Declined) as caught:
        run(login.exchange_code(code=code, nonce="n"))
    assert caught.value.code == "invalid_grant"


def test_login_code_expires(login: EchoLogin, clock: FakeClock) -> None:
    """A code redeemed after its lifetime is declined."""
    code = login.authorize(login.authorize_url(state="s", nonce="n"))
    clock.advance(EchoLogin.code_ttl + 1)
    with pytest.raises(Declined):
        run(login.exchange_code(code=code))


def test_login_code_for_another_redirect_uri_is_declined(login: EchoLogin) -> None:
    """A code redeemed with another redirect URI is declined."""
    code = login.authorize(login.authorize_url(state="s", nonce="n"))
    with pytest.raises(Declined, match="redirect_uri"):
        run(login.exchange_code(code=code, redirect_uri="https://evil.example/cb"))


def test_login_refresh_rotates_the_refresh_token(login: EchoLogin) -> None:
    """refresh() gives new tokens and the old refresh token stops working."""
    tokens = tokens_for(login)
    assert tokens.refresh_token is not None
    renewed = run(login.refresh(refresh_token=tokens.refresh_token))
    assert renewed.access_token != tokens.access_token
    assert renewed.refresh_token is not None
    with pytest.raises(Declined):
        run(login.refresh(refresh_token=tokens.refresh_token))


def test_login_userinfo_names_the_user(login: EchoLogin) -> None:
    """userinfo() with the access token gives the user's profile."""
    tokens = tokens_for(login)
    info = run(login.userinfo(access_token=tokens.access_token))
    assert (info.subject, info.email, info.name) == ("echo-user-1", "kim@example.com", "Kim")


def test_login_userinfo_refuses_unknown_and_expired_tokens(
    login: EchoLogin, clock: FakeClock
) -> None:
    """An unknown or expired access token is Unauthorized."""
    with pytest.raises(Unauthorized):
        run(login.userinfo(access_token="at-forged"))
    tokens = tokens_for(login)
    clock.advance(login.token_ttl + 1)
    with pytest.raises(Unauthorized):
        run(login.userinfo(access_token=tokens.access_token))


def test_login_records_hide_tokens(login: EchoLogin) -> None:
    """The call record never holds an access or refresh token."""
    tokens = tokens_for(login)
    run(login.userinfo(access_token=tokens.access_token))
    recorded = repr(login.calls)
    assert tokens.access_token not in recorded


def test_login_authorize_refuses_a_foreign_url(login: EchoLogin) -> None:
    """The browser step refuses a URL that is not this provider's authorization URL."""
    with pytest.raises(ValueError, match="authorization URL"):
        login.authorize("https://kauth.kakao.com/oauth/authorize?client_id=x")


def test_login_authorize_url_is_unaffected_by_fail(login: EchoLogin) -> None:
    """authorize_url() does no I/O, so the fail switch does not touch it."""
    login.fail = ProviderConnectError("down")
    assert login.authorize_url(state="s", nonce="n").provider == "echo.login"


# -- mobility --------------------------------------------------------------------------------


def test_mobility_estimate_is_live_and_priced() -> None:
    """estimate() gives a live distance, duration and metered fare."""
    mobility = EchoMobility()
    estimate = run(mobility.estimate(origin=PANGYO, destination=GANGNAM))
    assert estimate.live is True
    assert 10_000 < estimate.distance_m < 20_000
    assert estimate.duration_s == -(-estimate.distance_m // 8)
    assert estimate.fare == Money(mobility.tariff.fare(estimate.distance_m))


def test_mobility_no_route_is_declined() -> None:
    """With no_route set, estimates are declined."""
    mobility = EchoMobility()
    mobility.no_route = True
    with pytest.raises(Declined) as caught:
        run(mobility.estimate(origin=PANGYO, destination=GANGNAM))
    assert caught.value.code == "no_route"


def test_mobility_request_ride_dedupes_by_key() -> None:
    """The same key answers the same ride; another payload under it conflicts."""
    mobility = EchoMobility()
    first = run(
        mobility.request_ride(rider="u", origin=PANGYO, destination=GANGNAM, idempotency_key="r")
    )
    again = run(
        mobility.request_ride(rider="u", origin=PANGYO, destination=GANGNAM, idempotency_key="r")
    )
    assert first.ride_id == again.ride_id
    assert first.status is RideStatus.REQUESTED
    with pytest.raises(IdempotencyConflict):
        run(
            mobility.request_ride(
                rider="u", origin=GANGNAM, destination=PANGYO, idempotency_key="r"
            )
        )


def test_mobility_no_drivers_is_declined() -> None:
    """With no drivers available, ride requests are declined."""
    mobility = EchoMobility()
    mobility.drivers_available = False
    with pytest.raises(Declined) as caught:
        run(
            mobility.request_ride(
                rider="u", origin=PANGYO, destination=GANGNAM, idempotency_key="r"
            )
        )
    assert caught.value.code == "no_drivers"


def test_mobility_ride_follows_dispatch() -> None:
    """ride() shows the driver once dispatched; an unknown ride is declined."""
    mobility = EchoMobility()
    booked = run(
        mobility.request_ride(rider="u", origin=PANGYO, destination=GANGNAM, idempotency_key="r")
    )
    mobility.dispatch(booked.ride_id, eta_s=90)
    current = run(mobility.ride(booked.ride_id))
    assert current.status is RideStatus.DISPATCHED
    assert current.driver is not None
    assert current.eta_s == 90
    with pytest.raises(Declined):
        run(mobility.ride("no-such-ride"))


def test_mobility_cancel_ride_and_refuse_finished() -> None:
    """A ride cancels (twice is harmless); a completed one cannot be canceled."""
    mobility = EchoMobility()
    ride_id = run(
        mobility.request_ride(rider="u", origin=PANGYO, destination=GANGNAM, idempotency_key="r")
    ).ride_id
    assert run(mobility.cancel_ride(ride_id, idempotency_key="c1")).status is RideStatus.CANCELED
    assert run(mobility.cancel_ride(ride_id, idempotency_key="c2")).status is RideStatus.CANCELED
    done = run(
        mobility.request_ride(rider="u", origin=PANGYO, destination=GANGNAM, idempotency_key="r2")
    ).ride_id
    mobility.set_status(done, RideStatus.COMPLETED)
    with pytest.raises(Declined) as caught:
        run(mobility.cancel_ride(done, idempotency_key="c3"))
    assert caught.value.code == "ride_not_cancelable"


def test_mobility_end_rental_charges_by_started_minute(clock: FakeClock) -> None:
    """A rental ended 61 s after it started pays the unlock fare and two minutes."""
    mobility = EchoMobility(clock=clock)
    mobility.start_rental("scooter-1", started_at=1_000.0)
    receipt = run(
        mobility.end_rental(rental_id="scooter-1", location=PANGYO, at=1_061.0, idempotency_key="e")
    )
    assert receipt.fare == Money(mobility.unlock_fare + 2 * mobility.per_minute_fare)
    assert (receipt.ended_at, receipt.reconciled, receipt.signature) == (1_061.0, True, None)


def test_mobility_end_rental_once() -> None:
    """The same key answers the same receipt; another key is declined as already ended."""
    mobility = EchoMobility()
    mobility.start_rental("scooter-1", started_at=0.0)

    def end(key: str) -> RentalReceipt:
        return run(
            mobility.end_rental(
                rental_id="scooter-1", location=PANGYO, at=60.0, idempotency_key=key
            )
        )

    assert end("e1") == end("e1")
    with pytest.raises(Declined) as caught:
        end("e2")
    assert caught.value.code == "rental_already_ended"


def test_mobility_end_unknown_rental_is_declined() -> None:
    """A rental that never started cannot end."""
    with pytest.raises(Declined) as caught:
        run(
            EchoMobility().end_rental(
                rental_id="ghost", location=PANGYO, at=1.0, idempotency_key="e"
            )
        )
    assert caught.value.code == "rental_not_found"


def test_mobility_deep_links_work_while_failing() -> None:
    """deep_links() is pure: it answers links even with the fail switch set."""
    mobility = EchoMobility()
    mobility.fail = ProviderConnectError("down")
    (link,) = mobility.deep_links(origin=PANGYO, destination=GANGNAM)
    assert link.url.startswith("echo-ride://trip?")
    assert link.fallback_url is not None
    assert link.fallback_url.startswith("https://")


@pytest.mark.parametrize("at", [float("nan"), -1.0, True])
def test_mobility_end_rental_validates_time(at: object) -> None:
    """at must be finite epoch seconds >= 0."""
    with pytest.raises(ValueError, match="at"):
        EchoMobility().end_rental(
            rental_id="r",
            location=PANGYO,
            at=at,  # type: ignore[arg-type]
            idempotency_key="e",
        )
