"""KakaoLogin flows driven with plain httpx.Response objects."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

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
from superapp_sdk.providers.kakao.login import KakaoLogin
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.kakao._asgi import App
from superapp_sdk.testing.kakao.identity import IdentityState
from superapp_sdk.testing.kakao.identity import routes as identity_routes

T = TypeVar("T")

REDIRECT = "https://app.example/callback"


def login(**overrides: Any) -> KakaoLogin:
    options: dict[str, Any] = {
        "client_id": "rest-key",
        "client_secret": "s3cret",
        "redirect_uri": REDIRECT,
        "auth_base_url": "http://sim/kauth",
        "api_base_url": "http://sim/kapi",
    }
    options.update(overrides)
    return KakaoLogin(**options)


def drive(flow: Flow[T], response: httpx.Response) -> tuple[T, httpx.Request]:
    """Run a one-request flow with ``response``; return the result and the request."""
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


def form_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


TOKENS = {
    "token_type": "bearer",
    "access_token": "AT",
    "expires_in": 21599,
    "refresh_token": "RT",
    "refresh_token_expires_in": 5183999,
    "scope": "openid account_email",
    "id_token": "a.b.c",
}


def kauth_error(status: int, error: str, code: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": error, "error_description": "desc", "error_code": code}
    )


# -- identity and authorize URL ------------------------------------------------------------


def test_adapter_identity_attributes() -> None:
    """Name, capability, failure domain and operations follow the adapter contract."""
    adapter = login()
    assert adapter.name == "kakao.login"
    assert adapter.capability is Capability.IDENTITY
    assert adapter.failure_domain == "kakao"
    assert "identity.exchange_code" in adapter.operations
    assert adapter.issuer == "https://kauth.kakao.com"


def test_repr_hides_client_secret() -> None:
    """The client secret never appears in repr."""
    assert "s3cret" not in repr(login())
    assert "http://sim/kauth" in repr(login())


def test_authorize_url_carries_every_parameter() -> None:
    """The URL is Kakao's authorize endpoint with client, redirect, code flow, state, nonce."""
    redirect = login(scopes=("openid", "account_email")).authorize_url(state="st", nonce="nc")
    parts = urlsplit(redirect.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://sim/kauth/oauth/authorize"
    assert query == {
        "client_id": "rest-key",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "state": "st",
        "nonce": "nc",
        "scope": "openid,account_email",
    }
    assert (redirect.state, redirect.nonce, redirect.provider) == ("st", "nc", "kakao.login")


def test_authorize_url_without_redirect_uri_is_an_error() -> None:
    """Without a default or explicit redirect URI the call is refused."""
    with pytest.raises(ValueError, match="redirect_uri"):
        login(redirect_uri=None).authorize_url(state="s", nonce="n")


# -- exchange_code -------------------------------------------------------------------------


def test_exchange_code_request_is_a_form_post() -> None:
    """The token request is a form POST with grant, client, redirect, code and secret."""
    _tokens, request = drive(login().exchange_code(code="C1"), httpx.Response(200, json=TOKENS))
    assert request.method == "POST"
    assert str(request.url) == "http://sim/kauth/oauth/token"
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert form_of(request) == {
        "grant_type": "authorization_code",
        "client_id": "rest-key",
        "redirect_uri": REDIRECT,
        "code": "C1",
        "client_secret": "s3cret",
    }


def test_exchange_code_without_secret_sends_none() -> None:
    """An app without a client secret does not send the field."""
    _tokens, request = drive(
        login(client_secret=None).exchange_code(code="C1"), httpx.Response(200, json=TOKENS)
    )
    assert "client_secret" not in form_of(request)


def test_exchange_code_parses_the_token_set() -> None:
    """Every documented field lands in the TokenSet."""
    tokens, _request = drive(
        login().exchange_code(code="C1", nonce="n"), httpx.Response(200, json=TOKENS)
    )
    assert tokens.access_token == "AT"
    assert tokens.refresh_token == "RT"
    assert tokens.id_token == "a.b.c"
    assert tokens.expires_in == 21599
    assert tokens.refresh_token_expires_in == 5183999
    assert tokens.scopes == frozenset({"openid", "account_email"})


def test_openid_login_without_id_token_returns_tokens_without_one() -> None:
    """An answer lacking id_token (OpenID Connect off, "openid" not granted) is a valid
    token answer: the code is spent, so the adapter returns it and the app reports the
    configuration (a malformed-answer error was taken as "may have executed" and held)."""
    body = {k: v for k, v in TOKENS.items() if k != "id_token"}
    flow = login().exchange_code(code="C", nonce="n")
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(httpx.Response(200, json=body))
    assert done.value.value.id_token is None


def test_invalid_grant_is_declined() -> None:
    """KOE320 (unknown or used code) is a refusal of this login, not a fault."""
    error = fails(login().exchange_code(code="C"), kauth_error(400, "invalid_grant", "KOE320"))
    assert isinstance(error, Declined)
    assert error.code == "KOE320"
    assert error.retryable is False


def test_redirect_mismatch_is_declined() -> None:
    """KOE303 (redirect URI mismatch) is invalid_grant too."""
    error = fails(login().exchange_code(code="C"), kauth_error(400, "invalid_grant", "KOE303"))
    assert isinstance(error, Declined)
    assert error.code == "KOE303"


def test_bad_client_credentials_are_unauthorized() -> None:
    """KOE010 invalid_client is a credentials problem."""
    error = fails(login().exchange_code(code="C"), kauth_error(401, "invalid_client", "KOE010"))
    assert isinstance(error, Unauthorized)
    assert error.code == "KOE010"


def test_invalid_request_is_invalid_request() -> None:
    """A malformed token request is reported as InvalidRequest."""
    error = fails(login().exchange_code(code="C"), kauth_error(400, "invalid_request", "KOE001"))
    assert isinstance(error, InvalidRequest)


def test_rate_limit_carries_retry_after() -> None:
    """429 becomes RateLimited with the Retry-After seconds."""
    error = fails(
        login().exchange_code(code="C"),
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "too_many"}),
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0


