"""Writes that no configured provider could ever take are refused at once, never queued;
one that becomes undeliverable while queued is dead-lettered at once and does not hold
back its conversation."""

from __future__ import annotations

from pathlib import Path

import pytest

from superapp_sdk import (
    DeadLettered,
    OfflinePolicy,
    SuperApp,
    Undeliverable,
    Via,
)
from superapp_sdk._errors import ProviderConnectError
from superapp_sdk.testing.echo import EchoChat, EchoPay

USER = "user-minji"


def _app(tmp_path: Path, **providers: object) -> SuperApp:
    return SuperApp(state_dir=tmp_path / "state", **providers)  # type: ignore[arg-type]


def test_a_message_to_a_user_with_no_address_is_refused(tmp_path: Path) -> None:
    """No chat provider has the recipient: Undeliverable (no_address), nothing queued."""
    app = _app(tmp_path, chat=[EchoChat()])
    with app:
        with pytest.raises(Undeliverable) as info:
            app.chat.send(to="nobody", text="hello", conversation="c-1")
        assert app.health().outbox_depth == 0
    assert info.value.code == "no_address"
    assert "nobody" in str(info.value)


def test_a_message_with_no_chat_provider_is_refused(tmp_path: Path) -> None:
    """An app with no chat provider refuses a send (it was queued for good)."""
    app = _app(tmp_path, payment=[EchoPay()])
    with app, pytest.raises(Undeliverable) as info:
        app.chat.send(to=USER, text="hello")
    assert info.value.code == "no_provider"


def test_a_charge_with_no_billing_key_anywhere_is_refused(tmp_path: Path) -> None:
    """No payment provider holds a billing key of the user: refused, no order recorded,
    so a charge after the key is added goes through."""
    pay = EchoPay()
    app = _app(tmp_path, payment=[pay])
    with app:
        with pytest.raises(Undeliverable) as info:
            app.payment.charge(
                order_id="o-1", amount=1_000, user_id=USER, offline=OfflinePolicy.QUEUE
            )
        assert info.value.code == "no_billing_key"
        app.directory.put(USER, provider="echo.pay", billing_key=pay.issue_billing_key(USER))
        out = app.payment.charge(order_id="o-1", amount=1_000, user_id=USER)
    assert out.via is Via.PRIMARY
    assert len(pay.effects("payment.charge", order_id="o-1")) == 1


def test_a_charge_with_no_payment_provider_is_refused(tmp_path: Path) -> None:
    """An app with no payment provider refuses a charge, even with OfflinePolicy.QUEUE."""
    app = _app(tmp_path, chat=[EchoChat()])
    with app, pytest.raises(Undeliverable) as info:
        app.payment.charge(order_id="o-2", amount=1_000, user_id=USER, offline=OfflinePolicy.QUEUE)
    assert info.value.code == "no_provider"


def test_an_item_undeliverable_in_the_queue_does_not_hold_back_its_conversation(
    tmp_path: Path,
) -> None:
    """Two messages of one conversation are queued; the first one's recipient loses its
    address; it is dead-lettered at its first replay and the second is delivered."""
    chat = EchoChat()
    chat.add_recipient("a@echo")
    chat.add_recipient("b@echo")
    app = _app(tmp_path, chat=[chat])
    dead: list[DeadLettered] = []
    app.on(DeadLettered, dead.append)
    app.directory.put("user-a", provider="echo.chat", address="a@echo")
    app.directory.put("user-b", provider="echo.chat", address="b@echo")
    chat.fail = ProviderConnectError("down", request_sent=False)
    first = app.chat.send(to="user-a", text="one", conversation="trip")
    second = app.chat.send(to="user-b", text="two", conversation="trip")
    assert (first.via, second.via) == (Via.QUEUED, Via.QUEUED)
    app.directory.put("user-a", provider="other.chat", address="a@other")
    _forget(app, "user-a", "echo.chat")
    chat.fail = None
    with app:
        assert app.drain(10.0)
    assert [e.text for e in chat.effects("chat.send")] == ["two"]
    assert [d.item.ticket for d in dead] == [first.ticket]
    assert dead[0].item.attempts == 1


def _forget(app: SuperApp, user_id: str, provider: str) -> None:
    """Remove the user's address at ``provider`` (the directory has no public removal)."""
    directory = app._parts.state.directory
    data = directory._load(user_id)
    del data["addresses"][provider]
    directory._save(user_id, data)
