"""KakaoPay adapter flows, driven with plain httpx responses."""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from superapp_sdk._errors import (
    Declined,
    InvalidRequest,
    ProviderError,
    RateLimited,
    SuperAppError,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Money
from superapp_sdk.capabilities.payment import Approval, Payment, PaymentStatus
from superapp_sdk.providers.kakao.pay import KAKAOPAY_STATUSES, KakaoPay

T = TypeVar("T")

SECRET = "DEV_SECRET_KEY_123"
BASE = "https://open-api.kakaopay.com"
KST = timezone(timedelta(hours=9))
TID = "T1234567890123456789"


def drive(
    flow: Generator[httpx.Request, httpx.Response, T], *responses: httpx.Response
) -> tuple[T, list[httpx.Request]]:
    """Run ``flow`` answering its requests with ``responses`` in order."""
    sent = [next(flow)]
    for response in responses:
        try:
            sent.append(flow.send(response))
        except StopIteration as stop:
            return stop.value, sent
    raise AssertionError(f"the flow sent {len(sent)} requests, more than the answers given")


def sent_requests(
    flow: Generator[httpx.Request, httpx.Response, T], *responses: httpx.Response
) -> list[httpx.Request]:
    """The requests ``flow`` sends before it raises or returns."""
    sent = [next(flow)]
    for response in responses:
        try:
            sent.append(flow.send(response))
        except (StopIteration, SuperAppError):
            return sent
    return sent


def ok(data: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


def fail(code: int, message: str = "error", status: int = 400, **extra: Any) -> httpx.Response:
    return httpx.Response(
        status, json={"error_code": code, "error_message": message, **extra}, headers={}
    )


def body(request: httpx.Request) -> dict[str, Any]:
    data = json.loads(request.content)
    assert isinstance(data, dict)
    return data


def amount(total: int) -> dict[str, int]:
    return {"total": total, "tax_free": 0, "vat": round(total / 11), "point": 0, "discount": 0}


def ready_answer(**changes: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tid": TID,
        "next_redirect_app_url": "https://online-pay.kakao.com/mockup/v1/x/aInfo",
        "next_redirect_mobile_url": "https://online-pay.kakao.com/mockup/v1/x/mInfo",
        "next_redirect_pc_url": "https://online-pay.kakao.com/mockup/v1/x/info",
        "created_at": "2023-07-15T21:18:22",
    }
    data.update(changes)
    return data


def approve_answer(**changes: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "aid": "A5678901234567890123",
        "tid": TID,
        "cid": "TC0ONETIME",
        "partner_order_id": "order-1",
        "partner_user_id": "user-1",
        "payment_method_type": "MONEY",
        "item_name": "초코파이",
        "quantity": 1,
        "amount": amount(2200),
        "created_at": "2023-07-15T21:18:22",
        "approved_at": "2023-07-15T21:18:45",
    }
    data.update(changes)
    return data


def order_answer(**changes: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tid": TID,
        "cid": "TC0ONETIME",
        "status": "SUCCESS_PAYMENT",
        "partner_order_id": "order-1",
        "partner_user_id": "user-1",
        "amount": amount(2200),
        "canceled_amount": amount(0),
        "cancel_available_amount": amount(2200),
        "item_name": "초코파이",
        "quantity": 1,
        "created_at": "2023-07-15T21:18:22",
        "approved_at": "2023-07-15T21:18:45",
        "payment_action_details": [
            {"aid": "A1", "payment_action_type": "PAYMENT", "amount": 2200},
        ],
    }
    data.update(changes)
    return data


@pytest.fixture
def pay() -> KakaoPay:
    return KakaoPay(secret_key=SECRET)


def ready(pay: KakaoPay, **changes: Any) -> Generator[httpx.Request, httpx.Response, Any]:
    args: dict[str, Any] = {
        "order_id": "order-1",
        "amount": Money(2200),
        "item_name": "초코파이",
        "user_id": "user-1",
        "return_url": "https://app.example/pay/return",
        "idempotency_key": "key-1",
    }
    args.update(changes)
    return pay.ready(**args)


def approve(pay: KakaoPay, **changes: Any) -> Generator[httpx.Request, httpx.Response, Payment]:
    args: dict[str, Any] = {
        "order_id": "order-1",
        "approval": Approval(provider_ref=TID, token="pgtoken123", user_id="user-1"),
        "user_id": "user-1",
        "idempotency_key": "key-1",
    }
    args.update(changes)
    return pay.approve(**args)


def charge(pay: KakaoPay, **changes: Any) -> Generator[httpx.Request, httpx.Response, Payment]:
    args: dict[str, Any] = {
        "order_id": "order-1",
        "amount": Money(2200),
        "item_name": "monthly",
        "user_id": "user-1",
        "billing_key": "S1234567890123456789",
        "idempotency_key": "key-1",
    }
    args.update(changes)
    return pay.charge(**args)


# -- the adapter itself ------------------------------------------------------------------


def test_repr_shows_name_and_base_url_but_not_the_secret(pay: KakaoPay) -> None:
    """The secret key never appears in repr."""
    text = repr(pay)
    assert SECRET not in text
    assert "kakao.pay" in text
    assert BASE in text


def test_defaults_name_the_kakao_failure_domain(pay: KakaoPay) -> None:
    """KakaoPay shares the kakao failure domain by default."""
    assert (pay.name, pay.failure_domain, pay.pay_base_url) == ("kakao.pay", "kakao", BASE)


def test_constructor_rejects_an_empty_secret() -> None:
    """A missing secret key fails at construction, naming it."""
    with pytest.raises(ValueError, match="secret_key"):
        KakaoPay(secret_key="")


def test_constructor_rejects_a_base_url_without_scheme() -> None:
    """pay_base_url must be an http(s) URL."""
    with pytest.raises(ValueError, match="pay_base_url"):
        KakaoPay(secret_key="s", pay_base_url="open-api.kakaopay.com")


# -- ready -------------------------------------------------------------------------------


def test_ready_posts_json_with_the_secret_key_header(pay: KakaoPay) -> None:
    """ready is a JSON POST to the open API's ready endpoint with SECRET_KEY auth."""
    request = next(ready(pay))
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/online/v1/payment/ready"
    assert request.headers["authorization"] == f"SECRET_KEY {SECRET}"
    assert request.headers["content-type"] == "application/json"


def test_ready_sends_the_documented_fields(pay: KakaoPay) -> None:
    """The ready body carries KakaoPay's required fields."""
    sent = body(next(ready(pay)))
    assert sent["cid"] == "TC0ONETIME"
    assert sent["partner_order_id"] == "order-1"
    assert sent["partner_user_id"] == "user-1"
    assert sent["item_name"] == "초코파이"
    assert (sent["quantity"], sent["total_amount"], sent["tax_free_amount"]) == (1, 2200, 0)
    assert {"approval_url", "cancel_url", "fail_url"} <= sent.keys()


def test_ready_return_urls_say_which_outcome_and_keep_the_query(pay: KakaoPay) -> None:
    """Each return URL keeps the app's query and adds the outcome and order id."""
    sent = body(next(ready(pay, return_url="https://app.example/r?session=abc")))
    for key, outcome in (
        ("approval_url", "approve"),
        ("cancel_url", "cancel"),
        ("fail_url", "fail"),
    ):
        query = parse_qs(urlsplit(sent[key]).query)
        assert query == {"session": ["abc"], "kakaopay": [outcome], "order_id": ["order-1"]}


def test_ready_recurring_uses_the_subscription_merchant_code(pay: KakaoPay) -> None:
    """A recurring payment is prepared under subscription_cid."""
    assert body(next(ready(pay, recurring=True)))["cid"] == "TCSUBSCRIP"


def test_ready_never_sends_an_idempotency_header(pay: KakaoPay) -> None:
    """KakaoPay has no idempotency header; the key is not sent."""
    assert "idempotency-key" not in next(ready(pay)).headers


def test_ready_builds_a_checkout_from_the_answer(pay: KakaoPay) -> None:
    """The answer's tid and redirect URLs make the Checkout."""
    checkout, _ = drive(ready(pay), ok(ready_answer()))
    assert checkout.order_id == "order-1"
    assert checkout.provider == "kakao.pay"
    assert checkout.provider_ref == TID
    assert checkout.redirect_url.endswith("/info")
    assert checkout.mobile_url == "https://online-pay.kakao.com/mockup/v1/x/mInfo"
    assert checkout.app_url == "https://online-pay.kakao.com/mockup/v1/x/aInfo"


def test_ready_checkout_expires_fifteen_minutes_after_creation_in_kst(pay: KakaoPay) -> None:
    """created_at is Korea time; the tid expires 15 minutes later."""
    checkout, _ = drive(ready(pay), ok(ready_answer()))
    created = datetime(2023, 7, 15, 21, 18, 22, tzinfo=KST).timestamp()
    assert checkout.expires_at == created + 15 * 60


def test_ready_accepts_an_answer_without_mobile_and_app_urls(pay: KakaoPay) -> None:
    """The mobile and app URLs are optional."""
    data = ready_answer()
    del data["next_redirect_app_url"], data["next_redirect_mobile_url"]
    checkout, _ = drive(ready(pay), ok(data))
    assert (checkout.mobile_url, checkout.app_url) == (None, None)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"amount": Money(2200, "USD")}, "KRW"),
        ({"amount": Money(0)}, "amount"),
        ({"order_id": "x" * 101}, "order_id"),
        ({"item_name": ""}, "item_name"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"return_url": "/relative"}, "return_url"),
        ({"return_url": "https://app.example/" + "r" * 250}, "return_url"),
    ],
)
def test_ready_refuses_arguments_kakaopay_would_refuse(
    pay: KakaoPay, changes: dict[str, Any], match: str
) -> None:
    """Arguments KakaoPay would refuse raise ValueError before anything is sent."""
    with pytest.raises(ValueError, match=match):
        ready(pay, **changes)


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (httpx.Response(200, content=b'{"tid": "T1", '), "malformed JSON"),
        (httpx.Response(200, json=[ready_answer()]), "list"),
        (ok(ready_answer(tid=12345)), "'tid'"),
        (ok(ready_answer(tid="")), "'tid'"),
        (ok({k: v for k, v in ready_answer().items() if k != "tid"}), "'tid'"),
        (ok(ready_answer(next_redirect_pc_url=None)), "next_redirect_pc_url"),
        (ok(ready_answer(created_at="yesterday")), "created_at"),
        (ok(ready_answer(next_redirect_app_url=7)), "next_redirect_app_url"),
    ],
)
def test_ready_refuses_a_malformed_answer(pay: KakaoPay, answer: httpx.Response, what: str) -> None:
    """A malformed ready answer is a ProviderError naming what is wrong."""
    with pytest.raises(ProviderError, match=what) as caught:
        drive(ready(pay), answer)
    assert caught.value.provider == "kakao.pay"
    assert caught.value.operation == "payment.ready"


