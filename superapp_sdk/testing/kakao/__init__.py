"""A simulated Kakao data center for tests and drills: Kakao Login, KakaoTalk Message,
KakaoPay and Kakao Mobility, faithful to Kakao's public REST documentation, in one ASGI
app that can be set on fire one service at a time.

::

    from superapp_sdk.testing.kakao import DataCenterServer, Fire, KakaoDataCenter

    dc = KakaoDataCenter()                       # seeded: dc.credentials
    transport = httpx.ASGITransport(app=dc.app)  # in-process ...
    with DataCenterServer(dc) as server:         # ... or on loopback, behind fault proxies
        kakao = server.adapters()
        server.burn(Fire.ERROR_5XX, ["payment"])
        server.lose_next("payment", Fire.APPLY_500)   # the next charge runs, its answer 500s
        assert len(dc.payment.effects("payment.charge")) == 1

Each service's state class is public for tests that need more than the seeded setup; each
of ``dc.payment``, ``dc.chat`` and ``dc.mobility`` lists what it executed as
:class:`Effect` records (``effects()``).
"""

from superapp_sdk.testing._proxy import Burn
from superapp_sdk.testing.kakao._asgi import App, Fire, FireControl
from superapp_sdk.testing.kakao._datacenter import (
    CAPABILITIES,
    DataCenterCredentials,
    DataCenterServer,
    KakaoAdapters,
    KakaoDataCenter,
)
from superapp_sdk.testing.kakao._effects import EFFECT_KINDS, Effect
from superapp_sdk.testing.kakao.chat import ChatState
from superapp_sdk.testing.kakao.identity import IdentityState
from superapp_sdk.testing.kakao.mobility import MobilityState
from superapp_sdk.testing.kakao.payment import PaymentState

__all__ = [
    "CAPABILITIES",
    "EFFECT_KINDS",
    "App",
    "Burn",
    "ChatState",
    "DataCenterCredentials",
    "DataCenterServer",
    "Effect",
    "Fire",
    "FireControl",
    "IdentityState",
    "KakaoAdapters",
    "KakaoDataCenter",
    "MobilityState",
    "PaymentState",
]
