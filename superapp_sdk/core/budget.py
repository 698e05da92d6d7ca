"""The retry budget: retries stay a fraction of requests, so an outage never becomes a
retry storm.

Follows Finagle's ``RetryBudget``: every request deposits ``ratio`` of a token, every
retry withdraws one, and a small reserve (``min_retries_per_second`` for ``ttl_seconds``)
lets a quiet client still retry. Deposits and withdrawals expire after ``ttl_seconds``
(to within a tenth of it: the counter forgets one of ten buckets at a time), so a burst
of old traffic cannot fund a storm now. One budget is shared by every provider of a
failure domain: when Kakao burns, every Kakao capability draws on one budget, and the
retry traffic it receives is bounded, at every retry it grants, by::

    retries(last 0.9 * ttl) <= ratio * requests(last ttl) + min_retries_per_second * ttl

Over a full ``ttl`` the bucket granularity lets the reserve be spent up to twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from superapp_sdk.core.windows import BucketCounter

__all__ = ["BudgetOptions", "RetryBudget"]

_REQUESTS = 0
_RETRIES = 1


@dataclass(frozen=True, slots=True)
class BudgetOptions:
    """Options of a retry budget.

    Attributes:
        ratio: retries allowed per request (0 <= x <= 1); 0.2 means 20 % extra load at most.
        min_retries_per_second: reserve that lets a low-traffic client retry at all.
        ttl_seconds: how long a deposit or withdrawal counts.
    """

    ratio: float = 0.2
    min_retries_per_second: float = 1.0
    ttl_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not (0 <= self.ratio <= 1):
            raise ValueError(f"BudgetOptions.ratio must be in [0, 1], got {self.ratio!r}")
        if not (self.min_retries_per_second >= 0 and math.isfinite(self.min_retries_per_second)):
            raise ValueError(
                "BudgetOptions.min_retries_per_second must be a finite number >= 0, "
                f"got {self.min_retries_per_second!r}"
            )
        if not (self.ttl_seconds >= 1 and math.isfinite(self.ttl_seconds)):
            raise ValueError(
                f"BudgetOptions.ttl_seconds must be in [1, inf), got {self.ttl_seconds!r}"
            )

    @property
    def reserve(self) -> float:
        """Retries the budget allows with no requests at all."""
        return self.min_retries_per_second * self.ttl_seconds


class RetryBudget:
    """A token bucket of retries funded by requests; see the module docstring."""

    __slots__ = ("_counter", "denied", "name", "options")

    def __init__(self, name: str = "default", options: BudgetOptions | None = None) -> None:
        self.name = name
        self.options = options or BudgetOptions()
        self._counter = BucketCounter(self.options.ttl_seconds, buckets=10, fields=2)
        self.denied = 0

    def deposit(self, now: float) -> None:
        """Record a first attempt (a request that is not a retry)."""
        self._counter.add(now, _REQUESTS)

    def balance(self, now: float) -> float:
        """Retries that may still be withdrawn at ``now``."""
        opts = self.options
        requests = self._counter.total(now, _REQUESTS)
        retries = self._counter.total(now, _RETRIES)
        return opts.reserve + opts.ratio * requests - retries

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        if self.balance(now) >= 1.0:
            self._counter.add(now, _RETRIES)
            return True
        self.denied += 1
        return False

    def __repr__(self) -> str:
        o = self.options
        return (
            f"RetryBudget(name={self.name!r}, ratio={o.ratio}, "
            f"min_retries_per_second={o.min_retries_per_second}, ttl_seconds={o.ttl_seconds})"
        )
