"""Recent latencies of a provider and their percentiles.

Feeds the adaptive per-try timeout (a multiple of the recent p99) and the hedging delay
(the p95): both should track what the provider normally does, not a constant chosen on a
good day.
"""

from __future__ import annotations

import math

__all__ = ["LatencyTracker"]


class LatencyTracker:
    """The last ``size`` latencies (seconds) and percentiles over them.

    Percentiles are computed from a sorted copy that is refreshed at most every
    ``refresh_every`` new samples, so reading one is O(1) on the hot path and recording
    is O(1) amortised.
    """

    __slots__ = (
        "_dirty",
        "_next",
        "_ring",
        "_sorted",
        "count",
        "refresh_every",
        "size",
        "version",
    )

    def __init__(self, size: int = 256, *, refresh_every: int = 16) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every!r}")
        self.size = size
        self.refresh_every = refresh_every
        self._ring: list[float] = []
        self._next = 0
        self._sorted: list[float] = []
        self._dirty = 0
        #: Samples recorded in total (not only those still in the ring).
        self.count = 0
        #: Changes whenever percentiles may have changed; lets readers cache derived values.
        self.version = 0

    def record(self, seconds: float) -> None:
        """Add one latency sample; negative or non-finite values are ignored."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        if len(self._ring) < self.size:
            self._ring.append(seconds)
        else:
            self._ring[self._next] = seconds
            self._next = (self._next + 1) % self.size
        self.count += 1
        self._dirty += 1
        if self._dirty >= self.refresh_every or len(self._ring) <= self.refresh_every:
            self._sorted = sorted(self._ring)
            self._dirty = 0
            self.version += 1

    def samples(self) -> int:
        """How many samples the ring currently holds."""
        return len(self._ring)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1, nearest-rank) or ``None`` with no samples."""
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q!r}")
        data = self._sorted
        if not data:
            return None
        rank = max(1, math.ceil(q * len(data)))
        return data[rank - 1]

    def reset(self) -> None:
        """Forget every sample."""
        self._ring.clear()
        self._sorted = []
        self._next = self._dirty = self.count = 0
        self.version += 1

    def __repr__(self) -> str:
        return f"LatencyTracker(size={self.size}, samples={len(self._ring)})"
