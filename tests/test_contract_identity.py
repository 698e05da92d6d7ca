"""Contract suite for every identity provider, run against its simulator.

Each provider is wired to its simulator by a rig (``RIGS``; alternates append theirs).
Every test runs twice: in-process through ``httpx.ASGITransport`` with the async driver,
and over a real loopback socket (uvicorn) with the sync driver. Tests speak to the
provider only through the :class:`IdentityProvider` Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from superapp_sdk._errors import Declined, Unauthorized
from superapp_sdk.capabilities.identity import IdentityProvider
from superapp_sdk.providers._http import Call
from superapp_sdk.providers.kakao.login import KakaoLogin
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.kakao import identity as kakao_identity
from superapp_sdk.testing.kakao._asgi import App
from superapp_sdk.tokens import verify_id_token
from tests._contract import TRANSPORTS, Reach, reach

T = TypeVar("T")
REDIRECT = "https://app.example/callback"


@dataclass
class IdentityRig:
    """One identity provider and its simulator.

    Attributes:
        app: the simulator, an ASGI app.
        make: builds the provider for a simulator base URL (``bad_secret`` for a
            provider configured with a wrong client secret).
        login_code: performs the browser part of a login (given the HTTP client, the
            provider, a nonce and a state) and returns the authorization code.
        subject: the user the browser logs in as.
        now: wall-clock time of the simulator, for token checks.
        rotate_keys: makes the simulator sign with a new key, when it can.
    """

    app: App
    make: Callable[..., IdentityProvider]
    login_code: Callable[[httpx.AsyncClient, IdentityProvider, str, str], Awaitable[str]]
    subject: str
    now: Callable[[], float]
    rotate_keys: Callable[[], object] | None = None


def kakao_rig() -> IdentityRig:
    clock = FakeClock()
    state = kakao_identity.IdentityState(clock=clock)
    state.register_client("rest-key", client_secret="s3cret", redirect_uris=[REDIRECT])
    state.add_user("3141592653", nickname="Kim", email="kim@example.com")

    def make(base: str, *, bad_secret: bool = False) -> IdentityProvider:
        return KakaoLogin(
            client_id="rest-key",
            client_secret="wrong" if bad_secret else "s3cret",
            redirect_uri=REDIRECT,
            auth_base_url=f"{base}/kauth",
            api_base_url=f"{base}/kapi",
        )

    async def login_code(
        client: httpx.AsyncClient, provider: IdentityProvider, nonce: str, state_value: str
    ) -> str:
        redirect = provider.authorize_url(state=state_value, nonce=nonce)
        response = await client.get(redirect.url)
        assert response.status_code == 302
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["state"] == [state_value]
        return query["code"][0]

    return IdentityRig(
        app=App(kakao_identity.routes(state)),
        make=make,
        login_code=login_code,
        subject="3141592653",
        now=clock.time,
        rotate_keys=lambda: state.rotate_keys(),
    )


RIGS: dict[str, Callable[[], IdentityRig]] = {"kakao.login": kakao_rig}


class Bench:
    """A rig plus a way to reach its simulator: in-process (async) or loopback (sync)."""

    def __init__(self, rig: IdentityRig, where: Reach) -> None:
        self.rig = rig
        self.where = where
        self.base = where.base
        self.client = where.client
        self.provider = rig.make(where.base)

    async def run(self, call: Call[T], operation: str = "identity.op") -> T:
        return await self.where.run(call, provider=self.provider.name, operation=operation)

    async def login(self, nonce: str = "nonce-1") -> Any:
        code = await self.rig.login_code(self.client, self.provider, nonce, "state-1")
        return await self.run(self.provider.exchange_code(code=code, nonce=nonce))

    async def claims(self, id_token: str | None, nonce: str = "nonce-1") -> Any:
        assert id_token is not None
        jwks = await self.run(self.provider.jwks())
        return verify_id_token(
            id_token,
            jwks=jwks,
            issuer=self.provider.issuer,
            audience=self.provider.client_id,
            nonce=nonce,
            now=self.rig.now(),
        )


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest) -> IdentityRig:
    return RIGS[request.param]()


@pytest.fixture(params=TRANSPORTS)
async def bench(rig: IdentityRig, request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    async with reach(rig.app, request.param) as where:
        yield Bench(rig, where)


async def test_provider_declares_its_identity(bench: Bench) -> None:
    """The provider names its capability, domain, issuer, client and operations."""
    provider = bench.provider
    assert isinstance(provider, IdentityProvider)
    assert provider.capability.value == "identity"
    assert provider.failure_domain
    assert provider.issuer
    assert provider.client_id
    assert {"identity.exchange_code", "identity.jwks"} <= provider.operations


async def test_authorize_url_carries_state_and_nonce(bench: Bench) -> None:
    """The login redirect names our state and nonce, without any network call."""
    redirect = bench.provider.authorize_url(state="st-9", nonce="nc-9")
    query = parse_qs(urlsplit(redirect.url).query)
    assert query["state"] == ["st-9"]
    assert query["nonce"] == ["nc-9"]
    assert redirect.provider == bench.provider.name


async def test_login_yields_a_verifiable_id_token(bench: Bench) -> None:
    """A full login gives an ID token that verifies offline with the provider's JWKS."""
    tokens = await bench.login()
    claims = await bench.claims(tokens.id_token)
    assert claims.subject == bench.rig.subject
    assert claims.audience == bench.provider.client_id
    assert claims.nonce == "nonce-1"


