"""Tooling for lost answers: faults that let the provider execute a write and lose its
answer, and the provider-side records that show what executed.

Each fault is checked on both sides: the simulated provider's own record shows the write
executed (once), and the client sees the loss.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from superapp_sdk._errors import Declined, IdempotencyConflict, ProviderConnectError
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.capabilities.payment import Payment
from superapp_sdk.providers._http import DirectCall
from superapp_sdk.testing import (
    AsyncFaultTransport,
    Error,
    FakeClock,
    FaultTransport,
    Lost,
    sequence,
)
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay
from superapp_sdk.testing.kakao import Burn, DataCenterServer, Effect, Fire, KakaoDataCenter

SIM = "http://kakao.sim"
TIMEOUT = httpx.Timeout(5.0, read=2.0)

_orders = itertools.count(1)


@pytest.fixture(scope="module")
def dc() -> KakaoDataCenter:
    # One data center per module (its RSA key is slow to make); each test charges its own
    # order ids and reads only their effects.
    return KakaoDataCenter()


@pytest.fixture(scope="module")
def server(dc: KakaoDataCenter) -> Iterator[DataCenterServer]:
    with DataCenterServer(dc, shutdown_timeout=4) as running:
        yield running


@pytest.fixture(autouse=True)
def _restored(dc: KakaoDataCenter) -> Iterator[None]:
    yield
    dc.restore()


def new_order() -> str:
    return f"lost-{next(_orders)}"


def charge_request(dc: KakaoDataCenter, base_url: str, order_id: str) -> httpx.Request:
    """A KakaoPay subscription charge of 3,000 KRW with the seeded billing key."""
    creds = dc.credentials
    return httpx.Request(
        "POST",
        f"{base_url}/pay/online/v1/payment/subscription",
        headers={"Authorization": f"SECRET_KEY {creds.pay_secret_key}"},
        json={
            "cid": creds.pay_subscription_cid,
            "sid": creds.billing_key,
            "partner_order_id": order_id,
            "partner_user_id": creds.pay_user_id,
            "item_name": "Ride credit",
            "quantity": 1,
            "total_amount": 3_000,
            "tax_free_amount": 0,
        },
    )


def charged(dc: KakaoDataCenter, order_id: str) -> int:
    """How many times KakaoPay executed a charge of ``order_id``."""
    return len(dc.payment.charges(order_id))


def outcome(send: Callable[[], httpx.Response]) -> int | str:
    """The status code, or the name of the httpx exception raised."""
    try:
        return send().status_code
    except httpx.RequestError as exc:
        return type(exc).__name__


# -- FaultTransport: Lost ----------------------------------------------------------------

#: fault, what the client sees, what the FakeClock slept (read timeout 2 s)
LOSSES = [
    pytest.param(Lost("reset"), "ReadError", [], id="reset"),
    pytest.param(Lost("hang"), "ReadTimeout", [2.0], id="hang"),
    pytest.param(Lost("500"), 500, [], id="500"),
    pytest.param(Lost("late", seconds=1.5), 200, [1.5], id="late-in-time"),
    pytest.param(Lost("late", seconds=9.0), "ReadTimeout", [2.0], id="late-after-timeout"),
    pytest.param(Lost("refuse_next"), "ReadError", [], id="refuse-next"),
]


@pytest.mark.network
@pytest.mark.parametrize(("fault", "seen", "slept"), LOSSES)
def test_lost_executes_then_loses_the_answer_sync(
    dc: KakaoDataCenter, server: DataCenterServer, fault: Lost, seen: int | str, slept: list[float]
) -> None:
    """Over a real HTTP transport the charge executes once and the client sees the loss."""
    clock, order = FakeClock(), new_order()
    transport = FaultTransport([fault], inner=httpx.HTTPTransport(), clock=clock)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        assert outcome(lambda: client.send(charge_request(dc, server.url, order))) == seen
    assert charged(dc, order) == 1
    assert (len(transport.forwarded), clock.slept) == (1, slept)


@pytest.mark.parametrize(("fault", "seen", "slept"), LOSSES)
async def test_lost_executes_then_loses_the_answer_async(
    dc: KakaoDataCenter, fault: Lost, seen: int | str, slept: list[float]
) -> None:
    """Over ASGI the charge executes once and the async client sees the loss."""
    clock, order = FakeClock(), new_order()
    inner = httpx.ASGITransport(app=dc.app)
    transport = AsyncFaultTransport([fault], inner=inner, clock=clock)
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
        try:
            got: int | str = (await client.send(charge_request(dc, SIM, order))).status_code
        except httpx.RequestError as exc:
            got = type(exc).__name__
    assert got == seen
    assert charged(dc, order) == 1
    assert (len(transport.forwarded), clock.slept) == (1, slept)


@pytest.mark.network
def test_late_answer_is_the_real_answer(dc: KakaoDataCenter, server: DataCenterServer) -> None:
    """Lost('late') within the timeout hands back the server's own answer, body intact."""
    order = new_order()
    transport = FaultTransport(
        [Lost("late", seconds=0.5)], inner=httpx.HTTPTransport(), clock=FakeClock()
    )
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        answer = client.send(charge_request(dc, server.url, order)).json()
    (executed,) = dc.payment.charges(order)
    assert (answer["partner_order_id"], answer["tid"]) == (order, executed.tid)