# -- approve -----------------------------------------------------------------------------


def test_approve_sends_tid_pg_token_order_and_user(pay: KakaoPay) -> None:
    """approve carries the documented fields to the approve endpoint."""
    request = next(approve(pay))
    assert str(request.url) == f"{BASE}/online/v1/payment/approve"
    assert body(request) == {
        "cid": "TC0ONETIME",
        "tid": TID,
        "partner_order_id": "order-1",
        "partner_user_id": "user-1",
        "pg_token": "pgtoken123",
    }


def test_approve_sends_the_expected_total_when_known(pay: KakaoPay) -> None:
    """An Approval with an amount makes KakaoPay check total_amount."""
    approval = Approval(provider_ref=TID, token="t", user_id="user-1", amount=Money(2200))
    assert body(next(approve(pay, approval=approval)))["total_amount"] == 2200


def test_approve_returns_an_approved_payment(pay: KakaoPay) -> None:
    """The approve answer becomes an APPROVED Payment with tid and aid."""
    payment, _ = drive(approve(pay), ok(approve_answer()))
    assert payment.status is PaymentStatus.APPROVED
    assert payment.amount == Money(2200)
    assert (payment.provider_ref, payment.approval_id) == (TID, "A5678901234567890123")
    assert payment.approved_at == datetime(2023, 7, 15, 21, 18, 45, tzinfo=KST).timestamp()
    assert payment.billing_key is None