def test_html_502_page_is_a_provider_error() -> None:
    """An HTML error page from a proxy is a retryable ProviderError."""
    error = fails(
        login().exchange_code(code="C"),
        httpx.Response(
            502, headers={"content-type": "text/html"}, content=b"<html>Bad Gateway</html>"
        ),
    )
    assert isinstance(error, ProviderError)
    assert error.http_status == 502
    assert error.retryable


def test_non_json_400_is_invalid_request() -> None:
    """A 4xx without a JSON error body is still typed."""
    error = fails(
        login().exchange_code(code="C"),
        httpx.Response(400, headers={"content-type": "text/html"}, content=b"<html>no</html>"),
    )
    assert isinstance(error, InvalidRequest)


def test_malformed_json_is_a_provider_error() -> None:
    """A truncated JSON body is a ProviderError, not a crash."""
    error = fails(
        login().exchange_code(code="C"),
        httpx.Response(200, content=b'{"access_token": "AT", "expi'),
    )
    assert isinstance(error, ProviderError)
    assert "malformed JSON" in str(error)


def test_json_array_answer_is_a_provider_error() -> None:
    """A JSON value that is not an object is unusable."""
    error = fails(login().exchange_code(code="C"), httpx.Response(200, json=[TOKENS]))
    assert isinstance(error, ProviderError)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("expires_in", "21599"),
        ("expires_in", True),
        ("access_token", 12),
        ("refresh_token", ["RT"]),
        ("id_token", {"jwt": 1}),
    ],
)
def test_wrong_field_types_are_provider_errors(name: str, value: object) -> None:
    """A field of the wrong type is named in the ProviderError."""
    body = {**TOKENS, name: value}
    error = fails(login().exchange_code(code="C"), httpx.Response(200, json=body))
    assert isinstance(error, ProviderError)
    assert name in str(error)


@pytest.mark.parametrize("name", ["access_token", "expires_in", "token_type"])
def test_missing_fields_are_provider_errors(name: str) -> None:
    """A missing required field is named in the ProviderError."""
    body = {k: v for k, v in TOKENS.items() if k != name}
    error = fails(login().exchange_code(code="C"), httpx.Response(200, json=body))
    assert isinstance(error, ProviderError)
    assert name in str(error)


