"""Routing decisions (sans-IO): what to do after an error, and when to go back to a
recovered primary.

The router tries providers in priority order. After each failed try it asks
:func:`classify` what the error means:

=====================  ==========================================================
action                 when
=====================  ==========================================================
``FAIL_NOW``           the provider said no on business grounds (declined card,
                       unknown recipient, bad code), the request was malformed, or
                       its idempotency key was used for another payload: another
                       provider would refuse too, or worse, accept
``FAIL_OVER``          no usable answer, and the operation is safe to send elsewhere
                       (a read, a write with an idempotency key, or a payment that
                       provably never left: connection refused, breaker open)
``RESOLVE``            a payment whose outcome is unknown (timeout after the request
                       was sent): ask the same provider for its status before any
                       failover, so an order is never charged twice
=====================  ==========================================================

A per-(provider, operation, error) table can override the default.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from superapp_sdk._errors import (
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    NoAnswer,
    ProviderRefused,
    Rejected,
)

__all__ = ["Action", "Classification", "FailbackRamp", "OperationKind", "classify"]


class OperationKind(enum.Enum):
    """What an operation does, which decides how freely it may be retried elsewhere."""

    READ = "read"
    WRITE = "write"
    PAYMENT = "payment"


class Action(enum.Enum):
    """What the router does after a failed try."""

    FAIL_NOW = "fail_now"
    FAIL_OVER = "fail_over"
    RESOLVE = "resolve"


@dataclass(frozen=True, slots=True)
class Classification:
    """Overrides of :func:`classify`, keyed by ``(provider, operation, error class name)``;
    ``"*"`` matches any provider or operation."""

    table: Mapping[tuple[str, str, str], Action] = field(default_factory=dict)

    def lookup(self, provider: str, operation: str, exc: BaseException) -> Action | None:
        """The override for this error, if any (most specific key wins)."""
        for cls in type(exc).__mro__:
            name = cls.__name__
            for key in (
                (provider, operation, name),
                (provider, "*", name),
                ("*", operation, name),
                ("*", "*", name),
            ):
                action = self.table.get(key)
                if action is not None:
                    return action
        return None


def classify(
    kind: OperationKind,
    exc: BaseException,
    *,
    provider: str = "*",
    operation: str = "*",
    overrides: Classification | None = None,
) -> Action:
    """Decide what a failed try means; see the module docstring."""
    if overrides is not None:
        action = overrides.lookup(provider, operation, exc)
        if action is not None:
            return action
    if isinstance(exc, Declined | InvalidRequest | IdempotencyConflict):
        # IdempotencyConflict: the key was used with another payload; sending this one
        # elsewhere would defeat the key.
        return Action.FAIL_NOW
    if isinstance(exc, Rejected):
        # We refused before sending (breaker, bulkhead, budget): nothing executed.
        return Action.FAIL_OVER
    if isinstance(exc, ProviderRefused):
        # Unauthorized or rate-limited at this provider: our standing there, not the
        # user's request, is the problem; another provider may serve it.
        return Action.FAIL_OVER
    if isinstance(exc, NoAnswer):
        if kind is OperationKind.PAYMENT and exc.request_sent is not False:
            return Action.RESOLVE
        return Action.FAIL_OVER
    if kind is not OperationKind.PAYMENT and _is_transport(exc):
        return Action.FAIL_OVER
    if kind is OperationKind.PAYMENT and _is_transport(exc):
        return Action.RESOLVE
    return Action.FAIL_NOW


def _is_transport(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | ConnectionError) or type(exc).__module__.startswith(
        ("httpx", "httpcore")
    )


class FailbackRamp:
    """Hysteresis for going back to a recovered primary.

    When a provider recovers (its breaker closes after being open), it gets a growing
    share of the calls it would normally serve: ``initial_share`` at first, reaching all
    of them after ``ramp_seconds``. A recovery that is not real costs a few calls, not a
    thundering herd, and a flapping provider does not drag traffic back and forth.
    """

    __slots__ = ("_recovered", "_rng", "initial_share", "ramp_seconds")

    def __init__(
        self,
        ramp_seconds: float = 30.0,
        *,
        initial_share: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        if not (ramp_seconds >= 0 and math.isfinite(ramp_seconds)):
            raise ValueError(f"FailbackRamp.ramp_seconds must be >= 0, got {ramp_seconds!r}")
        if not 0 < initial_share <= 1:
            raise ValueError(f"FailbackRamp.initial_share must be in (0, 1], got {initial_share!r}")
        self.ramp_seconds = ramp_seconds
        self.initial_share = initial_share
        self._rng = rng or random.Random()
        self._recovered: dict[str, float] = {}

    def recovered(self, provider: str, now: float) -> None:
        """``provider`` has just recovered."""
        if self.ramp_seconds > 0:
            self._recovered[provider] = now

    def failed(self, provider: str) -> None:
        """``provider`` failed again; the next recovery starts a new ramp."""
        self._recovered.pop(provider, None)

    def share(self, provider: str, now: float) -> float:
        """The share of its calls ``provider`` should get at ``now`` (1.0 when not ramping)."""
        start = self._recovered.get(provider)
        if start is None:
            return 1.0
        progress = (now - start) / self.ramp_seconds
        if progress >= 1:
            del self._recovered[provider]
            return 1.0
        return self.initial_share + (1 - self.initial_share) * max(0.0, progress)

    def admit(self, provider: str, now: float) -> bool:
        """Whether this call should go to ``provider`` first."""
        s = self.share(provider, now)
        return s >= 1.0 or self._rng.random() < s

    def __repr__(self) -> str:
        return f"FailbackRamp(ramp_seconds={self.ramp_seconds}, initial_share={self.initial_share})"
