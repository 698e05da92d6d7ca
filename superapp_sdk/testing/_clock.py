"""A clock that only moves when told to."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~superapp_sdk.core.clock.Clock` whose time moves only when told to.

    ``sleep`` and ``asleep`` advance the clock instead of waiting, so retry loops and
    open timers run instantly and deterministically in tests::

        clock = FakeClock()
        clock.advance(30)
        assert clock.monotonic() == 30.0
    """

    __slots__ = ("_lock", "_now", "_wall_offset", "slept")

    def __init__(self, start: float = 0.0, *, wall: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = wall - start
        self._lock = threading.Lock()
        #: Every duration passed to ``sleep``/``asleep``, in order.
        self.slept: list[float] = []

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._now

    def time(self) -> float:
        """The fake wall-clock time (moves with ``monotonic``)."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Advance instead of sleeping."""
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        """Advance instead of sleeping, and let other tasks run once."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"
