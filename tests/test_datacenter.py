"""The simulated Kakao data center: in-process through ASGI, and on loopback behind proxies.

In-process tests drive the four Kakao adapters with ``arun_call`` over
``httpx.ASGITransport``; loopback tests (marked ``network``) drive them with ``run_call``
over a real uvicorn server with one fault proxy per service, and burn services one at a
time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from superapp_sdk._errors import (
    Declined,
    OperationTimeout,
    ProviderConnectError,
    ProviderError,
)
from superapp_sdk.capabilities._common import Capability, Money
from superapp_sdk.capabilities.chat import MessageReceipt
from superapp_sdk.capabilities.mobility import Place, RideStatus
from superapp_sdk.capabilities.payment import Approval, Payment, PaymentStatus
from superapp_sdk.providers._http import Call, arun_call, run_call
from superapp_sdk.providers.kakao import KakaoLogin, KakaoMobility, KakaoPay, KakaoTalk
from superapp_sdk.testing.kakao import (
    CAPABILITIES,
    Burn,
    DataCenterServer,
    Fire,
    KakaoAdapters,
    KakaoDataCenter,
)
from superapp_sdk.tokens import verify_id_token

T = TypeVar("T")

PANGYO = Place(37.402056, 127.108212, "Pangyo")
GANGNAM = Place(37.497942, 127.027621, "Gangnam")
SIM = "http://kakao.sim"


@pytest.fixture(scope="module")
def shared_dc() -> KakaoDataCenter:
    # One RSA key generation per module; tests that burn it restore it in `dc`.
    return KakaoDataCenter()


@pytest.fixture
def dc(shared_dc: KakaoDataCenter) -> Iterator[KakaoDataCenter]:
    yield shared_dc
    shared_dc.restore()


@pytest.fixture
async def client(dc: KakaoDataCenter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dc.app)) as http:
        yield http


@pytest.fixture
def kakao(dc: KakaoDataCenter) -> KakaoAdapters:
    return dc.adapters(SIM)


async def arun(client: httpx.AsyncClient, call: Call[T], operation: str = "op") -> T:
    return await arun_call(client, call, provider="kakao", operation=operation, timeout=5)


def send(kakao: KakaoAdapters, to: str, key: str) -> Call[MessageReceipt]:
    return kakao.talk.send(to=to, text="the fire is out", idempotency_key=key)


# -- the seeded setup ------------------------------------------------------------------


def test_adapters_are_the_kakao_adapters_in_the_kakao_domain(kakao: KakaoAdapters) -> None:
    """adapters() builds one adapter per capability, all in the "kakao" failure domain."""
    assert isinstance(kakao.login, KakaoLogin)
    assert isinstance(kakao.talk, KakaoTalk)
    assert isinstance(kakao.pay, KakaoPay)
    assert isinstance(kakao.mobility, KakaoMobility)
    domains = {a.failure_domain for a in (kakao.login, kakao.talk, kakao.pay, kakao.mobility)}
    assert domains == {"kakao"}


def test_adapters_point_at_each_host_prefix(kakao: KakaoAdapters) -> None:
    """Each adapter's base URL is the data center's URL plus its Kakao host prefix."""
    assert kakao.login.auth_base_url == f"{SIM}/kauth"
    assert kakao.login.api_base_url == f"{SIM}/kapi"
    assert kakao.talk.api_base_url == f"{SIM}/kapi"
    assert kakao.pay.pay_base_url == f"{SIM}/pay"
    assert kakao.mobility.mobility_base_url == f"{SIM}/mobility"


def test_credentials_repr_hides_secrets(dc: KakaoDataCenter) -> None:
    """The credentials' repr names the client and user but no secret."""
    text = repr(dc.credentials)
    assert dc.credentials.client_id in text
    for secret in (
        dc.credentials.client_secret,
        dc.credentials.pay_secret_key,
        dc.credentials.talk_access_token,
        dc.credentials.billing_key,
    ):
        assert secret not in text


def test_constructor_refuses_a_non_positive_hang() -> None:
    """hang_seconds must be > 0, and the error names the field."""
    with pytest.raises(ValueError, match="hang_seconds"):
        KakaoDataCenter(hang_seconds=0)


