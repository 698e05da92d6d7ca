"""Identity: log a user in with a provider and keep them logged in.

The models every identity provider returns, and :class:`IdentityProvider`, the Protocol
an identity adapter implements (Kakao Login, any OpenID Connect provider). Adapters return
sans-IO calls (see :mod:`superapp_sdk.providers._http`); the facade drives them through the
resilience pipeline, verifies ID tokens offline with :func:`superapp_sdk.tokens.
verify_id_token`, and builds :class:`Session` objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from superapp_sdk.capabilities._common import Provider, require_seconds, require_text

if TYPE_CHECKING:
    from superapp_sdk.providers._http import Call

__all__ = [
    "Claims",
    "IdentityProvider",
    "LoginRedirect",
    "Session",
    "TokenSet",
    "UserInfo",
]


@dataclass(frozen=True, slots=True)
class LoginRedirect:
    """Where to send the user's browser to log in.

    Attributes:
        url: the provider's authorization URL, with every query parameter set.
        state: the CSRF ``state`` the app must find again on the redirect back.
        nonce: the OpenID Connect ``nonce`` the ID token must carry.
        provider: the provider name (``"kakao.login"``).
    """

    url: str
    state: str
    nonce: str
    provider: str

    def __post_init__(self) -> None:
        for name in ("url", "state", "nonce", "provider"):
            require_text("LoginRedirect", name, getattr(self, name))


@dataclass(frozen=True, slots=True, repr=False)
class TokenSet:
    """Tokens from a provider's token endpoint. ``repr`` never shows a token.

    Attributes:
        access_token: the bearer token for the provider's user APIs.
        refresh_token: the token to get a new access token; ``None`` when the provider
            kept the old one (Kakao returns a new one only near its expiry).
        id_token: the OpenID Connect ID token (a JWT), when the provider issued one.
        expires_in: seconds the access token is valid for, from issue.
        refresh_token_expires_in: seconds the refresh token is valid for, when known.
        scope: the granted scopes as the provider wrote them (space separated), if given.
    """

    access_token: str
    refresh_token: str | None
    id_token: str | None
    expires_in: int
    refresh_token_expires_in: int | None = None
    scope: str | None = None

    def __post_init__(self) -> None:
        require_text("TokenSet", "access_token", self.access_token)
        require_text("TokenSet", "refresh_token", self.refresh_token, optional=True)
        require_text("TokenSet", "id_token", self.id_token, optional=True)
        require_seconds("TokenSet", "expires_in", self.expires_in)
        require_seconds(
            "TokenSet", "refresh_token_expires_in", self.refresh_token_expires_in, optional=True
        )

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scopes as a set (Kakao separates them with spaces)."""
        if not self.scope:
            return frozenset()
        return frozenset(self.scope.replace(",", " ").split())

    def __repr__(self) -> str:
        def hidden(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"TokenSet(access_token={hidden(self.access_token)}, "
            f"refresh_token={hidden(self.refresh_token)}, id_token={hidden(self.id_token)}, "
            f"expires_in={self.expires_in!r}, "
            f"refresh_token_expires_in={self.refresh_token_expires_in!r}, scope={self.scope!r})"
        )


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of an ID token.

    Attributes:
        subject: ``sub``, the user's id at the issuer (Kakao: the member number).
        issuer: ``iss``.
        audience: the audience the token was verified for (our client id).
        expires_at: ``exp``, seconds since the epoch.
        issued_at: ``iat``, seconds since the epoch.
        nonce: ``nonce``, when present.
        email: ``email``, when the user consented to share it.
        name: ``name``, or Kakao's ``nickname``, when present.
        raw: every claim, read-only.
    """

    subject: str
    issuer: str
    audience: str
    expires_at: float
    issued_at: float
    nonce: str | None = None
    email: str | None = None
    name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        for name in ("subject", "issuer", "audience"):
            require_text("Claims", name, getattr(self, name))
        if not isinstance(self.raw, MappingProxyType):
            object.__setattr__(self, "raw", MappingProxyType(dict(self.raw)))


@dataclass(frozen=True, slots=True)
class Session:
    """An app session for a logged-in user. Tokens are kept apart, encrypted at rest.

    Attributes:
        session_id: the app's opaque session id.
        user_id: the app-level user id (see the directory).
        provider: the identity provider that vouched for the user.
        subject: the user's id at that provider.
        expires_at: seconds since the epoch.
        scopes: what the session may do.
        grace: True for a grace session extended locally while the provider was down;
            such a session is limited in duration and scope.
    """

    session_id: str
    user_id: str
    provider: str
    subject: str
    expires_at: float
    scopes: frozenset[str] = frozenset()
    grace: bool = False

    def __post_init__(self) -> None:
        for name in ("session_id", "user_id", "provider", "subject"):
            require_text("Session", name, getattr(self, name))
        require_seconds("Session", "expires_at", self.expires_at)
        scopes: Iterable[object] = self.scopes
        if isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes):
            raise ValueError(f"Session.scopes must be a collection of str, got {scopes!r}")
        if not isinstance(scopes, frozenset):
            object.__setattr__(self, "scopes", frozenset(scopes))


@dataclass(frozen=True, slots=True)
class UserInfo:
    """The user's profile from the provider's userinfo endpoint.

    Attributes:
        subject: ``sub``; must equal the ID token's subject (OpenID Connect Core 5.3.2).
        email: the e-mail address, when shared.
        name: the display name (Kakao: ``nickname``), when shared.
    """

    subject: str
    email: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        require_text("UserInfo", "subject", self.subject)


@runtime_checkable
class IdentityProvider(Provider, Protocol):
    """What an identity adapter implements (OAuth 2.0 + OpenID Connect).

    Every network operation returns a sans-IO :data:`~superapp_sdk.providers._http.Call`;
    ``authorize_url`` does no I/O at all. Operation names for ``operations``:
    ``"identity.authorize_url"``, ``"identity.exchange_code"``, ``"identity.refresh"``,
    ``"identity.userinfo"``, ``"identity.jwks"``.

    A refused grant (unknown, used or expired code, dead refresh token) raises
    :class:`~superapp_sdk._errors.Declined`: another provider cannot redeem this
    provider's code, so it never fails over.
    """

    @property
    def issuer(self) -> str:
        """The ``iss`` of this provider's ID tokens."""
        ...

    @property
    def client_id(self) -> str:
        """Our client id at the provider: the ``aud`` of its ID tokens."""
        ...

    def authorize_url(
        self, *, state: str, nonce: str, redirect_uri: str | None = None
    ) -> LoginRedirect:
        """The authorization URL to send the browser to (no I/O)."""
        ...

    def exchange_code(
        self, *, code: str, redirect_uri: str | None = None, nonce: str | None = None
    ) -> Call[TokenSet]:
        """Redeem an authorization code for tokens."""
        ...

    def refresh(self, *, refresh_token: str) -> Call[TokenSet]:
        """Get a new access token (and maybe a new refresh token)."""
        ...

    def userinfo(self, *, access_token: str) -> Call[UserInfo]:
        """The user's profile, with the user's access token."""
        ...

    def jwks(self) -> Call[dict[str, Any]]:
        """The provider's JSON Web Key Set, to verify ID tokens offline."""
        ...
