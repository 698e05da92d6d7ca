"""Tooling for lost answers: faults that let the provider execute a write and lose its
answer, and the provider-side records that show what executed.

Each fault is checked on both sides: the simulated provider's own record shows the write
executed (once), and the client sees the loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import httpx
import pytest

from superapp_sdk.testing import (
    AsyncFaultTransport,
    Error,
    FakeClock,
    FaultTransport,
    Lost,
    sequence,
)
from superapp_sdk.testing.kakao import Burn, DataCenterServer, KakaoDataCenter

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
