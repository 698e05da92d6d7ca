"""A simulated KakaoPay open API (online payments) for tests and drills.

Serves, under the ``/pay`` prefix of the simulated Kakao data center (the
``open-api.kakaopay.com`` host), the endpoints of KakaoPay Developers' single-payment and
subscription documents: ``POST /online/v1/payment/{ready,approve,cancel,order,subscription}``
with JSON bodies and ``Authorization: SECRET_KEY {secret}``. Errors use KakaoPay's body,
``{"error_code": -780, "error_message": "...", "extras": {...}}``, with the codes of Kakao's
response-code table.

Each ``tid`` runs KakaoPay's state machine::

    READY --authorize()--> AUTH_PASSWORD --approve--> SUCCESS_PAYMENT
      |                         |                        |--cancel (part)--> PART_CANCEL_PAYMENT
      +--quit()--> QUIT_PAYMENT +--declined--> FAIL_PAYMENT  +--cancel (rest)--> CANCEL_PAYMENT

Like KakaoPay, the simulator does not deduplicate approvals, cancels or subscription
charges by any key: the :attr:`PaymentState.ledger` records every executed charge per
``partner_order_id`` so tests can assert that an order was never charged twice, and
:meth:`PaymentState.effects` every executed approval, subscription charge and cancel
(refund) as :class:`~superapp_sdk.testing.kakao.Effect` records, so they can also assert
that refunds never exceed what was captured.

Test helpers on :class:`PaymentState`: :meth:`~PaymentState.authorize` (the user approves
in the KakaoPay app; returns the ``pg_token``), :meth:`~PaymentState.quit`,
:meth:`~PaymentState.issue_sid`, :meth:`~PaymentState.decline`, :meth:`~PaymentState.charges`,
:meth:`~PaymentState.effects`.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.testing.kakao._asgi import Request, Response, Route, json_response
from superapp_sdk.testing.kakao._effects import Effect, EffectLog

__all__ = ["Charge", "DeclineRule", "PaymentState", "routes"]

_KST = timezone(timedelta(hours=9))
_READY_TTL_S = 15 * 60
_PREFIX = "/pay/online/v1/payment"

_APPROVED = ("SUCCESS_PAYMENT", "PART_CANCEL_PAYMENT", "CANCEL_PAYMENT")
_AUTHORIZABLE = ("READY", "SEND_TMS", "OPEN_PAYMENT", "SELECT_METHOD", "ARS_WAITING")


@dataclass(frozen=True, slots=True)
class Charge:
    """One executed charge in the simulator's ledger."""

    partner_order_id: str
    partner_user_id: str
    tid: str
    aid: str
    amount: int
    kind: str  # "approve" or "subscription"
    at: float


@dataclass(frozen=True, slots=True)
class DeclineRule:
    """Refuse approvals and subscription charges for a user and/or an amount."""

    user_id: str | None = None
    amount: int | None = None
    method_result_code: str = "INSUFFICIENT_BALANCE"
    method_result_message: str = "잔액이 부족합니다."

    def matches(self, user_id: str, amount: int) -> bool:
        """Whether this rule refuses ``amount`` for ``user_id``."""
        return (self.user_id is None or self.user_id == user_id) and (
            self.amount is None or self.amount == amount
        )


@dataclass(slots=True)
class _Tx:
    tid: str
    cid: str
    partner_order_id: str
    partner_user_id: str
    item_name: str
    quantity: int
    total: int
    tax_free: int
    created_at: float
    approval_url: str
    status: str = "READY"
    pg_token: str | None = None
    approved_at: float | None = None
    canceled: int = 0
    canceled_at: float | None = None
    sid: str | None = None
    method: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Sid:
    sid: str
    cid: str
    user_id: str
    active: bool = True


