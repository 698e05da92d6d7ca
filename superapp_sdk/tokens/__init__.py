"""Tokens verified offline: ID-token (JWT) verification and a JSON Web Key Set cache.

Kakao Login and any OpenID Connect provider sign ID tokens with keys they publish as a
JWKS; with the key set cached locally, a token can be checked while the provider is down.
"""

from superapp_sdk.tokens._jwks import JwksCache, JwksCacheOptions
from superapp_sdk.tokens._jwt import (
    DEFAULT_ALGORITHMS,
    MAX_TOKEN_CHARS,
    SUPPORTED_ALGORITHMS,
    token_claims,
    token_header,
    verify_id_token,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_CHARS",
    "SUPPORTED_ALGORITHMS",
    "JwksCache",
    "JwksCacheOptions",
    "token_claims",
    "token_header",
    "verify_id_token",
]
