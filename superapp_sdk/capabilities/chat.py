"""Chat: send a message to a user through a messenger.

The models every chat provider returns, and :class:`ChatProvider`, the Protocol a chat
adapter implements (KakaoTalk, LINE, e-mail). Adapters return sans-IO calls (see
:mod:`superapp_sdk.providers._http`); the facade drives them through the resilience
pipeline and the outbox.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from superapp_sdk.capabilities._common import Provider

if TYPE_CHECKING:
    from superapp_sdk.providers._http import Call

__all__ = ["ChatProvider", "Message", "MessageReceipt"]


def _check_str(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.{name} must be a non-empty str, got {value!r}")


def _check_time(owner: str, name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{owner}.{name} must be seconds since the epoch (>= 0), got {value!r}")


@dataclass(frozen=True, slots=True)
class MessageReceipt:
    """Proof that a provider accepted a message for delivery.

    Attributes:
        message_id: the provider's message id, or one derived from the idempotency key
            when the provider returns none (KakaoTalk).
        provider: the provider name (``"kakao.talk"``).
        to: the provider address the message went to (Kakao friend uuid, LINE userId).
        conversation: the app's conversation id, when given.
        accepted_at: when the provider accepted it, seconds since the epoch.
    """

    message_id: str
    provider: str
    to: str
    conversation: str | None
    accepted_at: float

    def __post_init__(self) -> None:
        for name in ("message_id", "provider", "to"):
            _check_str("MessageReceipt", name, getattr(self, name))
        _check_str("MessageReceipt", "conversation", self.conversation, optional=True)
        _check_time("MessageReceipt", "accepted_at", self.accepted_at)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    Attributes:
        message_id: the message id.
        conversation: the app's conversation id.
        sender: who sent it (an app user id or a provider address).
        text: the text.
        sent_at: seconds since the epoch.
    """

    message_id: str
    conversation: str
    sender: str
    text: str
    sent_at: float

    def __post_init__(self) -> None:
        for name in ("message_id", "conversation", "sender"):
            _check_str("Message", name, getattr(self, name))
        if not isinstance(self.text, str):
            raise ValueError(f"Message.text must be a str, got {self.text!r}")
        _check_time("Message", "sent_at", self.sent_at)


@runtime_checkable
class ChatProvider(Provider, Protocol):
    """What a chat adapter implements.

    Operation names for ``operations``: ``"chat.send"`` and ``"chat.history"``; a
    provider without a history API (KakaoTalk) leaves ``"chat.history"`` out and the
    facade serves history from elsewhere.

    An unknown or unreachable recipient raises :class:`~superapp_sdk._errors.Declined`
    (``"unknown recipient"``), which never fails over.
    """

    def send(
        self, *, to: str, text: str, conversation: str | None, idempotency_key: str
    ) -> Call[MessageReceipt]:
        """Send ``text`` to the provider address ``to``.

        ``idempotency_key`` identifies this logical message across retries, failovers
        and outbox replays; providers that deduplicate by key receive it, the others use
        it for the receipt's ``message_id``.
        """
        ...

    def history(self, conversation: str, *, limit: int) -> Call[list[Message]]:
        """The last ``limit`` messages of ``conversation``, oldest first."""
        ...
