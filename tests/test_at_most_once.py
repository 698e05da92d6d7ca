"""At most once, proven from the providers' own records: the cases seen on main, each
against the simulated Kakao data center on loopback with the answer lost *after* the
provider applied the write.

Every assertion about money or messages reads what a provider executed (the KakaoPay
simulator's ledger, the KakaoTalk deliveries, the alternates' calls), never the SDK's own
records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from superapp_sdk import (
    ChatPolicy,
    DeadLettered,
    NeedsReconciliation,
    OfflinePolicy,
    Outcome,
    OutcomeUnknown,
    SuperApp,
    Timeouts,
    Unavailable,
    Via,
    _ops,
)
from superapp_sdk._errors import InvalidRequest, ProviderConnectError
from superapp_sdk.capabilities.payment import Approval, Payment, PaymentStatus
from superapp_sdk.cli import main as cli_main
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.domains import DomainOptions
from superapp_sdk.providers._http import run_call
from superapp_sdk.testing import FaultTransport, Hang, Reset, for_paths
from superapp_sdk.testing._faults import Fault
from superapp_sdk.testing.echo import EchoChat, EchoPay
from superapp_sdk.testing.kakao import DataCenterServer, KakaoDataCenter
from tests._kakao_paths import APPROVE, CANCEL, ORDER, SUBSCRIPTION, TALK

pytestmark = pytest.mark.network

USER = "user-minji"


class Both:
    """The first schedule that names a fault wins."""

    def __init__(self, *schedules: Callable[[int, httpx.Request], Fault | None]) -> None:
        self.schedules = schedules

    def __call__(self, index: int, request: httpx.Request) -> Fault | None:
        for schedule in self.schedules:
            fault = schedule(index, request)
            if fault is not None:
                return fault
        return None


class Once:
    """A fault for the first request to a path only; every later one passes."""

    def __init__(self, path: str, fault: Fault, times: int = 1) -> None:
        self.path = path
        self.fault = fault
        self.left = times

    def __call__(self, index: int, request: httpx.Request) -> Fault | None:
        if self.left and request.url.path.startswith(self.path):
            self.left -= 1
            return self.fault
        return None


class Rig:
    """The data center on loopback behind a fault transport, with in-process alternates."""

    def __init__(
        self,
        tmp: Path,
        schedule: Callable[[int, httpx.Request], Fault | None],
        *,
        chat_policy: ChatPolicy = ChatPolicy.FAIL_OVER,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.dc = KakaoDataCenter()
        self.server = DataCenterServer(self.dc)
        self.server.start()
        self.transport = FaultTransport(
            schedule, inner=inner or httpx.HTTPTransport(), max_hang=3.0
        )
        self.client = httpx.Client(transport=self.transport)
        kakao = self.server.adapters()
        self.echo_chat = EchoChat()
        self.echo_pay = EchoPay()
        self.events: list[object] = []
        self.app = SuperApp(
            chat=[kakao.talk, self.echo_chat],
            payment=[kakao.pay, self.echo_pay],
            state_dir=tmp / "state",
            http_client=self.client,
            timeouts=Timeouts(read=1.0, write=1.0, payment=1.0, floor=0.2),
            breaker=BreakerOptions(minimum_calls=3, window_size=10, open_seconds=0.3),
            domains=DomainOptions(open_seconds=0.3, failures_per_capability=1),
            chat_policy=chat_policy,
        )
        self.app.on(NeedsReconciliation, self.events.append)
        creds = self.dc.credentials
        self.uuid = creds.friend_uuids[0]
        self.app.directory.put(USER, provider="kakao.talk", address=self.uuid)
        self.app.directory.put(USER, provider="echo.chat", address="minji@echo")
        self.app.directory.put(USER, provider="kakao.pay", billing_key=creds.billing_key)
        self.app.directory.put(
            USER, provider="echo.pay", billing_key=self.echo_pay.issue_billing_key(USER)
        )

    def executed_charges(self, order_id: str) -> int:
        """Charges of ``order_id`` every provider executed, from their own records."""
        kakao = len(self.dc.payment.charges(order_id))
        echo = len(self.echo_pay.charges(order_id))
        return kakao + echo

    def kakao_deliveries(self, text: str) -> int:
        return sum(1 for d in self.dc.chat.deliveries(to=self.uuid) if d.text == text)

    def echo_deliveries(self, text: str) -> int:
        return sum(1 for m in self.echo_chat.messages() if m.text == text)

    def close(self) -> None:
        self.app.close()
        self.client.close()
        self.server.stop()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(schedule: Callable[[int, httpx.Request], Fault | None], **kw: object) -> Rig:
        rig = Rig(tmp_path / str(len(rigs)), schedule, **kw)  # type: ignore[arg-type]
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- case 1: a subscription charge applied at KakaoPay, its answer lost ----------------


@pytest.mark.parametrize("fault", [Reset(delivered=True), Hang(delivered=True)], ids=repr)
def test_lost_charge_answer_is_held_and_never_charged_again(
    make_rig: Callable[..., Rig], fault: Fault
) -> None:
    """Case 1 (DENY): the charge ran at KakaoPay and its answer was lost; the app's
    repeat of the same order answers the same held OutcomeUnknown and charges nothing."""
    rig = make_rig(Once(SUBSCRIPTION, fault))
    with pytest.raises(OutcomeUnknown) as first:
        rig.app.payment.charge(order_id="o-1", amount=2_000, user_id=USER)
    assert first.value.needs_reconciliation
    assert first.value.ticket
    with pytest.raises(OutcomeUnknown) as again:
        rig.app.payment.charge(order_id="o-1", amount=2_000, user_id=USER)
    assert again.value.ticket == first.value.ticket
    assert rig.executed_charges("o-1") == 1
    assert [e.ticket for e in rig.events] == [first.value.ticket]  # type: ignore[attr-defined]


def test_lost_charge_answer_with_queue_policy_is_not_replayed(
    make_rig: Callable[..., Rig],
) -> None:
    """Case 1 (QUEUE): a lost charge answer is held, not queued; the outbox worker and an
    app-level retry after KakaoPay's breaker opened charge neither provider again."""
    rig = make_rig(Once(SUBSCRIPTION, Reset(delivered=True)))
    with rig.app:
        with pytest.raises(OutcomeUnknown) as held:
            rig.app.payment.charge(
                order_id="o-q", amount=2_000, user_id=USER, offline=OfflinePolicy.QUEUE
            )
        for _ in range(3):
            with pytest.raises(OutcomeUnknown):
                rig.app.payment.charge(
                    order_id="o-q", amount=2_000, user_id=USER, offline=OfflinePolicy.QUEUE
                )
        assert rig.app.drain(5.0)
    assert held.value.needs_reconciliation
    assert rig.executed_charges("o-q") == 1


