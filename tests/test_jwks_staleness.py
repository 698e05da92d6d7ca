"""identity.verify uses the key-set cache's limits: keys past ``max_stale`` are never
used, and refetches (for an unknown ``kid`` too) are rate-limited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from superapp_sdk import SuperApp, Unauthorized, Unavailable, Via
from superapp_sdk._errors import ProviderConnectError
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.echo import EchoLogin
from superapp_sdk.tokens import JwksCacheOptions

DAY = 86_400.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[SuperApp, EchoLogin, FakeClock]]:
    clock = FakeClock(start=1_800_000_000.0)
    login = EchoLogin(clock=clock)
    app = SuperApp(
        identity=[login],
        state_dir=tmp_path / "state",
        timer=clock,
        jwks=JwksCacheOptions(refresh_after=3600.0, max_stale=7 * DAY, min_refetch_interval=60.0),
    )
    try:
        yield app, login, clock
    finally:
        app.close()


def _token(login: EchoLogin, clock: FakeClock, *, kid: str | None = None) -> str:
    now = clock.time()
    header = None if kid is None else {"kid": kid}
    return login.sign(
        {"iss": login.issuer, "aud": login.client_id, "sub": "u-1", "iat": now, "exp": now + 600},
        header=header,
    )


def _fetches(login: EchoLogin) -> int:
    return sum(1 for c in login.calls if c.operation == "identity.jwks")


def test_keys_past_max_stale_are_never_used(rig: tuple[SuperApp, EchoLogin, FakeClock]) -> None:
    """While the key-set endpoint fails, the cached keys verify for max_stale and no
    longer (they verified 365 days after the endpoint started failing)."""
    app, login, clock = rig
    assert app.identity.verify(_token(login, clock)).via is Via.PRIMARY
    login.fail = ProviderConnectError("down", request_sent=False)
    clock.advance(6 * DAY)
    token = _token(login, clock)  # signing is local; the key-set endpoint is down
    out = app.identity.verify(token)
    assert out.via is Via.CACHE
    assert out.stale_for is not None
    assert out.stale_for >= 6 * DAY
    clock.advance(2 * DAY)
    with pytest.raises(Unavailable, match="max_stale"):
        app.identity.verify(token)


def test_unknown_kids_refetch_at_most_once_a_minute(
    rig: tuple[SuperApp, EchoLogin, FakeClock],
) -> None:
    """Twenty tokens with unknown kids in a second cause at most one refetch."""
    app, login, clock = rig
    app.identity.verify(_token(login, clock))
    before = _fetches(login)
    for i in range(20):
        with pytest.raises(Unauthorized):
            app.identity.verify(_token(login, clock, kid=f"forged-{i}"))
        clock.advance(0.05)
    assert _fetches(login) - before <= 1
