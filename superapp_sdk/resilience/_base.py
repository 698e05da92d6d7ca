"""What every strategy shares: the timer, the per-call context, events, and failure
classification."""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx

from superapp_sdk._errors import NoAnswer, RateLimited
from superapp_sdk.core.breaker import StateChange
from superapp_sdk.core.clock import Clock
from superapp_sdk.core.latency import LatencyTracker

__all__ = [
    "NO_RETRY_ATTR",
    "CallContext",
    "CallRejected",
    "Event",
    "HedgeLaunched",
    "Listener",
    "RetryScheduled",
    "Strategy",
    "SystemTimer",
    "Timer",
    "default_failure",
    "default_retryable",
    "retryable_unless_timeout",
]

T = TypeVar("T")


@runtime_checkable
class Timer(Clock, Protocol):
    """A clock that can also wait; ``FakeClock`` implements it for tests."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemTimer:
    """The real clock and the real sleeps."""

    __slots__ = ()

    # The hot path reads the clock several times per call: bind the C functions directly
    # rather than paying a Python frame each time.
    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)
    sleep = staticmethod(_time.sleep)

    async def asleep(self, seconds: float) -> None:
        """:func:`asyncio.sleep`."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemTimer()"


class CallContext:
    """Per-call state handed down the pipeline and to the protected callable.

    Attributes:
        deadline: monotonic time no attempt may outlive (``None``: no deadline).
        timeout: seconds this try may take, set by the per-try timeout strategy and
            honoured by the callable (``ResilientTransport`` hands it to httpx).
        attempt: 1 for the first try, 2 for the first retry, ...
        operation: a name for events and errors.
        hedged: True inside a hedge's backup call.
        probe: whether this call may serve as a half-open probe (``None``: the
            breaker's default).
        max_timeout: a cap on the per-try timeout (a short probe timeout).
        last_resort: no other provider is left to fail over to.
        resend: whether a try that may have reached the provider may be sent again
            (False for an at-most-once write the provider does not deduplicate; see
            :func:`superapp_sdk.core.routing.may_resend`).
    """

    __slots__ = (
        "_afn",
        "_fn",
        "attempt",
        "deadline",
        "hedged",
        "last_resort",
        "max_timeout",
        "operation",
        "probe",
        "resend",
        "timeout",
    )

    def __init__(
        self,
        operation: str = "",
        deadline: float | None = None,
        probe: bool | None = None,
        max_timeout: float | None = None,
        last_resort: bool = False,
        resend: bool = True,
    ) -> None:
        self._fn: Callable[[CallContext], Any] | None = None
        self._afn: Callable[[CallContext], Awaitable[Any]] | None = None
        self.operation = operation
        self.deadline = deadline
        self.timeout: float | None = None
        self.attempt = 1
        self.hedged = False
        self.probe = probe
        self.max_timeout = max_timeout
        self.last_resort = last_resort
        self.resend = resend

    def remaining(self, now: float) -> float | None:
        """Seconds left before the deadline, or ``None`` without one."""
        return None if self.deadline is None else self.deadline - now

    def copy(self) -> CallContext:
        """An independent copy (for a hedge's backup call)."""
        c = CallContext(self.operation, self.deadline)
        c._fn = self._fn
        c._afn = self._afn
        c.timeout = self.timeout
        c.attempt = self.attempt
        c.hedged = self.hedged
        c.probe = self.probe
        c.max_timeout = self.max_timeout
        c.last_resort = self.last_resort
        c.resend = self.resend
        return c

    def __repr__(self) -> str:
        return (
            f"CallContext(operation={self.operation!r}, attempt={self.attempt}, "
            f"deadline={self.deadline}, timeout={self.timeout})"
        )


# -- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """A retry will be made after ``wait`` seconds."""

    name: str
    operation: str
    attempt: int
    wait: float
    error: str


@dataclass(frozen=True, slots=True)
class CallRejected:
    """A call was refused without being made (breaker open, budget spent, bulkhead full,
    deadline passed)."""

    name: str
    operation: str
    reason: str
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class HedgeLaunched:
    """A backup call was started because the first took longer than ``delay``."""

    name: str
    operation: str
    delay: float


Event = StateChange | RetryScheduled | CallRejected | HedgeLaunched


class Listener(Protocol):
    """Receives pipeline events. Must be quick and must not raise (errors are dropped
    after being counted in ``Pipeline.listener_errors``)."""

    def __call__(self, event: Event, /) -> None: ...


# -- classification --------------------------------------------------------------------


def default_failure(exc: BaseException) -> bool:
    """Errors that count against a provider's health: no usable answer came back."""
    return isinstance(exc, NoAnswer | httpx.TransportError | TimeoutError | ConnectionError)


#: Set to True on an exception to say "may have executed, do not retry" (a POST without an
#: idempotency key that failed after the connection was made).
NO_RETRY_ATTR = "superapp_no_retry"


def default_retryable(exc: BaseException) -> bool:
    """Errors worth another try: no usable answer, or an explicit 429."""
    if getattr(exc, NO_RETRY_ATTR, False):
        return False
    if isinstance(exc, RateLimited):
        return True
    if isinstance(exc, NoAnswer):
        return exc.retryable
    return isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError)


def retryable_unless_timeout(exc: BaseException) -> bool:
    """:func:`default_retryable` minus timeouts: for a provider with alternates, a try that
    timed out is better failed over than retried, which would wait the timeout again."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return False
    return default_retryable(exc)


# -- the strategy protocol -------------------------------------------------------------

SyncNext = Callable[[CallContext], Any]
AsyncNext = Callable[[CallContext], Awaitable[Any]]


class Host(Protocol):
    """What a pipeline offers the strategies bound to it."""

    name: str
    timer: Timer
    latency: LatencyTracker
    strategies: tuple[Strategy, ...]

    def emit(self, event: Event) -> None: ...


class Strategy(Protocol):
    """One resilience strategy: wraps the rest of the pipeline, sync and async."""

    def bind(self, host: Host) -> None:
        """Called once by the pipeline that owns the strategy."""
        ...

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Run ``nxt`` under this strategy."""
        ...

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Await ``nxt`` under this strategy."""
        ...


def describe(obj: object, fields: Iterable[str]) -> str:
    """``Name(field=value, ...)`` for reprs."""
    inner = ", ".join(f"{f}={getattr(obj, f)!r}" for f in fields)
    return f"{type(obj).__name__}({inner})"