def test_reconcile_settles_a_held_charge_once(make_rig: Callable[..., Rig]) -> None:
    """An operator's reconcile(executed=True) makes the held order paid without a second
    charge; executed=False lets the next charge run, once."""
    rig = make_rig(Once(SUBSCRIPTION, Reset(delivered=True), times=2))
    with pytest.raises(OutcomeUnknown) as held:
        rig.app.payment.charge(order_id="o-r1", amount=2_000, user_id=USER)
    paid = rig.app.payment.reconcile(held.value.ticket or "", executed=True, by="ops:kim")
    assert paid is not None
    assert paid.status is PaymentStatus.APPROVED
    out = rig.app.payment.charge(order_id="o-r1", amount=2_000, user_id=USER)
    assert out.value.status is PaymentStatus.APPROVED
    assert rig.executed_charges("o-r1") == 1

    with pytest.raises(OutcomeUnknown) as held2:
        rig.app.payment.charge(order_id="o-r2", amount=2_000, user_id=USER)
    # Said not executed (wrongly, here): the SDK takes the operator's word, and the
    # provider's ledger shows what that decision cost.
    assert rig.app.payment.reconcile(held2.value.ticket or "", executed=False, by="ops:kim") is None
    rig.app.payment.charge(order_id="o-r2", amount=2_000, user_id=USER)
    assert rig.executed_charges("o-r2") == 2
    with pytest.raises(InvalidRequest):
        rig.app.payment.reconcile(held2.value.ticket or "", executed=True, by="ops:kim")