def test_approve_keeps_an_issued_sid_as_the_billing_key(pay: KakaoPay) -> None:
    """A recurring payment's approval issues a sid: the billing key."""
    payment, _ = drive(approve(pay), ok(approve_answer(sid="S9")))
    assert payment.billing_key == "S9"


def test_approve_refuses_a_user_other_than_the_approver(pay: KakaoPay) -> None:
    """user_id must match the Approval's user; nothing is sent otherwise."""
    with pytest.raises(ValueError, match="user_id"):
        approve(pay, user_id="user-2")


def test_approve_retries_under_the_subscription_code_when_the_tid_is_unknown(
    pay: KakaoPay,
) -> None:
    """-721 under cid proves nothing ran; the tid is tried under subscription_cid."""
    payment, sent = drive(
        approve(pay), fail(-721, "invalid tid"), ok(approve_answer(cid="TCSUBSCRIP"))
    )
    assert [body(r)["cid"] for r in sent] == ["TC0ONETIME", "TCSUBSCRIP"]
    assert payment.status is PaymentStatus.APPROVED


def test_approve_does_not_retry_after_another_refusal(pay: KakaoPay) -> None:
    """Only an unknown tid is retried under the other code."""
    sent = sent_requests(approve(pay), fail(-708, "invalid pg_token"))
    assert len(sent) == 1


