"""Kakao Login: OAuth 2.0 + OpenID Connect.

Follows Kakao Developers, "Kakao Login: REST API"
(https://developers.kakao.com/docs/latest/en/kakaologin/rest-api) and "Kakao Login:
Error code" (https://developers.kakao.com/docs/latest/en/kakaologin/trouble-shooting):

- ``GET  kauth.kakao.com/oauth/authorize``: ``client_id``, ``redirect_uri``,
  ``response_type=code``, ``state``, ``nonce``, ``scope`` (comma separated).
- ``POST kauth.kakao.com/oauth/token``, form encoded: ``grant_type`` =
  ``authorization_code`` (``client_id``, ``redirect_uri``, ``code``, ``client_secret``) or
  ``refresh_token`` (``client_id``, ``refresh_token``, ``client_secret``). The answer has
  ``token_type``, ``access_token``, ``expires_in``, ``refresh_token``,
  ``refresh_token_expires_in``, ``scope`` and, with OpenID Connect, ``id_token``; a refresh
  returns a new refresh token only when the old one has less than a month left. Errors
  are ``{"error", "error_description", "error_code"}``: ``invalid_grant`` (KOE320 unknown
  or used code, KOE303 redirect URI mismatch, KOE322 dead refresh token) is a refusal of
  this login, ``invalid_client`` (KOE010, KOE101) a configuration fault.
- ``GET  kauth.kakao.com/.well-known/jwks.json``: the ID-token signing keys (RS256).
- ``GET  kapi.kakao.com/v1/oidc/userinfo`` with ``Authorization: Bearer``: ``sub``,
  ``nickname``, ``email``...; errors are ``{"msg", "code"}`` (-401: bad token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import httpx

from superapp_sdk._errors import (
    Declined,
    InvalidRequest,
    ProviderError,
    SuperAppError,
    Unauthorized,
)
from superapp_sdk.capabilities._common import Capability
from superapp_sdk.capabilities.identity import LoginRedirect, TokenSet, UserInfo
from superapp_sdk.providers._http import (
    Flow,
    field,
    json_object,
    read_json,
    status_error,
)

__all__ = ["KakaoLogin"]

_FORM = "application/x-www-form-urlencoded;charset=utf-8"


class KakaoLogin:
    """Kakao Login as an :class:`~superapp_sdk.capabilities.identity.IdentityProvider`.

    Args:
        client_id: the app's REST API key (the ``aud`` of its ID tokens).
        client_secret: the client secret, when the app has one enabled.
        redirect_uri: the default registered redirect URI.
        scopes: consent items to request (``("openid", "account_email")``); empty leaves
            the app's configured consent items. Include ``openid`` when asking for others,
            or Kakao issues no ID token.
        auth_base_url: the kauth host.
        api_base_url: the kapi host.
        issuer: the ``iss`` of Kakao's ID tokens.
        failure_domain: the failure domain shared with every Kakao adapter.
        name: the provider name.

    Example::

        login = KakaoLogin(client_id="...", client_secret="...",
                           redirect_uri="https://app.example/callback")
        redirect = login.authorize_url(state=state, nonce=nonce)
        tokens = run_call(client, login.exchange_code(code=code, nonce=nonce),
                          provider=login.name, operation="identity.exchange_code")
    """

    capability = Capability.IDENTITY
    operations = frozenset(
        {
            "identity.authorize_url",
            "identity.exchange_code",
            "identity.refresh",
            "identity.userinfo",
            "identity.jwks",
        }
    )

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str | None = None,
        redirect_uri: str | None = None,
        scopes: Sequence[str] = (),
        auth_base_url: str = "https://kauth.kakao.com",
        api_base_url: str = "https://kapi.kakao.com",
        issuer: str = "https://kauth.kakao.com",
        failure_domain: str = "kakao",
        name: str = "kakao.login",
    ) -> None:
        if not client_id:
            raise ValueError("client_id must be the app's REST API key, got an empty value")
        if isinstance(scopes, str):
            raise ValueError(f"scopes must be a sequence of consent items, got {scopes!r}")
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = tuple(scopes)
        self.auth_base_url = auth_base_url.rstrip("/")
        self.api_base_url = api_base_url.rstrip("/")
        self.issuer = issuer
        self.failure_domain = failure_domain
        self.name = name

    def __repr__(self) -> str:
        return (
            f"KakaoLogin(name={self.name!r}, auth_base_url={self.auth_base_url!r}, "
            f"api_base_url={self.api_base_url!r})"
        )

    def _redirect(self, redirect_uri: str | None) -> str:
        chosen = redirect_uri or self.redirect_uri
        if not chosen:
            raise ValueError("redirect_uri is required: pass it or set it on KakaoLogin")
        return chosen

    def authorize_url(
        self, *, state: str, nonce: str, redirect_uri: str | None = None
    ) -> LoginRedirect:
        """The Kakao authorization URL for the browser (no I/O)."""
        params = {
            "client_id": self.client_id,
            "redirect_uri": self._redirect(redirect_uri),
            "response_type": "code",
            "state": state,
            "nonce": nonce,
        }
        if self.scopes:
            params["scope"] = ",".join(self.scopes)
        url = f"{self.auth_base_url}/oauth/authorize?{urlencode(params)}"
        return LoginRedirect(url=url, state=state, nonce=nonce, provider=self.name)

    def _token_request(self, form: dict[str, str]) -> httpx.Request:
        if self._client_secret:
            form["client_secret"] = self._client_secret
        return httpx.Request(
            "POST",
            f"{self.auth_base_url}/oauth/token",
            headers={"Content-Type": _FORM, "Accept": "application/json"},
            content=urlencode(form).encode("ascii"),
        )

    def _token_error(self, response: httpx.Response, operation: str) -> SuperAppError:
        if response.status_code == 429 or response.status_code >= 500:
            return status_error(response, provider=self.name, operation=operation)
        try:
            data = json_object(response, provider=self.name, operation=operation)
        except SuperAppError:
            return status_error(response, provider=self.name, operation=operation)
        error = data.get("error")
        code = data.get("error_code")
        code = code if isinstance(code, str) else (error if isinstance(error, str) else None)
        description = data.get("error_description")
        message = f"{error}: {description}" if description else str(error)
        common: dict[str, Any] = {
            "provider": self.name,
            "operation": operation,
            "http_status": response.status_code,
            "code": code,
            "request_sent": True,
        }
        # RFC 6749 5.2: invalid_grant means this code or refresh token is dead; the user
        # must log in again. Another provider cannot redeem it, so it never fails over.
        if error == "invalid_grant":
            return Declined(message, **common)
        if error in ("invalid_client", "unauthorized_client"):
            return Unauthorized(message, **common)
        if error in ("invalid_request", "unsupported_grant_type", "invalid_scope"):
            return InvalidRequest(message, **common)
        return status_error(response, provider=self.name, operation=operation, code=code)

    def _token_set(self, response: httpx.Response, operation: str) -> TokenSet:
        if not 200 <= response.status_code < 300:
            raise self._token_error(response, operation)
        data = read_json(response, provider=self.name, operation=operation)

        def get(name: str, kind: type[Any], optional: bool = False) -> Any:
            return field(
                data, name, kind, provider=self.name, operation=operation, optional=optional
            )

        token_type = get("token_type", str)
        if token_type.lower() != "bearer":
            raise self._malformed(f"token_type is {token_type!r}, expected 'bearer'", operation)
        access_token = get("access_token", str)
        expires_in = get("expires_in", int)
        refresh_token = get("refresh_token", str, optional=True)
        refresh_expires_in = get("refresh_token_expires_in", int, optional=True)
        # Absent unless OpenID Connect is enabled and "openid" granted: a configuration
        # matter the caller reports (ConfigError), not a malformed answer; the code is
        # spent either way.
        id_token = get("id_token", str, optional=True)
        scope = get("scope", str, optional=True)
        if not access_token or expires_in < 0 or (refresh_expires_in or 0) < 0:
            raise self._malformed("empty access_token or negative lifetime", operation)
        return TokenSet(
            access_token=access_token,
            refresh_token=refresh_token or None,
            id_token=id_token or None,
            expires_in=expires_in,
            refresh_token_expires_in=refresh_expires_in,
            scope=scope,
        )

    def _malformed(self, what: str, operation: str) -> SuperAppError:
        return ProviderError(
            f"answer is unusable: {what}",
            provider=self.name,
            operation=operation,
            request_sent=True,
        )

    def exchange_code(
        self, *, code: str, redirect_uri: str | None = None, nonce: str | None = None
    ) -> Flow[TokenSet]:
        """Redeem an authorization code (``POST /oauth/token``).

        With a ``nonce`` the login is an OpenID Connect login and the answer must carry an
        ``id_token``; the caller verifies it (and its nonce) with
        :func:`superapp_sdk.tokens.verify_id_token`.

        Raises:
            Declined: the code is unknown, used, expired, or for another redirect URI.
            Unauthorized: the client id or secret was refused.
        """
        form = {
            "grant_type": "authorization_code",
            "client_id": self.client_id,
            "redirect_uri": self._redirect(redirect_uri),
            "code": code,
        }
        response = yield self._token_request(form)
        return self._token_set(response, "identity.exchange_code")

    def refresh(self, *, refresh_token: str) -> Flow[TokenSet]:
        """A new access token (``POST /oauth/token``, ``grant_type=refresh_token``).

        Raises:
            Declined: the refresh token is expired or revoked (KOE322).
        """
        form = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "refresh_token": refresh_token,
        }
        response = yield self._token_request(form)
        return self._token_set(response, "identity.refresh")

    def userinfo(self, *, access_token: str) -> Flow[UserInfo]:
        """The user's OpenID Connect profile (``GET kapi /v1/oidc/userinfo``)."""
        operation = "identity.userinfo"
        response = yield httpx.Request(
            "GET",
            f"{self.api_base_url}/v1/oidc/userinfo",
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        if not 200 <= response.status_code < 300:
            raise self._api_error(response, operation)
        data = read_json(response, provider=self.name, operation=operation)
        subject = field(data, "sub", str, provider=self.name, operation=operation)
        email = field(data, "email", str, provider=self.name, operation=operation, optional=True)
        name = field(data, "name", str, provider=self.name, operation=operation, optional=True)
        nickname = field(
            data, "nickname", str, provider=self.name, operation=operation, optional=True
        )
        if not subject:
            raise self._malformed("empty sub", operation)
        return UserInfo(subject=subject, email=email or None, name=name or nickname or None)

    def _api_error(self, response: httpx.Response, operation: str) -> SuperAppError:
        code: str | None = None
        message: str | None = None
        try:
            data = json_object(response, provider=self.name, operation=operation)
        except SuperAppError:
            data = {}
        if isinstance(data.get("code"), int) and not isinstance(data.get("code"), bool):
            code = str(data["code"])
        if isinstance(data.get("msg"), str):
            message = data["msg"]
        return status_error(
            response, provider=self.name, operation=operation, message=message, code=code
        )

    def jwks(self) -> Flow[dict[str, Any]]:
        """Kakao's ID-token signing keys (``GET kauth /.well-known/jwks.json``)."""
        operation = "identity.jwks"
        response = yield httpx.Request(
            "GET",
            f"{self.auth_base_url}/.well-known/jwks.json",
            headers={"Accept": "application/json"},
        )
        data = read_json(response, provider=self.name, operation=operation)
        keys = field(data, "keys", list, provider=self.name, operation=operation)
        for index, key in enumerate(keys):
            if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
                raise self._malformed(f"JWKS key #{index} has no string 'kty'", operation)
        return data
