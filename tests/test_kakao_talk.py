"""KakaoTalk send flow driven with plain httpx.Response objects."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httpx
import pytest

from superapp_sdk._errors import (
    Declined,
    InvalidRequest,
    ProviderError,
    RateLimited,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability
from superapp_sdk.providers._http import Flow, arun_call
from superapp_sdk.providers.kakao.talk import KakaoTalk
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.kakao._asgi import App
from superapp_sdk.testing.kakao.chat import ChatState
from superapp_sdk.testing.kakao.chat import routes as chat_routes

T = TypeVar("T")


def talk(**overrides: Any) -> KakaoTalk:
    options: dict[str, Any] = {
        "access_token": "sender-token",
        "api_base_url": "http://sim/kapi",
        "clock": FakeClock(),
    }
    options.update(overrides)
    return KakaoTalk(**options)


def send(adapter: KakaoTalk | None = None, to: str = "uuid-1") -> Flow[Any]:
    return (adapter or talk()).send(to=to, text="hello", conversation="c1", idempotency_key="k1")


def drive(flow: Flow[T], response: httpx.Response) -> tuple[T, httpx.Request]:
    request = next(flow)
    try:
        flow.send(response)
    except StopIteration as stop:
        return stop.value, request
    raise AssertionError("flow asked for a second request")


def fails(flow: Flow[Any], response: httpx.Response) -> Exception:
    with pytest.raises(Exception) as info:
        drive(flow, response)
    return info.value


def kakao_error(status: int, code: int, msg: str = "error") -> httpx.Response:
    return httpx.Response(status, json={"msg": msg, "code": code})


OK = httpx.Response(200, json={"successful_receiver_uuids": ["uuid-1"]})


def test_adapter_identity_attributes() -> None:
    """Name, capability, failure domain; history is not an operation."""
    adapter = talk()
    assert adapter.name == "kakao.talk"
    assert adapter.capability is Capability.CHAT
    assert adapter.failure_domain == "kakao"
    assert adapter.operations == frozenset({"chat.send"})


def test_repr_hides_access_token() -> None:
    """The sender's token never appears in repr."""
    assert "sender-token" not in repr(talk())


def test_send_request_matches_kakao_document() -> None:
    """POST form with receiver_uuids JSON array and a text template, Bearer auth."""
    _receipt, request = drive(send(talk(link_url="https://app.example")), OK)
    assert request.method == "POST"
    assert str(request.url) == "http://sim/kapi/v1/api/talk/friends/message/default/send"
    assert request.headers["authorization"] == "Bearer sender-token"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
    assert json.loads(form["receiver_uuids"]) == ["uuid-1"]
    assert json.loads(form["template_object"]) == {
        "object_type": "text",
        "text": "hello",
        "link": {"web_url": "https://app.example", "mobile_web_url": "https://app.example"},
    }


def test_callable_access_token_is_read_per_send() -> None:
    """A token callable is consulted for each send, so refreshed tokens are used."""
    tokens = iter(["t1", "t2"])
    adapter = talk(access_token=lambda: next(tokens))
    assert next(send(adapter)).headers["authorization"] == "Bearer t1"
    assert next(send(adapter)).headers["authorization"] == "Bearer t2"


def test_success_yields_receipt_derived_from_idempotency_key() -> None:
    """Kakao returns no message id: the receipt's id comes from the idempotency key."""
    receipt, _request = drive(send(), OK)
    assert receipt.message_id == "kakao.talk:k1"
    assert (receipt.provider, receipt.to, receipt.conversation) == ("kakao.talk", "uuid-1", "c1")
    assert receipt.accepted_at == FakeClock().time()


def test_recipient_missing_from_successful_list_is_declined() -> None:
    """A 200 that does not list the recipient as successful is an unknown recipient."""
    error = fails(send(), httpx.Response(200, json={"successful_receiver_uuids": []}))
    assert isinstance(error, Declined)
    assert "unknown recipient" in str(error)


def test_failure_info_code_is_used_for_the_recipient() -> None:
    """failure_info naming our recipient with -530 says why."""
    body = {
        "successful_receiver_uuids": ["other"],
        "failure_info": [{"code": -530, "msg": "off", "receiver_uuids": ["uuid-1"]}],
    }
    error = fails(send(), httpx.Response(200, json=body))
    assert isinstance(error, Declined)
    assert error.code == "-530"


def test_not_a_friend_is_declined_unknown_recipient() -> None:
    """-502 (receiver is not the sender's friend) is an unknown recipient."""
    error = fails(send(), kakao_error(400, -502, "given receiver is not friend"))
    assert isinstance(error, Declined)
    assert "unknown recipient" in str(error)
    assert error.code == "-502"
    assert error.retryable is False


def test_invalid_receiver_uuid_is_declined_unknown_recipient() -> None:
    """-2 about receiver_uuids (not a uuid this app may message) is an unknown recipient."""
    error = fails(
        send(),
        kakao_error(
            400,
            -2,
            "Constraints on the parameter [receiver_uuids] are unsatisfied. "
            "Not allowed to send a message to some of receivers.",
        ),
    )
    assert isinstance(error, Declined)
    assert "unknown recipient" in str(error)


