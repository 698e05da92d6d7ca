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
from superapp_sdk.testing.kakao import DataCenterServer, KakaoDataCenter

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
