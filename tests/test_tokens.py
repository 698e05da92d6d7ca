"""ID-token verification and the JWKS cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from superapp_sdk._errors import Unauthorized
from superapp_sdk.testing import FakeClock
from superapp_sdk.tokens import JwksCache, JwksCacheOptions, token_header, verify_id_token

ISS = "https://kauth.kakao.com"
AUD = "client-123"
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig", "alg": "RS256"})


@pytest.fixture(scope="module")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture(scope="module")
def ed_private() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ed_key(ed_private: Ed25519PrivateKey) -> OKPKey:
    return OKPKey.import_key(ed_private.public_key(), parameters={"kid": "ed-1"})


@pytest.fixture(scope="module")
def jwks(rsa_key: RSAKey, ec_key: ECKey, ed_key: OKPKey) -> dict[str, Any]:
    return {
        "keys": [
            rsa_key.as_dict(private=False),
            ec_key.as_dict(private=False),
            ed_key.as_dict(private=False),
        ]
    }


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "4242",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 3600,
        "nonce": "n-1",
        "nickname": "Kim",
        "email": "kim@example.com",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(key: RSAKey, body: dict[str, Any], **header: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": key.kid, **header}, body, key, algorithms=["RS256"])


def verify(token: str, jwks: dict[str, Any], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"issuer": ISS, "audience": AUD, "nonce": "n-1", "now": NOW}
    options.update(kwargs)
    return verify_id_token(token, jwks=jwks, **options)


def refused(token: str, jwks: dict[str, Any], **kwargs: Any) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verify(token, jwks, **kwargs)
    return info.value


def test_valid_rs256_token_is_accepted(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A correctly signed RS256 token yields its claims."""
    result = verify(rs256(rsa_key, claims()), jwks)
    assert (result.subject, result.issuer, result.audience) == ("4242", ISS, AUD)
    assert result.nonce == "n-1"
    assert result.name == "Kim"
    assert result.email == "kim@example.com"
    assert result.expires_at == NOW + 3600
    assert result.raw["sub"] == "4242"


def test_valid_es256_token_is_accepted(ec_key: ECKey, jwks: dict[str, Any]) -> None:
    """ES256 tokens verify against the EC key of the set."""
    token = jwt.encode({"alg": "ES256", "kid": "ec-1"}, claims(), ec_key, algorithms=["ES256"])
    assert verify(token, jwks).subject == "4242"


def test_valid_eddsa_token_is_accepted_without_warning(
    ed_private: Ed25519PrivateKey, jwks: dict[str, Any]
) -> None:
    """EdDSA (Ed25519) tokens verify, and no deprecation warning escapes."""
    token = compact({"alg": "EdDSA", "kid": "ed-1"}, claims(), ed_private.sign)
    assert verify(token, jwks).subject == "4242"


