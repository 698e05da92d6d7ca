"""Simulated Kakao Login (kauth.kakao.com and kapi's OpenID Connect userinfo).

Faithful to Kakao Developers, "Kakao Login: REST API" and "Kakao Login: Error code":
paths, form bodies, field names and ``{"error", "error_description", "error_code"}``
error bodies. ID tokens are real RS256 JWTs signed with keys published in the JWKS, so
the SDK's verifier runs against them unchanged.

Routes (paths carry the host prefix, see :mod:`superapp_sdk.testing.kakao._asgi`):

- ``GET  /kauth/oauth/authorize``: logs in :attr:`IdentityState.browser_user` and
  redirects (302) to ``redirect_uri`` with ``code`` and ``state``.
- ``POST /kauth/oauth/token``: ``authorization_code`` and ``refresh_token`` grants.
- ``GET  /kauth/.well-known/jwks.json`` and ``/kauth/.well-known/openid-configuration``.
- ``GET|POST /kapi/v1/oidc/userinfo`` with ``Authorization: Bearer``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey

from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.testing.kakao._asgi import Request, Response, Route, json_response

__all__ = ["ISSUER", "IdentityState", "KakaoUser", "routes"]

#: The ``iss`` of Kakao's ID tokens.
ISSUER = "https://kauth.kakao.com"

# Lifetimes Kakao documents for REST API logins: access token 6 hours, refresh token
# 2 months; a refresh rotates the refresh token only when less than 1 month is left.
ACCESS_TTL = 21599
REFRESH_TTL = 5183999
REFRESH_ROTATE_BELOW = 2592000
CODE_TTL = 600


@dataclass(frozen=True, slots=True)
class KakaoUser:
    """A Kakao account: ``subject`` is the member number (a decimal string)."""

    subject: str
    nickname: str | None = None
    email: str | None = None


@dataclass(slots=True)
class _Client:
    client_id: str
    client_secret: str | None
    redirect_uris: frozenset[str]


@dataclass(slots=True)
class _Code:
    subject: str
    client_id: str
    redirect_uri: str
    nonce: str | None
    scopes: tuple[str, ...]
    expires_at: float


@dataclass(slots=True)
class _Grant:
    subject: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    nonce: str | None = None


@dataclass(slots=True)
class _Key:
    kid: str
    key: RSAKey
    active: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class IdentityState:
    """Accounts, clients, codes, tokens and signing keys of the simulated Kakao Login.

    Test helpers: :meth:`register_client`, :meth:`add_user`, :meth:`issue_code` (the
    code a browser would bring back), :meth:`rotate_keys`, :meth:`sign` (to forge or
    hand-craft ID tokens), :meth:`revoke`. Thread-safe.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        issuer: str = ISSUER,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.issuer = issuer
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._users: dict[str, KakaoUser] = {}
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._keys: list[_Key] = []
        #: The account logged in at the simulated browser (used by ``/oauth/authorize``).
        self.browser_user: str | None = None
        self.rotate_keys()

    # -- setup ---------------------------------------------------------------------

    def _token(self, prefix: str, size: int = 24) -> str:
        with self._lock:
            return prefix + "".join(
                self._rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                for _ in range(size)
            )

    def register_client(
        self,
        client_id: str,
        *,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = (),
    ) -> None:
        """Register an app (its REST API key, secret, and allowed redirect URIs)."""
        with self._lock:
            self._clients[client_id] = _Client(client_id, client_secret, frozenset(redirect_uris))

    def add_user(
        self, subject: str, *, nickname: str | None = None, email: str | None = None
    ) -> KakaoUser:
        """Create a Kakao account; the first one becomes the browser's logged-in user."""
        user = KakaoUser(subject=subject, nickname=nickname, email=email)
        with self._lock:
            self._users[subject] = user
            if self.browser_user is None:
                self.browser_user = subject
        return user

    def rotate_keys(self, *, retire_old: bool = False) -> str:
        """Start signing with a new RS256 key; the old keys stay published unless retired.

        Returns the new key's ``kid``.
        """
        kid = self._token("kid-", 12)
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
        with self._lock:
            for old in self._keys:
                old.active = False
            if retire_old:
                self._keys.clear()
            self._keys.append(_Key(kid=kid, key=key))
        return kid

    def retire_key(self, kid: str) -> None:
        """Stop publishing the key ``kid``."""
        with self._lock:
            self._keys = [k for k in self._keys if k.kid != kid]

    def jwks(self) -> dict[str, Any]:
        """The published key set (public keys only)."""
        with self._lock:
            keys = [k.key.as_dict(private=False) for k in self._keys]
        return {"keys": keys}

    @property
    def signing_kid(self) -> str:
        """The ``kid`` of the key new ID tokens are signed with."""
        with self._lock:
            return next(k.kid for k in self._keys if k.active)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` as an RS256 JWT with the active key (or the key ``kid``)."""
        with self._lock:
            chosen = next(k for k in self._keys if (k.kid == kid if kid is not None else k.active))
        head = {"alg": "RS256", "kid": chosen.kid, "typ": "JWT", **(header or {})}
        return jwt.encode(head, dict(claims), chosen.key, algorithms=["RS256"])

    def issue_code(
        self,
        user_subject: str,
        nonce: str | None,
        redirect_uri: str,
        client_id: str,
        *,
        scopes: Iterable[str] = ("openid",),
    ) -> str:
        """The authorization code Kakao would redirect the browser back with."""
        code = self._token("code-", 32)
        with self._lock:
            if user_subject not in self._users:
                self._users[user_subject] = KakaoUser(subject=user_subject)
            self._codes[code] = _Code(
                subject=user_subject,
                client_id=client_id,
                redirect_uri=redirect_uri,
                nonce=nonce,
                scopes=tuple(scopes),
                expires_at=self.clock.time() + CODE_TTL,
            )
        return code

    def revoke(self, access_token: str) -> None:
        """Invalidate an access token (as an unlink or logout would)."""
        with self._lock:
            self._access.pop(access_token, None)

    def user_for(self, access_token: str) -> KakaoUser | None:
        """The account an access token belongs to, while it is valid."""
        with self._lock:
            grant = self._access.get(access_token)
            if grant is None or grant.expires_at <= self.clock.time():
                return None
            return self._users.get(grant.subject)

    # -- token endpoint ----------------------------------------------------------------

    def _tokens(
        self, grant: _Grant, *, new_refresh: bool, refresh_token: str | None = None
    ) -> dict[str, Any]:
        now = self.clock.time()
        access = self._token("at-", 40)
        answer: dict[str, Any] = {
            "token_type": "bearer",
            "access_token": access,
            "expires_in": ACCESS_TTL,
        }
        with self._lock:
            self._access[access] = _Grant(
                grant.subject, grant.client_id, grant.scopes, now + ACCESS_TTL
            )
        if new_refresh:
            refresh_token = self._token("rt-", 40)
            with self._lock:
                self._refresh[refresh_token] = _Grant(
                    grant.subject, grant.client_id, grant.scopes, now + REFRESH_TTL
                )
            answer["refresh_token"] = refresh_token
            answer["refresh_token_expires_in"] = REFRESH_TTL
        if grant.scopes:
            answer["scope"] = " ".join(grant.scopes)
        if "openid" in grant.scopes:
            with self._lock:
                user = self._users.get(grant.subject) or KakaoUser(grant.subject)
            claims: dict[str, Any] = {
                "iss": self.issuer,
                "aud": grant.client_id,
                "sub": grant.subject,
                "iat": int(now),
                "auth_time": int(now),
                "exp": int(now) + ACCESS_TTL,
            }
            if grant.nonce is not None:
                claims["nonce"] = grant.nonce
            if user.nickname is not None:
                claims["nickname"] = user.nickname
            if user.email is not None:
                claims["email"] = user.email
            answer["id_token"] = self.sign(claims)
        return answer

    def _client_error(self, form: Mapping[str, str]) -> Response | None:
        with self._lock:
            client = self._clients.get(form.get("client_id", ""))
        if client is None:
            return _kauth_error(
                401,
                "invalid_client",
                f"Not exist client_id [{form.get('client_id', '')}]",
                "KOE101",
            )
        if client.client_secret is not None and form.get("client_secret") != client.client_secret:
            return _kauth_error(401, "invalid_client", "Bad client credentials", "KOE010")
        return None

    def token_endpoint(self, request: Request) -> Response:
        """``POST /oauth/token``."""
        content_type = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" not in content_type:
            return _kauth_error(400, "invalid_request", "content type not supported", "KOE001")
        form = request.form()
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            return _kauth_error(
                400, "unsupported_grant_type", f"grant_type={grant_type} not supported", "KOE001"
            )
        refused = self._client_error(form)
        if refused is not None:
            return refused
        now = self.clock.time()
        if grant_type == "authorization_code":
            code_value = form.get("code", "")
            with self._lock:
                code = self._codes.pop(code_value, None)
            if code is None or code.expires_at <= now or code.client_id != form["client_id"]:
                return _kauth_error(
                    400,
                    "invalid_grant",
                    f"authorization code not found for code={code_value}",
                    "KOE320",
                )
            if form.get("redirect_uri") != code.redirect_uri:
                return _kauth_error(400, "invalid_grant", "Redirect URI mismatch.", "KOE303")
            grant = _Grant(code.subject, code.client_id, code.scopes, now, code.nonce)
            return json_response(self._tokens(grant, new_refresh=True))
        token = form.get("refresh_token", "")
        with self._lock:
            stored = self._refresh.get(token)
        if stored is None or stored.expires_at <= now or stored.client_id != form["client_id"]:
            return _kauth_error(400, "invalid_grant", "expired_or_invalid_refresh_token", "KOE322")
        rotate = stored.expires_at - now < REFRESH_ROTATE_BELOW
        if rotate:
            with self._lock:
                self._refresh.pop(token, None)
        return json_response(self._tokens(stored, new_refresh=rotate))

    def authorize_endpoint(self, request: Request) -> Response:
        """``GET /oauth/authorize``: log in the browser's user and redirect with a code."""
        query = request.query
        with self._lock:
            client = self._clients.get(query.get("client_id", ""))
        if client is None:
            return _kauth_error(
                400,
                "invalid_client",
                f"Not exist client_id [{query.get('client_id', '')}]",
                "KOE101",
            )
        redirect_uri = query.get("redirect_uri", "")
        if client.redirect_uris and redirect_uri not in client.redirect_uris:
            return _kauth_error(400, "misconfigured", "invalid redirect_uri", "KOE006")
        if query.get("response_type") != "code":
            return _kauth_error(400, "invalid_request", "response_type must be code", "KOE001")
        if self.browser_user is None:
            return _kauth_error(400, "access_denied", "no Kakao account is logged in", "KOE001")
        scope = query.get("scope")
        scopes = tuple(s for s in scope.split(",") if s) if scope else ("openid",)
        code = self.issue_code(
            self.browser_user, query.get("nonce"), redirect_uri, client.client_id, scopes=scopes
        )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return Response(
            302,
            b"",
            (("location", f"{redirect_uri}{separator}{urlencode(params)}"),),
        )

    def userinfo_endpoint(self, request: Request) -> Response:
        """``GET|POST /v1/oidc/userinfo`` on kapi."""
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return json_response({"msg": "no authentication key!", "code": -401}, status=401)
        user = self.user_for(token)
        if user is None:
            return json_response(
                {"msg": "this access token does not exist", "code": -401}, status=401
            )
        answer: dict[str, Any] = {"sub": user.subject}
        if user.nickname is not None:
            answer["nickname"] = user.nickname
        if user.email is not None:
            answer["email"] = user.email
            answer["email_verified"] = True
        return json_response(answer)

    def openid_configuration(self, _request: Request) -> Response:
        """``GET /.well-known/openid-configuration``."""
        return json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{ISSUER}/oauth/authorize",
                "token_endpoint": f"{ISSUER}/oauth/token",
                "userinfo_endpoint": "https://kapi.kakao.com/v1/oidc/userinfo",
                "jwks_uri": f"{ISSUER}/.well-known/jwks.json",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "request_uri_parameter_supported": False,
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": [
                    "iss",
                    "aud",
                    "sub",
                    "auth_time",
                    "exp",
                    "iat",
                    "nonce",
                    "nickname",
                    "picture",
                    "email",
                ],
            }
        )


def _kauth_error(status: int, error: str, description: str, code: str) -> Response:
    return json_response(
        {"error": error, "error_description": description, "error_code": code}, status=status
    )


def routes(state: IdentityState) -> list[Route]:
    """The simulated Kakao Login routes, bound to ``state``."""
    return [
        Route("GET", "/kauth/oauth/authorize", state.authorize_endpoint, "identity"),
        Route("POST", "/kauth/oauth/token", state.token_endpoint, "identity", write=True),
        Route(
            "GET",
            "/kauth/.well-known/jwks.json",
            lambda _request: json_response(state.jwks()),
            "identity",
        ),
        Route(
            "GET",
            "/kauth/.well-known/openid-configuration",
            state.openid_configuration,
            "identity",
        ),
        Route("GET", "/kapi/v1/oidc/userinfo", state.userinfo_endpoint, "identity"),
        Route("POST", "/kapi/v1/oidc/userinfo", state.userinfo_endpoint, "identity"),
    ]
