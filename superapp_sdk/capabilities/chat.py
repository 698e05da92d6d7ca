"""Chat: send a message to a user through a messenger.

The models every chat provider returns, and :class:`ChatProvider`, the Protocol a chat
adapter implements (KakaoTalk, LINE, e-mail). Adapters return sans-IO calls (see
:mod:`superapp_sdk.providers._http`); the facade drives them through the resilience
pipeline and the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from superapp_sdk.capabilities._common import Provider, require_seconds, require_text

if TYPE_CHECKING:
    from superapp_sdk.providers._http import Call

__all__ = ["ChatProvider", "Message", "MessageReceipt"]


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
            require_text("MessageReceipt", name, getattr(self, name))
        require_text("MessageReceipt", "conversation", self.conversation, optional=True)
        require_seconds("MessageReceipt", "accepted_at", self.accepted_at)


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
            require_text("Message", name, getattr(self, name))
        if not isinstance(self.text, str):
            raise ValueError(f"Message.text must be a str, got {self.text!r}")
        require_seconds("Message", "sent_at", self.sent_at)


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
