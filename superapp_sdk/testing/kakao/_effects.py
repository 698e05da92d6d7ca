"""What a simulated provider executed: one :class:`Effect` per charge, refund, message,
ride or rental end, in the order it ran.

The simulated Kakao services (``PaymentState``, ``ChatState``, ``MobilityState``) and the
in-process doubles (``EchoPay``, ``EchoChat``, ``EchoMobility``) each keep one and answer
``effects()``. A request that was answered from an idempotency key's stored result, or
refused, executed nothing and adds nothing, so a test of "at most once" counts effects::

    refunded = sum(e.amount or 0 for e in dc.payment.effects("payment.cancel", order_id="o-1"))
    charged = sum(e.amount or 0 for e in dc.payment.effects("payment.charge", order_id="o-1"))
    assert refunded <= charged
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["EFFECT_KINDS", "Effect", "EffectLog"]

#: Every ``Effect.kind``: the SDK's name of the operation that executed.
EFFECT_KINDS: frozenset[str] = frozenset(
    {
        "payment.approve",
        "payment.charge",
        "payment.cancel",
        "chat.send",
        "mobility.request_ride",
        "mobility.cancel_ride",
        "mobility.end_rental",
    }
)


@dataclass(frozen=True, slots=True)
class Effect:
    """One effect a simulated provider executed.

    Attributes:
        kind: the operation that executed, one of :data:`EFFECT_KINDS`:
            ``"payment.approve"`` (a checkout approved), ``"payment.charge"`` (a charge
            with a billing key; a KakaoPay subscription payment), ``"payment.cancel"`` (a
            refund), ``"chat.send"`` (one message to one recipient),
            ``"mobility.request_ride"``, ``"mobility.cancel_ride"``,
            ``"mobility.end_rental"``.
        at: when it executed (the provider's clock, wall time).
        key: the idempotency key the request carried (``Idempotency-Key`` header, or the
            ``idempotency_key`` argument of an echo provider); ``None`` when it had none,
            as KakaoPay and KakaoTalk requests have none.
        order_id: the order a payment effect belongs to (``partner_order_id``).
        ref: the provider's id of what was acted on: the ``tid`` or ``provider_ref`` of a
            payment, the message id, the ride id, the rental id.
        amount: money moved, in minor units of its currency (KRW: won): charged by an
            approval or charge, refunded by a cancel, the fare of an ended rental.
        to: the recipient of a message.
        text: the text of a message.
        rider: the rider who requested a ride.
    """

    kind: str
    at: float
    key: str | None = None
    order_id: str | None = None
    ref: str | None = None
    amount: int | None = None
    to: str | None = None
    text: str | None = None
    rider: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EFFECT_KINDS:
            raise ValueError(f"kind must be one of {sorted(EFFECT_KINDS)}, got {self.kind!r}")


class EffectLog:
    """An append-only, thread-safe list of :class:`Effect` records."""

    __slots__ = ("_effects", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._effects: list[Effect] = []

    def record(self, effect: Effect) -> None:
        """Add ``effect`` at the end."""
        with self._lock:
            self._effects.append(effect)

    def effects(
        self, kind: str | None = None, *, order_id: str | None = None, key: str | None = None
    ) -> tuple[Effect, ...]:
        """The effects recorded, oldest first; only those of ``kind``, ``order_id`` and
        ``key`` when given."""
        if kind is not None and kind not in EFFECT_KINDS:
            raise ValueError(f"kind must be one of {sorted(EFFECT_KINDS)}, got {kind!r}")
        with self._lock:
            return tuple(
                e
                for e in self._effects
                if (kind is None or e.kind == kind)
                and (order_id is None or e.order_id == order_id)
                and (key is None or e.key == key)
            )