class _Refusal(Exception):
    def __init__(
        self, code: int, message: str, status: int = 400, extras: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extras = extras


class PaymentState:
    """The simulated KakaoPay's data: payments by ``tid``, ``sid``s, decline rules, ledger.

    Thread-safe: a test may inspect it while a loopback server serves requests.

    Args:
        secret_key: the secret the ``Authorization: SECRET_KEY ...`` header must carry.
        cids: merchant codes for one-time payments.
        subscription_cids: merchant codes for recurring payments (approval issues a sid).
        clock: the time source for ``created_at``/``approved_at`` and the 15-minute expiry.
    """

    def __init__(
        self,
        *,
        secret_key: str = "sim-kakaopay-secret",  # noqa: S107 - a simulator's public test secret
        cids: Iterable[str] = ("TC0ONETIME",),
        subscription_cids: Iterable[str] = ("TCSUBSCRIP",),
        clock: Clock | None = None,
    ) -> None:
        self.secret_key = secret_key
        self.cids = frozenset(cids)
        self.subscription_cids = frozenset(subscription_cids)
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._txs: dict[str, _Tx] = {}
        self._sids: dict[str, _Sid] = {}
        self._rules: list[DeclineRule] = []
        self._ledger: dict[str, list[Charge]] = {}
        self._effects = EffectLog()
        # The Idempotency-Key of the request being served (KakaoPay defines none, so it
        # is None unless a test sends one); read by handlers with the lock held.
        self._key: str | None = None
        #: Every request body received, as ``(endpoint, body)``, in order.
        self.requests: list[tuple[str, dict[str, Any]]] = []

    # -- test helpers ------------------------------------------------------------------

    def authorize(self, tid: str) -> str:
        """The user approves ``tid`` in the KakaoPay app; returns the ``pg_token``.

        KakaoPay then redirects the user to ``approval_url?pg_token=...``.
        """
        with self._lock:
            tx = self._txs[tid]
            if tx.status not in _AUTHORIZABLE:
                raise ValueError(f"tid {tid} is {tx.status}, it cannot be authorized")
            tx.status = "AUTH_PASSWORD"
            tx.pg_token = hashlib.sha256(f"pg:{tid}:{next(self._ids)}".encode()).hexdigest()[:20]
            return tx.pg_token

    def approval_redirect(self, tid: str) -> str:
        """The URL KakaoPay sends the user back to after :meth:`authorize`."""
        with self._lock:
            tx = self._txs[tid]
            if tx.pg_token is None:
                raise ValueError(f"tid {tid} is not authorized")
            separator = "&" if "?" in tx.approval_url else "?"
            return f"{tx.approval_url}{separator}pg_token={tx.pg_token}"

    def quit(self, tid: str) -> None:
        """The user closes the KakaoPay window without paying."""
        with self._lock:
            self._txs[tid].status = "QUIT_PAYMENT"

    def issue_sid(self, user_id: str, *, cid: str | None = None) -> str:
        """Give ``user_id`` a billing key, as a first subscription payment would."""
        with self._lock:
            return self._new_sid(user_id, cid or min(self.subscription_cids))

    def deactivate_sid(self, sid: str) -> None:
        """Deactivate a billing key (the user ended the subscription)."""
        with self._lock:
            self._sids[sid].active = False

    def sids(self, user_id: str) -> list[str]:
        """The billing keys issued to ``user_id``, oldest first."""
        with self._lock:
            return [s.sid for s in self._sids.values() if s.user_id == user_id]

    def decline(
        self,
        *,
        user_id: str | None = None,
        amount: int | None = None,
        method_result_code: str = "INSUFFICIENT_BALANCE",
        method_result_message: str = "잔액이 부족합니다.",
    ) -> None:
        """Refuse approvals and subscription charges for ``user_id`` and/or ``amount``."""
        with self._lock:
            self._rules.append(
                DeclineRule(user_id, amount, method_result_code, method_result_message)
            )

    def status_of(self, tid: str) -> str:
        """KakaoPay's status of ``tid``."""
        with self._lock:
            return self._txs[tid].status

    def tids(self, partner_order_id: str) -> list[str]:
        """Every ``tid`` created for an order, oldest first."""
        with self._lock:
            return [t.tid for t in self._txs.values() if t.partner_order_id == partner_order_id]

    def charges(self, partner_order_id: str) -> list[Charge]:
        """Every executed charge for an order, in order."""
        with self._lock:
            return list(self._ledger.get(partner_order_id, ()))

    @property
    def ledger(self) -> dict[str, list[Charge]]:
        """A copy of every executed charge, by ``partner_order_id``."""
        with self._lock:
            return {order: list(charges) for order, charges in self._ledger.items()}

    def effects(
        self, kind: str | None = None, *, order_id: str | None = None, key: str | None = None
    ) -> tuple[Effect, ...]:
        """Every executed approval (``"payment.approve"``), subscription charge
        (``"payment.charge"``) and cancel (``"payment.cancel"``, ``amount`` refunded),
        oldest first; only those of ``kind``, ``order_id`` and ``key`` when given.

        ``order_id`` is the ``partner_order_id``, ``ref`` the ``tid``, ``key`` the
        request's ``Idempotency-Key`` header (KakaoPay defines none: ``None``).
        Refused requests execute nothing and are not listed.
        """
        return self._effects.effects(kind, order_id=order_id, key=key)

    # -- handlers ----------------------------------------------------------------------

    def handle(self, endpoint: str, request: Request) -> Response:
        """Serve one request to ``/online/v1/payment/{endpoint}``."""
        handler: Callable[[dict[str, Any]], dict[str, Any]] = getattr(self, f"_{endpoint}")
        if request.headers.get("authorization") != f"SECRET_KEY {self.secret_key}":
            return _refusal(_Refusal(-401, "invalid secret key", status=401))
        try:
            body = request.json()
        except ValueError:
            return _refusal(_Refusal(-2, "request body is not JSON"))
        if not isinstance(body, dict):
            return _refusal(_Refusal(-2, "request body must be a JSON object"))
        with self._lock:
            self.requests.append((endpoint, body))
            self._key = request.headers.get("idempotency-key")
            try:
                return json_response(handler(body))
            except _Refusal as refusal:
                return _refusal(refusal)
            finally:
                self._key = None

    def _ready(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = _text(body, "cid")
        self._check_cid(cid, self.cids | self.subscription_cids)
        total = _number(body, "total_amount")
        tax_free = _number(body, "tax_free_amount")
        recurring = cid in self.subscription_cids
        if total < 0 or (total == 0 and not recurring) or not 0 <= tax_free <= total:
            raise _Refusal(-2, "invalid total_amount or tax_free_amount")
        for name in ("cancel_url", "fail_url"):
            _text(body, name)
        tx = _Tx(
            tid=self._new_id("T"),
            cid=cid,
            partner_order_id=_text(body, "partner_order_id"),
            partner_user_id=_text(body, "partner_user_id"),
            item_name=_text(body, "item_name"),
            quantity=_number(body, "quantity"),
            total=total,
            tax_free=tax_free,
            created_at=self.clock.time(),
            approval_url=_text(body, "approval_url"),
        )
        self._txs[tx.tid] = tx
        page = f"https://online-pay.kakao.com/mockup/v1/{tx.tid.lower()}"
        return {
            "tid": tx.tid,
            "next_redirect_app_url": f"{page}/aInfo",
            "next_redirect_mobile_url": f"{page}/mInfo",
            "next_redirect_pc_url": f"{page}/info",
            "android_app_scheme": f"kakaotalk://kakaopay/pg?url={page}/order",
            "ios_app_scheme": f"kakaotalk://kakaopay/pg?url={page}/order",
            "created_at": _kst(tx.created_at),
        }

    def _approve(self, body: dict[str, Any]) -> dict[str, Any]:
        tx = self._tx(body)
        if _text(body, "partner_order_id") != tx.partner_order_id:
            raise _Refusal(-706, "partner_order_id does not match the ready request")
        if _text(body, "partner_user_id") != tx.partner_user_id:
            raise _Refusal(-707, "partner_user_id does not match the ready request")
        pg_token = _text(body, "pg_token")
        if tx.status in _APPROVED:
            raise _Refusal(-702, "payment is already done")
        if tx.status in ("QUIT_PAYMENT", "FAIL_PAYMENT", "FAIL_AUTH_PASSWORD"):
            raise _Refusal(-783, f"payment cannot be approved in status {tx.status}")
        if self.clock.time() > tx.created_at + _READY_TTL_S:
            raise _Refusal(-723, "payment request has expired")
        if tx.pg_token is None:
            raise _Refusal(-701, "payment is not authenticated by the user")
        if pg_token != tx.pg_token:
            raise _Refusal(-708, "invalid pg_token")
        if "total_amount" in body and _number(body, "total_amount") != tx.total:
            raise _Refusal(-722, "total_amount does not match the ready request")
        refusal = self._declined(tx.partner_user_id, tx.total, -780, "approval failure!")
        if refusal is not None:
            tx.status = "FAIL_PAYMENT"
            raise refusal
        if tx.cid in self.subscription_cids:
            tx.sid = self._new_sid(tx.partner_user_id, tx.cid)
        aid = self._execute(tx, "approve")
        return {
            "aid": aid,
            "tid": tx.tid,
            "cid": tx.cid,
            **({"sid": tx.sid} if tx.sid else {}),
            "partner_order_id": tx.partner_order_id,
            "partner_user_id": tx.partner_user_id,
            "payment_method_type": tx.method,
            "item_name": tx.item_name,
            "quantity": tx.quantity,
            "amount": _amount(tx.total, tx.tax_free),
            "created_at": _kst(tx.created_at),
            "approved_at": _kst(tx.approved_at),
        }

    def _subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = _text(body, "cid")
        self._check_cid(cid, self.subscription_cids)
        sid = self._sids.get(_text(body, "sid"))
        if sid is None or sid.cid != cid:
            raise _Refusal(-750, "sid does not exist")
        if not sid.active:
            raise _Refusal(-751, "sid is inactive")
        user_id = _text(body, "partner_user_id")
        if user_id != sid.user_id:
            raise _Refusal(-753, "partner_user_id does not match the sid")
        total = _number(body, "total_amount")
        tax_free = _number(body, "tax_free_amount")
        if total <= 0 or not 0 <= tax_free <= total:
            raise _Refusal(-722, "invalid amount")
        refusal = self._declined(user_id, total, -782, "subscription payment failure!")
        if refusal is not None:
            raise refusal
        tx = _Tx(
            tid=self._new_id("T"),
            cid=cid,
            partner_order_id=_text(body, "partner_order_id"),
            partner_user_id=user_id,
            item_name=_text(body, "item_name"),
            quantity=_number(body, "quantity"),
            total=total,
            tax_free=tax_free,
            created_at=self.clock.time(),
            approval_url="",
            sid=sid.sid,
        )
        self._txs[tx.tid] = tx
        aid = self._execute(tx, "subscription")
        return {
            "aid": aid,
            "cid": tx.cid,
            "tid": tx.tid,
            "sid": sid.sid,
            "partner_order_id": tx.partner_order_id,
            "partner_user_id": tx.partner_user_id,
            "payment_method_type": tx.method,
            "item_name": tx.item_name,
            "quantity": tx.quantity,
            "amount": _amount(tx.total, tx.tax_free),
            "created_at": _kst(tx.created_at),
            "approved_at": _kst(tx.approved_at),
        }

    def _cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        tx = self._tx(body)
        amount = _number(body, "cancel_amount")
        tax_free = _number(body, "cancel_tax_free_amount")
        if tx.status not in ("SUCCESS_PAYMENT", "PART_CANCEL_PAYMENT"):
            raise _Refusal(-784, f"payment cannot be canceled in status {tx.status}")
        if amount <= 0 or not 0 <= tax_free <= amount:
            raise _Refusal(-2, "invalid cancel_amount or cancel_tax_free_amount")
        if amount > tx.total - tx.canceled:
            raise _Refusal(-710, "cancel_amount exceeds the cancellable amount")
        now = self.clock.time()
        tx.canceled += amount
        tx.canceled_at = now
        tx.status = "CANCEL_PAYMENT" if tx.canceled == tx.total else "PART_CANCEL_PAYMENT"
        aid = self._new_id("A")
        payload = body.get("payload")
        tx.actions.append(
            _action(aid, now, amount, "CANCEL", payload if isinstance(payload, str) else None)
        )
        self._effects.record(
            Effect(
                "payment.cancel",
                now,
                key=self._key,
                order_id=tx.partner_order_id,
                ref=tx.tid,
                amount=amount,
            )
        )
        return {
            "aid": aid,
            "tid": tx.tid,
            "cid": tx.cid,
            "status": tx.status,
            "partner_order_id": tx.partner_order_id,
            "partner_user_id": tx.partner_user_id,
            "payment_method_type": tx.method,
            "amount": _amount(tx.total, tx.tax_free),
            "approved_cancel_amount": _amount(amount, tax_free),
            "canceled_amount": _amount(tx.canceled, 0),
            "cancel_available_amount": _amount(tx.total - tx.canceled, 0),
            "item_name": tx.item_name,
            "quantity": tx.quantity,
            "created_at": _kst(tx.created_at),
            "approved_at": _kst(tx.approved_at),
            "canceled_at": _kst(now),
            **({"payload": payload} if isinstance(payload, str) else {}),
        }

    def _order(self, body: dict[str, Any]) -> dict[str, Any]:
        tx = self._tx(body)
        if tx.status in _AUTHORIZABLE and self.clock.time() > tx.created_at + _READY_TTL_S:
            tx.status = "QUIT_PAYMENT"
        answer: dict[str, Any] = {
            "tid": tx.tid,
            "cid": tx.cid,
            "status": tx.status,
            "partner_order_id": tx.partner_order_id,
            "partner_user_id": tx.partner_user_id,
            "amount": _amount(tx.total, tx.tax_free),
            "canceled_amount": _amount(tx.canceled, 0),
            "cancel_available_amount": _amount(
                tx.total - tx.canceled if tx.status in _APPROVED else 0, 0
            ),
            "item_name": tx.item_name,
            "quantity": tx.quantity,
            "created_at": _kst(tx.created_at),
            "payment_action_details": list(tx.actions),
        }
        if tx.method is not None:
            answer["payment_method_type"] = tx.method
        if tx.approved_at is not None:
            answer["approved_at"] = _kst(tx.approved_at)
        if tx.canceled_at is not None:
            answer["canceled_at"] = _kst(tx.canceled_at)
        if tx.sid is not None:
            answer["sid"] = tx.sid
        return answer

    # -- internals (called with the lock held) -----------------------------------------

    def _tx(self, body: dict[str, Any]) -> _Tx:
        cid = _text(body, "cid")
        self._check_cid(cid, self.cids | self.subscription_cids)
        tx = self._txs.get(_text(body, "tid"))
        # A tid belongs to the merchant code that created it.
        if tx is None or tx.cid != cid:
            raise _Refusal(-721, "tid does not exist")
        return tx

    def _check_cid(self, cid: str, allowed: frozenset[str]) -> None:
        if cid not in allowed:
            raise _Refusal(-731, f"invalid cid {cid}")

    def _declined(self, user_id: str, amount: int, code: int, message: str) -> _Refusal | None:
        for rule in self._rules:
            if rule.matches(user_id, amount):
                return _Refusal(
                    code,
                    message,
                    extras={
                        "method_result_code": rule.method_result_code,
                        "method_result_message": rule.method_result_message,
                    },
                )
        return None

    def _execute(self, tx: _Tx, kind: str) -> str:
        now = self.clock.time()
        aid = self._new_id("A")
        tx.status = "SUCCESS_PAYMENT"
        tx.approved_at = now
        tx.method = "MONEY"
        tx.actions.append(_action(aid, now, tx.total, "PAYMENT", None))
        self._ledger.setdefault(tx.partner_order_id, []).append(
            Charge(tx.partner_order_id, tx.partner_user_id, tx.tid, aid, tx.total, kind, now)
        )
        self._effects.record(
            Effect(
                "payment.approve" if kind == "approve" else "payment.charge",
                now,
                key=self._key,
                order_id=tx.partner_order_id,
                ref=tx.tid,
                amount=tx.total,
            )
        )
        return aid

    def _new_sid(self, user_id: str, cid: str) -> str:
        sid = self._new_id("S")
        self._sids[sid] = _Sid(sid, cid, user_id)
        return sid

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):019d}"


