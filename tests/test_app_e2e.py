"""End to end: DESIGN.md section 5 against the simulated Kakao data center on loopback,
set on fire mid-traffic, restored, and back to Kakao."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from superapp_sdk import (
    AsyncSuperApp,
    OfflinePolicy,
    ServiceLevel,
    SuperApp,
    Timeouts,
    Via,
)
from superapp_sdk._errors import Declined, ProviderConnectError, ProviderError
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.capabilities.payment import Approval, PaymentStatus
from superapp_sdk.core.breaker import BreakerOptions, StateChange
from superapp_sdk.core.domains import DomainChange, DomainOptions, DomainState
from superapp_sdk.resilience import OutcomeUnknown
from superapp_sdk.testing import FaultTransport, Hang, for_paths
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay
from superapp_sdk.testing.kakao import Burn, DataCenterServer, KakaoDataCenter

pytestmark = pytest.mark.network

USER = "user-minji"
GANGNAM = Place(37.4979, 127.0276, "Gangnam Station")
CITY_HALL = Place(37.5663, 126.9779, "Seoul City Hall")


class Rig:
    """The data center, its server, the alternates and an app wired to all of them."""

    def __init__(self, tmp: Path, *, http_client: httpx.Client | None = None) -> None:
        self.dc = KakaoDataCenter()
        self.server = DataCenterServer(self.dc)
        self.server.start()
        kakao = self.server.adapters()
        self.echo_chat = EchoChat()
        self.echo_pay = EchoPay()
        self.echo_login = EchoLogin(redirect_uri="https://app.example/login/echo/callback")
        self.echo_mobility = EchoMobility()
        self.app = SuperApp(
            identity=[kakao.login, self.echo_login],
            chat=[kakao.talk, self.echo_chat],
            payment=[kakao.pay, self.echo_pay],
            mobility=[kakao.mobility, self.echo_mobility],
            state_dir=tmp / "state",
            http_client=http_client,
            timeouts=Timeouts(read=1.0, write=1.0, payment=1.0, floor=0.2),
            breaker=BreakerOptions(minimum_calls=3, window_size=10, open_seconds=0.5),
            domains=DomainOptions(open_seconds=0.5, failures_per_capability=1),
        )
        creds = self.dc.credentials
        self.app.directory.put(USER, provider="kakao.talk", address=creds.friend_uuids[0])
        self.app.directory.put(USER, provider="echo.chat", address="minji@echo")
        self.app.directory.put(USER, provider="kakao.pay", billing_key=creds.billing_key)
        self.app.directory.put(
            USER, provider="echo.pay", billing_key=self.echo_pay.issue_billing_key(USER)
        )

    def close(self) -> None:
        self.app.close()
        self.server.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_design_example_runs_against_the_healthy_data_center(rig: Rig) -> None:
    """Every capability of DESIGN.md section 5 is served by Kakao when Kakao is healthy."""
    app, dc = rig.app, rig.dc
    sent = app.chat.send(to=USER, text="Your ride is here", conversation="c-1")
    assert (sent.via, sent.provider, sent.degraded) == (Via.PRIMARY, "kakao.talk", False)
    assert [d.text for d in dc.chat.deliveries(to=dc.credentials.friend_uuids[0])] == [
        "Your ride is here"
    ]

    checkout = app.payment.start(
        order_id="o-1",
        amount=12_000,
        item_name="Ride",
        user_id=USER,
        return_url="https://app.example/pay/done",
    )
    assert checkout.via is Via.PRIMARY
    tid = checkout.value.provider_ref
    approval = Approval(provider_ref=tid, token=dc.payment.authorize(tid), user_id=USER)
    paid = app.payment.confirm(order_id="o-1", approval=approval)
    assert (paid.via, paid.value.status) == (Via.PRIMARY, PaymentStatus.APPROVED)
    assert len(dc.payment.charges("o-1")) == 1

    charged = app.payment.charge(order_id="o-2", amount=3_000, user_id=USER)
    assert (charged.via, charged.provider) == (Via.PRIMARY, "kakao.pay")

    login = app.identity.login_url(state="st", nonce="n-1")
    assert (login.via, login.provider) == (Via.PRIMARY, "kakao.login")
    session = app.identity.complete_login(
        provider="kakao.login", code=dc.issue_code(nonce="n-1"), nonce="n-1"
    )
    assert session.value.subject == dc.credentials.subject
    again = app.identity.complete_login(
        provider="kakao.login", code=dc.issue_code(nonce="n-2"), nonce="n-2"
    )
    assert again.value.user_id == session.value.user_id

    estimate = app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    assert (estimate.via, estimate.provider) == (Via.PRIMARY, "kakao.mobility")
    assert estimate.value.distance_m > 5_000
    assert app.health().level is ServiceLevel.FULL


def test_burning_kakao_fails_every_capability_over_and_opens_the_domain(rig: Rig) -> None:
    """Chat and payment fail over; the kakao domain opens and identity and mobility skip
    Kakao without a network call."""
    app = rig.app
    changes: list[DomainChange] = []
    app.on(DomainChange, changes.append)
    assert app.chat.send(to=USER, text="before", conversation="c").via is Via.PRIMARY
    rig.server.burn(Burn.REFUSE)
    sent = app.chat.send(to=USER, text="during", conversation="c")
    assert (sent.via, sent.provider) == (Via.ALTERNATE, "echo.chat")
    charged = app.payment.charge(order_id="o-burn", amount=1_000, user_id=USER)
    assert (charged.via, charged.provider) == (Via.ALTERNATE, "echo.pay")
    assert app.domains.state("kakao") is DomainState.OPEN
    assert any(c.new is DomainState.OPEN for c in changes)
    before = time.monotonic()
    estimate = app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    login = app.identity.login_url(state="s", nonce="n")
    assert time.monotonic() - before < 0.5
    assert (estimate.via, estimate.provider) == (Via.ALTERNATE, "echo.mobility")
    assert estimate.attempts[0].skipped
    assert estimate.attempts[0].error == "DomainOpen"
    assert (login.via, login.provider) == (Via.ALTERNATE, "echo.login")
    assert rig.dc.payment.charges("o-burn") == []
    assert app.health().capabilities["chat"].level is ServiceLevel.DEGRADED


def test_restored_data_center_gets_its_traffic_back(rig: Rig) -> None:
    """After the fire, probes close the domain and calls return to Kakao."""
    app = rig.app
    rig.server.burn(Burn.REFUSE)
    app.chat.send(to=USER, text="x", conversation="c")
    app.payment.charge(order_id="o-r", amount=1_000, user_id=USER)
    assert app.domains.state("kakao") is DomainState.OPEN
    rig.server.restore()

    def back() -> bool:
        return app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL).via is Via.PRIMARY

    assert _wait_for(back, timeout=15)
    assert app.domains.state("kakao") is DomainState.CLOSED


def test_queued_message_is_delivered_once_when_a_provider_is_back(rig: Rig) -> None:
    """With every chat provider down a message is QUEUED, then delivered exactly once."""
    app, dc = rig.app, rig.dc
    rig.server.burn(Burn.REFUSE, ["chat"])
    rig.echo_chat.fail = ProviderError("echo chat down")
    queued = app.chat.send(to=USER, text="queued hello", conversation="c-q")
    assert queued.via is Via.QUEUED
    assert queued.ticket
    assert app.health().outbox_depth == 1
    later = app.chat.send(to=USER, text="second", conversation="c-q")
    assert later.via is Via.QUEUED
    rig.server.restore()
    rig.echo_chat.fail = None
    app.breaker("kakao.talk").reset()
    app.domains.reset("kakao")
    assert app.drain(timeout=20)
    texts = [d.text for d in dc.chat.deliveries()] + [
        c.arguments["text"] for c in rig.echo_chat.calls if not c.failed
    ]
    assert texts.count("queued hello") == 1
    assert texts.count("second") == 1
    assert texts.index("queued hello") < texts.index("second")


def test_refused_connection_fails_a_charge_over_without_charging_twice(rig: Rig) -> None:
    """A charge that provably never reached KakaoPay is made once, at the alternate."""
    rig.server.burn(Burn.REFUSE, ["payment"])
    out = rig.app.payment.charge(order_id="o-ref", amount=2_000, user_id=USER)
    assert (out.via, out.provider) == (Via.ALTERNATE, "echo.pay")
    assert rig.dc.payment.charges("o-ref") == []
    again = rig.app.payment.charge(order_id="o-ref", amount=2_000, user_id=USER)
    assert again.value == out.value
    assert sum(1 for c in rig.echo_pay.calls if c.operation == "payment.charge") == 1


def test_ambiguous_charge_is_never_failed_over(tmp_path: Path) -> None:
    """A charge whose answer was lost after KakaoPay executed it is not sent anywhere else."""
    transport = FaultTransport(
        for_paths("/pay/online/v1/payment/subscription", Hang(delivered=True)),
        inner=httpx.HTTPTransport(),
        max_hang=5.0,
    )
    client = httpx.Client(transport=transport)
    r = Rig(tmp_path, http_client=client)
    try:
        with pytest.raises(OutcomeUnknown):
            r.app.payment.charge(order_id="o-amb", amount=5_000, user_id=USER)
        assert len(r.dc.payment.charges("o-amb")) == 1
        assert not any(c.operation == "payment.charge" for c in r.echo_pay.calls)
    finally:
        r.close()
        client.close()


def test_queued_charge_with_offline_queue_policy(rig: Rig) -> None:
    """OfflinePolicy.QUEUE persists a charge no provider can take, and makes it once later."""
    rig.server.burn(Burn.REFUSE, ["payment"])
    # Refused before sending: an error that may have executed would hold the order instead.
    rig.echo_pay.fail = ProviderConnectError("echo pay down", request_sent=False)
    out = rig.app.payment.charge(
        order_id="o-q", amount=700, user_id=USER, offline=OfflinePolicy.QUEUE
    )
    assert out.via is Via.QUEUED
    assert out.value.status is PaymentStatus.PENDING
    rig.server.restore()
    rig.echo_pay.fail = None
    rig.app.breaker("kakao.pay").reset()
    rig.app.breaker("echo.pay").reset()
    rig.app.domains.reset("kakao")
    assert rig.app.drain(timeout=20)
    kakao = len(rig.dc.payment.charges("o-q"))
    echo = sum(1 for c in rig.echo_pay.calls if c.operation == "payment.charge" and not c.failed)
    assert kakao + echo == 1


def test_business_refusal_is_raised_and_never_failed_over(rig: Rig) -> None:
    """An unknown recipient at Kakao is a refusal: raised at once, not sent elsewhere."""
    rig.app.directory.put("stranger", provider="kakao.talk", address="not-a-friend")
    rig.app.directory.put("stranger", provider="echo.chat", address="stranger@echo")
    with pytest.raises(Declined):
        rig.app.chat.send(to="stranger", text="hi")
    assert not rig.echo_chat.calls


def test_breaker_events_reach_listeners(rig: Rig) -> None:
    """Breaker state changes are published through app.on."""
    seen: list[StateChange] = []
    rig.app.on(StateChange, seen.append)
    rig.server.burn(Burn.REFUSE, ["mobility"])
    for _ in range(4):
        rig.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    # Estimates are hedged: the Kakao try that loses the race to the alternate finishes
    # (and opens the breaker) in the background.
    assert _wait_for(
        lambda: any(c.name == "kakao.mobility" and c.new.value == "open" for c in seen), 10
    )


def test_bad_input_is_refused_before_any_call(rig: Rig) -> None:
    """Empty text, a non-Place origin and a negative amount raise ValueError naming them."""
    with pytest.raises(ValueError, match="text"):
        rig.app.chat.send(to=USER, text="")
    with pytest.raises(ValueError, match="origin"):
        rig.app.mobility.estimate(origin=(1, 2), destination=CITY_HALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount"):
        rig.app.payment.charge(order_id="o-bad", amount=-5, user_id=USER)
    assert not rig.echo_chat.calls


async def test_async_app_serves_the_same_example(tmp_path: Path) -> None:
    """AsyncSuperApp answers the section 5 example the same way, in-process."""
    dc = KakaoDataCenter()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=dc.app))
    kakao = dc.adapters("http://kakao.sim")
    echo_chat = EchoChat()
    async with AsyncSuperApp(
        identity=[kakao.login, EchoLogin()],
        chat=[kakao.talk, echo_chat],
        payment=[kakao.pay, EchoPay()],
        mobility=[kakao.mobility, EchoMobility()],
        state_dir=tmp_path / "state",
        http_client=client,
    ) as app:
        app.directory.put(USER, provider="kakao.talk", address=dc.credentials.friend_uuids[0])
        app.directory.put(USER, provider="echo.chat", address="minji@echo")
        sent = await app.chat.send(to=USER, text="async hello")
        assert (sent.via, sent.provider) == (Via.PRIMARY, "kakao.talk")
        estimate = await app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
        assert estimate.via is Via.PRIMARY
        session = await app.identity.complete_login(
            provider="kakao.login", code=dc.issue_code(nonce="an"), nonce="an"
        )
        assert session.value.provider == "kakao.login"
        dc.burn(capabilities=["chat"])
        failed_over = await app.chat.send(to=USER, text="during the fire")
        assert (failed_over.via, failed_over.provider) == (Via.ALTERNATE, "echo.chat")
    await client.aclose()
