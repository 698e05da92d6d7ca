"""Hostile tokens seen accepted or crashing on main: every one is refused by
``identity.verify`` with Unauthorized and a code, never accepted, never another error."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from superapp_sdk import SuperApp, Unauthorized
from superapp_sdk.testing.echo import EchoLogin


@pytest.fixture
def app_login(tmp_path: Path) -> Iterator[tuple[SuperApp, EchoLogin]]:
    login = EchoLogin(redirect_uri="https://app.example/login/echo/callback")
    app = SuperApp(identity=[login], state_dir=tmp_path / "state")
    try:
        yield app, login
    finally:
        app.close()


def _good(login: EchoLogin) -> str:
    now = time.time()
    return login.sign(
        {"iss": login.issuer, "aud": login.client_id, "sub": "u-1", "iat": now, "exp": now + 600}
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_the_genuine_token_is_accepted(app_login: tuple[SuperApp, EchoLogin]) -> None:
    """The control: the unmodified token verifies."""
    app, login = app_login
    assert app.identity.verify(_good(login)).value.subject == "u-1"


def _attacks(token: str) -> dict[str, str]:
    header, payload, signature = token.split(".")
    raw_sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    standard = base64.b64encode(raw_sig).rstrip(b"=").decode()
    # Deeper than the JSON parser recurses, and still under MAX_TOKEN_CHARS.
    deep = "[" * 5_000 + "]" * 5_000
    deep_object = _b64(('{"a":' * 2_000 + "1" + "}" * 2_000).encode())
    return {
        # The signature in the standard alphabet (+ and /) instead of base64url.
        "standard alphabet": f"{header}.{payload}.{standard}"
        if standard != signature
        else f"{header}.{payload}.{signature.replace('-', '+').replace('_', '/')}+",
        "newline in payload": f"{header}.{payload[:10]}\n{payload[10:]}.{signature}",
        "padded signature": f"{header}.{payload}.{signature}==",
        "space in signature": f"{header}.{payload}.{signature[:5]} {signature[5:]}",
        "deep header": f"{_b64(deep.encode())}.{payload}.{signature}",
        "deep payload": f"{header}.{deep_object}.{signature}",
        "one megabyte": f"{header}.{'A' * (1 << 20)}.{signature}",
        "empty": "",
        "alg none": f"{_b64(json.dumps({'alg': 'none'}).encode())}.{payload}.",
        "two segments": f"{header}.{payload}",
    }


ATTACK_NAMES = [
    "standard alphabet",
    "newline in payload",
    "padded signature",
    "space in signature",
    "deep header",
    "deep payload",
    "one megabyte",
    "empty",
    "alg none",
    "two segments",
]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_hostile_token_is_unauthorized(app_login: tuple[SuperApp, EchoLogin], name: str) -> None:
    """Each attack is Unauthorized with an id_token_* code."""
    app, login = app_login
    attacks = _attacks(_good(login))
    assert sorted(attacks) == sorted(ATTACK_NAMES)
    token = attacks[name]
    with pytest.raises(Unauthorized) as info:
        app.identity.verify(token)
    assert (info.value.code or "").startswith("id_token_")
