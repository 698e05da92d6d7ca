"""Sliding windows of call outcomes, and a time-bucketed counter.

Both windows keep running totals, so recording a call and reading the totals are O(1)
(the time window does O(buckets) work only when whole buckets expire). They are what the
breaker reads its failure and slow-call rates from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BucketCounter", "CountWindow", "SlidingWindow", "TimeWindow", "WindowTotals"]

_FAILED = 1
_SLOW = 2


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """Calls, failures and slow calls currently inside a window."""

    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """Failures / calls, 0.0 for an empty window."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_rate(self) -> float:
        """Slow calls / calls, 0.0 for an empty window."""
        return self.slow / self.calls if self.calls else 0.0


class SlidingWindow(Protocol):
    """What the breaker needs from a window."""

    def record(self, failed: bool, slow: bool, now: float) -> tuple[int, int, int]:
        """Add one call outcome; return ``(calls, failures, slow)`` inside the window at
        ``now`` after it (what the breaker judges on every call, without building a
        :class:`WindowTotals`)."""
        ...

    def totals(self, now: float) -> WindowTotals:
        """The outcomes inside the window at ``now``."""
        ...

    def reset(self) -> None:
        """Forget everything."""
        ...


class CountWindow:
    """The last ``size`` calls, whatever their age (a ring buffer)."""

    __slots__ = ("_calls", "_failures", "_next", "_ring", "_slow", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size = size
        self._ring = bytearray(size)
        self._next = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> tuple[int, int, int]:
        """Add one call outcome, evicting the oldest when full; return the totals."""
        code = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        i = self._next
        if self._calls == self.size:
            old = self._ring[i]
            self._failures -= old & _FAILED
            self._slow -= (old & _SLOW) >> 1
        else:
            self._calls += 1
        self._ring[i] = code
        self._failures += code & _FAILED
        self._slow += (code & _SLOW) >> 1
        self._next = i + 1 if i + 1 < self.size else 0
        return self._calls, self._failures, self._slow

    def totals(self, now: float) -> WindowTotals:
        """The last ``size`` outcomes."""
        return WindowTotals(self._calls, self._failures, self._slow)

    def reset(self) -> None:
        """Forget every outcome."""
        self._ring = bytearray(self.size)
        self._next = self._calls = self._failures = self._slow = 0

    def __repr__(self) -> str:
        return f"CountWindow(size={self.size})"


class BucketCounter:
    """Sums of a few counters over the last ``seconds``, in ``buckets`` time buckets.

    Values older than the window fall out a bucket at a time, so the window is exact to
    within one bucket width (``seconds / buckets``).
    """

    __slots__ = ("_epochs", "_seen", "_sums", "_totals", "buckets", "fields", "seconds", "width")

    def __init__(self, seconds: float, buckets: int = 10, fields: int = 1) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self.seconds = seconds
        self.buckets = buckets
        self.fields = fields
        self.width = seconds / buckets
        # None marks an empty bucket. Not -1: a monotonic clock may read negative, and -1
        # is then a real bucket number whose counts would never expire.
        self._epochs: list[int | None] = [None] * buckets
        self._sums = [[0] * fields for _ in range(buckets)]
        self._totals = [0] * fields
        self._seen: int | None = None

    def _bucket(self, now: float) -> list[int]:
        """``now``'s bucket, after expiring every bucket outside the window ending at
        ``now`` (at once unless ``now`` entered another bucket)."""
        epoch = int(now // self.width)
        self._expire(epoch)
        i = epoch % self.buckets
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
        return self._sums[i]

    def _expire(self, epoch: int) -> None:
        if epoch == self._seen:
            return
        self._seen = epoch
        oldest = epoch - self.buckets + 1
        totals = self._totals
        for i, e in enumerate(self._epochs):
            if e is not None and (e < oldest or e > epoch):
                sums = self._sums[i]
                for f in range(self.fields):
                    totals[f] -= sums[f]
                    sums[f] = 0
                self._epochs[i] = None

    def add(self, now: float, field: int = 0, amount: int = 1) -> None:
        """Add ``amount`` to counter ``field`` at time ``now``."""
        self._bucket(now)[field] += amount
        self._totals[field] += amount

    def total(self, now: float, field: int = 0) -> int:
        """Sum of counter ``field`` over the window ending at ``now``."""
        self._expire(int(now // self.width))
        return self._totals[field]

    def reset(self) -> None:
        """Forget everything."""
        self._epochs = [None] * self.buckets
        self._sums = [[0] * self.fields for _ in range(self.buckets)]
        self._totals = [0] * self.fields
        self._seen = None

    def __repr__(self) -> str:
        return f"BucketCounter(seconds={self.seconds}, buckets={self.buckets})"


class TimeWindow:
    """The calls of the last ``seconds``, in one-second (or finer) buckets."""

    __slots__ = ("_counter", "seconds")

    def __init__(self, seconds: float, buckets: int | None = None) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self.seconds = seconds
        n = buckets if buckets is not None else max(1, min(120, math.ceil(seconds)))
        self._counter = BucketCounter(seconds, n, fields=3)

    def record(self, failed: bool, slow: bool, now: float) -> tuple[int, int, int]:
        """Add one call outcome at ``now``; return the totals of the window ending then."""
        c = self._counter
        bucket = c._bucket(now)
        totals = c._totals
        bucket[0] += 1
        totals[0] += 1
        if failed:
            bucket[1] += 1
            totals[1] += 1
        if slow:
            bucket[2] += 1
            totals[2] += 1
        calls, failures, slowed = totals
        return calls, failures, slowed

    def totals(self, now: float) -> WindowTotals:
        """The outcomes of the last ``seconds`` before ``now``."""
        c = self._counter
        c._expire(int(now // c.width))
        return WindowTotals(c._totals[0], c._totals[1], c._totals[2])

    def reset(self) -> None:
        """Forget every outcome."""
        self._counter.reset()

    def __repr__(self) -> str:
        return f"TimeWindow(seconds={self.seconds})"
