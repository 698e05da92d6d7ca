"""What every provider of every capability has in common."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from superapp_sdk.capabilities._currencies import MAX_MAJOR_UNITS, minor_units

__all__ = [
    "Capability",
    "Money",
    "Provider",
    "deduplicated_operations",
    "require_seconds",
    "require_text",
]


class Capability(enum.Enum):
    """The four things an app borrows from a super-app."""

    CHAT = "chat"
    PAYMENT = "payment"
    IDENTITY = "identity"
    MOBILITY = "mobility"


@runtime_checkable
class Provider(Protocol):
    """Attributes every provider adapter exposes to the router.

    Attributes:
        name: unique provider name, ``"<vendor>.<product>"`` (``"kakao.pay"``).
        capability: which capability it serves.
        failure_domain: providers sharing infrastructure share a domain (``"kakao"``);
            when several capabilities of one domain fail together, the whole domain opens.
        operations: the operations this provider implements (``"chat.send"``); the router
            skips a provider for an operation it does not list.

    An adapter may also expose ``deduplicates: frozenset[str]``, the operations its
    provider documents as deduplicated by the idempotency key the SDK passes (Stripe's
    and Toss's ``Idempotency-Key``, LINE's ``X-Line-Retry-Key``). Only those are ever
    sent to it again after a try that may have executed; see
    :func:`deduplicated_operations`.
    """

    @property
    def name(self) -> str: ...

    @property
    def capability(self) -> Capability: ...

    @property
    def failure_domain(self) -> str: ...

    @property
    def operations(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of an ISO 4217 currency (KRW has none: 1 = 1 won)."""

    amount: int
    currency: str = "KRW"

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise ValueError(f"Money.amount must be an int of minor units, got {self.amount!r}")
        if self.amount < 0:
            raise ValueError(f"Money.amount must be >= 0, got {self.amount!r}")
        digits = minor_units(self.currency) if isinstance(self.currency, str) else None
        if digits is None:
            raise ValueError(
                "Money.currency must be a chargeable ISO 4217 code like 'KRW' or 'USD',"
                f" got {self.currency!r}"
            )
        limit = MAX_MAJOR_UNITS * 10**digits
        if self.amount > limit:
            raise ValueError(
                f"Money.amount {self.amount} is over the limit of {limit} minor units of"
                f" {self.currency} ({MAX_MAJOR_UNITS:,} {self.currency})"
            )


def require_text(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    """``ValueError`` naming ``owner.name`` unless ``value`` is a non-empty string (or
    ``None`` when ``optional``): the shared check of every capability model."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.{name} must be a non-empty string, got {value!r}")


def require_seconds(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    """``ValueError`` naming ``owner.name`` unless ``value`` is a finite number of seconds
    >= 0 (epoch seconds or a duration; ``None`` when ``optional``). Booleans, NaN and
    infinities are refused: none of them is a time."""
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{owner}.{name} must be a finite number of seconds >= 0, got {value!r}")


def deduplicated_operations(provider: object) -> frozenset[str]:
    """The operations ``provider`` deduplicates by idempotency key (none unless it says).

    A provider that does not name an operation here is assumed to execute every request
    it receives: a write sent to it twice may run twice.
    """
    ops: object = getattr(provider, "deduplicates", frozenset())
    return ops if isinstance(ops, frozenset) else frozenset()
