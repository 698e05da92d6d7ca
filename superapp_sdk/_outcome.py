"""What every operation returns: the value, and how it was served."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Attempt", "Outcome", "Via"]

T = TypeVar("T")


class Via(enum.Enum):
    """How an operation was served."""

    #: The first-choice provider answered.
    PRIMARY = "primary"
    #: An alternate provider answered after the primary failed or was skipped.
    ALTERNATE = "alternate"
    #: No provider answered; the last good value was returned (see ``stale_for``).
    CACHE = "cache"
    #: No provider could take the write now; it is persisted in the outbox (see ``ticket``).
    QUEUED = "queued"
    #: Served locally without any provider: a grace session, a voucher, a signed receipt,
    #: a timetable estimate.
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one provider.

    Attributes:
        provider: provider name (``"kakao.pay"``).
        error: the error kind (exception class name), or ``None`` for the answer used.
        seconds: how long the try took; 0 when it was skipped without a network call.
        skipped: True when the provider was not called (breaker or domain open).
    """

    provider: str
    error: str | None
    seconds: float
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The result of an operation, and how it was served.

    Attributes:
        value: the result.
        via: how it was served (:class:`Via`).
        provider: who served it; ``None`` when served locally.
        degraded: True for anything but the primary provider answering.
        stale_for: for ``Via.CACHE``, how old the value is in seconds.
        ticket: the outbox id (``Via.QUEUED``) or voucher id (payments served offline).
        attempts: every try made, in order.
        possible_duplicates: providers where this write may *also* have executed: an
            earlier try there had its answer lost and the provider cannot deduplicate,
            and the app's policy chose to deliver elsewhere rather than hold (see
            :class:`~superapp_sdk.ChatPolicy`). Empty for every other answer.
    """

    value: T
    via: Via
    provider: str | None = None
    degraded: bool = False
    stale_for: float | None = None
    ticket: str | None = None
    attempts: tuple[Attempt, ...] = field(default=())
    possible_duplicates: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.via is not Via.PRIMARY and not self.degraded:
            object.__setattr__(self, "degraded", True)