async def test_lost_500_answers_an_html_page(dc: KakaoDataCenter) -> None:
    """Lost('500') replaces the JSON answer with an HTML 500 page."""
    transport = AsyncFaultTransport([Lost("500")], inner=httpx.ASGITransport(app=dc.app))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.send(charge_request(dc, SIM, new_order()))
    assert response.headers["content-type"] == "text/html"
    assert b"500 Internal Server Error" in response.content


@pytest.mark.network
def test_refuse_next_refuses_the_retry_whatever_the_schedule(
    dc: KakaoDataCenter, server: DataCenterServer
) -> None:
    """After Lost('refuse_next') the next request is refused unsent, then traffic passes."""
    order = new_order()
    transport = FaultTransport(sequence(Lost("refuse_next")), inner=httpx.HTTPTransport())
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        seen = [outcome(lambda: client.send(charge_request(dc, server.url, order)))]
        assert charged(dc, order) == 1
        seen += [outcome(lambda: client.send(charge_request(dc, server.url, order)))]
        assert charged(dc, order) == 1
        seen += [outcome(lambda: client.send(charge_request(dc, server.url, order)))]
    assert seen == ["ReadError", "ConnectError", 200]
    assert charged(dc, order) == 2
    assert len(transport.forwarded) == 2
    assert transport.count(Error) == 1


async def test_refuse_next_refuses_the_retry_async(dc: KakaoDataCenter) -> None:
    """The async transport refuses the request after Lost('refuse_next') without sending it."""
    order = new_order()
    transport = AsyncFaultTransport([Lost("refuse_next")], inner=httpx.ASGITransport(app=dc.app))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ReadError):
            await client.send(charge_request(dc, SIM, order))
        with pytest.raises(httpx.ConnectError, match="refused"):
            await client.send(charge_request(dc, SIM, order))
    assert charged(dc, order) == 1
    assert len(transport.forwarded) == 1


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Lost("lost"), "how"),  # type: ignore[arg-type]
        (lambda: Lost("late"), "seconds"),
        (lambda: Lost("late", seconds=-1), "seconds"),
        (lambda: Lost("reset", seconds=1), "seconds"),
    ],
)
def test_lost_options_are_validated(build: Callable[[], Lost], field: str) -> None:
    """An unknown ``how``, or ``seconds`` missing or misplaced, is refused by name."""
    with pytest.raises(ValueError, match=field):
        build()


def test_lost_repr() -> None:
    """Lost's repr reads as the call that made it."""
    assert repr(Lost("reset")) == "Lost('reset')"
    assert repr(Lost("late", seconds=2.5)) == "Lost('late', seconds=2.5)"


# -- FaultProxy: LOSE_RESET and LOSE_HANG over real sockets ----------------------------------


