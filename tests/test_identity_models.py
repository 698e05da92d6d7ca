"""Identity and chat models: validation, immutability, secrets kept out of repr."""

from __future__ import annotations

import dataclasses

import pytest

from superapp_sdk.capabilities.chat import ChatProvider, Message, MessageReceipt
from superapp_sdk.capabilities.identity import (
    Claims,
    IdentityProvider,
    LoginRedirect,
    Session,
    TokenSet,
    UserInfo,
)
from superapp_sdk.providers.kakao.login import KakaoLogin
from superapp_sdk.providers.kakao.talk import KakaoTalk


def tokens(**overrides: object) -> TokenSet:
    values: dict[str, object] = {
        "access_token": "AT-secret",
        "refresh_token": "RT-secret",
        "id_token": "ID-secret",
        "expires_in": 21599,
        "refresh_token_expires_in": 5183999,
        "scope": "openid account_email",
    }
    values.update(overrides)
    return TokenSet(**values)  # type: ignore[arg-type]


def test_token_set_repr_hides_every_token() -> None:
    """No token text appears in repr or str."""
    text = repr(tokens()) + str(tokens())
    assert "secret" not in text
    assert "expires_in=21599" in text


def test_token_set_repr_shows_absent_tokens_as_none() -> None:
    """A missing refresh token shows as None, not as a mask."""
    assert "refresh_token=None" in repr(tokens(refresh_token=None))


def test_token_set_scopes_split_on_spaces() -> None:
    """scopes parses the provider's space-separated scope string."""
    assert tokens().scopes == frozenset({"openid", "account_email"})
    assert tokens(scope=None).scopes == frozenset()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"access_token": ""}, "access_token"),
        ({"expires_in": -1}, "expires_in"),
        ({"expires_in": True}, "expires_in"),
        ({"refresh_token_expires_in": -5}, "refresh_token_expires_in"),
        ({"id_token": 3}, "id_token"),
    ],
)
def test_token_set_is_validated(overrides: dict[str, object], field: str) -> None:
    """Invalid fields raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        tokens(**overrides)


def test_token_set_is_frozen() -> None:
    """Models cannot be changed after creation."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        tokens().access_token = "x"  # type: ignore[misc]


def test_login_redirect_requires_every_field() -> None:
    """An empty state is refused: it is the CSRF defence."""
    with pytest.raises(ValueError, match="state"):
        LoginRedirect(url="https://x", state="", nonce="n", provider="p")


def test_claims_raw_is_read_only() -> None:
    """Claims.raw cannot be mutated through the model."""
    raw = {"sub": "1"}
    claims = Claims(subject="1", issuer="i", audience="a", expires_at=2.0, issued_at=1.0, raw=raw)
    raw["sub"] = "2"
    assert claims.raw["sub"] == "1"
    with pytest.raises(TypeError):
        claims.raw["sub"] = "3"  # type: ignore[index]


def test_claims_are_hashable_despite_raw() -> None:
    """Claims can be used as dict keys or in sets."""
    claims = Claims(subject="1", issuer="i", audience="a", expires_at=2.0, issued_at=1.0)
    assert len({claims, claims}) == 1


def test_session_normalises_scopes_to_frozenset() -> None:
    """Scopes given as any collection become a frozenset."""
    session = Session(
        session_id="s",
        user_id="u",
        provider="kakao.login",
        subject="1",
        expires_at=10.0,
        scopes=["read", "read", "pay"],  # type: ignore[arg-type]
    )
    assert session.scopes == frozenset({"read", "pay"})
    assert session.grace is False


def test_session_rejects_a_string_as_scopes() -> None:
    """A bare string is not a collection of scopes."""
    with pytest.raises(ValueError, match="scopes"):
        Session(
            session_id="s",
            user_id="u",
            provider="p",
            subject="1",
            expires_at=1.0,
            scopes="read",  # type: ignore[arg-type]
        )


def test_user_info_requires_subject() -> None:
    """A profile without sub cannot be linked to anyone."""
    with pytest.raises(ValueError, match="subject"):
        UserInfo(subject="")


def test_message_receipt_validates_time() -> None:
    """accepted_at must be epoch seconds."""
    with pytest.raises(ValueError, match="accepted_at"):
        MessageReceipt(message_id="m", provider="p", to="u", conversation=None, accepted_at=-1)


def test_message_requires_text_string() -> None:
    """Message.text must be a string."""
    with pytest.raises(ValueError, match="text"):
        Message(message_id="m", conversation="c", sender="s", text=None, sent_at=1.0)  # type: ignore[arg-type]


def test_kakao_adapters_satisfy_the_protocols() -> None:
    """KakaoLogin is an IdentityProvider and KakaoTalk a ChatProvider."""
    login: IdentityProvider = KakaoLogin(client_id="cid")
    talk: ChatProvider = KakaoTalk(access_token="t")
    assert isinstance(login, IdentityProvider)
    assert isinstance(talk, ChatProvider)
