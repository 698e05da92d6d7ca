"""At most once under load: hundreds of concurrent charges and messages through one
``AsyncSuperApp`` against a saturated loopback data center that then hangs, checked
against what the providers executed. Bounded in count; nothing here is timed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from superapp_sdk import (
    AsyncSuperApp,
    OfflinePolicy,
    SuperAppError,
    Timeouts,
    Via,
)
from superapp_sdk.capabilities.payment import PaymentStatus
from superapp_sdk.testing.echo import EchoChat, EchoPay
from superapp_sdk.testing.kakao import Burn, DataCenterServer, KakaoDataCenter

pytestmark = pytest.mark.network

USER = "user-minji"
#: Concurrent operations of each kind (charges, messages).
N = 150


async def _run(tmp: Path, server: DataCenterServer, dc: KakaoDataCenter) -> None:
    kakao = server.adapters()
    echo_pay, echo_chat = EchoPay(), EchoChat()
    limits = httpx.Limits(max_connections=8)  # fewer connections than callers: saturated
    async with httpx.AsyncClient(limits=limits) as client:
        app = AsyncSuperApp(
            chat=[kakao.talk, echo_chat],
            payment=[kakao.pay, echo_pay],
            state_dir=tmp / "state",
            http_client=client,
            timeouts=Timeouts(read=0.5, write=0.5, payment=0.5, floor=0.05),
        )
        uuid = dc.credentials.friend_uuids[0]
        app.directory.put(USER, provider="kakao.talk", address=uuid)
        app.directory.put(USER, provider="echo.chat", address="minji@echo")
        app.directory.put(USER, provider="kakao.pay", billing_key=dc.credentials.billing_key)
        app.directory.put(USER, provider="echo.pay", billing_key=echo_pay.issue_billing_key(USER))
        acked: list[tuple[str, str, str]] = []

        async def charge(i: int) -> None:
            try:
                out = await app.payment.charge(
                    order_id=f"load-{i}", amount=1_000, user_id=USER, offline=OfflinePolicy.QUEUE
                )
            except SuperAppError:
                return
            if out.via is not Via.QUEUED and out.value.status is PaymentStatus.APPROVED:
                acked.append(("charge", f"load-{i}", out.provider or ""))

        async def send(i: int) -> None:
            try:
                out = await app.chat.send(to=USER, text=f"load-m{i}", idempotency_key=f"k{i}")
            except SuperAppError:
                return
            if out.via in (Via.PRIMARY, Via.ALTERNATE):
                acked.append(("send", f"load-m{i}", out.provider or ""))

        async with app:
            half = range(N // 2)
            await asyncio.gather(*(charge(i) for i in half), *(send(i) for i in half))
            # The primary applies every write and loses the answer (reset)...
            server.burn(Burn.LOSE_RESET, ["payment", "chat"])
            rest = range(N // 2, N)
            await asyncio.gather(*(charge(i) for i in rest), *(send(i) for i in rest))
            # ...then goes dark (accepts, never answers), while the app retries everything,
            # as apps do after an error.
            server.burn(Burn.HANG, ["payment", "chat"])
            every = range(N)
            await asyncio.gather(*(charge(i) for i in every), *(send(i) for i in every))
            server.restore()
            await asyncio.gather(*(charge(i) for i in every), *(send(i) for i in every))
            await app.drain(10.0)

    charges = Counter[str]()
    for order, executed in dc.payment.ledger.items():
        charges[order] += len(executed)
    for i in range(N):
        charges[f"load-{i}"] += len(echo_pay.charges(f"load-{i}"))
    twice = {order: n for order, n in charges.items() if n > 1}
    assert twice == {}, f"orders charged more than once: {twice}"

    kakao_sent = Counter(d.text for d in dc.chat.deliveries(to=uuid))
    echo_sent = Counter(m.text for m in echo_chat.messages())
    assert [t for t, n in kakao_sent.items() if n > 1] == []
    assert [t for t, n in echo_sent.items() if n > 1] == []

    for kind, name, provider in acked:
        if kind == "charge":
            ledger = dc.payment.charges(name) if provider == "kakao.pay" else echo_pay.charges(name)
            assert len(ledger) == 1, f"{name} acknowledged by {provider}, not executed there"
        else:
            sent = kakao_sent if provider == "kakao.talk" else echo_sent
            assert sent[name] == 1, f"{name} acknowledged by {provider}, not delivered there"


def test_hundreds_of_concurrent_writes_run_at_most_once(tmp_path: Path) -> None:
    """Concurrent charges and sends, a saturated primary that loses answers after applying
    writes and then hangs, app retries and the outbox: every order charged at most once
    in all, every message at most once by each provider, and every acknowledged write in
    its provider's ledger."""
    dc = KakaoDataCenter(hang_seconds=5.0)
    with DataCenterServer(dc) as server:
        asyncio.run(_run(tmp_path, server, dc))