@pytest.fixture
def proxied(server: DataCenterServer) -> Iterator[DataCenterServer]:
    yield server
    server.restore()


@pytest.mark.network
def test_lose_reset_delivers_then_resets_the_client(
    dc: KakaoDataCenter, proxied: DataCenterServer
) -> None:
    """Burn.LOSE_RESET: KakaoPay charges, and the client's connection is reset."""
    order, lost_before = new_order(), proxied.proxy("payment").lost
    proxied.burn(Burn.LOSE_RESET, ["payment"])
    with httpx.Client(timeout=TIMEOUT) as client, pytest.raises(httpx.ReadError):
        client.send(charge_request(dc, proxied.url_for("payment"), order))
    assert charged(dc, order) == 1
    assert proxied.proxy("payment").lost == lost_before + 1


@pytest.mark.network
def test_lose_hang_delivers_then_stays_silent(
    dc: KakaoDataCenter, proxied: DataCenterServer
) -> None:
    """Burn.LOSE_HANG: KakaoPay charges, and the client waits out its read timeout."""
    order = new_order()
    proxied.burn(Burn.LOSE_HANG, ["payment"])
    timeout = httpx.Timeout(5.0, read=0.3)
    with httpx.Client(timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.send(charge_request(dc, proxied.url_for("payment"), order))
    assert charged(dc, order) == 1


@pytest.mark.network
def test_lose_reset_applies_to_a_warm_connection(
    dc: KakaoDataCenter, proxied: DataCenterServer
) -> None:
    """A pooled keep-alive connection loses its next answer once the mode is set."""
    first, second = new_order(), new_order()
    url, connections_before = proxied.url_for("payment"), proxied.proxy("payment").connections
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.send(charge_request(dc, url, first)).status_code == 200
        proxied.burn(Burn.LOSE_RESET, ["payment"])
        with pytest.raises(httpx.ReadError):
            client.send(charge_request(dc, url, second))
    assert (charged(dc, first), charged(dc, second)) == (1, 1)
    assert proxied.proxy("payment").connections == connections_before + 1


@pytest.mark.network
@pytest.mark.parametrize(
    ("mode", "seen"), [(Burn.LOSE_RESET, "ReadError"), (Burn.LOSE_HANG, "ReadTimeout")]
)
def test_proxy_loses_only_the_next_count_answers(
    dc: KakaoDataCenter, proxied: DataCenterServer, mode: Burn, seen: str
) -> None:
    """set(mode, count=1) loses one answer, then the proxy passes traffic again."""
    orders = [new_order(), new_order()]
    proxy = proxied.proxy("payment")
    proxy.set(mode, count=1)
    with httpx.Client(timeout=httpx.Timeout(5.0, read=0.3)) as client:
        got = [outcome(lambda o=o: client.send(charge_request(dc, proxy.url, o))) for o in orders]
    assert got == [seen, 200]
    assert [charged(dc, o) for o in orders] == [1, 1]
    assert proxy.mode is Burn.PASS


@pytest.mark.network
def test_lose_modes_leave_other_services_alone(
    dc: KakaoDataCenter, proxied: DataCenterServer
) -> None:
    """A losing payment proxy does not touch chat's proxy."""
    proxied.burn(Burn.LOSE_RESET, ["payment"])
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(
            f"{proxied.url_for('chat')}/kapi/v1/api/talk/friends/message/default/send",
            headers={"Authorization": f"Bearer {dc.credentials.talk_access_token}"},
            data={
                "receiver_uuids": f'["{dc.credentials.friend_uuids[0]}"]',
                "template_object": '{"object_type": "text", "text": "hi", "link": {}}',
            },
        )
    assert response.status_code == 200


@pytest.mark.network
@pytest.mark.parametrize(
    ("mode", "count", "field"),
    [(Burn.PASS, 1, "LOSE_"), (Burn.HANG, 2, "LOSE_"), (Burn.LOSE_RESET, 0, "count")],
)
def test_proxy_count_is_validated(
    proxied: DataCenterServer, mode: Burn, count: int, field: str
) -> None:
    """count needs a LOSE_ mode and must be at least 1."""
    with pytest.raises(ValueError, match=field):
        proxied.proxy("payment").set(mode, count=count)


# -- simulators: apply then lose, in the app ------------------------------------------------


@pytest.fixture
async def client(dc: KakaoDataCenter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dc.app)) as http:
        yield http