def test_other_invalid_parameter_is_invalid_request() -> None:
    """-2 about something else is the request's fault, not the recipient's."""
    error = fails(send(), kakao_error(400, -2, "template_object is invalid"))
    assert isinstance(error, InvalidRequest)
    assert error.code == "-2"


def test_receiver_refusing_messages_is_declined() -> None:
    """-530 (reception turned off) is a refusal."""
    error = fails(send(), kakao_error(400, -530))
    assert isinstance(error, Declined)
    assert "refuses" in str(error)


@pytest.mark.parametrize("code", [-531, -532, -533, -536])
def test_quota_errors_are_rate_limited(code: int) -> None:
    """Kakao's monthly and daily quotas are rate limits another channel may bypass."""
    error = fails(send(), kakao_error(400, code))
    assert isinstance(error, RateLimited)
    assert error.code == str(code)


def test_bad_token_is_unauthorized() -> None:
    """-401 with HTTP 401 is Unauthorized."""
    error = fails(send(), kakao_error(401, -401, "this access token does not exist"))
    assert isinstance(error, Unauthorized)


def test_missing_consent_is_unauthorized() -> None:
    """-402 with HTTP 403 (talk_message not consented) is Unauthorized."""
    error = fails(send(), kakao_error(403, -402, "insufficient scopes"))
    assert isinstance(error, Unauthorized)
    assert error.code == "-402"


def test_429_carries_retry_after() -> None:
    """HTTP 429 becomes RateLimited with Retry-After."""
    error = fails(send(), httpx.Response(429, headers={"Retry-After": "3"}, json={}))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 3.0


def test_html_502_is_a_provider_error() -> None:
    """An HTML gateway page is a retryable ProviderError."""
    error = fails(
        send(),
        httpx.Response(502, headers={"content-type": "text/html"}, content=b"<html>502</html>"),
    )
    assert isinstance(error, ProviderError)
    assert error.retryable


def test_malformed_json_success_is_a_provider_error() -> None:
    """A truncated 200 body is a ProviderError."""
    error = fails(send(), httpx.Response(200, content=b'{"successful_receiver_uu'))
    assert isinstance(error, ProviderError)


def test_missing_successful_list_is_a_provider_error() -> None:
    """A 200 without successful_receiver_uuids is unusable (never a half-built receipt)."""
    error = fails(send(), httpx.Response(200, json={"result": "ok"}))
    assert isinstance(error, ProviderError)
    assert "successful_receiver_uuids" in str(error)


@pytest.mark.parametrize("value", ["uuid-1", [1], {"uuid-1": True}])
def test_wrong_typed_successful_list_is_a_provider_error(value: object) -> None:
    """successful_receiver_uuids must be a list of strings."""
    error = fails(send(), httpx.Response(200, json={"successful_receiver_uuids": value}))
    assert isinstance(error, ProviderError)


def test_history_is_not_offered() -> None:
    """KakaoTalk has no history API."""
    with pytest.raises(NotImplementedError):
        talk().history("c1", limit=10)


def test_empty_idempotency_key_is_refused() -> None:
    """Every send needs an idempotency key."""
    with pytest.raises(ValueError, match="idempotency_key"):
        next(talk().send(to="u", text="t", conversation=None, idempotency_key=""))


# -- the simulated KakaoTalk API, through the adapter ------------------------------------


async def simulated_send(state: ChatState, to: str, text: str = "hi") -> Any:
    adapter = talk(api_base_url="http://sim/kapi")
    transport = httpx.ASGITransport(app=App(chat_routes(state)))
    async with httpx.AsyncClient(transport=transport) as client:
        flow = adapter.send(to=to, text=text, conversation=None, idempotency_key="k")
        return await arun_call(client, flow, provider=adapter.name, operation="chat.send")


def sim_state(**options: Any) -> ChatState:
    state = ChatState(clock=FakeClock(), **options)
    state.add_account("sender-token", user="me", friends=["uuid-1", "uuid-2"])
    return state


async def test_simulator_daily_quota_is_rate_limited() -> None:
    """The simulator's -532 after the daily quota reaches the caller as RateLimited."""
    state = sim_state(daily_quota=1)
    await simulated_send(state, "uuid-1")
    with pytest.raises(RateLimited) as info:
        await simulated_send(state, "uuid-2")
    assert info.value.code == "-532"
    assert [d.receiver_uuid for d in state.deliveries()] == ["uuid-1"]


async def test_simulator_receiver_refusing_messages_is_declined() -> None:
    """A receiver with reception off gets nothing and the send is declined (-530)."""
    state = sim_state()
    state.refuse_messages("uuid-1")
    with pytest.raises(Declined) as info:
        await simulated_send(state, "uuid-1")
    assert info.value.code == "-530"
    assert state.deliveries() == []


async def test_simulator_refuses_text_over_template_limit() -> None:
    """Text beyond the text template's 200 characters is an invalid request (-2)."""
    with pytest.raises(InvalidRequest):
        await simulated_send(sim_state(), "uuid-1", text="x" * 201)


async def test_simulator_records_the_template() -> None:
    """Each delivery keeps sender, receiver and the template sent."""
    state = sim_state()
    await simulated_send(state, "uuid-2", text="안녕")
    (delivery,) = state.deliveries(to="uuid-2")
    assert (delivery.sender, delivery.text) == ("me", "안녕")
    assert delivery.template["object_type"] == "text"