def test_approve_unknown_under_both_codes_is_declined(pay: KakaoPay) -> None:
    """An unknown tid under both merchant codes is a refusal."""
    with pytest.raises(Declined) as caught:
        drive(approve(pay), fail(-721), fail(-721, "invalid tid"))
    assert caught.value.code == "-721"


@pytest.mark.parametrize("code", [-701, -702, -706, -707, -708, -722, -723, -780, -783])
def test_approve_business_refusals_are_declined_with_the_code(pay: KakaoPay, code: int) -> None:
    """KakaoPay's payment refusals raise Declined carrying the error code."""
    with pytest.raises(Declined) as caught:
        drive(approve(pay), fail(code, "refused"))
    assert caught.value.code == str(code)
    assert caught.value.http_status == 400
    assert caught.value.retryable is False


def test_approve_refusal_message_names_the_wallet_reason(pay: KakaoPay) -> None:
    """extras.method_result_code explains an approval failure (-780)."""
    answer = fail(
        -780,
        "approval failure!",
        extras={"method_result_code": "USER_LOCKED", "method_result_message": "잠김"},
    )
    with pytest.raises(Declined, match="USER_LOCKED"):
        drive(approve(pay), answer)


def test_approve_refuses_a_charge_of_another_amount(pay: KakaoPay) -> None:
    """A charge of an amount other than expected is declined, naming the tid."""
    approval = Approval(provider_ref=TID, token="t", user_id="user-1", amount=Money(2000))
    with pytest.raises(Declined, match=TID) as caught:
        drive(approve(pay, approval=approval), ok(approve_answer()))
    assert caught.value.code == "amount_mismatch"


def test_approve_refuses_an_answer_for_another_order(pay: KakaoPay) -> None:
    """An answer about another order is never taken as this one's."""
    with pytest.raises(Declined) as caught:
        drive(approve(pay), ok(approve_answer(partner_order_id="order-2")))
    assert caught.value.code == "order_mismatch"


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"amount": {"total": "2200"}}, "'total'"),
        ({"amount": {"total": True}}, "'total'"),
        ({"amount": {"total": 22.5}}, "'total'"),
        ({"amount": {"vat": 200}}, "'total'"),
        ({"amount": 2200}, "'amount'"),
        ({"amount": {"total": -1}}, "negative"),
        ({"aid": None}, "'aid'"),
        ({"approved_at": "15 July"}, "approved_at"),
        ({"partner_order_id": 1}, "partner_order_id"),
    ],
)
def test_approve_refuses_a_malformed_answer(
    pay: KakaoPay, changes: dict[str, Any], what: str
) -> None:
    """Amounts are strict ints; anything else is a ProviderError naming the field."""
    with pytest.raises(ProviderError, match=what):
        drive(approve(pay), ok(approve_answer(**changes)))


# -- error answers (shared by every operation) -------------------------------------------