def order_lookup(dc: KakaoDataCenter, tid: str) -> httpx.Request:
    """KakaoPay's ``order`` lookup of ``tid`` (a read)."""
    creds = dc.credentials
    return httpx.Request(
        "POST",
        f"{SIM}/pay/online/v1/payment/order",
        headers={"Authorization": f"SECRET_KEY {creds.pay_secret_key}"},
        json={"cid": creds.pay_subscription_cid, "tid": tid},
    )


def cancel_request(dc: KakaoDataCenter, tid: str, amount: int) -> httpx.Request:
    """A KakaoPay cancel (refund) of ``amount`` of ``tid``."""
    creds = dc.credentials
    return httpx.Request(
        "POST",
        f"{SIM}/pay/online/v1/payment/cancel",
        headers={"Authorization": f"SECRET_KEY {creds.pay_secret_key}"},
        json={
            "cid": creds.pay_subscription_cid,
            "tid": tid,
            "cancel_amount": amount,
            "cancel_tax_free_amount": 0,
        },
    )


def send_request(dc: KakaoDataCenter, text: str) -> httpx.Request:
    """A KakaoTalk message to the seeded user's first friend."""
    template = {"object_type": "text", "text": text, "link": {}}
    return httpx.Request(
        "POST",
        f"{SIM}/kapi/v1/api/talk/friends/message/default/send",
        headers={"Authorization": f"Bearer {dc.credentials.talk_access_token}"},
        data={
            "receiver_uuids": json.dumps([dc.credentials.friend_uuids[0]]),
            "template_object": json.dumps(template),
        },
    )


def ride_request(key: str) -> httpx.Request:
    """A Kakao Mobility ride request under ``key``."""
    return httpx.Request(
        "POST",
        f"{SIM}/mobility/v1/rides",
        headers={"Authorization": "KakaoAK sim-kakao-rest-key", "Idempotency-Key": key},
        json={
            "rider": "user-minji",
            "origin": {"lat": 37.402056, "lng": 127.108212},
            "destination": {"lat": 37.497942, "lng": 127.027621},
        },
    )