# -- each adapter in-process -------------------------------------------------------------


async def test_login_gives_a_verifiable_id_token(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """The browser step, the code exchange and the JWKS give an ID token for the user."""
    redirect = kakao.login.authorize_url(state="st", nonce="nc")
    answer = await client.get(redirect.url)
    assert answer.status_code == 302
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    tokens = await arun(client, kakao.login.exchange_code(code=code, nonce="nc"))
    jwks = await arun(client, kakao.login.jwks())
    assert tokens.id_token is not None
    claims = verify_id_token(
        tokens.id_token,
        jwks=jwks,
        issuer=kakao.login.issuer,
        audience=kakao.login.client_id,
        nonce="nc",
        now=dc.clock.time(),
    )
    assert claims.subject == dc.credentials.subject
    info = await arun(client, kakao.login.userinfo(access_token=tokens.access_token))
    assert info.email == dc.credentials.email


async def test_issue_code_is_redeemable(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """issue_code() hands out a code the seeded client can exchange once."""
    code = dc.issue_code(nonce="n-1")
    tokens = await arun(client, kakao.login.exchange_code(code=code, nonce="n-1"))
    assert tokens.id_token is not None
    with pytest.raises(Declined):
        await arun(client, kakao.login.exchange_code(code=code, nonce="n-1"))


async def test_talk_delivers_to_a_seeded_friend(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """A message to a seeded friend is delivered and recorded."""
    friend = dc.credentials.friend_uuids[0]
    before = len(dc.chat.deliveries(to=friend))
    receipt = await arun(client, send(kakao, friend, "m-talk"))
    assert receipt.to == friend
    assert len(dc.chat.deliveries(to=friend)) == before + 1


async def test_talk_refuses_a_stranger(client: httpx.AsyncClient, kakao: KakaoAdapters) -> None:
    """A message to someone who is not a friend is declined."""
    with pytest.raises(Declined, match="unknown recipient"):
        await arun(client, send(kakao, "not-a-friend", "m-stranger"))


async def test_pay_ready_and_approve(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """A one-time payment prepared, approved by the user and confirmed is charged."""
    user = dc.credentials.pay_user_id
    checkout = await arun(
        client,
        kakao.pay.ready(
            order_id="dc-order-1",
            amount=Money(12_000),
            item_name="Americano",
            user_id=user,
            return_url="https://app.example/pay/return",
            idempotency_key="k-ready-1",
        ),
    )
    token = dc.payment.authorize(checkout.provider_ref)
    approval = Approval(checkout.provider_ref, token, user, Money(12_000))
    payment = await arun(
        client,
        kakao.pay.approve(
            order_id="dc-order-1", approval=approval, user_id=user, idempotency_key="k-ap-1"
        ),
    )
    assert payment.status is PaymentStatus.APPROVED
    assert len(dc.payment.charges("dc-order-1")) == 1


async def test_pay_charges_the_seeded_billing_key(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """The seeded billing key charges the seeded user server-side."""
    payment = await arun(
        client,
        kakao.pay.charge(
            order_id="dc-order-2",
            amount=Money(5_000),
            item_name="Monthly pass",
            user_id=dc.credentials.pay_user_id,
            billing_key=dc.credentials.billing_key,
            idempotency_key="k-charge-2",
        ),
    )
    assert payment.status is PaymentStatus.APPROVED
    assert payment.amount == Money(5_000)


async def test_mobility_estimates_and_books(
    client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """The seeded REST key gets an estimate and a ride."""
    estimate = await arun(client, kakao.mobility.estimate(origin=PANGYO, destination=GANGNAM))
    assert estimate.distance_m > 10_000
    ride = await arun(
        client,
        kakao.mobility.request_ride(
            rider="user-minji", origin=PANGYO, destination=GANGNAM, idempotency_key="k-ride-1"
        ),
    )
    assert ride.status is RideStatus.REQUESTED


# -- burning in-process ------------------------------------------------------------------


async def test_burning_payment_leaves_chat_working(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """With KakaoPay answering 5xx, KakaoTalk still delivers."""
    dc.burn(Fire.ERROR_5XX, ["payment"])
    with pytest.raises(ProviderError) as caught:
        await arun(client, kakao.pay.status(order_id="o", provider_ref="T1"))
    assert caught.value.http_status == 503
    receipt = await arun(client, send(kakao, dc.credentials.friend_uuids[0], "m-burn-pay"))
    assert receipt is not None


async def test_burn_without_capabilities_burns_all_four(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """burn() with no capability sets every service on fire."""
    dc.burn()
    assert {dc.fire.mode(c) for c in CAPABILITIES} == {Fire.ERROR_5XX}
    with pytest.raises(ProviderError):
        await arun(client, kakao.login.jwks())
    with pytest.raises(ProviderError):
        await arun(client, kakao.mobility.estimate(origin=PANGYO, destination=GANGNAM))


async def test_restore_brings_a_burnt_service_back(
    dc: KakaoDataCenter, client: httpx.AsyncClient, kakao: KakaoAdapters
) -> None:
    """After restore() a burnt service answers again."""
    dc.burn(Fire.ERROR_5XX, [Capability.IDENTITY])
    with pytest.raises(ProviderError):
        await arun(client, kakao.login.jwks())
    dc.restore()
    jwks = await arun(client, kakao.login.jwks())
    assert jwks["keys"]


def test_burn_refuses_an_unknown_capability(dc: KakaoDataCenter) -> None:
    """A capability that is not one of the four is a ValueError, and nothing burns."""
    with pytest.raises(ValueError, match="capabilities"):
        dc.burn(Fire.ERROR_5XX, ["email"])
    assert {dc.fire.mode(c) for c in CAPABILITIES} == {Fire.NORMAL}


# -- on loopback, behind one proxy per service ---------------------------------------------


@pytest.fixture
def server(dc: KakaoDataCenter) -> Iterator[DataCenterServer]:
    with DataCenterServer(dc, shutdown_timeout=4) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as sync_client:
        yield sync_client


def run(http: httpx.Client, call: Call[T], timeout: float = 5.0) -> T:
    return run_call(http, call, provider="kakao", operation="op", timeout=timeout)


def charge(dc: KakaoDataCenter, kakao: KakaoAdapters, order_id: str) -> Call[Payment]:
    return kakao.pay.charge(
        order_id=order_id,
        amount=Money(3_000),
        item_name="Ride credit",
        user_id=dc.credentials.pay_user_id,
        billing_key=dc.credentials.billing_key,
        idempotency_key=f"k-{order_id}",
    )


@pytest.mark.network
def test_server_gives_each_service_its_own_proxy(server: DataCenterServer) -> None:
    """url_for() names four distinct loopback proxies, none of them the server itself."""
    urls = {server.url_for(c) for c in CAPABILITIES}
    assert len(urls) == 4
    assert server.url not in urls
    assert all(url.startswith("http://127.0.0.1:") for url in urls)


@pytest.mark.network
def test_server_adapters_reach_each_service_through_its_proxy(
    dc: KakaoDataCenter, server: DataCenterServer, http: httpx.Client
) -> None:
    """Each adapter works over the socket, and its base URL is its capability's proxy."""
    kakao = server.adapters()
    assert kakao.login.auth_base_url == f"{server.url_for('identity')}/kauth"
    assert kakao.login.api_base_url == f"{server.url_for('identity')}/kapi"
    redirect = kakao.login.authorize_url(state="s", nonce="n")
    code = parse_qs(urlsplit(http.get(redirect.url).headers["location"]).query)["code"][0]
    tokens = run(http, kakao.login.exchange_code(code=code, nonce="n"))
    assert run(http, kakao.login.userinfo(access_token=tokens.access_token)).subject == (
        dc.credentials.subject
    )
    assert run(http, send(kakao, dc.credentials.friend_uuids[1], "m-srv")) is not None
    assert run(http, charge(dc, kakao, "srv-order-1")).status is PaymentStatus.APPROVED
    assert run(http, kakao.mobility.estimate(origin=PANGYO, destination=GANGNAM)).live


@pytest.mark.network
def test_hanging_chat_proxy_times_out_chat_while_payment_works(
    dc: KakaoDataCenter, server: DataCenterServer, http: httpx.Client
) -> None:
    """Burn.HANG on chat makes a send time out at its timeout; KakaoPay still charges."""
    kakao = server.adapters()
    run(http, send(kakao, dc.credentials.friend_uuids[0], "m-warm"))  # a warm connection
    server.burn(Burn.HANG, ["chat"])
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        run(http, send(kakao, dc.credentials.friend_uuids[0], "m-hang"), timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0
    assert run(http, charge(dc, kakao, "srv-order-2")).status is PaymentStatus.APPROVED


@pytest.mark.network
def test_refusing_payment_proxy_proves_nothing_was_sent(
    dc: KakaoDataCenter, server: DataCenterServer, http: httpx.Client
) -> None:
    """Burn.REFUSE on payment gives ProviderConnectError with request_sent False."""
    kakao = server.adapters()
    server.burn(Burn.REFUSE, [Capability.PAYMENT])
    with pytest.raises(ProviderConnectError) as caught:
        run(http, charge(dc, kakao, "srv-order-3"))
    assert caught.value.request_sent is False
    assert dc.payment.charges("srv-order-3") == []
    assert run(http, send(kakao, dc.credentials.friend_uuids[0], "m-refuse")) is not None


@pytest.mark.network
def test_resetting_mobility_proxy_breaks_the_connection(
    server: DataCenterServer, http: httpx.Client
) -> None:
    """Burn.RESET on mobility gives ProviderConnectError."""
    kakao = server.adapters()
    server.burn(Burn.RESET, ["mobility"])
    with pytest.raises(ProviderConnectError):
        run(http, kakao.mobility.estimate(origin=PANGYO, destination=GANGNAM))


@pytest.mark.network
def test_fire_mode_over_the_server_answers_5xx_for_one_service(
    dc: KakaoDataCenter, server: DataCenterServer, http: httpx.Client
) -> None:
    """A Fire mode given to the server burns the app: KakaoPay 503, KakaoTalk fine."""
    kakao = server.adapters()
    server.burn(Fire.ERROR_5XX, ["payment"])
    with pytest.raises(ProviderError) as caught:
        run(http, charge(dc, kakao, "srv-order-4"))
    assert caught.value.http_status == 503
    assert run(http, send(kakao, dc.credentials.friend_uuids[0], "m-5xx")) is not None


@pytest.mark.network
def test_fire_hang_over_the_server_times_out() -> None:
    """Fire.HANG holds requests in the app; the client times out at its timeout."""
    dc = KakaoDataCenter(hang_seconds=1.0)
    with DataCenterServer(dc, shutdown_timeout=4) as server, httpx.Client() as http:
        kakao = server.adapters()
        server.burn(Fire.HANG, ["mobility"])
        with pytest.raises(OperationTimeout):
            run(http, kakao.mobility.estimate(origin=PANGYO, destination=GANGNAM), timeout=0.2)


@pytest.mark.network
def test_restore_brings_every_service_back(
    dc: KakaoDataCenter, server: DataCenterServer, http: httpx.Client
) -> None:
    """After restore(), a hanging chat proxy and a refusing payment proxy serve again."""
    kakao = server.adapters()
    server.burn(Burn.HANG, ["chat"])
    server.burn(Burn.REFUSE, ["payment"])
    with pytest.raises(ProviderConnectError):
        run(http, charge(dc, kakao, "srv-order-5"))
    server.restore()
    assert run(http, send(kakao, dc.credentials.friend_uuids[0], "m-back")) is not None
    assert run(http, charge(dc, kakao, "srv-order-5")).status is PaymentStatus.APPROVED


@pytest.mark.network
def test_server_stops_listening_on_exit(dc: KakaoDataCenter) -> None:
    """Leaving the with block closes every proxy and the server."""
    with DataCenterServer(dc, shutdown_timeout=4) as server:
        ports = [server.proxy(c).port for c in CAPABILITIES]
    for port in ports:
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))


def test_url_for_needs_a_started_server(dc: KakaoDataCenter) -> None:
    """url_for() before start is a RuntimeError, not a made-up URL."""
    with pytest.raises(RuntimeError, match="not started"):
        DataCenterServer(dc).url_for("chat")