# -- case 2: a charge answered after the payment timeout --------------------------------


def test_charge_answered_after_the_timeout_runs_once(make_rig: Callable[..., Rig]) -> None:
    """Case 2: KakaoPay charged but answered after the client's timeout; neither the app's
    retry nor the alternate charges the order again."""
    rig = make_rig(Once(SUBSCRIPTION, Hang(delivered=True)))
    for _ in range(3):
        with pytest.raises(OutcomeUnknown):
            rig.app.payment.charge(order_id="o-2", amount=3_000, user_id=USER)
    assert rig.executed_charges("o-2") == 1
    assert rig.echo_pay.charges("o-2") == []


def test_charge_refused_before_sending_is_retried_and_runs_once(
    make_rig: Callable[..., Rig],
) -> None:
    """The twin: a charge that provably never left (connection refused) may be sent
    again, and runs exactly once."""
    rig = make_rig(Once(SUBSCRIPTION, _refused()))
    out = rig.app.payment.charge(order_id="o-2b", amount=3_000, user_id=USER)
    assert out.value.status is PaymentStatus.APPROVED
    assert rig.executed_charges("o-2b") == 1


def _refused() -> Fault:
    from superapp_sdk.testing import Error

    return Error(httpx.ConnectError)


# -- case 4: a chat message delivered, its answer lost ----------------------------------


LOST_AFTER_DELIVERY: list[Fault] = [
    Reset(delivered=True),
    Reset(graceful=True, delivered=True),
    Hang(delivered=True),
]


@pytest.mark.parametrize("fault", LOST_AFTER_DELIVERY, ids=repr)
def test_message_is_delivered_at_most_once_by_kakao(
    make_rig: Callable[..., Rig], fault: Fault
) -> None:
    """Case 4: KakaoTalk delivered and the answer was lost; the SDK never sends it to
    KakaoTalk again (no retry, no replay), and the default policy delivers it through the
    alternate, marked as a possible duplicate."""
    rig = make_rig(Once(TALK, fault))
    with rig.app:
        out = rig.app.chat.send(to=USER, text="ride here", conversation="c-4")
        assert rig.app.drain(5.0)
    assert rig.kakao_deliveries("ride here") == 1
    assert rig.echo_deliveries("ride here") == 1
    assert (out.via, out.provider) == (Via.ALTERNATE, "echo.chat")
    assert out.possible_duplicates == ("kakao.talk",)


def test_message_answered_500_after_delivery_is_not_resent(make_rig: Callable[..., Rig]) -> None:
    """Case 4: a 500 from KakaoTalk may come after delivery; it is never retried there."""
    rig = make_rig(lambda i, r: None, inner=_AnswerReplaced(httpx.HTTPTransport(), TALK, 500))
    out = rig.app.chat.send(to=USER, text="code 4512", conversation="c-5")
    assert rig.kakao_deliveries("code 4512") == 1
    assert out.possible_duplicates == ("kakao.talk",)


def test_message_with_hold_policy_is_held_not_resent(make_rig: Callable[..., Rig]) -> None:
    """ChatPolicy.HOLD: the ambiguous message goes nowhere else and is held; a repeat with
    its key answers the same, and nothing is delivered twice."""
    rig = make_rig(Once(TALK, Reset(delivered=True)), chat_policy=ChatPolicy.HOLD)
    with pytest.raises(OutcomeUnknown) as held:
        rig.app.chat.send(to=USER, text="held", conversation="c-6", idempotency_key="k-6")
    with pytest.raises(OutcomeUnknown) as again:
        rig.app.chat.send(to=USER, text="held", conversation="c-6", idempotency_key="k-6")
    assert held.value.needs_reconciliation
    assert again.value.ticket == held.value.ticket
    assert rig.kakao_deliveries("held") == 1
    assert rig.echo_deliveries("held") == 0