def test_non_bearer_token_type_is_a_provider_error() -> None:
    """Only bearer tokens are usable with Kakao's APIs."""
    body = {**TOKENS, "token_type": "mac"}
    error = fails(login().exchange_code(code="C"), httpx.Response(200, json=body))
    assert isinstance(error, ProviderError)
    assert "token_type" in str(error)


# -- refresh -------------------------------------------------------------------------------


def test_refresh_request_form() -> None:
    """The refresh grant sends client, refresh token and secret."""
    _tokens, request = drive(login().refresh(refresh_token="RT"), httpx.Response(200, json=TOKENS))
    assert form_of(request) == {
        "grant_type": "refresh_token",
        "client_id": "rest-key",
        "refresh_token": "RT",
        "client_secret": "s3cret",
    }


def test_refresh_without_new_refresh_token_keeps_none() -> None:
    """Kakao returns a refresh token only near expiry; absence is not an error."""
    body = {"token_type": "bearer", "access_token": "AT2", "expires_in": 21599}
    tokens, _request = drive(login().refresh(refresh_token="RT"), httpx.Response(200, json=body))
    assert tokens.access_token == "AT2"
    assert tokens.refresh_token is None


def test_dead_refresh_token_is_declined() -> None:
    """KOE322 (expired or invalid refresh token) means: log in again."""
    error = fails(login().refresh(refresh_token="RT"), kauth_error(400, "invalid_grant", "KOE322"))
    assert isinstance(error, Declined)
    assert error.code == "KOE322"


# -- userinfo ------------------------------------------------------------------------------


def test_userinfo_sends_bearer_and_parses_profile() -> None:
    """GET kapi /v1/oidc/userinfo with the user's token; nickname becomes name."""
    info, request = drive(
        login().userinfo(access_token="AT"),
        httpx.Response(200, json={"sub": "4242", "nickname": "Kim", "email": "k@example.com"}),
    )
    assert request.method == "GET"
    assert str(request.url) == "http://sim/kapi/v1/oidc/userinfo"
    assert request.headers["authorization"] == "Bearer AT"
    assert (info.subject, info.name, info.email) == ("4242", "Kim", "k@example.com")


def test_userinfo_with_bad_token_is_unauthorized() -> None:
    """Kakao's -401 answer becomes Unauthorized carrying the code."""
    error = fails(
        login().userinfo(access_token="AT"),
        httpx.Response(401, json={"msg": "this access token does not exist", "code": -401}),
    )
    assert isinstance(error, Unauthorized)
    assert error.code == "-401"
    assert "does not exist" in str(error)


def test_userinfo_without_sub_is_a_provider_error() -> None:
    """A profile without sub is unusable."""
    error = fails(
        login().userinfo(access_token="AT"), httpx.Response(200, json={"nickname": "Kim"})
    )
    assert isinstance(error, ProviderError)
    assert "sub" in str(error)


def test_userinfo_numeric_sub_is_a_provider_error() -> None:
    """sub must be a string (OpenID Connect Core 5.1), not a number."""
    error = fails(login().userinfo(access_token="AT"), httpx.Response(200, json={"sub": 4242}))
    assert isinstance(error, ProviderError)


# -- jwks ----------------------------------------------------------------------------------


def test_jwks_is_fetched_from_kauth() -> None:
    """The key set comes from kauth's well-known JWKS path."""
    keys = {"keys": [{"kty": "RSA", "kid": "k", "n": "x", "e": "AQAB"}]}
    document, request = drive(login().jwks(), httpx.Response(200, json=keys))
    assert str(request.url) == "http://sim/kauth/.well-known/jwks.json"
    assert document == keys


@pytest.mark.parametrize(
    "body", [{"keys": "nope"}, {"keys": [{"kid": "no-kty"}]}, {"keys": [1]}, {}]
)
def test_malformed_jwks_is_a_provider_error(body: dict[str, Any]) -> None:
    """A key set without a list of typed keys is unusable."""
    error = fails(login().jwks(), httpx.Response(200, content=json.dumps(body).encode()))
    assert isinstance(error, ProviderError)


