"""A whole domain dark (accepts, never answers), default settings otherwise: the first call
makes one try at the dark provider (it used to make two, a pooled keep-alive connection
closed around the 5 s mark counting as a second chance), and later calls make none."""

from __future__ import annotations

from pathlib import Path

import pytest

from superapp_sdk import SuperApp, Via
from superapp_sdk.testing.echo import EchoChat
from superapp_sdk.testing.kakao import Burn, DataCenterServer, KakaoDataCenter

pytestmark = pytest.mark.network


def test_the_first_call_into_a_dark_domain_makes_one_try_and_later_calls_none(
    tmp_path: Path,
) -> None:
    """Counted from the attempts and the proxy's connections, not from a clock."""
    dc = KakaoDataCenter()
    with DataCenterServer(dc) as server:
        echo = EchoChat()
        echo.add_recipient("m@echo")
        app = SuperApp(chat=[server.adapters().talk, echo], state_dir=tmp_path / "s")
        try:
            app.directory.put("u", provider="kakao.talk", address=dc.credentials.friend_uuids[0])
            app.directory.put("u", provider="echo.chat", address="m@echo")
            app.chat.send(to="u", text="warm")  # leaves a pooled keep-alive connection
            server.burn(Burn.HANG)
            first = app.chat.send(to="u", text="into the dark")
            second = app.chat.send(to="u", text="again")
        finally:
            app.close()
    tries = [a for a in first.attempts if a.provider == "kakao.talk" and not a.skipped]
    assert len(tries) == 1
    assert tries[0].error == "OperationTimeout"
    assert (first.via, second.via) == (Via.ALTERNATE, Via.ALTERNATE)
    assert all(a.skipped or a.provider != "kakao.talk" or a.seconds < 1.0 for a in second.attempts)
    assert [d.text for d in dc.chat.deliveries()] == ["warm"]