async def test_id_token_of_another_login_is_refused(bench: Bench) -> None:
    """The ID token of a login started with another nonce does not verify."""
    tokens = await bench.login(nonce="nonce-A")
    with pytest.raises(Unauthorized, match="nonce"):
        await bench.claims(tokens.id_token, nonce="nonce-B")


async def test_userinfo_matches_the_id_token_subject(bench: Bench) -> None:
    """userinfo with the access token names the same subject as the ID token."""
    tokens = await bench.login()
    info = await bench.run(bench.provider.userinfo(access_token=tokens.access_token))
    assert info.subject == bench.rig.subject


async def test_refresh_gives_a_working_access_token(bench: Bench) -> None:
    """A refreshed access token works for userinfo."""
    tokens = await bench.login()
    assert tokens.refresh_token is not None
    fresh = await bench.run(bench.provider.refresh(refresh_token=tokens.refresh_token))
    assert fresh.access_token != tokens.access_token
    info = await bench.run(bench.provider.userinfo(access_token=fresh.access_token))
    assert info.subject == bench.rig.subject


async def test_code_cannot_be_redeemed_twice(bench: Bench) -> None:
    """A used authorization code is declined (RFC 6749 4.1.2)."""
    code = await bench.rig.login_code(bench.client, bench.provider, "n", "s")
    await bench.run(bench.provider.exchange_code(code=code, nonce="n"))
    with pytest.raises(Declined):
        await bench.run(bench.provider.exchange_code(code=code, nonce="n"))


async def test_unknown_code_is_declined(bench: Bench) -> None:
    """A code the provider never issued is declined, never failed over."""
    with pytest.raises(Declined) as info:
        await bench.run(bench.provider.exchange_code(code="never-issued"))
    assert info.value.retryable is False


async def test_code_for_another_redirect_uri_is_declined(bench: Bench) -> None:
    """A code is bound to the redirect URI it was issued for."""
    code = await bench.rig.login_code(bench.client, bench.provider, "n", "s")
    with pytest.raises(Declined):
        await bench.run(
            bench.provider.exchange_code(code=code, redirect_uri="https://evil.example/cb")
        )


async def test_bogus_refresh_token_is_declined(bench: Bench) -> None:
    """A refresh token the provider does not know is declined."""
    with pytest.raises(Declined):
        await bench.run(bench.provider.refresh(refresh_token="not-a-refresh-token"))


async def test_bogus_access_token_is_unauthorized(bench: Bench) -> None:
    """userinfo with an unknown access token is Unauthorized."""
    with pytest.raises(Unauthorized):
        await bench.run(bench.provider.userinfo(access_token="not-a-token"))


async def test_wrong_client_secret_is_unauthorized(bench: Bench) -> None:
    """A provider configured with a wrong secret is refused as Unauthorized."""
    code = await bench.rig.login_code(bench.client, bench.provider, "n", "s")
    wrong = bench.rig.make(bench.base, bad_secret=True)
    with pytest.raises(Unauthorized):
        await bench.run(wrong.exchange_code(code=code))


async def test_rotated_key_needs_a_jwks_refetch(bench: Bench) -> None:
    """After key rotation, old key sets miss the new kid; a refetched set verifies."""
    if bench.rig.rotate_keys is None:
        pytest.skip("this simulator cannot rotate keys")
    old_jwks = await bench.run(bench.provider.jwks())
    bench.rig.rotate_keys()
    tokens = await bench.login()
    assert tokens.id_token is not None
    with pytest.raises(Unauthorized) as info:
        verify_id_token(
            tokens.id_token,
            jwks=old_jwks,
            issuer=bench.provider.issuer,
            audience=bench.provider.client_id,
            now=bench.rig.now(),
        )
    assert info.value.code == "id_token_kid"
    assert (await bench.claims(tokens.id_token)).subject == bench.rig.subject