def test_audience_list_including_us_is_accepted(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """An aud array containing our client id passes."""
    assert verify(rs256(rsa_key, claims(aud=["other", AUD])), jwks).audience == AUD


def test_expired_token_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token past exp + leeway is refused naming expiry."""
    error = refused(rs256(rsa_key, claims(exp=int(NOW) - 31)), jwks)
    assert "id_token expired" in error.message
    assert error.code == "id_token_exp"


def test_leeway_honoured_for_expiry(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token expired less than leeway ago passes; with no leeway it is refused."""
    token = rs256(rsa_key, claims(exp=int(NOW) - 20))
    assert verify(token, jwks, leeway=30).subject == "4242"
    assert "expired" in refused(token, jwks, leeway=0).message


def test_not_yet_valid_token_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """nbf beyond now + leeway is refused; within the leeway it passes."""
    early = rs256(rsa_key, claims(nbf=int(NOW) + 120))
    assert "id_token not yet valid" in refused(early, jwks).message
    near = rs256(rsa_key, claims(nbf=int(NOW) + 20))
    assert verify(near, jwks).subject == "4242"


def test_token_issued_in_the_future_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """iat far ahead of our clock is refused."""
    error = refused(rs256(rsa_key, claims(iat=int(NOW) + 600)), jwks)
    assert "issued in the future" in error.message


def test_missing_exp_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """An ID token must carry exp."""
    assert "exp missing" in refused(rs256(rsa_key, claims(exp=None)), jwks).message


def test_boolean_exp_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """exp of the wrong type is refused, not coerced."""
    assert "NumericDate" in refused(rs256(rsa_key, claims(exp=True)), jwks).message


def test_wrong_issuer_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token from another issuer is refused naming iss."""
    error = refused(rs256(rsa_key, claims(iss="https://evil.example")), jwks)
    assert "id_token iss" in error.message
    assert error.code == "id_token_iss"


def test_wrong_audience_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token for another client is refused naming aud."""
    error = refused(rs256(rsa_key, claims(aud="someone-else")), jwks)
    assert "id_token aud" in error.message


def test_foreign_azp_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """An azp naming another client is refused (OIDC Core 3.1.3.7)."""
    error = refused(rs256(rsa_key, claims(aud=[AUD, "x"], azp="x")), jwks)
    assert "id_token azp" in error.message


def test_wrong_nonce_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token replayed into another login is refused naming the nonce."""
    error = refused(rs256(rsa_key, claims(nonce="n-other")), jwks)
    assert error.message == "id_token nonce mismatch"


def test_missing_nonce_is_refused_when_expected(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """When a nonce was sent, a token without one is refused."""
    assert "nonce missing" in refused(rs256(rsa_key, claims(nonce=None)), jwks).message


def test_nonce_not_checked_when_not_given(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """Without an expected nonce the claim is not compared."""
    assert verify(rs256(rsa_key, claims(nonce="x")), jwks, nonce=None).nonce == "x"


def test_forged_signature_is_refused(other_rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token signed by another key under the right kid is refused naming the signature."""
    error = refused(rs256(other_rsa_key, claims()), jwks)
    assert error.message == "id_token signature invalid"


def test_tampered_payload_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """Changing the payload after signing breaks the signature."""
    header, _payload, signature = rs256(rsa_key, claims()).split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='1')).encode())}.{signature}"
    assert refused(forged, jwks).message == "id_token signature invalid"


def test_unknown_kid_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A kid absent from the JWKS is refused with the code that means: refetch."""
    error = refused(rs256(rsa_key, claims(), kid="rotated-away"), jwks)
    assert "kid 'rotated-away' not in JWKS" in error.message
    assert error.code == "id_token_kid"


def test_alg_none_is_refused(jwks: dict[str, Any]) -> None:
    """An unsigned token (alg none) is refused before any key is looked at."""
    token = compact({"alg": "none", "kid": "rsa-1"}, claims(), lambda _data: b"")
    token = token.rstrip(".") + "."
    assert refused(token, jwks).message == "id_token alg 'none' not allowed"


def test_hs256_signed_with_public_key_text_is_refused(
    rsa_key: RSAKey, jwks: dict[str, Any]
) -> None:
    """The HMAC key-confusion attack (public key text as HMAC secret) is refused."""
    public_pem = rsa_key.as_pem(private=False)

    def sign(data: bytes) -> bytes:
        return hmac.new(public_pem, data, hashlib.sha256).digest()

    token = compact({"alg": "HS256", "kid": "rsa-1"}, claims(), sign)
    assert refused(token, jwks).message == "id_token alg 'HS256' not allowed"


def test_algorithm_outside_allow_list_is_refused(ec_key: ECKey, jwks: dict[str, Any]) -> None:
    """A valid ES256 token is refused when only RS256 is allowed."""
    token = jwt.encode({"alg": "ES256", "kid": "ec-1"}, claims(), ec_key, algorithms=["ES256"])
    error = refused(token, jwks, algorithms=("RS256",))
    assert error.message == "id_token alg 'ES256' not allowed"


def test_key_of_wrong_type_for_alg_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token claiming ES256 under an RSA key's kid is refused."""
    token = compact({"alg": "ES256", "kid": "rsa-1"}, claims(), lambda _d: b"\x00" * 64)
    assert "does not fit alg 'ES256'" in refused(token, jwks).message


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d.e",
        "!!!.???.###",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0",
        "x" * 20_000,
    ],
)
def test_malformed_token_is_refused(token: str, jwks: dict[str, Any]) -> None:
    """Truncated, garbage, encrypted-shaped or oversized tokens are refused as malformed."""
    error = refused(token, jwks)
    assert error.message.startswith("id_token malformed")


