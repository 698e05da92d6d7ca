"""Contract suite for every chat provider, run against its simulator.

Each provider is wired to its simulator by a rig (``RIGS``; alternates append theirs).
Every test runs twice: in-process through ``httpx.ASGITransport`` with the async driver,
and over a real loopback socket (uvicorn) with the sync driver. Tests speak to the
provider only through the :class:`ChatProvider` Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from superapp_sdk._errors import Declined, Unauthorized
from superapp_sdk.capabilities.chat import ChatProvider, Message
from superapp_sdk.providers._http import Call
from superapp_sdk.providers.kakao.talk import KakaoTalk
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.kakao import chat as kakao_chat
from superapp_sdk.testing.kakao._asgi import App
from tests._contract import TRANSPORTS, Reach, reach

T = TypeVar("T")


@dataclass
class ChatRig:
    """One chat provider and its simulator.

    Attributes:
        app: the simulator, an ASGI app.
        make: builds the provider for a simulator base URL (``bad_credentials`` for a
            provider whose credentials the simulator refuses).
        known: an address the provider can deliver to.
        unknown: an address the provider must refuse.
        delivered: the texts the simulator delivered to an address, oldest first.
    """

    app: App
    make: Callable[..., ChatProvider]
    known: str
    unknown: str
    delivered: Callable[[str], list[str]]


def kakao_rig() -> ChatRig:
    state = kakao_chat.ChatState(clock=FakeClock())
    state.add_account("sender-token", user="3141592653", friends=["friend-uuid-1"])

    def make(base: str, *, bad_credentials: bool = False) -> ChatProvider:
        return KakaoTalk(
            access_token="revoked-token" if bad_credentials else "sender-token",
            api_base_url=f"{base}/kapi",
            link_url="https://app.example",
            clock=FakeClock(),
        )

    return ChatRig(
        app=App(kakao_chat.routes(state)),
        make=make,
        known="friend-uuid-1",
        unknown="stranger-uuid",
        delivered=lambda to: [d.text for d in state.deliveries(to=to)],
    )


RIGS: dict[str, Callable[[], ChatRig]] = {"kakao.talk": kakao_rig}


class Bench:
    """A rig plus a way to reach its simulator: in-process (async) or loopback (sync)."""

    def __init__(self, rig: ChatRig, where: Reach) -> None:
        self.rig = rig
        self.where = where
        self.base = where.base
        self.provider = rig.make(where.base)

    async def run(self, call: Call[T], provider: ChatProvider | None = None) -> T:
        name = (provider or self.provider).name
        return await self.where.run(call, provider=name, operation="chat.send")


@pytest.fixture(params=sorted(RIGS))
def rig(request: pytest.FixtureRequest) -> ChatRig:
    return RIGS[request.param]()


@pytest.fixture(params=TRANSPORTS)
async def bench(rig: ChatRig, request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    async with reach(rig.app, request.param) as where:
        yield Bench(rig, where)


async def test_provider_declares_its_identity(bench: Bench) -> None:
    """The provider names its capability and failure domain and offers chat.send."""
    assert isinstance(bench.provider, ChatProvider)
    assert bench.provider.capability.value == "chat"
    assert bench.provider.failure_domain
    assert "chat.send" in bench.provider.operations


async def test_send_to_known_recipient_is_delivered(bench: Bench) -> None:
    """A message to a reachable address is delivered and acknowledged by a receipt."""
    receipt = await bench.run(
        bench.provider.send(
            to=bench.rig.known, text="ride arriving", conversation="c-1", idempotency_key="k-1"
        )
    )
    assert receipt.provider == bench.provider.name
    assert receipt.to == bench.rig.known
    assert receipt.conversation == "c-1"
    assert receipt.message_id
    assert bench.rig.delivered(bench.rig.known) == ["ride arriving"]


async def test_send_to_unknown_recipient_is_declined(bench: Bench) -> None:
    """An address the provider cannot reach is declined and nothing is delivered."""
    with pytest.raises(Declined, match="unknown recipient") as info:
        await bench.run(
            bench.provider.send(
                to=bench.rig.unknown, text="hello", conversation=None, idempotency_key="k-2"
            )
        )
    assert info.value.retryable is False
    assert bench.rig.delivered(bench.rig.unknown) == []


async def test_unicode_text_arrives_intact(bench: Bench) -> None:
    """Korean text and emoji survive encoding end to end."""
    text = "택시가 도착했습니다 🚕"
    await bench.run(
        bench.provider.send(to=bench.rig.known, text=text, conversation=None, idempotency_key="k")
    )
    assert bench.rig.delivered(bench.rig.known) == [text]


async def test_messages_arrive_in_send_order(bench: Bench) -> None:
    """Sequential sends are delivered in order."""
    for index in range(3):
        await bench.run(
            bench.provider.send(
                to=bench.rig.known, text=f"m{index}", conversation="c", idempotency_key=f"k{index}"
            )
        )
    assert bench.rig.delivered(bench.rig.known) == ["m0", "m1", "m2"]


async def test_refused_credentials_are_unauthorized(bench: Bench) -> None:
    """A provider whose credentials are refused raises Unauthorized and delivers nothing."""
    wrong = bench.rig.make(bench.base, bad_credentials=True)
    with pytest.raises(Unauthorized):
        await bench.run(
            wrong.send(to=bench.rig.known, text="x", conversation=None, idempotency_key="k"),
            provider=wrong,
        )
    assert bench.rig.delivered(bench.rig.known) == []


async def test_history_is_served_only_when_declared(bench: Bench) -> None:
    """history works when "chat.history" is declared, and is refused when it is not."""
    if "chat.history" not in bench.provider.operations:
        with pytest.raises(NotImplementedError):
            bench.provider.history("c-1", limit=10)
        return
    await bench.run(
        bench.provider.send(to=bench.rig.known, text="hi", conversation="c-1", idempotency_key="k")
    )
    messages = await bench.run(bench.provider.history("c-1", limit=10))
    assert all(isinstance(m, Message) for m in messages)
    assert [m.text for m in messages][-1:] == ["hi"]
