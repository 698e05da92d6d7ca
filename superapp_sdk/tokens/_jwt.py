"""Offline verification of OpenID Connect ID tokens against a JSON Web Key Set.

Follows OpenID Connect Core 1.0 section 3.1.3.7 (ID token validation) and RFC 7519 /
RFC 8725 (JWT best current practice): the algorithm comes from an allow-list of
asymmetric algorithms chosen by the caller, never from the token alone, so ``alg: none``
and HMAC tokens "signed" with a public key are refused before any key is touched.
Signature maths is done by ``joserfc`` (on ``cryptography``); the checks and their error
messages are ours, so each failure names the check that failed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwa import JWS_ALGORITHMS, JWSAlgModel
from joserfc.jwk import JWKRegistry

from superapp_sdk._errors import Unauthorized
from superapp_sdk.capabilities.identity import Claims

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_CHARS",
    "SUPPORTED_ALGORITHMS",
    "token_claims",
    "token_header",
    "verify_id_token",
]

#: Algorithms accepted unless the caller narrows them (Kakao signs with RS256).
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "EdDSA")

# alg -> (kty, curves or None). Only asymmetric algorithms: a verifier holding a public key
# must never accept an HMAC, whose "key" would be the public key text (RFC 8725 2.1).
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
}

#: Every algorithm ``algorithms=`` may name.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_KEY_TYPES)

#: Longer tokens are refused unparsed (an ID token is a few hundred bytes to a few KiB).
MAX_TOKEN_CHARS = 16 * 1024

_MODELS: dict[str, JWSAlgModel] = {alg.name: alg for alg in JWS_ALGORITHMS}


def _fail(check: str, message: str, provider: str | None) -> Unauthorized:
    return Unauthorized(message, provider=provider, code=f"id_token_{check}", retryable=False)


#: RFC 4648 section 5's alphabet, unpadded (RFC 7515 section 2).
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64decode(segment: str) -> bytes:
    # RFC 7515 section 2: base64url without padding, nothing else. The standard library's
    # decoder also takes "+" and "/", skips whitespace and ignores non-zero trailing bits,
    # so one signature would have many spellings: refuse all but the canonical one.
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("not canonical base64url")
    return raw


def _b64json(segment: str) -> dict[str, Any]:
    try:
        data = json.loads(_b64decode(segment))
    except RecursionError as exc:
        # JSON nested deeper than the parser goes: an attack, not a token.
        raise ValueError("JSON nested too deeply") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _split(token: object, provider: str | None) -> list[str]:
    if not isinstance(token, str) or not token:
        raise _fail("malformed", "id_token malformed: not a non-empty string", provider)
    if len(token) > MAX_TOKEN_CHARS:
        raise _fail("malformed", f"id_token malformed: longer than {MAX_TOKEN_CHARS}", provider)
    parts = token.split(".")
    if len(parts) == 5:
        raise _fail("malformed", "id_token malformed: encrypted tokens are not supported", provider)
    if len(parts) != 3 or not token.isascii():
        raise _fail("malformed", "id_token malformed: expected header.payload.signature", provider)
    return parts


def token_header(token: str, *, provider: str | None = None) -> dict[str, Any]:
    """The token's JOSE header, **unverified**: only to choose a key (``kid``) with.

    Raises:
        Unauthorized: the token is not a compact JWS.
    """
    return _segment(token, 0, "header", provider)


def token_claims(token: str, *, provider: str | None = None) -> dict[str, Any]:
    """The token's claims, **unverified**: only to route it (by ``iss``) to the provider
    whose keys will verify it.

    Raises:
        Unauthorized: the token is not a compact JWS with a JSON object payload.
    """
    return _segment(token, 1, "payload", provider)


def _segment(token: str, index: int, name: str, provider: str | None) -> dict[str, Any]:
    """Segment ``index`` of a compact JWS as a JSON object (unverified)."""
    parts = _split(token, provider)
    try:
        return _b64json(parts[index])
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise _fail(
            "malformed", f"id_token malformed: {name} is not base64url JSON", provider
        ) from exc


def _check_algorithms(algorithms: Collection[str]) -> frozenset[str]:
    if isinstance(algorithms, str) or not algorithms:
        raise ValueError(f"algorithms must be a non-empty collection of names, got {algorithms!r}")
    for name in algorithms:
        if name not in _KEY_TYPES:
            raise ValueError(
                f"algorithms may name only asymmetric signature algorithms "
                f"{sorted(_KEY_TYPES)}, got {name!r}"
            )
    return frozenset(algorithms)


def _select_key(
    jwks: Mapping[str, Any], kid: str | None, alg: str, provider: str | None
) -> dict[str, Any]:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise _fail("jwks", "id_token cannot be checked: the JWKS has no 'keys' list", provider)
    kty, curves = _KEY_TYPES[alg]

    def fits(key: dict[str, Any]) -> bool:
        if key.get("kty") != kty or key.get("use", "sig") != "sig":
            return False
        if curves is not None and key.get("crv") not in curves:
            return False
        key_alg = key.get("alg")
        # A key pinned to one algorithm may not be used with another (RFC 7517 4.4); an
        # Ed25519 key may say "EdDSA" (RFC 8037) or "Ed25519" (RFC 9864).
        return key_alg is None or key_alg == alg or {key_alg, alg} <= {"EdDSA", "Ed25519"}

    candidates = [k for k in keys if isinstance(k, dict)]
    if kid is not None:
        named = [k for k in candidates if k.get("kid") == kid]
        if not named:
            raise _fail("kid", f"id_token kid {kid!r} not in JWKS", provider)
        usable = [k for k in named if fits(k)]
        if not usable:
            raise _fail("kid", f"id_token key {kid!r} does not fit alg {alg!r}", provider)
        return usable[0]
    usable = [k for k in candidates if fits(k)]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise _fail("kid", f"id_token has no kid and no JWKS key fits alg {alg!r}", provider)
    # OpenID Connect Core 10.1: with several keys in the set, the header must name one.
    raise _fail("kid", "id_token has no kid and the JWKS holds several keys", provider)


def _verify_signature(
    parts: list[str], key_data: dict[str, Any], alg: str, provider: str | None
) -> None:
    try:
        key = JWKRegistry.import_key(key_data)
    except (JoseError, ValueError, TypeError) as exc:
        raise _fail("jwks", f"id_token key {key_data.get('kid')!r} is unusable", provider) from exc
    model_name = alg
    if alg == "EdDSA":
        # RFC 9864 splits EdDSA by curve; the signature bytes are identical, and the
        # curve-specific model avoids joserfc's deprecation warning for "EdDSA".
        model_name = str(key_data.get("crv"))
    model = _MODELS[model_name]
    try:
        signature = _b64decode(parts[2])
        valid = model.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), signature, key)
    except (JoseError, ValueError, TypeError, binascii.Error) as exc:
        raise _fail("signature", "id_token signature invalid", provider) from exc
    if not valid:
        raise _fail("signature", "id_token signature invalid", provider)


def _numeric_date(claims: dict[str, Any], name: str, provider: str | None) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(name, f"id_token {name} is not a NumericDate: {value!r}", provider)
    return float(value)


def _check_audience(claims: dict[str, Any], audience: str, provider: str | None) -> None:
    aud = claims.get("aud")
    # RFC 7519 4.1.3: a single string or an array of strings.
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise _fail("aud", f"id_token aud is missing or not a string list: {aud!r}", provider)
    if audience not in audiences:
        raise _fail("aud", f"id_token aud {aud!r} does not include {audience!r}", provider)
    azp = claims.get("azp")
    # OpenID Connect Core 3.1.3.7 items 4-5: with an azp, it must be our client id.
    if azp is not None and azp != audience:
        raise _fail("azp", f"id_token azp {azp!r} is not {audience!r}", provider)


def _check_times(claims: dict[str, Any], now: float, leeway: float, provider: str | None) -> None:
    exp = _numeric_date(claims, "exp", provider)
    if exp is None:
        raise _fail("exp", "id_token exp missing", provider)
    # RFC 7519 4.1.4: the current time must be before exp.
    if now >= exp + leeway:
        raise _fail("exp", f"id_token expired (exp={exp:.0f}, now={now:.0f})", provider)
    nbf = _numeric_date(claims, "nbf", provider)
    if nbf is not None and now + leeway < nbf:
        raise _fail("nbf", f"id_token not yet valid (nbf={nbf:.0f}, now={now:.0f})", provider)
    iat = _numeric_date(claims, "iat", provider)
    if iat is None:
        raise _fail("iat", "id_token iat missing", provider)
    if iat > now + leeway:
        raise _fail("iat", f"id_token issued in the future (iat={iat:.0f})", provider)


def verify_id_token(
    token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    audience: str,
    nonce: str | None = None,
    now: float,
    leeway: float = 30.0,
    algorithms: Collection[str] = DEFAULT_ALGORITHMS,
    provider: str | None = None,
) -> Claims:
    """Verify an ID token offline and return its claims.

    Checks, in order: the token's shape; ``alg`` against ``algorithms``; the key (by
    ``kid``) in ``jwks``; the signature; ``iss``; ``aud`` (a string or a list) and
    ``azp``; ``exp``, ``nbf`` and ``iat`` against ``now`` with ``leeway`` seconds of
    clock skew; ``nonce`` when given; ``sub``.

    Args:
        token: the compact JWT.
        jwks: the issuer's JSON Web Key Set (``{"keys": [...]}``).
        issuer: the expected ``iss``, exactly.
        audience: our client id, which ``aud`` must include.
        nonce: the nonce sent with the authorization request; ``None`` skips the check.
        now: wall-clock seconds since the epoch (``clock.time()``).
        leeway: allowed clock skew in seconds, >= 0.
        algorithms: allowed asymmetric algorithms (``SUPPORTED_ALGORITHMS``).
        provider: provider name to put on errors.

    Raises:
        Unauthorized: any check failed; the message names the check and ``code`` is
            ``"id_token_<check>"`` (``id_token_kid`` means: refetch the JWKS, maybe).
        ValueError: ``leeway`` or ``algorithms`` are invalid.

    Example::

        claims = verify_id_token(tokens.id_token, jwks=jwks, issuer=login.issuer,
                                 audience=login.client_id, nonce=nonce, now=clock.time())
    """
    allowed = _check_algorithms(algorithms)
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not 0 <= leeway <= 600:
        raise ValueError(f"leeway must be between 0 and 600 seconds, got {leeway!r}")
    parts = _split(token, provider)
    header = token_header(token, provider=provider)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _fail("alg", "id_token header lacks alg", provider)
    if alg not in allowed:
        raise _fail("alg", f"id_token alg {alg!r} not allowed", provider)
    if "crit" in header:
        # RFC 7515 4.1.11: critical extensions we do not understand make the token invalid.
        raise _fail("malformed", "id_token header has critical extensions", provider)
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _fail("malformed", f"id_token kid is not a string: {kid!r}", provider)

    _verify_signature(parts, _select_key(jwks, kid, alg, provider), alg, provider)

    try:
        claims = _b64json(parts[1])
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise _fail("malformed", "id_token malformed: payload is not JSON", provider) from exc

    iss = claims.get("iss")
    if iss != issuer:
        raise _fail("iss", f"id_token iss {iss!r} is not the expected {issuer!r}", provider)
    _check_audience(claims, audience, provider)
    _check_times(claims, now, leeway, provider)
    token_nonce = claims.get("nonce")
    if nonce is not None:
        if not isinstance(token_nonce, str):
            raise _fail("nonce", "id_token nonce missing", provider)
        if not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise _fail("nonce", "id_token nonce mismatch", provider)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _fail("sub", "id_token sub missing", provider)

    def text(name: str) -> str | None:
        value = claims.get(name)
        return value if isinstance(value, str) and value else None

    return Claims(
        subject=sub,
        issuer=issuer,
        audience=audience,
        expires_at=float(claims["exp"]),
        issued_at=float(claims["iat"]),
        nonce=text("nonce"),
        email=text("email"),
        # Kakao's ID token carries "nickname" rather than the standard "name".
        name=text("name") or text("nickname"),
        raw=claims,
    )