def test_html_502_page_is_a_retryable_provider_error(pay: KakaoPay) -> None:
    """A proxy's HTML error page is a retryable ProviderError with the status."""
    page = httpx.Response(
        502, content=b"<html><h1>502 Bad Gateway</h1></html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(ProviderError) as caught:
        drive(approve(pay), page)
    assert caught.value.http_status == 502
    assert caught.value.retryable is True
    assert caught.value.request_sent is True


def test_html_page_with_200_status_is_a_provider_error(pay: KakaoPay) -> None:
    """An HTML page where JSON was due is refused."""
    page = httpx.Response(200, content=b"<html>hi</html>", headers={"content-type": "text/html"})
    with pytest.raises(ProviderError, match="HTML"):
        drive(ready(pay), page)


def test_a_rejected_secret_key_is_unauthorized(pay: KakaoPay) -> None:
    """401 with KakaoPay's error body raises Unauthorized."""
    with pytest.raises(Unauthorized) as caught:
        drive(ready(pay), fail(-401, "invalid secret key", status=401))
    assert caught.value.code == "-401"


def test_an_invalid_merchant_code_is_unauthorized(pay: KakaoPay) -> None:
    """-731 (invalid cid) is a credentials problem, not a business refusal."""
    with pytest.raises(Unauthorized):
        drive(ready(pay), fail(-731, "invalid cid"))


def test_429_is_rate_limited_with_retry_after(pay: KakaoPay) -> None:
    """429 honours Retry-After."""
    answer = httpx.Response(
        429, json={"error_code": -10, "error_message": "too many"}, headers={"Retry-After": "7"}
    )
    with pytest.raises(RateLimited) as caught:
        drive(ready(pay), answer)
    assert caught.value.retry_after == 7.0


def test_an_internal_error_code_is_retryable_even_with_a_400(pay: KakaoPay) -> None:
    """-1 (internal error) is retryable whatever the status says."""
    with pytest.raises(ProviderError) as caught:
        drive(ready(pay), fail(-1, "internal error"))
    assert caught.value.retryable is True
    assert caught.value.code == "-1"


def test_an_invalid_parameter_is_an_invalid_request(pay: KakaoPay) -> None:
    """-2 (invalid parameter) is the caller's fault, not a refusal."""
    with pytest.raises(InvalidRequest) as caught:
        drive(ready(pay), fail(-2, "invalid parameter"))
    assert caught.value.code == "-2"


def test_a_500_without_a_body_is_a_provider_error(pay: KakaoPay) -> None:
    """An empty 500 is a retryable ProviderError."""
    with pytest.raises(ProviderError) as caught:
        drive(ready(pay), httpx.Response(500))
    assert caught.value.http_status == 500


def test_an_error_code_that_is_a_string_is_judged_by_status(pay: KakaoPay) -> None:
    """An error body with a non-integer code falls back to the HTTP status."""
    answer = httpx.Response(400, json={"error_code": "-780", "error_message": "x"})
    with pytest.raises(InvalidRequest):
        drive(ready(pay), answer)


# -- charge (subscription) ---------------------------------------------------------------


def test_charge_posts_to_subscription_with_the_sid(pay: KakaoPay) -> None:
    """A charge is a subscription payment under subscription_cid with the sid."""
    request = next(charge(pay))
    assert str(request.url) == f"{BASE}/online/v1/payment/subscription"
    assert body(request) == {
        "cid": "TCSUBSCRIP",
        "sid": "S1234567890123456789",
        "partner_order_id": "order-1",
        "partner_user_id": "user-1",
        "item_name": "monthly",
        "quantity": 1,
        "total_amount": 2200,
        "tax_free_amount": 0,
    }


def test_charge_returns_an_approved_payment_with_the_billing_key(pay: KakaoPay) -> None:
    """The subscription answer becomes an APPROVED Payment."""
    answer = approve_answer(cid="TCSUBSCRIP", sid="S1234567890123456789")
    payment, _ = drive(charge(pay), ok(answer))
    assert payment.status is PaymentStatus.APPROVED
    assert payment.billing_key == "S1234567890123456789"


@pytest.mark.parametrize("code", [-750, -751, -753, -782])
def test_charge_refusals_are_declined(pay: KakaoPay, code: int) -> None:
    """Unknown, inactive or foreign sids and refused charges are declined."""
    with pytest.raises(Declined) as caught:
        drive(charge(pay), fail(code))
    assert caught.value.code == str(code)


def test_charge_of_another_amount_is_declined(pay: KakaoPay) -> None:
    """A subscription answer for a different amount is declined."""
    with pytest.raises(Declined) as caught:
        drive(charge(pay, amount=Money(5000)), ok(approve_answer()))
    assert caught.value.code == "amount_mismatch"


def test_charge_refuses_an_empty_billing_key(pay: KakaoPay) -> None:
    """A charge needs a billing key."""
    with pytest.raises(ValueError, match="billing_key"):
        charge(pay, billing_key="")


# -- cancel ------------------------------------------------------------------------------


def test_cancel_posts_tid_and_amounts(pay: KakaoPay) -> None:
    """cancel sends the tid, the amount and a zero tax-free amount."""
    flow = pay.cancel(
        order_id="order-1",
        provider_ref=TID,
        amount=Money(500),
        reason="customer changed mind",
        idempotency_key="c-1",
    )
    request = next(flow)
    assert str(request.url) == f"{BASE}/online/v1/payment/cancel"
    sent = body(request)
    assert (sent["cid"], sent["tid"], sent["cancel_amount"]) == ("TC0ONETIME", TID, 500)
    assert sent["cancel_tax_free_amount"] == 0
    assert sent["payload"] == "customer changed mind"


def test_cancel_returns_a_partially_canceled_payment(pay: KakaoPay) -> None:
    """A partial cancel answer reports the refunded amount."""
    answer = order_answer(status="PART_CANCEL_PAYMENT", aid="A2", canceled_amount=amount(500))
    flow = pay.cancel(
        order_id="order-1", provider_ref=TID, amount=Money(500), reason="r", idempotency_key="c"
    )
    payment, _ = drive(flow, ok(answer))
    assert payment.status is PaymentStatus.PARTIALLY_CANCELED
    assert payment.canceled_amount == Money(500)
    assert payment.approval_id == "A2"


@pytest.mark.parametrize("code", [-710, -784, -785])
def test_cancel_refusals_are_declined(pay: KakaoPay, code: int) -> None:
    """Canceling too much, or what cannot be canceled, is declined."""
    flow = pay.cancel(
        order_id="order-1", provider_ref=TID, amount=Money(500), reason="r", idempotency_key="c"
    )
    with pytest.raises(Declined):
        drive(flow, fail(code))


# -- status ------------------------------------------------------------------------------


def test_status_posts_cid_and_tid_to_order(pay: KakaoPay) -> None:
    """status queries the order endpoint with cid and tid only."""
    request = next(pay.status(order_id="order-1", provider_ref=TID))
    assert str(request.url) == f"{BASE}/online/v1/payment/order"
    assert body(request) == {"cid": "TC0ONETIME", "tid": TID}


@pytest.mark.parametrize(("kakao", "expected"), sorted(KAKAOPAY_STATUSES.items()))
def test_status_maps_every_kakaopay_status(
    pay: KakaoPay, kakao: str, expected: PaymentStatus
) -> None:
    """Each documented KakaoPay status maps to the SDK's status."""
    payment, _ = drive(
        pay.status(order_id="order-1", provider_ref=TID), ok(order_answer(status=kakao))
    )
    assert payment.status is expected


def test_status_table_covers_the_documented_statuses() -> None:
    """The mapping holds KakaoPay's thirteen order statuses."""
    assert len(KAKAOPAY_STATUSES) == 13
    assert KAKAOPAY_STATUSES["SUCCESS_PAYMENT"] is PaymentStatus.APPROVED
    assert KAKAOPAY_STATUSES["QUIT_PAYMENT"] is PaymentStatus.FAILED


def test_status_refuses_an_unknown_status(pay: KakaoPay) -> None:
    """An undocumented status is a ProviderError, not a guess."""
    with pytest.raises(ProviderError, match="HALF_PAID"):
        drive(
            pay.status(order_id="order-1", provider_ref=TID), ok(order_answer(status="HALF_PAID"))
        )


def test_status_takes_the_approval_id_from_the_payment_action(pay: KakaoPay) -> None:
    """The order answer's PAYMENT action names the approval id."""
    payment, _ = drive(pay.status(order_id="order-1", provider_ref=TID), ok(order_answer()))
    assert payment.approval_id == "A1"
    assert payment.canceled_amount is None


def test_status_of_a_pending_payment_has_no_approval_time(pay: KakaoPay) -> None:
    """A READY payment is PENDING with no approval time or id."""
    data = order_answer(status="READY", payment_action_details=[])
    del data["approved_at"]
    payment, _ = drive(pay.status(order_id="order-1", provider_ref=TID), ok(data))
    assert (payment.status, payment.approved_at, payment.approval_id) == (
        PaymentStatus.PENDING,
        None,
        None,
    )


def test_status_refuses_malformed_action_details(pay: KakaoPay) -> None:
    """payment_action_details must be a list of objects."""
    data = order_answer(payment_action_details=["A1"])
    with pytest.raises(ProviderError, match="payment_action_details"):
        drive(pay.status(order_id="order-1", provider_ref=TID), ok(data))


def test_status_refuses_a_refund_larger_than_the_payment(pay: KakaoPay) -> None:
    """An answer that makes an impossible Payment is a ProviderError, not a crash."""
    data = order_answer(status="CANCEL_PAYMENT", canceled_amount=amount(9999))
    with pytest.raises(ProviderError, match="canceled_amount"):
        drive(pay.status(order_id="order-1", provider_ref=TID), ok(data))