async def test_apply_500_charges_and_answers_an_html_500(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """Fire.APPLY_500: the charge executes, and the answer is an HTML 500 page."""
    order = new_order()
    dc.burn(Fire.APPLY_500, ["payment"])
    response = await client.send(charge_request(dc, SIM, order))
    assert (response.status_code, response.headers["content-type"]) == (500, "text/html")
    assert [e.kind for e in dc.payment.effects(order_id=order)] == ["payment.charge"]


async def test_apply_modes_serve_reads_normally(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """KakaoPay's order lookup is a read: an APPLY_ mode answers it as usual."""
    order = new_order()
    tid = (await client.send(charge_request(dc, SIM, order))).json()["tid"]
    dc.burn(Fire.APPLY_500, ["payment"])
    answer = await client.send(order_lookup(dc, tid))
    assert (answer.status_code, answer.json()["status"]) == (200, "SUCCESS_PAYMENT")


async def test_apply_500_delivers_a_chat_message(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """Fire.APPLY_500 on chat: the message is delivered, and the sender gets a 500."""
    dc.burn(Fire.APPLY_500, [Capability.CHAT])
    response = await client.send(send_request(dc, "apply-500"))
    assert response.status_code == 500
    (effect,) = dc.chat.effects("chat.send")[-1:]
    assert (effect.to, effect.text, effect.key) == (
        dc.credentials.friend_uuids[0],
        "apply-500",
        None,
    )


async def test_apply_late_answers_the_real_answer_late(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """Fire.APPLY_LATE answers the real answer once slow_seconds have passed."""
    order, slow = new_order(), dc.fire.slow_seconds
    dc.fire.slow_seconds = 0.05
    try:
        dc.burn(Fire.APPLY_LATE, ["payment"])
        response = await client.send(charge_request(dc, SIM, order))
    finally:
        dc.fire.slow_seconds = slow
    (charge,) = dc.payment.charges(order)
    assert (response.status_code, response.json()["tid"]) == (200, charge.tid)


@pytest.mark.network
def test_apply_late_executes_before_the_client_gives_up(
    dc: KakaoDataCenter, proxied: DataCenterServer
) -> None:
    """Over loopback, a client with a shorter timeout than APPLY_LATE times out on a write
    that already ran."""
    order, slow = new_order(), dc.fire.slow_seconds
    dc.fire.slow_seconds = 0.5
    try:
        proxied.burn(Fire.APPLY_LATE, ["payment"])
        with httpx.Client(timeout=httpx.Timeout(5.0, read=0.1)) as http:
            with pytest.raises(httpx.ReadTimeout):
                http.send(charge_request(dc, proxied.url_for("payment"), order))
            assert charged(dc, order) == 1
    finally:
        dc.fire.slow_seconds = slow


async def test_lose_next_loses_only_the_next_writes(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """lose_next(count=2) fails two writes after running them; reads between neither see
    nor spend it, and the third write answers normally."""
    first, orders = new_order(), [new_order(), new_order()]
    tid = (await client.send(charge_request(dc, SIM, first))).json()["tid"]
    dc.lose_next("payment", Fire.APPLY_500, count=2)
    assert (await client.send(order_lookup(dc, tid))).status_code == 200
    statuses = [(await client.send(charge_request(dc, SIM, o))).status_code for o in orders]
    assert dc.fire.owed("payment") == 0
    assert statuses == [500, 500]
    assert (await client.send(charge_request(dc, SIM, new_order()))).status_code == 200
    assert [charged(dc, o) for o in orders] == [1, 1]


async def test_lose_next_comes_before_the_steady_mode(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """An owed loss is spent first; the steady mode applies after it."""
    order = new_order()
    dc.burn(Fire.ERROR_5XX, ["payment"])
    dc.lose_next("payment", Fire.APPLY_500)
    assert (await client.send(charge_request(dc, SIM, order))).status_code == 500
    assert (await client.send(charge_request(dc, SIM, new_order()))).status_code == 503
    assert charged(dc, order) == 1


def test_restore_drops_owed_losses(dc: KakaoDataCenter) -> None:
    """restore() forgets the losses lose_next still owed."""
    dc.lose_next(Capability.CHAT, Fire.APPLY_LATE, count=3)
    dc.restore()
    assert dc.fire.owed("chat") == 0


@pytest.mark.parametrize(
    ("mode", "count", "match"),
    [(Fire.ERROR_5XX, 1, "mode"), (Fire.APPLY_500, 0, "count"), (Fire.APPLY_500, True, "count")],
)
def test_lose_next_is_validated(dc: KakaoDataCenter, mode: Fire, count: int, match: str) -> None:
    """lose_next takes an APPLY_ mode and a count of at least 1."""
    with pytest.raises(ValueError, match=match):
        dc.lose_next("payment", mode, count=count)


def test_lose_next_refuses_an_unknown_capability(dc: KakaoDataCenter) -> None:
    """An unknown capability name is refused, as burn() refuses it."""
    with pytest.raises(ValueError, match="capabilities"):
        dc.lose_next("email", Fire.APPLY_500)


@pytest.mark.network
def test_server_lose_next_takes_fire_and_burn_modes(
    dc: KakaoDataCenter, proxied: DataCenterServer
) -> None:
    """DataCenterServer.lose_next loses in the app (Fire) or at the proxy (Burn)."""
    orders = [new_order() for _ in range(3)]
    url = proxied.url_for("payment")
    seen: list[int | str] = []
    with httpx.Client(timeout=TIMEOUT) as http:
        for order, mode in zip(orders, (Fire.APPLY_500, Burn.LOSE_RESET, None), strict=True):
            if mode is not None:
                proxied.lose_next("payment", mode)
            seen.append(outcome(lambda o=order: http.send(charge_request(dc, url, o))))
    assert seen == [500, "ReadError", 200]
    assert [charged(dc, o) for o in orders] == [1, 1, 1]
    with pytest.raises(ValueError, match="LOSE_RESET"):
        proxied.lose_next("payment", Burn.HANG)


def test_write_routes_are_the_state_changing_endpoints(dc: KakaoDataCenter) -> None:
    """Exactly the endpoints that change a provider's state are marked as writes."""
    writes = {f"{r.method} {r.pattern}" for r in dc.app.routes if r.write}
    assert writes == {
        "POST /kauth/oauth/token",
        "POST /kapi/v1/api/talk/friends/message/default/send",
        "POST /pay/online/v1/payment/ready",
        "POST /pay/online/v1/payment/approve",
        "POST /pay/online/v1/payment/cancel",
        "POST /pay/online/v1/payment/subscription",
        "POST /mobility/v1/rides",
        "POST /mobility/v1/rides/{ride_id}/cancel",
        "POST /mobility/v1/rentals/{rental_id}/end",
    }


# -- simulators: effects -------------------------------------------------------------------


async def test_payment_effects_list_charges_and_refunds(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """Charges and cancels are effects with order id, tid and amount; a refused cancel is
    not, so refunds never exceed what was captured."""
    order = new_order()
    tid = (await client.send(charge_request(dc, SIM, order))).json()["tid"]
    for amount in (1_000, 2_000, 1):
        await client.send(cancel_request(dc, tid, amount))
    effects = dc.payment.effects(order_id=order)
    assert [(e.kind, e.ref, e.amount) for e in effects] == [
        ("payment.charge", tid, 3_000),
        ("payment.cancel", tid, 1_000),
        ("payment.cancel", tid, 2_000),
    ]
    captured = sum(e.amount or 0 for e in dc.payment.effects("payment.charge", order_id=order))
    refunded = sum(e.amount or 0 for e in dc.payment.effects("payment.cancel", order_id=order))
    assert refunded <= captured


async def test_mobility_effects_carry_the_key_and_skip_replays(
    dc: KakaoDataCenter, client: httpx.AsyncClient
) -> None:
    """A ride request is an effect under its Idempotency-Key; its replay adds none."""
    key = f"ride-{new_order()}"
    dc.lose_next("mobility", Fire.APPLY_500)
    assert (await client.send(ride_request(key))).status_code == 500
    replay = await client.send(ride_request(key))
    assert replay.headers["idempotent-replayed"] == "true"
    (effect,) = dc.mobility.effects("mobility.request_ride", key=key)
    assert (effect.ref, effect.rider) == (replay.json()["id"], "user-minji")


def test_effects_refuse_an_unknown_kind(dc: KakaoDataCenter) -> None:
    """effects() names the kinds it knows when given another."""
    with pytest.raises(ValueError, match=r"payment\.charge"):
        dc.payment.effects("payment.charged")


def test_effect_kind_is_validated() -> None:
    """An Effect of an unknown kind cannot be made."""
    with pytest.raises(ValueError, match="kind"):
        Effect("payment.refund", at=0.0)


# -- echo doubles: effects, dedupe="key", lose_next -----------------------------------------

PANGYO = Place(37.402056, 127.108212, "Pangyo")
GANGNAM = Place(37.497942, 127.027621, "Gangnam")


def echo_charge(
    pay: EchoPay, billing_key: str, key: str, amount: int = 5_000
) -> DirectCall[Payment]:
    return pay.charge(
        order_id="o-1",
        amount=Money(amount),
        item_name="Ride credit",
        user_id="u-1",
        billing_key=billing_key,
        idempotency_key=key,
    )


def test_echo_pay_by_default_refuses_a_second_charge_of_an_order() -> None:
    """Default EchoPay declares no deduplication and refuses an order charged before."""
    pay = EchoPay()
    billing_key = pay.issue_billing_key("u-1")
    echo_charge(pay, billing_key, "k-1").run(None)
    with pytest.raises(Declined, match="already charged"):
        echo_charge(pay, billing_key, "k-2").run(None)
    assert pay.deduplicates == frozenset()
    assert [e.key for e in pay.effects("payment.charge", order_id="o-1")] == ["k-1"]


def test_echo_pay_dedupe_key_replays_a_repeated_key() -> None:
    """dedupe='key': the same key and payload answer the stored payment, executing once."""
    pay = EchoPay(dedupe="key")
    billing_key = pay.issue_billing_key("u-1")
    first = echo_charge(pay, billing_key, "k-1").run(None)
    assert echo_charge(pay, billing_key, "k-1").run(None) == first
    assert len(pay.effects("payment.charge", order_id="o-1")) == 1
    assert [c.idempotency_key for c in pay.calls] == ["k-1", "k-1"]


def test_echo_pay_dedupe_key_executes_again_for_a_new_key() -> None:
    """dedupe='key': a new key charges the same order again, as Stripe and Toss would."""
    pay = EchoPay(dedupe="key")
    billing_key = pay.issue_billing_key("u-1")
    first = echo_charge(pay, billing_key, "k-1").run(None)
    second = echo_charge(pay, billing_key, "k-2").run(None)
    assert first.provider_ref != second.provider_ref
    charges = pay.effects("payment.charge", order_id="o-1")
    assert [(e.key, e.ref, e.amount) for e in charges] == [
        ("k-1", first.provider_ref, 5_000),
        ("k-2", second.provider_ref, 5_000),
    ]


def test_echo_pay_dedupe_key_conflicts_on_another_payload() -> None:
    """dedupe='key': one key with a different amount is a conflict, not a charge."""
    pay = EchoPay(dedupe="key")
    billing_key = pay.issue_billing_key("u-1")
    echo_charge(pay, billing_key, "k-1").run(None)
    with pytest.raises(IdempotencyConflict):
        echo_charge(pay, billing_key, "k-1", amount=6_000).run(None)
    assert len(pay.effects("payment.charge")) == 1


def test_echo_deduplicates_names_the_keyed_writes() -> None:
    """dedupe='key' names each double's writes in deduplicates; the default names none."""
    assert EchoPay(dedupe="key").deduplicates == {
        "payment.ready",
        "payment.approve",
        "payment.charge",
        "payment.cancel",
    }
    assert EchoChat(dedupe="key").deduplicates == {"chat.send"}
    assert EchoMobility(dedupe="key").deduplicates == {
        "mobility.request_ride",
        "mobility.cancel_ride",
        "mobility.end_rental",
    }
    defaults = (EchoPay(), EchoChat(), EchoMobility(), EchoLogin())
    assert {p.deduplicates for p in defaults} == {frozenset()}


def test_echo_dedupe_is_validated() -> None:
    """dedupe takes None or 'key' and names itself otherwise."""
    with pytest.raises(ValueError, match="dedupe"):
        EchoPay(dedupe="order")  # type: ignore[arg-type]


def test_echo_pay_refunds_are_effects_and_never_exceed_the_charge() -> None:
    """Each refund is a payment.cancel effect; one above what is left executes nothing."""
    pay = EchoPay()
    payment = echo_charge(pay, pay.issue_billing_key("u-1"), "k-1").run(None)
    assert payment.provider_ref is not None

    def refund(key: str, amount: int) -> DirectCall[Payment]:
        return pay.cancel(
            order_id="o-1",
            provider_ref=payment.provider_ref or "",
            amount=Money(amount),
            reason="changed mind",
            idempotency_key=key,
        )

    refund("c-1", 3_000).run(None)
    refund("c-2", 1_000).run(None)
    with pytest.raises(Declined, match="exceeds"):
        refund("c-3", 2_000).run(None)
    refunds = pay.effects("payment.cancel", order_id="o-1")
    assert [(e.key, e.amount) for e in refunds] == [("c-1", 3_000), ("c-2", 1_000)]
    assert sum(e.amount or 0 for e in refunds) <= 5_000


def test_echo_chat_effects_carry_recipient_text_and_key() -> None:
    """Each EchoChat delivery is an effect with its key; a repeated key delivers nothing."""
    chat = EchoChat(dedupe="key")
    for _ in range(2):
        chat.send(to="lee@example.com", text="your ride is here", idempotency_key="m-1").run(None)
    (effect,) = chat.effects("chat.send")
    assert (effect.to, effect.text, effect.key) == ("lee@example.com", "your ride is here", "m-1")


def test_echo_mobility_effects_list_rides_and_rental_ends() -> None:
    """EchoMobility lists booked rides and ended rentals with their keys, replays not."""
    mobility = EchoMobility(clock=FakeClock())
    mobility.start_rental("bike-1", started_at=0.0)
    for _ in range(2):
        ride = mobility.request_ride(
            rider="minji", origin=PANGYO, destination=GANGNAM, idempotency_key="r-1"
        ).run(None)
    receipt = mobility.end_rental(
        rental_id="bike-1", location=GANGNAM, at=600.0, idempotency_key="e-1"
    ).run(None)
    assert [(e.kind, e.key, e.ref) for e in mobility.effects()] == [
        ("mobility.request_ride", "r-1", ride.ride_id),
        ("mobility.end_rental", "e-1", "bike-1"),
    ]
    assert mobility.effects("mobility.end_rental")[0].amount == receipt.fare.amount


def test_echo_lose_next_executes_then_raises() -> None:
    """lose_next(): the charge executes, the caller gets a sent-request connection error."""
    pay = EchoPay()
    billing_key = pay.issue_billing_key("u-1")
    pay.lose_next()
    with pytest.raises(ProviderConnectError) as caught:
        echo_charge(pay, billing_key, "k-1").run(None)
    assert caught.value.request_sent is True
    assert len(pay.effects("payment.charge")) == 1
    assert [(c.failed, c.lost) for c in pay.calls] == [(False, True)]


def test_echo_lose_next_then_same_key_retry_replays_with_dedupe_key() -> None:
    """After a lost answer, a retry under the same key gets the stored payment, once."""
    pay = EchoPay(dedupe="key")
    billing_key = pay.issue_billing_key("u-1")
    pay.lose_next(operation="payment.charge")
    with pytest.raises(ProviderConnectError):
        echo_charge(pay, billing_key, "k-1").run(None)
    retried = echo_charge(pay, billing_key, "k-1").run(None)
    (effect,) = pay.effects("payment.charge")
    assert retried.provider_ref == effect.ref


async def test_echo_lose_next_counts_and_filters_by_operation() -> None:
    """lose_next(count=2, operation=...) loses two sends only; other operations answer."""
    chat = EchoChat()
    chat.lose_next(RuntimeError("lost"), count=2, operation="chat.send")
    assert await chat.history("lee", limit=5).arun(None) == []
    for key in ("m-1", "m-2"):
        with pytest.raises(RuntimeError, match="lost"):
            await chat.send(to="lee", text="hi", idempotency_key=key).arun(None)
    await chat.send(to="lee", text="hi", idempotency_key="m-3").arun(None)
    assert [e.key for e in chat.effects()] == ["m-1", "m-2", "m-3"]
    assert [c.lost for c in chat.calls] == [False, True, True, False]


def test_echo_fail_wins_over_a_pending_loss() -> None:
    """While fail is set nothing executes and the pending loss is kept for later."""
    chat = EchoChat()
    chat.lose_next()
    chat.fail = ProviderConnectError("down", request_sent=False)
    with pytest.raises(ProviderConnectError, match="down"):
        chat.send(to="lee", text="hi", idempotency_key="m-1").run(None)
    chat.fail = None
    with pytest.raises(ProviderConnectError, match="answer lost"):
        chat.send(to="lee", text="hi", idempotency_key="m-1").run(None)
    assert len(chat.effects()) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"count": 0}, "count"), ({"operation": "chat.sent"}, "operation")],
)
def test_echo_lose_next_is_validated(kwargs: dict[str, object], field: str) -> None:
    """lose_next refuses a count below 1 and an operation the provider does not have."""
    with pytest.raises(ValueError, match=field):
        EchoChat().lose_next(**kwargs)  # type: ignore[arg-type]