def test_truncated_signature_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """A token cut inside its signature is refused naming the signature."""
    token = rs256(rsa_key, claims())
    assert refused(token[:-10], jwks).message == "id_token signature invalid"


def test_non_string_token_is_refused(jwks: dict[str, Any]) -> None:
    """A value that is not a string is refused, not crashed on."""
    assert refused(None, jwks).code == "id_token_malformed"  # type: ignore[arg-type]


def test_critical_header_extension_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """Unknown critical header parameters invalidate the token (RFC 7515 4.1.11)."""
    token = compact({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}, claims(), lambda d: b"s")
    assert "critical" in refused(token, jwks).message


def test_missing_subject_is_refused(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    """An ID token without sub is refused."""
    assert refused(rs256(rsa_key, claims(sub=None)), jwks).message == "id_token sub missing"


def test_token_without_kid_uses_the_only_fitting_key(rsa_key: RSAKey) -> None:
    """With one key in the set, a token without kid still verifies."""
    token = jwt.encode({"alg": "RS256"}, claims(), rsa_key, algorithms=["RS256"])
    single = {"keys": [rsa_key.as_dict(private=False)]}
    assert verify(token, single).subject == "4242"


def test_token_without_kid_among_several_keys_is_refused(
    rsa_key: RSAKey, other_rsa_key: RSAKey
) -> None:
    """With several candidate keys, a token must name its kid (OIDC Core 10.1)."""
    token = jwt.encode({"alg": "RS256"}, claims(), rsa_key, algorithms=["RS256"])
    keys = {"keys": [rsa_key.as_dict(private=False), other_rsa_key.as_dict(private=False)]}
    assert "several keys" in refused(token, keys).message


def test_malformed_jwks_is_refused(rsa_key: RSAKey) -> None:
    """A key set without a keys list cannot vouch for any token."""
    assert refused(rs256(rsa_key, claims()), {"nokeys": []}).code == "id_token_jwks"


def test_symmetric_algorithm_cannot_be_allowed() -> None:
    """Asking to allow HS256 is a configuration error."""
    with pytest.raises(ValueError, match="HS256"):
        verify_id_token(
            "a.b.c", jwks={"keys": []}, issuer=ISS, audience=AUD, now=NOW, algorithms=("HS256",)
        )


def test_leeway_is_validated() -> None:
    """A negative leeway is rejected."""
    with pytest.raises(ValueError, match="leeway"):
        verify_id_token("a.b.c", jwks={"keys": []}, issuer=ISS, audience=AUD, now=NOW, leeway=-1)


def test_token_header_returns_unverified_header(rsa_key: RSAKey) -> None:
    """token_header exposes the kid to choose a key with."""
    assert token_header(rs256(rsa_key, claims()))["kid"] == "rsa-1"


def test_ed25519_key_pem_roundtrip_is_not_needed_for_verification(
    ed_private: Ed25519PrivateKey,
) -> None:
    """An OKP JWK built from raw public bytes verifies EdDSA tokens."""
    raw = ed_private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    keys = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": "k"}]}
    token = compact({"alg": "EdDSA", "kid": "k"}, claims(), ed_private.sign)
    assert verify(token, keys).subject == "4242"


# -- JwksCache ----------------------------------------------------------------------------

KEYS = {"keys": [{"kty": "RSA", "kid": "a", "n": "x", "e": "AQAB"}]}


def make_cache(**options: float) -> tuple[JwksCache, FakeClock]:
    clock = FakeClock()
    return JwksCache(clock=clock, options=JwksCacheOptions(**options)), clock


def test_empty_cache_needs_refresh_and_is_unusable() -> None:
    """Before the first fetch there is nothing to verify with."""
    cache, _clock = make_cache()
    assert cache.needs_refresh()
    assert not cache.is_usable()
    assert cache.document() is None


def test_fresh_keys_need_no_refresh_until_refresh_after() -> None:
    """Keys are due for refresh once older than refresh_after."""
    cache, clock = make_cache(refresh_after=100, max_stale=1000)
    cache.update(KEYS)
    assert not cache.needs_refresh()
    clock.advance(100)
    assert cache.needs_refresh()
    assert cache.is_usable()


def test_staleness_is_bounded() -> None:
    """Past max_stale the keys are no longer served."""
    cache, clock = make_cache(refresh_after=100, max_stale=1000)
    cache.update(KEYS)
    clock.advance(1000)
    assert cache.document() == KEYS
    clock.advance(1)
    assert cache.document() is None


def test_update_with_original_fetch_time_keeps_age() -> None:
    """Keys restored from disk keep their original fetch time."""
    cache, clock = make_cache(refresh_after=100, max_stale=1000)
    cache.update(KEYS, fetched_at=clock.time() - 500)
    assert cache.age() == 500
    assert cache.needs_refresh()


def test_find_returns_key_by_kid() -> None:
    """find looks a key up by kid and returns None for an unknown one."""
    cache, _clock = make_cache()
    cache.update(KEYS)
    assert cache.find("a") == KEYS["keys"][0]
    assert cache.find("b") is None
    assert cache.find(None) == KEYS["keys"][0]


def test_only_one_fetch_in_flight() -> None:
    """A second caller is told not to fetch while the first one is fetching."""
    cache, _clock = make_cache()
    assert cache.begin_fetch()
    assert not cache.begin_fetch()
    cache.end_fetch(KEYS)
    assert cache.document() == KEYS


def test_unknown_kid_refetch_is_rate_limited() -> None:
    """Forced refetches for unknown kids happen at most once per min_refetch_interval."""
    cache, clock = make_cache(min_refetch_interval=60)
    assert cache.begin_fetch()
    cache.end_fetch(KEYS)
    assert not cache.begin_fetch(force=True)
    clock.advance(59)
    assert not cache.begin_fetch(force=True)
    clock.advance(1)
    assert cache.begin_fetch(force=True)


def test_fresh_cache_does_not_fetch_without_force() -> None:
    """Fresh keys are not refetched unless forced."""
    cache, clock = make_cache(min_refetch_interval=0)
    cache.update(KEYS)
    clock.advance(1)
    assert not cache.begin_fetch()
    assert cache.begin_fetch(force=True)


def test_failed_fetch_keeps_old_keys_and_rate_limits() -> None:
    """A failed fetch keeps the old keys and does not allow an immediate retry."""
    cache, clock = make_cache(refresh_after=10, max_stale=1000, min_refetch_interval=30)
    cache.update(KEYS)
    clock.advance(10)
    assert cache.begin_fetch()
    cache.end_fetch(None)
    assert cache.document() == KEYS
    assert not cache.begin_fetch()
    clock.advance(30)
    assert cache.begin_fetch()


def test_stuck_fetch_stops_blocking_after_fetch_timeout() -> None:
    """A fetch that never reports back frees the slot after fetch_timeout."""
    cache, clock = make_cache(min_refetch_interval=0, fetch_timeout=5)
    assert cache.begin_fetch()
    clock.advance(4)
    assert not cache.begin_fetch()
    clock.advance(1)
    assert cache.begin_fetch()


def test_malformed_key_set_is_rejected_and_old_keys_kept() -> None:
    """end_fetch with a malformed set raises and keeps the previous keys."""
    cache, _clock = make_cache(min_refetch_interval=0)
    cache.update(KEYS)
    assert cache.begin_fetch(force=True)
    with pytest.raises(ValueError, match="kty"):
        cache.end_fetch({"keys": [{"kid": "no-kty"}]})
    assert cache.document() == KEYS
    assert cache.begin_fetch(force=True)


def test_cached_document_is_a_copy() -> None:
    """Mutating a returned document does not change the cache."""
    cache, _clock = make_cache()
    cache.update(KEYS)
    document = cache.document()
    assert document is not None
    document["keys"].clear()
    assert cache.document() == KEYS


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"refresh_after": 0}, "refresh_after"),
        ({"refresh_after": 100, "max_stale": 50}, "max_stale"),
        ({"min_refetch_interval": -1}, "min_refetch_interval"),
        ({"fetch_timeout": 0}, "fetch_timeout"),
    ],
)
def test_cache_options_are_validated(options: dict[str, float], name: str) -> None:
    """Invalid options raise ValueError naming the field."""
    with pytest.raises(ValueError, match=name):
        JwksCacheOptions(**options)