def test_message_sent_again_with_its_key_is_not_delivered_again(
    make_rig: Callable[..., Rig],
) -> None:
    """A repeated send with the same idempotency key returns the first receipt."""
    rig = make_rig(lambda i, r: None)
    first = rig.app.chat.send(to=USER, text="once", idempotency_key="k-7")
    again = rig.app.chat.send(to=USER, text="once", idempotency_key="k-7")
    assert again.value == first.value
    assert rig.kakao_deliveries("once") == 1


class _AnswerReplaced(httpx.BaseTransport):
    """Forwards every request; the first to ``path`` is executed by the server and its
    answer replaced by ``status`` (a 500 written after the effect was applied)."""

    def __init__(self, inner: httpx.BaseTransport, path: str, status: int) -> None:
        self.inner = inner
        self.path = path
        self.status = status
        self.left = 1

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.left and request.url.path == self.path:
            self.left -= 1
            response.read()
            response.close()
            return httpx.Response(self.status, html="<h1>500 Internal Server Error</h1>")
        return response

    def close(self) -> None:
        self.inner.close()


# -- case 5: cancels ------------------------------------------------------------------


def _approval(app: SuperApp, dc: KakaoDataCenter, order_id: str, amount: int) -> Approval:
    """Start a KakaoPay checkout for ``order_id`` and approve it as the user would."""
    checkout = app.payment.start(
        order_id=order_id,
        amount=amount,
        item_name="Ride",
        user_id=USER,
        return_url="https://app.example/pay/done",
    )
    tid = checkout.value.provider_ref
    return Approval(provider_ref=tid, token=dc.payment.authorize(tid), user_id=USER)


def _paid(rig: Rig, order_id: str, amount: int) -> None:
    rig.app.payment.confirm(
        order_id=order_id, approval=_approval(rig.app, rig.dc, order_id, amount)
    )


def _refunded(rig: Rig, order_id: str) -> int:
    """What KakaoPay says it refunded for the order (its own ``order`` endpoint)."""
    pay = rig.server.adapters().pay
    total = 0
    with httpx.Client() as client:
        for tid in rig.dc.payment.tids(order_id):
            payment = run_call(
                client,
                pay.status(order_id=order_id, provider_ref=tid),
                provider=pay.name,
                operation="payment.status",
            )
            total += 0 if payment.canceled_amount is None else payment.canceled_amount.amount
    return total


def _until_answered(
    rig: Rig, order_id: str, cancel: Callable[[], Outcome[Payment]], *, refunded: int
) -> Outcome[Payment]:
    """Repeat ``cancel`` as an app does while the SDK answers OutcomeUnknown (KakaoPay's
    breaker, opened by the failed lookups, closes through its probes meanwhile); what
    KakaoPay refunded stays ``refunded`` until it answers."""
    for _ in range(100):
        try:
            return cancel()
        except OutcomeUnknown:
            assert _refunded(rig, order_id) == refunded
            time.sleep(0.05)
    raise AssertionError("the cancel was never settled")


def test_cancel_without_amount_refunds_what_remains(make_rig: Callable[..., Rig]) -> None:
    """Case 5: after a partial cancel, amount=None refunds the remainder, not the total."""
    rig = make_rig(lambda i, r: None)
    _paid(rig, "o-5", 10_000)
    rig.app.payment.cancel(order_id="o-5", amount=3_000, reason="partial")
    out = rig.app.payment.cancel(order_id="o-5", reason="the rest")
    assert out.value.status is PaymentStatus.CANCELED
    assert _refunded(rig, "o-5") == 10_000


