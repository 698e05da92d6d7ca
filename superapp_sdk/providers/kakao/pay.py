"""KakaoPay online payments through the KakaoPay open API.

Follows KakaoPay Developers, online payments
(https://developers.kakaopay.com/docs/payment/online/single-payment and
https://developers.kakaopay.com/docs/payment/online/subscription): every call is a
``POST`` to ``https://open-api.kakaopay.com`` with a JSON body and the header
``Authorization: SECRET_KEY {secret_key}``.

========================  ====================================  ===========================
SDK operation             KakaoPay endpoint                     request fields
========================  ====================================  ===========================
``ready``                 ``/online/v1/payment/ready``          cid, partner_order_id,
                                                                partner_user_id, item_name,
                                                                quantity, total_amount,
                                                                tax_free_amount, approval_url,
                                                                cancel_url, fail_url
``approve``               ``/online/v1/payment/approve``        cid, tid, partner_order_id,
                                                                partner_user_id, pg_token
                                                                (+ total_amount when known)
``charge``                ``/online/v1/payment/subscription``   cid (subscription), sid,
                                                                partner_order_id, ...
``cancel``                ``/online/v1/payment/cancel``         cid, tid, cancel_amount,
                                                                cancel_tax_free_amount
``status``                ``/online/v1/payment/order``          cid, tid
========================  ====================================  ===========================

Errors come back as ``{"error_code": -780, "error_message": "...", "extras": {...}}``. The
codes follow the payment rows (-7xx) of Kakao's REST API response-code table: business
refusals (payment not authenticated -701, already approved -702, order or user mismatch
-706/-707, invalid ``pg_token`` -708, cancel over the cancellable amount -710, unknown
``tid`` -721, invalid amount -722, expired -723, unknown or inactive ``sid`` -750..-753,
approval / cancel / subscription refused by the card or wallet -780..-785) raise
:class:`~superapp_sdk._errors.Declined` with ``code`` set to the number (``"-780"``);
credential and merchant-configuration errors raise
:class:`~superapp_sdk._errors.Unauthorized`; internal errors and maintenance (-1, -7,
-9798) raise a retryable :class:`~superapp_sdk._errors.ProviderError`.

Duplicate protection: KakaoPay has no ``Idempotency-Key`` header and does not deduplicate
approvals, cancels or subscription charges (``deduplicates`` is empty), so the SDK never
sends one of them twice once any byte may have left: it records the write as pending
before the first send and settles a lost answer with :meth:`KakaoPay.status` (the
``order`` endpoint). A second approval of the same ``tid`` is refused by KakaoPay itself
(-702), raised as :class:`~superapp_sdk._errors.AlreadyExecuted` and settled the same
way. The ``order`` endpoint looks payments up by ``tid`` only, and a subscription
charge's ``tid`` arrives in its answer, so a ``charge`` whose answer was lost cannot be
looked up: the SDK holds that order as *needs reconciliation* for an operator and never
charges it again, here or at another provider.

Merchant codes: ``cid`` serves one-time payments, ``subscription_cid`` serves recurring
ones (``ready(..., recurring=True)`` issues a ``sid`` on approval; ``charge`` uses it). A
``tid`` belongs to the code that created it; calls that only know the ``tid`` try ``cid``
first and ``subscription_cid`` when KakaoPay answers "unknown tid" (-721), which proves
nothing executed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from superapp_sdk._errors import (
    AlreadyExecuted,
    Declined,
    ProviderError,
    RateLimited,
    SuperAppError,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.payment import (
    PAYMENT_OPERATIONS,
    Approval,
    Checkout,
    Payment,
    PaymentStatus,
)
from superapp_sdk.providers._http import (
    Flow,
    field,
    json_object,
    parse_retry_after,
    status_error,
)

__all__ = ["KAKAOPAY_STATUSES", "KakaoPay"]

M = TypeVar("M")

# KakaoPay reports times in Korea Standard Time without an offset; Korea keeps no DST.
_KST = timezone(timedelta(hours=9))

# A tid that is not approved within 15 minutes of ready expires (-723).
_READY_TTL_S = 15 * 60

# Field limits from the ready request table (characters).
_MAX_ID = 100
_MAX_URL = 255
_MAX_PAYLOAD = 200

#: KakaoPay payment statuses (``order`` endpoint) -> the SDK's status.
KAKAOPAY_STATUSES: Mapping[str, PaymentStatus] = {
    "READY": PaymentStatus.PENDING,
    "SEND_TMS": PaymentStatus.PENDING,
    "OPEN_PAYMENT": PaymentStatus.PENDING,
    "SELECT_METHOD": PaymentStatus.PENDING,
    "ARS_WAITING": PaymentStatus.PENDING,
    "AUTH_PASSWORD": PaymentStatus.PENDING,
    "ISSUED_SID": PaymentStatus.PENDING,
    "SUCCESS_PAYMENT": PaymentStatus.APPROVED,
    "PART_CANCEL_PAYMENT": PaymentStatus.PARTIALLY_CANCELED,
    "CANCEL_PAYMENT": PaymentStatus.CANCELED,
    "FAIL_AUTH_PASSWORD": PaymentStatus.FAILED,
    "QUIT_PAYMENT": PaymentStatus.FAILED,
    "FAIL_PAYMENT": PaymentStatus.FAILED,
}

_UNKNOWN_TID = -721
#: "Already approved": an earlier approval of this tid went through (its answer may have
#: been lost); settled by looking the tid up, never by approving again.
_ALREADY_APPROVED = -702
_DECLINED_CODES = frozenset(
    {-701, -702, -703, -704, -705, -706, -707, -708, -710}
    | {-721, -722, -723, -724, -725, -726}
    | {-750, -751, -752, -753, -761}
    | {-780, -781, -782, -783, -784, -785}
)
_UNAUTHORIZED_CODES = frozenset({-401, -730, -731, -732, -733, -798, -799})
_RETRYABLE_CODES = frozenset({-1, -7, -9798})
_QUOTA_CODE = -10


def _require(name: str, value: object, max_len: int | None = None) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")


def _require_krw(name: str, money: object, *, positive: bool = True) -> Money:
    if not isinstance(money, Money):
        raise ValueError(f"{name} must be Money, got {money!r}")
    if money.currency != "KRW":
        raise ValueError(f"{name}: KakaoPay accepts KRW only, got {money.currency}")
    if positive and money.amount <= 0:
        raise ValueError(f"{name} must be > 0 KRW, got {money.amount}")
    return money


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


class KakaoPay:
    """The KakaoPay online payment provider (one-time and subscription payments).

    Args:
        secret_key: the app's KakaoPay secret key (``Secret key(dev)`` for tests).
        cid: merchant code for one-time payments (``TC0ONETIME`` is KakaoPay's test code).
        subscription_cid: merchant code for recurring payments (test code ``TCSUBSCRIP``).
        pay_base_url: the open API's base URL.
        failure_domain: the failure domain KakaoPay shares with other providers.
        name: the provider's name in outcomes and health reports.

    Example::

        pay = KakaoPay(secret_key=os.environ["KAKAOPAY_SECRET_KEY"])
        checkout = run_call(client, pay.ready(order_id="o-1", amount=Money(2200), ...),
                            provider=pay.name, operation="payment.ready")
    """

    capability = Capability.PAYMENT
    operations = PAYMENT_OPERATIONS
    #: KakaoPay deduplicates no write by key (see the module docstring).
    deduplicates: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        secret_key: str,
        cid: str = "TC0ONETIME",
        subscription_cid: str = "TCSUBSCRIP",
        pay_base_url: str = "https://open-api.kakaopay.com",
        failure_domain: str = "kakao",
        name: str = "kakao.pay",
    ) -> None:
        _require("secret_key", secret_key)
        _require("cid", cid)
        _require("subscription_cid", subscription_cid)
        _require("pay_base_url", pay_base_url)
        _require("failure_domain", failure_domain)
        _require("name", name)
        if urlsplit(pay_base_url).scheme not in ("http", "https"):
            raise ValueError(f"pay_base_url must be an http(s) URL, got {pay_base_url!r}")
        self._secret_key = secret_key
        self.cid = cid
        self.subscription_cid = subscription_cid
        self.pay_base_url = pay_base_url.rstrip("/")
        self.failure_domain = failure_domain
        self.name = name

    def __repr__(self) -> str:
        return f"KakaoPay(name={self.name!r}, pay_base_url={self.pay_base_url!r})"

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
        recurring: bool = False,
    ) -> Flow[Checkout]:
        """Prepare a payment; send the user to ``Checkout.redirect_url`` to approve it.

        KakaoPay sends the user back to ``return_url`` with the query parameters
        ``kakaopay=approve`` and ``pg_token=...`` (or ``kakaopay=cancel`` / ``fail``), plus
        ``order_id``; build an :class:`Approval` from the ``tid`` and ``pg_token``. With
        ``recurring=True`` the payment uses ``subscription_cid`` and its approval issues a
        billing key (``sid``) for later :meth:`charge` calls.

        Raises:
            ValueError: an argument KakaoPay would refuse (not KRW, too long, empty).
        """
        _require("order_id", order_id, _MAX_ID)
        _require_krw("amount", amount)
        _require("item_name", item_name, _MAX_ID)
        _require("user_id", user_id, _MAX_ID)
        _require("idempotency_key", idempotency_key)
        _require("return_url", return_url)
        if urlsplit(return_url).scheme not in ("http", "https"):
            raise ValueError(f"return_url must be an absolute http(s) URL, got {return_url!r}")
        urls = {
            f"{key}_url": _with_query(return_url, {"kakaopay": outcome, "order_id": order_id})
            for key, outcome in (("approval", "approve"), ("cancel", "cancel"), ("fail", "fail"))
        }
        for key, url in urls.items():
            if len(url) > _MAX_URL:
                raise ValueError(
                    f"return_url is too long: KakaoPay's {key} takes at most {_MAX_URL} "
                    f"characters, the URL with its query would be {len(url)}"
                )
        body = {
            "cid": self.subscription_cid if recurring else self.cid,
            "partner_order_id": order_id,
            "partner_user_id": user_id,
            "item_name": item_name,
            "quantity": 1,
            "total_amount": amount.amount,
            "tax_free_amount": 0,
            **urls,
        }
        return self._ready(order_id, body)

    def approve(
        self, *, order_id: str, approval: Approval, user_id: str, idempotency_key: str
    ) -> Flow[Payment]:
        """Charge a payment the user approved, with the ``pg_token`` from the return URL.

        Raises:
            Declined: KakaoPay refused (invalid ``pg_token`` -708, already approved -702,
                expired -723, card or wallet refusal -780, ...), or it charged an amount
                other than ``approval.amount``.
            ValueError: ``user_id`` differs from ``approval.user_id``, or an empty argument.
        """
        _require("order_id", order_id, _MAX_ID)
        _require("user_id", user_id, _MAX_ID)
        _require("idempotency_key", idempotency_key)
        if not isinstance(approval, Approval):
            raise ValueError(f"approval must be an Approval, got {approval!r}")
        if approval.user_id != user_id:
            raise ValueError(
                f"user_id {user_id!r} differs from approval.user_id {approval.user_id!r}"
            )
        _require("approval.token (pg_token)", approval.token)
        body: dict[str, Any] = {
            "tid": approval.provider_ref,
            "partner_order_id": order_id,
            "partner_user_id": user_id,
            "pg_token": approval.token,
        }
        expected = None
        if approval.amount is not None:
            expected = _require_krw("approval.amount", approval.amount)
            body["total_amount"] = expected.amount
        return self._approve(order_id, body, expected)

    def charge(
        self,
        *,
        order_id: str,
        amount: Money,
        item_name: str,
        user_id: str,
        billing_key: str,
        idempotency_key: str,
    ) -> Flow[Payment]:
        """Charge a user with their stored ``sid`` (a subscription payment), no user step.

        Raises:
            Declined: KakaoPay refused (unknown or inactive ``sid`` -750/-751, ``sid`` of
                another user -753, subscription charge refused -782, ...), or it charged a
                different amount.
        """
        _require("order_id", order_id, _MAX_ID)
        _require_krw("amount", amount)
        _require("item_name", item_name, _MAX_ID)
        _require("user_id", user_id, _MAX_ID)
        _require("billing_key", billing_key)
        _require("idempotency_key", idempotency_key)
        body = {
            "cid": self.subscription_cid,
            "sid": billing_key,
            "partner_order_id": order_id,
            "partner_user_id": user_id,
            "item_name": item_name,
            "quantity": 1,
            "total_amount": amount.amount,
            "tax_free_amount": 0,
        }
        return self._charge(order_id, body, amount)

    def cancel(
        self,
        *,
        order_id: str,
        provider_ref: str,
        amount: Money,
        reason: str,
        idempotency_key: str,
    ) -> Flow[Payment]:
        """Refund ``amount`` of the payment ``provider_ref`` (its ``tid``).

        KakaoPay does not deduplicate cancels: a second partial cancel refunds again, so
        the SDK checks :meth:`status` before retrying one whose outcome is unknown.

        Raises:
            Declined: nothing to cancel (-784), more than the cancellable amount (-710),
                unknown ``tid`` (-721), ...
        """
        _require("order_id", order_id, _MAX_ID)
        _require("provider_ref", provider_ref)
        _require_krw("amount", amount)
        _require("reason", reason)
        _require("idempotency_key", idempotency_key)
        body = {
            "tid": provider_ref,
            "cancel_amount": amount.amount,
            "cancel_tax_free_amount": 0,
            # KakaoPay stores ``payload`` with the cancel (at most 200 characters).
            "payload": reason[:_MAX_PAYLOAD],
        }
        return self._cancel(order_id, body)

    def status(self, *, order_id: str, provider_ref: str) -> Flow[Payment]:
        """The payment ``provider_ref`` (its ``tid``) as KakaoPay records it now.

        Raises:
            Declined: KakaoPay knows no such ``tid`` (-721), or it belongs to another order.
        """
        _require("order_id", order_id, _MAX_ID)
        _require("provider_ref", provider_ref)
        return self._status(order_id, {"tid": provider_ref})

    # -- flows -------------------------------------------------------------------------

    def _ready(self, order_id: str, body: dict[str, Any]) -> Flow[Checkout]:
        operation = "payment.ready"
        response = yield self._post("/online/v1/payment/ready", body)
        data = self._read(response, operation)
        created = field(data, "created_at", str, provider=self.name, operation=operation)
        created_at = self._time(created, "created_at", operation)
        return self._model(
            operation,
            lambda: Checkout(
                order_id=order_id,
                provider=self.name,
                redirect_url=self._text(data, "next_redirect_pc_url", operation),
                mobile_url=self._optional_text(data, "next_redirect_mobile_url", operation),
                app_url=self._optional_text(data, "next_redirect_app_url", operation),
                provider_ref=self._text(data, "tid", operation),
                expires_at=created_at + _READY_TTL_S,
            ),
        )

    def _approve(
        self, order_id: str, body: dict[str, Any], expected: Money | None
    ) -> Flow[Payment]:
        operation = "payment.approve"
        data = yield from self._post_by_tid("/online/v1/payment/approve", body, operation)
        payment = self._executed(data, order_id, operation)
        if expected is not None:
            self._check_amount(payment, expected, operation)
        return payment

    def _charge(self, order_id: str, body: dict[str, Any], expected: Money) -> Flow[Payment]:
        operation = "payment.charge"
        response = yield self._post("/online/v1/payment/subscription", body)
        data = self._read(response, operation)
        payment = self._executed(data, order_id, operation)
        self._check_amount(payment, expected, operation)
        return payment

    def _cancel(self, order_id: str, body: dict[str, Any]) -> Flow[Payment]:
        operation = "payment.cancel"
        data = yield from self._post_by_tid("/online/v1/payment/cancel", body, operation)
        return self._recorded(data, order_id, operation)

    def _status(self, order_id: str, body: dict[str, Any]) -> Flow[Payment]:
        operation = "payment.status"
        data = yield from self._post_by_tid("/online/v1/payment/order", body, operation)
        return self._recorded(data, order_id, operation)

    # -- requests ----------------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, Any]) -> httpx.Request:
        return httpx.Request(
            "POST",
            self.pay_base_url + path,
            json=dict(body),
            headers={"Authorization": f"SECRET_KEY {self._secret_key}"},
        )

    def _post_by_tid(
        self, path: str, body: dict[str, Any], operation: str
    ) -> Generator[httpx.Request, httpx.Response, dict[str, Any]]:
        *others, last = dict.fromkeys((self.cid, self.subscription_cid))
        for cid in others:
            response = yield self._post(path, {"cid": cid, **body})
            if _error_code(response) != _UNKNOWN_TID:
                return self._read(response, operation)
        response = yield self._post(path, {"cid": last, **body})
        return self._read(response, operation)

    # -- answers -----------------------------------------------------------------------

    def _read(self, response: httpx.Response, operation: str) -> dict[str, Any]:
        if 200 <= response.status_code < 300:
            return json_object(response, provider=self.name, operation=operation)
        raise _error(response, provider=self.name, operation=operation)

    def _executed(self, data: dict[str, Any], order_id: str, operation: str) -> Payment:
        """A Payment from an approve or subscription answer (the charge happened)."""
        self._check_order(data, order_id, operation)
        approved = self._optional_text(data, "approved_at", operation)
        return self._model(
            operation,
            lambda: Payment(
                order_id=order_id,
                provider=self.name,
                status=PaymentStatus.APPROVED,
                amount=self._amount(data, "amount", operation),
                approved_at=self._time(approved, "approved_at", operation) if approved else None,
                provider_ref=self._text(data, "tid", operation),
                approval_id=self._text(data, "aid", operation),
                billing_key=self._optional_text(data, "sid", operation),
            ),
        )

    def _recorded(self, data: dict[str, Any], order_id: str, operation: str) -> Payment:
        """A Payment from an order or cancel answer (it carries KakaoPay's status)."""
        self._check_order(data, order_id, operation)
        raw_status = self._text(data, "status", operation)
        status = KAKAOPAY_STATUSES.get(raw_status)
        if status is None:
            raise ProviderError(
                f"unknown KakaoPay payment status {raw_status!r}",
                provider=self.name,
                operation=operation,
                request_sent=True,
            )
        approved = self._optional_text(data, "approved_at", operation)
        canceled = None
        if data.get("canceled_amount") is not None:
            canceled = self._amount(data, "canceled_amount", operation)
            if canceled.amount == 0:
                canceled = None
        return self._model(
            operation,
            lambda: Payment(
                order_id=order_id,
                provider=self.name,
                status=status,
                amount=self._amount(data, "amount", operation),
                approved_at=self._time(approved, "approved_at", operation) if approved else None,
                provider_ref=self._text(data, "tid", operation),
                # The cancel answer names its own aid; the order answer lists every action.
                approval_id=self._optional_text(data, "aid", operation)
                or self._payment_aid(data, operation),
                billing_key=self._optional_text(data, "sid", operation),
                canceled_amount=canceled,
            ),
        )

    def _payment_aid(self, data: dict[str, Any], operation: str) -> str | None:
        actions = field(
            data,
            "payment_action_details",
            list,
            provider=self.name,
            operation=operation,
            optional=True,
        )
        for action in actions or ():
            if not isinstance(action, dict):
                raise ProviderError(
                    "field 'payment_action_details' holds a non-object entry",
                    provider=self.name,
                    operation=operation,
                    request_sent=True,
                )
            kind = field(
                action, "payment_action_type", str, provider=self.name, operation=operation
            )
            if kind == "PAYMENT":
                return self._text(action, "aid", operation)
        return None

    def _check_order(self, data: dict[str, Any], order_id: str, operation: str) -> None:
        answered = self._text(data, "partner_order_id", operation)
        if answered != order_id:
            raise Declined(
                f"KakaoPay answered for order {answered!r}, not {order_id!r}",
                provider=self.name,
                operation=operation,
                code="order_mismatch",
                request_sent=True,
            )

    def _check_amount(self, payment: Payment, expected: Money, operation: str) -> None:
        if payment.amount != expected:
            # Money moved, but not the amount asked for: refuse to call it a success and
            # never fail over (another provider would charge again); the tid is in the
            # message so the app can cancel it.
            raise Declined(
                f"KakaoPay charged {payment.amount.amount} KRW for tid {payment.provider_ref}, "
                f"expected {expected.amount} KRW",
                provider=self.name,
                operation=operation,
                code="amount_mismatch",
                request_sent=True,
            )

    def _text(self, data: dict[str, Any], name: str, operation: str) -> str:
        value: str = field(data, name, str, provider=self.name, operation=operation)
        if not value:
            raise ProviderError(
                f"field {name!r} is empty",
                provider=self.name,
                operation=operation,
                request_sent=True,
            )
        return value

    def _optional_text(self, data: dict[str, Any], name: str, operation: str) -> str | None:
        if data.get(name) is None:
            return None
        return self._text(data, name, operation)

    def _amount(self, data: dict[str, Any], name: str, operation: str) -> Money:
        amount = field(data, name, dict, provider=self.name, operation=operation)
        total: int = field(amount, "total", int, provider=self.name, operation=operation)
        if total < 0:
            raise ProviderError(
                f"field {name}.total is negative ({total})",
                provider=self.name,
                operation=operation,
                request_sent=True,
            )
        return Money(total, "KRW")

    def _time(self, value: str, name: str, operation: str) -> float:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ProviderError(
                f"field {name!r} is not an ISO 8601 date-time: {value!r}",
                provider=self.name,
                operation=operation,
                request_sent=True,
            ) from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_KST)
        return moment.timestamp()

    def _model(self, operation: str, build: Callable[[], M]) -> M:
        try:
            return build()
        except ValueError as exc:
            raise ProviderError(
                f"answer does not make a valid model: {exc}",
                provider=self.name,
                operation=operation,
                request_sent=True,
            ) from exc


def _error_code(response: httpx.Response) -> int | None:
    """KakaoPay's ``error_code`` of a non-2xx answer, when it has one."""
    if 200 <= response.status_code < 300:
        return None
    try:
        data = json_object(response, provider="", operation="")
    except ProviderError:
        return None
    code = data.get("error_code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _error(response: httpx.Response, *, provider: str, operation: str) -> SuperAppError:
    """The SDK error for a non-2xx KakaoPay answer."""
    code = _error_code(response)
    if code is None:
        # Not KakaoPay's error body (an HTML page from a proxy, say): judge by status.
        return status_error(response, provider=provider, operation=operation)
    data = json_object(response, provider=provider, operation=operation)
    message = data.get("error_message")
    text = message if isinstance(message, str) and message else f"KakaoPay error {code}"
    extras = data.get("extras")
    if isinstance(extras, dict):
        method = extras.get("method_result_code")
        detail = extras.get("method_result_message")
        if isinstance(method, str):
            text += f" [{method}" + (f": {detail}]" if isinstance(detail, str) else "]")
    status = response.status_code
    common: dict[str, Any] = {
        "provider": provider,
        "operation": operation,
        "http_status": status,
        "code": str(code),
        "request_id": response.headers.get("x-request-id"),
        "request_sent": True,
    }
    if status == 429 or code == _QUOTA_CODE:
        return RateLimited(
            text, retry_after=parse_retry_after(response.headers.get("retry-after")), **common
        )
    if code in _RETRYABLE_CODES or status >= 500:
        return ProviderError(
            text, retry_after=parse_retry_after(response.headers.get("retry-after")), **common
        )
    if code in _UNAUTHORIZED_CODES or status in (401, 403):
        return Unauthorized(text, **common)
    if code == _ALREADY_APPROVED:
        return AlreadyExecuted(text, **common)
    if code in _DECLINED_CODES:
        return Declined(text, **common)
    return status_error(
        response, provider=provider, operation=operation, message=text, code=str(code)
    )
