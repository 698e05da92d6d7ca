"""Kakao as the primary provider of every capability.

Four adapters, one per capability, each a sans-IO flow over Kakao's public REST APIs and
each in the ``"kakao"`` failure domain (they share one data center, as the 15 October
2022 fire showed)::

    from superapp_sdk.providers.kakao import KakaoLogin, KakaoMobility, KakaoPay, KakaoTalk

    login = KakaoLogin(client_id="...", client_secret="...", redirect_uri="...")
    talk = KakaoTalk(access_token=lambda: tokens.current())
    pay = KakaoPay(secret_key="...")
    mobility = KakaoMobility(rest_api_key="...")

Every adapter takes its base URL(s) as keyword arguments (``auth_base_url``,
``api_base_url``, ``pay_base_url``, ``mobility_base_url``) so tests point it at the
simulated data center in :mod:`superapp_sdk.testing.kakao`.
"""

from superapp_sdk.providers.kakao.login import KakaoLogin
from superapp_sdk.providers.kakao.mobility import KakaoMobility
from superapp_sdk.providers.kakao.pay import KakaoPay
from superapp_sdk.providers.kakao.talk import KakaoTalk

__all__ = ["KakaoLogin", "KakaoMobility", "KakaoPay", "KakaoTalk"]