def test_repeated_cancel_with_its_key_refunds_once(make_rig: Callable[..., Rig]) -> None:
    """Case 5: the first cancel's answer is lost after KakaoPay refunded; the app repeats
    it with the same cancel_id and nothing more is refunded."""
    rig = make_rig(Both(Once(CANCEL, Reset(delivered=True)), Once(ORDER, _refused(), times=3)))
    _paid(rig, "o-5b", 10_000)
    with pytest.raises(OutcomeUnknown):
        rig.app.payment.cancel(order_id="o-5b", amount=1_000, reason="x", cancel_id="c1")
    out = _until_answered(
        rig,
        "o-5b",
        lambda: rig.app.payment.cancel(order_id="o-5b", amount=1_000, reason="x", cancel_id="c1"),
        refunded=1_000,
    )
    assert out.value.canceled_amount is not None
    assert out.value.canceled_amount.amount == 1_000
    assert _refunded(rig, "o-5b") == 1_000


def test_lost_cancel_answer_is_settled_by_lookup(make_rig: Callable[..., Rig]) -> None:
    """A cancel refunded at KakaoPay whose answer was lost is settled at once by the
    order lookup, and not sent again."""
    rig = make_rig(Once(CANCEL, Reset(delivered=True)))
    _paid(rig, "o-5d", 10_000)
    out = rig.app.payment.cancel(order_id="o-5d", amount=4_000, reason="x")
    assert out.value.canceled_amount is not None
    assert out.value.canceled_amount.amount == 4_000
    assert _refunded(rig, "o-5d") == 4_000


def test_unknown_cancel_is_settled_before_a_new_one(make_rig: Callable[..., Rig]) -> None:
    """Case 5: without a key, a cancel of unknown outcome is looked up before the next
    cancel is sent, so a repeat after an uninterpretable error refunds once."""
    rig = make_rig(Both(Once(CANCEL, Reset(delivered=True)), Once(ORDER, _refused(), times=3)))
    _paid(rig, "o-5c", 10_000)
    with pytest.raises(OutcomeUnknown):
        rig.app.payment.cancel(order_id="o-5c", amount=1_000, reason="x")
    _until_answered(
        rig,
        "o-5c",
        lambda: rig.app.payment.cancel(order_id="o-5c", amount=2_000, reason="y"),
        refunded=1_000,
    )
    assert _refunded(rig, "o-5c") == 3_000
    with pytest.raises(InvalidRequest):
        rig.app.payment.cancel(order_id="o-5c", amount=8_000, reason="too much")
    assert _refunded(rig, "o-5c") == 3_000


# -- case 6: recovery -------------------------------------------------------------------


def test_replayed_approval_already_executed_is_settled_not_dead_lettered(
    make_rig: Callable[..., Rig],
) -> None:
    """Case 6: the approve ran and its answer was lost, and the lookup failed too, so the
    confirm was queued; its replay gets "already approved" (-702) and the order is
    recorded paid, once, not dead-lettered."""
    rig = make_rig(Both(Once(APPROVE, Reset(delivered=True)), Once(ORDER, _refused())))
    approval = _approval(rig.app, rig.dc, "o-6", 5_000)
    dead: list[object] = []
    rig.app.on(DeadLettered, dead.append)
    with rig.app:
        first = rig.app.payment.confirm(order_id="o-6", approval=approval)
        assert first.via is Via.QUEUED
        assert rig.app.drain(5.0)
        assert rig.app.health().dead_letters == 0
        status = rig.app.payment.status("o-6")
    assert status.value.status is PaymentStatus.APPROVED
    assert dead == []
    assert rig.executed_charges("o-6") == 1
    approvals = [r for r in rig.transport.requests if r.url.path == APPROVE]
    assert len(approvals) == 2  # the replay was sent, and KakaoPay refused it with -702


