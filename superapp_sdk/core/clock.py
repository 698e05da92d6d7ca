"""Time as an injected dependency.

Every decision in ``core/`` takes ``now`` from a :class:`Clock`, never from the ``time``
module, so the breaker, budget and detector can be driven by a fake clock in tests.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time.

    ``monotonic()`` measures intervals (never goes backwards); ``time()`` is wall-clock
    seconds since the epoch, used only for values that leave the process (token expiry,
    receipts).
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Seconds on the system's monotonic clock."""
        return time.monotonic()

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"