def _refusal(refusal: _Refusal) -> Response:
    body: dict[str, Any] = {"error_code": refusal.code, "error_message": refusal.message}
    if refusal.extras is not None:
        body["extras"] = refusal.extras
    return json_response(body, status=refusal.status)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _Refusal(-2, f"{name} is required and must be a string")
    return value


def _number(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    # KakaoPay's own samples send integers as JSON strings ("total_amount": "2200").
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refusal(-2, f"{name} is required and must be an integer")
    return value


def _kst(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, _KST).strftime("%Y-%m-%dT%H:%M:%S")


def _amount(total: int, tax_free: int) -> dict[str, int]:
    return {
        "total": total,
        "tax_free": tax_free,
        "vat": round((total - tax_free) / 11),
        "point": 0,
        "discount": 0,
        "green_deposit": 0,
    }


def _action(aid: str, at: float, amount: int, kind: str, payload: str | None) -> dict[str, Any]:
    action: dict[str, Any] = {
        "aid": aid,
        "approved_at": _kst(at),
        "amount": amount,
        "point_amount": 0,
        "discount_amount": 0,
        "green_deposit": 0,
        "payment_action_type": kind,
    }
    if payload is not None:
        action["payload"] = payload
    return action


def routes(state: PaymentState) -> list[Route]:
    """The simulated KakaoPay endpoints, for ``App(... + payment.routes(state))``."""

    def endpoint(name: str) -> Route:
        return Route(
            "POST",
            f"{_PREFIX}/{name}",
            lambda request: state.handle(name, request),
            "payment",
            # ``order`` is KakaoPay's lookup; every other endpoint changes a payment.
            write=name != "order",
        )

    return [endpoint(name) for name in ("ready", "approve", "cancel", "order", "subscription")]