def test_charge_nobody_received_is_unavailable_and_free_to_retry(
    make_rig: Callable[..., Rig],
) -> None:
    """Every provider refused the connection: Unavailable, nothing charged, nothing held,
    and the next charge of the order runs once."""
    rig = make_rig(for_paths(SUBSCRIPTION, _refused()))
    rig.echo_pay.fail = ProviderConnectError("down", request_sent=False)
    with pytest.raises(Unavailable):
        rig.app.payment.charge(order_id="o-x", amount=1_000, user_id=USER)
    assert rig.executed_charges("o-x") == 0
    rig.echo_pay.fail = None
    out = rig.app.payment.charge(order_id="o-x", amount=1_000, user_id=USER)
    assert out.provider == "echo.pay"
    assert rig.executed_charges("o-x") == 1


# -- reconciliation from the command line ----------------------------------------------


def test_cli_reconcile_settles_a_held_charge(
    make_rig: Callable[..., Rig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`superapp outbox reconcile TICKET --executed --by NAME` records the held order as
    paid; the app's next charge of it returns that and KakaoPay's ledger keeps one."""
    rig = make_rig(Once(SUBSCRIPTION, Reset(delivered=True)))
    with pytest.raises(OutcomeUnknown) as held:
        rig.app.payment.charge(order_id="o-cli", amount=2_500, user_id=USER)
    ticket = held.value.ticket or ""
    state_dir = str(tmp_path / "0" / "state")
    code = cli_main(["outbox", "reconcile", ticket, "--executed", "--by", "ops:lee"])
    assert code != 0  # no state dir given: the default one does not exist
    code = cli_main(
        ["--state-dir", state_dir, "outbox", "reconcile", ticket, "--executed", "--by", "ops:lee"]
    )
    assert code == 0
    assert f"reconciled {ticket} as executed by ops:lee" in capsys.readouterr().out
    out = rig.app.payment.charge(order_id="o-cli", amount=2_500, user_id=USER)
    assert out.value.status is PaymentStatus.APPROVED
    assert rig.executed_charges("o-cli") == 1
    again = cli_main(
        ["--state-dir", state_dir, "outbox", "reconcile", ticket, "--not-executed", "--by", "x"]
    )
    assert again != 0
    assert "nothing is held" in capsys.readouterr().err


# -- case 7: providers that deduplicate by key only ---------------------------------------


def _key_only_app(tmp_path: Path) -> tuple[SuperApp, EchoPay, EchoChat]:
    pay = EchoPay(name="keyed.pay", dedupe="key")
    chat = EchoChat(name="keyed.chat", dedupe="key")
    app = SuperApp(payment=[pay], chat=[chat], state_dir=tmp_path / "keyed")
    app.directory.put(USER, provider="keyed.pay", billing_key=pay.issue_billing_key(USER))
    app.directory.put(USER, provider="keyed.chat", address="minji@keyed")
    return app, pay, chat


def test_a_provider_that_deduplicates_by_key_gets_the_persisted_key(tmp_path: Path) -> None:
    """Case 7: a charge applied and its answer lost at a provider that deduplicates by key
    only (as Stripe and Toss do) is resent with the same key, so it runs once; every try
    carried the key persisted for the order, and the app's repeat sends nothing new."""
    app, pay, _ = _key_only_app(tmp_path)
    with app:
        pay.lose_next(operation="payment.charge")
        out = app.payment.charge(order_id="o-7", amount=700, user_id=USER)
        again = app.payment.charge(order_id="o-7", amount=700, user_id=USER)
        record = _ops._payment_record(app._parts.state, "o-7")
    assert out.value.status is PaymentStatus.APPROVED
    assert again.value == out.value
    assert len(pay.effects("payment.charge", order_id="o-7")) == 1
    assert record is not None
    keys = {c.idempotency_key for c in pay.calls if c.operation == "payment.charge"}
    assert keys == {record.idempotency_key}


def test_a_message_resent_to_a_deduplicating_provider_keeps_its_key(tmp_path: Path) -> None:
    """Case 7 for chat: a send whose answer was lost is resent with the same key to a
    provider that deduplicates (LINE's X-Line-Retry-Key), and delivered once."""
    app, _, chat = _key_only_app(tmp_path)
    with app:
        chat.lose_next(operation="chat.send")
        out = app.chat.send(to=USER, text="key-7", idempotency_key="k-7")
    assert out.via is Via.PRIMARY
    assert len(chat.effects("chat.send")) == 1
    keys = {c.idempotency_key for c in chat.calls if c.operation == "chat.send"}
    assert keys == {"k-7"}


# -- a process killed while its charge is in flight --------------------------------------

_CHILD = """
import json, sys
from superapp_sdk import SuperApp, Timeouts
from superapp_sdk.providers.kakao import KakaoPay
cfg = json.loads(sys.argv[1])
pay = KakaoPay(secret_key=cfg["key"], cid=cfg["cid"], subscription_cid=cfg["scid"],
               pay_base_url=cfg["url"])
app = SuperApp(payment=[pay], state_dir=cfg["state"], timeouts=Timeouts(payment=60.0))
app.directory.put("user-minji", provider="kakao.pay", billing_key=cfg["sid"])
print("charging", flush=True)
app.payment.charge(order_id="o-k9", amount=4_000, user_id="user-minji")
"""


def test_a_charge_in_flight_when_the_process_is_killed_is_not_charged_again(
    tmp_path: Path,
) -> None:
    """kill -9 while KakaoPay has applied the charge and not answered: the restarted app's
    repeat of the order is held, not charged again, here or at the alternate."""
    import json
    import signal
    import subprocess
    import sys

    from superapp_sdk.testing.kakao import Burn

    dc = KakaoDataCenter()
    with DataCenterServer(dc) as server:
        creds = dc.credentials
        cfg = {
            "key": creds.pay_secret_key,
            "cid": creds.pay_cid,
            "scid": creds.pay_subscription_cid,
            "url": server.url_for("payment").rstrip("/") + "/pay",
            "sid": creds.billing_key,
            "state": str(tmp_path / "state"),
        }
        server.burn(Burn.LOSE_HANG, ["payment"])
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(cfg)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert _wait_for(lambda: len(dc.payment.charges("o-k9")) == 1, 30.0)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            assert child.stdout is not None
            child.stdout.close()
        server.restore()
        echo = EchoPay()
        app = SuperApp(payment=[server.adapters().pay, echo], state_dir=tmp_path / "state")
        try:
            app.directory.put(USER, provider="echo.pay", billing_key=echo.issue_billing_key(USER))
            with pytest.raises(OutcomeUnknown) as held:
                app.payment.charge(order_id="o-k9", amount=4_000, user_id=USER)
        finally:
            app.close()
    assert held.value.needs_reconciliation
    assert len(dc.payment.charges("o-k9")) == 1
    assert echo.charges("o-k9") == []


# -- case 6: recovery after the fault clears ------------------------------------------------


def test_after_the_fault_clears_the_queued_confirm_drains_and_status_answers(
    tmp_path: Path,
) -> None:
    """Case 6: a confirm queued while KakaoPay hung is delivered, once, when it is back,
    and payment.status answers from KakaoPay (no CircuitOpen) within the breaker's open
    time after the outbox drained."""
    from superapp_sdk.core.breaker import StateChange
    from superapp_sdk.testing.kakao import Burn

    dc = KakaoDataCenter()
    with DataCenterServer(dc) as server:
        app = SuperApp(
            payment=[server.adapters().pay, EchoPay()],
            state_dir=tmp_path / "state",
            timeouts=Timeouts(read=0.5, write=0.5, payment=0.5, floor=0.05),
            breaker=BreakerOptions(minimum_calls=3, window_size=10, open_seconds=1.0),
            domains=DomainOptions(open_seconds=1.0),
        )
        changes: list[StateChange] = []
        app.on(StateChange, changes.append)
        with app:
            approval = _approval(app, dc, "o-6r", 5_000)
            server.burn(Burn.HANG, ["payment"])
            queued = app.payment.confirm(order_id="o-6r", approval=approval)
            assert queued.via is Via.QUEUED
            for _ in range(4):
                with pytest.raises(Unavailable):
                    app.payment.status("o-6r")
            server.restore()
            assert app.drain(10.0)
            assert _wait_for(lambda: _status_is_approved(app, "o-6r"), 3.0)
        app.close()
    assert len(dc.payment.charges("o-6r")) == 1


def _status_is_approved(app: SuperApp, order_id: str) -> bool:
    try:
        out = app.payment.status(order_id)
    except Unavailable:
        return False
    return out.via is Via.PRIMARY and out.value.status is PaymentStatus.APPROVED


def test_on_refuses_an_event_name_given_as_a_string(tmp_path: Path) -> None:
    """app.on("DeadLettered", cb) would never fire: it is refused, naming the mistake."""
    app = SuperApp(state_dir=tmp_path / "s")
    try:
        with pytest.raises(ValueError, match="DeadLettered"):
            app.on("DeadLettered", print)
        app.on("*", print)
        app.on(DeadLettered, print)
    finally:
        app.close()


# -- mobility: a ride requested twice is two taxis ---------------------------------------


def test_ride_request_and_rental_end_are_never_sent_to_a_second_provider(
    tmp_path: Path,
) -> None:
    """A ride request or a rental end that ran at the first provider and lost its answer
    is held (OutcomeUnknown), not sent to the second: from both providers' records, each
    ran once."""
    from superapp_sdk.capabilities.mobility import Place
    from superapp_sdk.testing.echo import EchoMobility

    first = EchoMobility(name="first.mobility", failure_domain="first")
    second = EchoMobility(name="second.mobility", failure_domain="second")
    app = SuperApp(mobility=[first, second], state_dir=tmp_path / "m")
    here, there = Place(37.49, 127.02), Place(37.56, 126.97)
    try:
        first.lose_next(operation="mobility.request_ride")
        with pytest.raises(OutcomeUnknown):
            app.mobility.request_ride(rider=USER, origin=here, destination=there)
        first.start_rental("r-1")
        second.start_rental("r-1")
        first.lose_next(operation="mobility.end_rental")
        with pytest.raises(OutcomeUnknown):
            app.mobility.end_rental(rental_id="r-1", location=there, at=1_800_000_000.0)
    finally:
        app.close()
    assert len(first.effects("mobility.request_ride")) == 1
    assert second.effects("mobility.request_ride") == ()
    assert len(first.effects("mobility.end_rental")) == 1
    assert second.effects("mobility.end_rental") == ()


def test_the_first_answer_after_recovery_does_not_open_the_breaker(tmp_path: Path) -> None:
    """Case 6 as seen with the default breaker: the queued confirm's successful replay
    brought the window to its minimum calls with the outage's failures in it and opened
    the breaker, so payment.status answered CircuitOpen right after recovery. A fast
    success never opens it now."""
    from superapp_sdk.testing.kakao import Burn

    dc = KakaoDataCenter()
    with DataCenterServer(dc) as server:
        app = SuperApp(
            payment=[server.adapters().pay],
            state_dir=tmp_path / "state",
            timeouts=Timeouts(read=0.5, write=0.5, payment=0.5, floor=0.05),
            breaker=BreakerOptions(minimum_calls=5, window_size=20, open_seconds=30.0),
            # The breaker alone: no suspect or open domain skips the calls below.
            domains=DomainOptions(suspect_seconds=0.0, failures_per_capability=50),
        )
        try:
            approval = _approval(app, dc, "o-6b", 5_000)
            server.burn(Burn.HANG, ["payment"])
            assert app.payment.confirm(order_id="o-6b", approval=approval).via is Via.QUEUED
            for _ in range(2):
                with pytest.raises(Unavailable):
                    app.payment.status("o-6b")
            server.restore()
            with app:
                assert app.drain(10.0)
                out = app.payment.status("o-6b")
        finally:
            app.close()
    assert (out.via, out.value.status) == (Via.PRIMARY, PaymentStatus.APPROVED)
    assert len(dc.payment.charges("o-6b")) == 1
