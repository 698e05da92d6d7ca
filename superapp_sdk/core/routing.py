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
                       (a read, a write with an idempotency key, or an at-most-once
                       write that provably never left: connection refused, breaker
                       open)
``RESOLVE``            an at-most-once write whose outcome is unknown (any byte may
                       have left: read timeout, reset, 5xx, protocol error after the
                       write), or one the provider says it already executed: the
                       outcome is pinned to this provider and settled only by its own
                       answer to a lookup, never by sending again
=====================  ==========================================================

**The at-most-once rule.** Charges, approvals, cancels, chat sends, ride requests and
rental ends are not idempotent at a provider that does not deduplicate them. For those
(``once=True``), :func:`may_have_executed` decides whether a failed try may have run at
the provider; if it may, the try is never sent again to another provider, and to the
same provider only when that provider documents deduplication of the operation by the
same idempotency key (:func:`may_resend`). This module is the one home of that rule:
the retry strategy, the router and the operations all ask it.

A per-(provider, operation, error) table can override the default.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from superapp_sdk._errors import (
    AlreadyExecuted,
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    NoAnswer,
    ProviderRefused,
    Rejected,
    SuperAppError,
)

__all__ = [
    "Action",
    "Classification",
    "FailbackRamp",
    "OperationKind",
    "classify",
    "may_have_executed",
    "may_resend",
]


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
    once: bool | None = None,
) -> Action:
    """Decide what a failed try means; see the module docstring.

    Args:
        once: the operation is an at-most-once write (default: ``kind`` is ``PAYMENT``).
    """
    if overrides is not None:
        action = overrides.lookup(provider, operation, exc)
        if action is not None:
            return action
    at_most_once = kind is OperationKind.PAYMENT if once is None else once
    if isinstance(exc, AlreadyExecuted):
        # The provider ran it before (an earlier try whose answer was lost): learn its
        # result from the provider; never send it anywhere else.
        return Action.RESOLVE if at_most_once else Action.FAIL_NOW
    if isinstance(exc, Declined | InvalidRequest | IdempotencyConflict):
        # IdempotencyConflict: the key was used with another payload; sending this one
        # elsewhere would defeat the key.
        return Action.FAIL_NOW
    if isinstance(exc, Rejected | ProviderRefused):
        # Rejected: we refused before sending (breaker, bulkhead, budget). Refused:
        # unauthorized or rate-limited at this provider; our standing there, not the
        # user's request, is the problem. Neither executed; another provider may serve.
        return Action.FAIL_OVER
    if isinstance(exc, NoAnswer) or _is_transport(exc):
        if at_most_once and may_have_executed(exc):
            return Action.RESOLVE
        return Action.FAIL_OVER
    return Action.FAIL_NOW


#: httpx errors raised before a byte of the request left: connecting, or waiting for a
#: pooled connection. Named, not imported: this module does no I/O.
_UNSENT_HTTPX = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol"})


def may_have_executed(exc: BaseException) -> bool:
    """Whether the provider may have executed the request whose try raised ``exc``.

    ``False`` only with proof that nothing ran: the SDK refused before sending (breaker,
    bulkhead, budget), the connection was never made, or the provider answered with a
    refusal. A provider saying it *already* executed the request is ``True``. Anything
    else (a read timeout, a reset after the write, a 5xx, a malformed answer) may have
    executed.
    """
    if isinstance(exc, AlreadyExecuted):
        return True
    if isinstance(exc, Rejected | ProviderRefused):
        return False
    if isinstance(exc, SuperAppError):
        return exc.request_sent is not False
    if isinstance(exc, ConnectionRefusedError):
        return False
    if type(exc).__module__.startswith(("httpx", "httpcore")):
        return type(exc).__name__ not in _UNSENT_HTTPX
    return True


def may_resend(exc: BaseException, *, once: bool, deduplicated: bool) -> bool:
    """Whether a try that raised ``exc`` may be sent again *to the same provider*.

    Reads and idempotent writes may; an at-most-once write may only when nothing can have
    executed, or when the provider deduplicates the operation by the idempotency key the
    retry reuses (Stripe's and Toss's ``Idempotency-Key``, LINE's ``X-Line-Retry-Key``).
    """
    return not once or deduplicated or not may_have_executed(exc)


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
