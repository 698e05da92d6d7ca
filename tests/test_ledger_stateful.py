"""At most once, as a hypothesis state machine checked against the providers' ledgers.

The machine drives charges, cancels and chat sends (repeated by order id and message key,
as apps retry), faults on every Kakao write path that apply the write and then lose the
answer (reset, hang), faults that prove nothing was sent (refused), alternates going down,
outbox replays and process restarts, over the loopback Kakao data center (primary) and
in-process alternates. After every step it reads what the providers *executed*:

- every order is charged at most once across all providers;
- no order is refunded more than was captured;
- every message is delivered at most once by each provider;
- nothing acknowledged is missing from its provider's ledger.

The SDK's own records are never consulted for these checks.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from superapp_sdk import (
    OfflinePolicy,
    OutcomeUnknown,
    SuperApp,
    SuperAppError,
    Timeouts,
    Via,
)
from superapp_sdk._errors import ProviderConnectError
from superapp_sdk.capabilities.payment import Approval, PaymentStatus
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.domains import DomainOptions
from superapp_sdk.providers._http import run_call
from superapp_sdk.testing import Error, FaultTransport, Hang, Lost, Reset
from superapp_sdk.testing._faults import Fault
from superapp_sdk.testing.echo import EchoChat, EchoPay
from superapp_sdk.testing.kakao import DataCenterServer, KakaoDataCenter
from tests._kakao_paths import APPROVE, CANCEL, ORDER, SUBSCRIPTION, TALK

pytestmark = pytest.mark.network

USER = "user-minji"

#: Faults for one request: applied then the answer lost (reset, hang, a 500 in its place,
#: the next connection refused, an answer after the client's timeout: the cases that must
#: never run a write twice), or provably not sent.
FAULTS: list[Fault | None] = [
    None,
    Reset(delivered=True),
    Reset(graceful=True, delivered=True),
    Hang(delivered=True),
    Lost("500"),
    Lost("refuse_next"),
    Lost("late", seconds=1.0),
    Error(httpx.ConnectError),
]


class Faults:
    """A schedule: the next request to each path gets the fault armed for it, once."""

    def __init__(self) -> None:
        self.armed: dict[str, Fault] = {}

    def __call__(self, index: int, request: httpx.Request) -> Fault | None:
        return self.armed.pop(request.url.path, None)


_SERVER: dict[str, Any] = {}


def _server() -> tuple[KakaoDataCenter, DataCenterServer]:
    """One loopback data center for the whole run; each example uses fresh ids."""
    if not _SERVER:
        dc = KakaoDataCenter()
        server = DataCenterServer(dc)
        server.start()
        _SERVER.update(dc=dc, server=server)
    return _SERVER["dc"], _SERVER["server"]


def teardown_module() -> None:
    if _SERVER:
        _SERVER["server"].stop()
        _SERVER.clear()


_RUN = itertools.count()


class LedgerMachine(RuleBasedStateMachine):
    """Operations, app-level retries, faults, replays and restarts; ledgers checked."""

    def __init__(self) -> None:
        super().__init__()
        self.dc, self.server = _server()
        self.prefix = f"r{next(_RUN)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="superapp-ledger-"))
        self.faults = Faults()
        self.client = httpx.Client(
            transport=FaultTransport(self.faults, inner=httpx.HTTPTransport(), max_hang=2.0)
        )
        # The alternates deduplicate by key only, as Stripe, Toss and LINE do: a second
        # charge of an order under a new key runs again.
        self.echo_pay = EchoPay(dedupe="key")
        self.echo_chat = EchoChat(dedupe="key")
        self.echo_key = self.echo_pay.issue_billing_key(USER)
        self.uuid = self.dc.credentials.friend_uuids[0]
        self.acked_charges: dict[str, str] = {}
        self.approvals: dict[str, Approval] = {}
        self.acked_messages: dict[str, str] = {}
        self.app = self._open()

    def _open(self) -> SuperApp:
        kakao = self.server.adapters()
        app = SuperApp(
            chat=[kakao.talk, self.echo_chat],
            payment=[kakao.pay, self.echo_pay],
            state_dir=self.tmp / "state",
            http_client=self.client,
            timeouts=Timeouts(read=0.3, write=0.3, payment=0.3, floor=0.05),
            breaker=BreakerOptions(minimum_calls=50, window_size=100, open_seconds=0.2),
            domains=DomainOptions(open_seconds=0.2, failures_per_capability=50),
        )
        creds = self.dc.credentials
        app.directory.put(USER, provider="kakao.talk", address=self.uuid)
        app.directory.put(USER, provider="echo.chat", address="minji@echo")
        app.directory.put(USER, provider="kakao.pay", billing_key=creds.billing_key)
        app.directory.put(USER, provider="echo.pay", billing_key=self.echo_key)
        app.start()
        return app

    def order(self, n: int) -> str:
        return f"{self.prefix}-o{n}"

    def text(self, n: int) -> str:
        return f"{self.prefix}-m{n}"

    # -- rules -----------------------------------------------------------------------

    @rule(
        n=st.integers(0, 2),
        fault=st.sampled_from(FAULTS),
        queue=st.booleans(),
    )
    def charge(self, n: int, fault: Fault | None, queue: bool) -> None:
        """Charge an order (again, when the app retries it after an error)."""
        if fault is not None:
            self.faults.armed[SUBSCRIPTION] = fault
        policy = OfflinePolicy.QUEUE if queue else OfflinePolicy.DENY
        try:
            out = self.app.payment.charge(
                order_id=self.order(n), amount=1_000 + n, user_id=USER, offline=policy
            )
        except SuperAppError:
            return
        finally:
            self.faults.armed.pop(SUBSCRIPTION, None)
        if out.via is not Via.QUEUED and out.value.status is PaymentStatus.APPROVED:
            assert out.provider is not None
            self.acked_charges[self.order(n)] = out.provider

    @rule(n=st.integers(0, 2), fault=st.sampled_from(FAULTS), amount=st.sampled_from([None, 300]))
    def cancel(self, n: int, fault: Fault | None, amount: int | None) -> None:
        """Refund part or the rest of an order, faults on the cancel and on the lookup."""
        if fault is not None:
            self.faults.armed[CANCEL] = fault
            self.faults.armed[ORDER] = Error(httpx.ConnectError)
        try:
            self.app.payment.cancel(order_id=self.order(n), amount=amount, reason="refund")
        except SuperAppError:
            pass
        finally:
            self.faults.armed.pop(CANCEL, None)
            self.faults.armed.pop(ORDER, None)

    @rule(n=st.integers(0, 2), fault=st.sampled_from(FAULTS))
    def send(self, n: int, fault: Fault | None) -> None:
        """Send a message, with its key, again when the app retries it."""
        if fault is not None:
            self.faults.armed[TALK] = fault
        try:
            out = self.app.chat.send(
                to=USER, text=self.text(n), idempotency_key=f"{self.prefix}-k{n}"
            )
        except (OutcomeUnknown, SuperAppError):
            return
        finally:
            self.faults.armed.pop(TALK, None)
        if out.via in (Via.PRIMARY, Via.ALTERNATE):
            assert out.provider is not None
            self.acked_messages.setdefault(self.text(n), out.provider)

    @rule(n=st.integers(0, 1), fault=st.sampled_from(FAULTS))
    def checkout(self, n: int, fault: Fault | None) -> None:
        """A user-approved payment: started once, confirmed (again, when the app
        retries), with faults on the approval."""
        order_id = f"{self.prefix}-c{n}"
        approval = self.approvals.get(order_id)
        if approval is None:
            try:
                started = self.app.payment.start(
                    order_id=order_id,
                    amount=5_000,
                    item_name="Ride",
                    user_id=USER,
                    return_url="https://app.example/pay/done",
                )
            except SuperAppError:
                return
            if started.provider != "kakao.pay":
                return
            tid = started.value.provider_ref
            approval = Approval(
                provider_ref=tid, token=self.dc.payment.authorize(tid), user_id=USER
            )
            self.approvals[order_id] = approval
        if fault is not None:
            self.faults.armed[APPROVE] = fault
        try:
            out = self.app.payment.confirm(order_id=order_id, approval=approval)
        except SuperAppError:
            return
        finally:
            self.faults.armed.pop(APPROVE, None)
        if out.via is not Via.QUEUED and out.value.status is PaymentStatus.APPROVED:
            self.acked_charges[order_id] = out.provider or ""

    @rule(charge=st.booleans())
    def alternate_loses_an_answer(self, charge: bool) -> None:
        """The alternate executes its next charge or send and loses the answer."""
        if charge:
            self.echo_pay.lose_next(operation="payment.charge")
        else:
            self.echo_chat.lose_next(operation="chat.send")

    @rule(down=st.booleans())
    def alternates(self, down: bool) -> None:
        """The alternates refuse connections (nothing reaches them), or serve again."""
        error = ProviderConnectError("alternate down", request_sent=False) if down else None
        self.echo_pay.fail = error
        self.echo_chat.fail = error

    @rule()
    def replay(self) -> None:
        """Let the outbox worker deliver what it holds."""
        self.app.drain(1.0)

    @rule()
    def restart(self) -> None:
        """The process stops and starts again on the same state directory."""
        self.app.close()
        self.app = self._open()

    # -- invariants, from the providers' records -------------------------------------

    def _kakao_charges(self, order_id: str) -> int:
        return len(self.dc.payment.charges(order_id))

    def _orders(self) -> list[str]:
        return [self.order(n) for n in range(3)] + [f"{self.prefix}-c{n}" for n in range(2)]

    def _echo_charges(self, order_id: str) -> int:
        return len(self.echo_pay.effects("payment.charge", order_id=order_id)) + len(
            self.echo_pay.effects("payment.approve", order_id=order_id)
        )

    @invariant()
    def each_order_charged_at_most_once(self) -> None:
        for order_id in self._orders():
            total = self._kakao_charges(order_id) + self._echo_charges(order_id)
            assert total <= 1, f"{order_id} charged {total} times"

    @invariant()
    def refunds_never_exceed_captures(self) -> None:
        pay = self.server.adapters().pay
        with httpx.Client() as plain:
            for order_id in self._orders():
                captured = sum(c.amount for c in self.dc.payment.charges(order_id))
                refunded = 0
                for tid in self.dc.payment.tids(order_id):
                    # KakaoPay's own answer for the payment, through its order endpoint.
                    payment = run_call(
                        plain,
                        pay.status(order_id=order_id, provider_ref=tid),
                        provider=pay.name,
                        operation="payment.status",
                    )
                    if payment.canceled_amount is not None:
                        refunded += payment.canceled_amount.amount
                assert refunded <= captured, f"{order_id}: refunded {refunded} of {captured}"

    @invariant()
    def each_message_once_per_provider(self) -> None:
        for n in range(3):
            text = self.text(n)
            kakao = sum(1 for d in self.dc.chat.deliveries(to=self.uuid) if d.text == text)
            echo = sum(1 for e in self.echo_chat.effects("chat.send") if e.text == text)
            assert kakao <= 1, f"{text} delivered {kakao} times by kakao.talk"
            assert echo <= 1, f"{text} delivered {echo} times by echo.chat"

    @invariant()
    def nothing_acknowledged_is_lost(self) -> None:
        for order_id, provider in self.acked_charges.items():
            executed = (
                self._kakao_charges(order_id)
                if provider == "kakao.pay"
                else self._echo_charges(order_id)
            )
            assert executed == 1, f"{order_id} acknowledged by {provider}, not in its ledger"
        for text, provider in self.acked_messages.items():
            if provider == "kakao.talk":
                found = any(d.text == text for d in self.dc.chat.deliveries(to=self.uuid))
            else:
                found = any(e.text == text for e in self.echo_chat.effects("chat.send"))
            assert found, f"{text} acknowledged by {provider}, not delivered"

    def teardown(self) -> None:
        self.app.close()
        self.client.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


#: Each example starts an app and sends real requests over loopback: 25 in the CI profile,
#: 200 in the long one.
LedgerMachine.TestCase.settings = settings(
    settings.default, max_examples=25 if settings.default.max_examples <= 50 else 200
)
TestLedger = LedgerMachine.TestCase