def test_jwks_5xx_is_a_retryable_provider_error() -> None:
    """A 503 from kauth is a retryable ProviderError."""
    error = fails(login().jwks(), httpx.Response(503, json={"msg": "down", "code": -7}))
    assert isinstance(error, ProviderError)
    assert error.retryable


# -- the simulated Kakao Login, through the adapter -----------------------------------------


class Sim:
    """The simulated Kakao Login behind an in-process ASGI transport."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.state = IdentityState(clock=self.clock)
        self.state.register_client("rest-key", client_secret="s3cret", redirect_uris=[REDIRECT])
        self.state.add_user("42", nickname="Kim")
        self.app = App(identity_routes(self.state))
        self.login = login()

    async def run(self, flow: Flow[T]) -> T:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport) as client:
            return await arun_call(client, flow, provider="kakao.login", operation="identity.op")

    async def get(self, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            return await client.get(path)


async def test_simulator_code_expires() -> None:
    """An authorization code older than its lifetime is declined (KOE320)."""
    sim = Sim()
    code = sim.state.issue_code("42", "n", REDIRECT, "rest-key")
    sim.clock.advance(601)
    with pytest.raises(Declined) as info:
        await sim.run(sim.login.exchange_code(code=code))
    assert info.value.code == "KOE320"


async def test_simulator_rotates_refresh_token_only_near_expiry() -> None:
    """A refresh returns a new refresh token only when less than a month is left."""
    sim = Sim()
    tokens = await sim.run(
        sim.login.exchange_code(code=sim.state.issue_code("42", "n", REDIRECT, "rest-key"))
    )
    assert tokens.refresh_token is not None
    early = await sim.run(sim.login.refresh(refresh_token=tokens.refresh_token))
    assert early.refresh_token is None
    sim.clock.advance(40 * 86400)
    late = await sim.run(sim.login.refresh(refresh_token=tokens.refresh_token))
    assert late.refresh_token is not None
    with pytest.raises(Declined):
        await sim.run(sim.login.refresh(refresh_token=tokens.refresh_token))


async def test_simulator_revoked_access_token_is_unauthorized() -> None:
    """userinfo after revocation answers -401."""
    sim = Sim()
    tokens = await sim.run(
        sim.login.exchange_code(code=sim.state.issue_code("42", "n", REDIRECT, "rest-key"))
    )
    sim.state.revoke(tokens.access_token)
    with pytest.raises(Unauthorized) as info:
        await sim.run(sim.login.userinfo(access_token=tokens.access_token))
    assert info.value.code == "-401"


async def test_simulator_unregistered_redirect_uri_is_refused() -> None:
    """The authorize endpoint refuses a redirect URI the app did not register (KOE006)."""
    sim = Sim()
    url = login(redirect_uri="https://evil.example/cb").authorize_url(state="s", nonce="n").url
    response = await sim.get(url.removeprefix("http://sim"))
    assert response.status_code == 400
    assert response.json()["error_code"] == "KOE006"


async def test_simulator_publishes_openid_configuration() -> None:
    """Discovery names Kakao's issuer, JWKS URI and RS256."""
    sim = Sim()
    document = (await sim.get("/kauth/.well-known/openid-configuration")).json()
    assert document["issuer"] == "https://kauth.kakao.com"
    assert document["jwks_uri"] == "https://kauth.kakao.com/.well-known/jwks.json"
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]


async def test_simulator_refuses_unsupported_grant_type() -> None:
    """A grant type Kakao does not offer is an invalid request."""
    sim = Sim()
    transport = httpx.ASGITransport(app=sim.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.post(
            "/kauth/oauth/token", data={"grant_type": "password", "client_id": "rest-key"}
        )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


async def test_simulator_retired_key_disappears_from_jwks() -> None:
    """Rotating with retire_old publishes only the new key."""
    sim = Sim()
    old = sim.state.signing_kid
    new = sim.state.rotate_keys(retire_old=True)
    kids = [key["kid"] for key in (await sim.run(sim.login.jwks()))["keys"]]
    assert kids == [new]
    assert old not in kids
