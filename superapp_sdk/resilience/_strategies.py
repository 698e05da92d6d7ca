"""The strategies a pipeline is made of, outermost first:

``Deadline -> Bulkhead -> CircuitBreaker -> Retry -> Hedge -> Timeout``

Each has frozen options, a readable repr, and a sync and an async form with the same
semantics. Each wraps "the rest of the pipeline" (``nxt``) and is bound once to the
pipeline that owns it, from which it takes the timer, the latency tracker and the event
sink.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import tenacity

from superapp_sdk._errors import (
    BulkheadFull,
    CircuitOpen,
    OperationTimeout,
)
from superapp_sdk.core.breaker import BreakerMachine, BreakerMetrics, BreakerOptions, BreakerState
from superapp_sdk.core.budget import RetryBudget
from superapp_sdk.core.latency import LatencyTracker
from superapp_sdk.core.routing import may_have_executed
from superapp_sdk.resilience._base import (
    NO_RETRY_ATTR,
    AsyncNext,
    CallContext,
    CallRejected,
    Event,
    HedgeLaunched,
    Host,
    RetryScheduled,
    SyncNext,
    SystemTimer,
    Timer,
    default_failure,
    default_retryable,
)

__all__ = [
    "Bulkhead",
    "CircuitBreaker",
    "Deadline",
    "Hedge",
    "Retry",
    "SharedBudget",
    "Timeout",
]

Classifier = Callable[[BaseException], bool]


class _Bound:
    """Defaults for a strategy not yet bound to a pipeline."""

    host: Host | None = None

    def bind(self, host: Host) -> None:
        self.host = host

    @property
    def _name(self) -> str:
        return self.host.name if self.host is not None else ""

    def _emit(self, event: Event) -> None:
        if self.host is not None:
            self.host.emit(event)


def _timer(host: Host | None) -> Timer:
    return host.timer if host is not None else SystemTimer()


# -- deadline --------------------------------------------------------------------------


class Deadline(_Bound):
    """An overall deadline that no attempt, retry wait or hedge outlives.

    Sync callables must honour ``ctx.timeout`` (the per-try timeout is clamped to the
    deadline); async ones are cancelled when it passes.
    """

    __slots__ = ("_enforced_inside", "host", "seconds")

    def __init__(self, seconds: float) -> None:
        self.host: Host | None = None
        if not seconds > 0:
            raise ValueError(f"Deadline.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self._enforced_inside = False

    def bind(self, host: Host) -> None:
        """Note whether a per-try timeout inside already enforces the deadline."""
        super().bind(host)
        inner = host.strategies[host.strategies.index(self) + 1 :]
        # Every try is clamped to the deadline by Timeout and no retry sleeps past it, so
        # a second asyncio.timeout around the whole call would only cost time.
        self._enforced_inside = any(isinstance(s, Timeout) for s in inner) and not any(
            isinstance(s, Hedge) for s in inner
        )

    def _start(self, ctx: CallContext) -> float:
        assert self.host is not None
        now = self.host.timer.monotonic()
        mine = now + self.seconds
        if ctx.deadline is None or mine < ctx.deadline:
            ctx.deadline = mine
        return ctx.deadline - now

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Set the deadline, then run the rest."""
        # _start(), written out: every function the healthy path enters costs there,
        # as it mostly runs with cold CPU caches between network calls.
        assert self.host is not None
        mine = self.host.timer.monotonic() + self.seconds
        if ctx.deadline is None or mine < ctx.deadline:
            ctx.deadline = mine
        return nxt(ctx)

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Set the deadline, then await the rest, cancelling it when the deadline passes."""
        remaining = self._start(ctx)
        if self._enforced_inside:
            return await nxt(ctx)
        try:
            async with asyncio.timeout(remaining):
                return await nxt(ctx)
        except TimeoutError as exc:
            if isinstance(exc, OperationTimeout):
                raise
            raise OperationTimeout(
                f"deadline of {self.seconds:g}s passed", operation=ctx.operation or None
            ) from exc

    def __repr__(self) -> str:
        return f"Deadline(seconds={self.seconds})"


# -- bulkhead --------------------------------------------------------------------------


class Bulkhead(_Bound):
    """At most ``max_concurrent`` calls in flight; others wait up to ``max_wait`` seconds,
    then get :class:`BulkheadFull`.

    A call with a deadline (:class:`Deadline` outside the bulkhead) never waits past it:
    when the deadline comes first, the call gets
    :class:`~superapp_sdk.OperationTimeout` instead. One counter serves sync and async
    callers. A cancelled call always gives its slot back.
    """

    __slots__ = ("_cond", "_in_flight", "host", "max_concurrent", "max_wait")

    def __init__(self, max_concurrent: int, *, max_wait: float = 0.0) -> None:
        self.host: Host | None = None
        if max_concurrent < 1:
            raise ValueError(f"Bulkhead.max_concurrent must be >= 1, got {max_concurrent!r}")
        if max_wait < 0:
            raise ValueError(f"Bulkhead.max_wait must be >= 0, got {max_wait!r}")
        self.max_concurrent = max_concurrent
        self.max_wait = max_wait
        self._cond = threading.Condition(threading.Lock())
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Calls currently holding a slot."""
        return self._in_flight

    def _try(self) -> bool:
        with self._cond:
            if self._in_flight < self.max_concurrent:
                self._in_flight += 1
                return True
            return False

    def _release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def _full(self, ctx: CallContext) -> BulkheadFull:
        self._emit(CallRejected(self._name, ctx.operation, "bulkhead full", None))
        return BulkheadFull(
            f"{self.max_concurrent} calls already in flight",
            provider=self._name or None,
            operation=ctx.operation or None,
        )

    def _budget(self, ctx: CallContext) -> tuple[float, bool]:
        """Seconds a call may wait for a slot, and whether its deadline (rather than
        ``max_wait``) is what bounds the wait."""
        if ctx.deadline is None:
            return self.max_wait, False
        left = ctx.deadline - _timer(self.host).monotonic()
        if left < self.max_wait:
            return max(0.0, left), True
        return self.max_wait, False

    def _gave_up(self, ctx: CallContext, by_deadline: bool) -> Exception:
        if not by_deadline:
            return self._full(ctx)
        self._emit(CallRejected(self._name, ctx.operation, "deadline passed in bulkhead", None))
        return OperationTimeout(
            f"the deadline passed while waiting for one of {self.max_concurrent} bulkhead slots",
            provider=self._name or None,
            operation=ctx.operation or None,
        )

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Take a slot (waiting up to ``max_wait`` or the deadline), run the rest, give
        the slot back."""
        if not self._try():
            wait, by_deadline = self._budget(ctx)
            with self._cond:
                ok = self._cond.wait_for(
                    lambda: self._in_flight < self.max_concurrent, timeout=wait
                )
                if not ok:
                    raise self._gave_up(ctx, by_deadline)
                self._in_flight += 1
        try:
            return nxt(ctx)
        finally:
            self._release()

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Take a slot (polling up to ``max_wait`` or the deadline), await the rest, give
        the slot back."""
        if not self._try():
            loop = asyncio.get_running_loop()
            wait, by_deadline = self._budget(ctx)
            until = loop.time() + wait
            while True:
                left = until - loop.time()
                if left <= 0:
                    raise self._gave_up(ctx, by_deadline)
                await asyncio.sleep(min(0.005, left))
                if self._try():
                    break
        try:
            return await nxt(ctx)
        finally:
            self._release()

    def __repr__(self) -> str:
        return f"Bulkhead(max_concurrent={self.max_concurrent}, max_wait={self.max_wait})"


# -- circuit breaker -------------------------------------------------------------------


class CircuitBreaker(_Bound):
    """The shell around :class:`~superapp_sdk.core.breaker.BreakerMachine`.

    The lock is held only for the decision before the call and the bookkeeping after it,
    never while the protected call runs, so a slow provider does not serialise callers
    (pybreaker holds its lock across the call).

    Args:
        options: breaker options.
        failure_on: which exceptions count as failures; others pass through uncounted and
            give a half-open permit back.
        background_probe: when True, user calls never act as half-open probes: they are
            rejected while the provider is recovering, and :meth:`probe` (driven by the
            router) tests it instead, so no user waits on a provider that is still dead.
        rng: randomness for the open-time jitter.
    """

    __slots__ = (
        "_lock",
        "_own_timer",
        "background_probe",
        "failure_on",
        "host",
        "listeners",
        "machine",
        "name",
        "timer",
    )

    def __init__(
        self,
        options: BreakerOptions | None = None,
        *,
        name: str | None = None,
        failure_on: Callable[[BaseException], bool] = default_failure,
        background_probe: bool = False,
        rng: random.Random | None = None,
        timer: Timer | None = None,
    ) -> None:
        self.host: Host | None = None
        self.name = name
        self.machine = BreakerMachine(name or "breaker", options, rng=rng)
        self.failure_on = failure_on
        self.background_probe = background_probe
        # The pipeline's timer replaces the default when bound, unless one was given.
        self.timer: Timer = timer or SystemTimer()
        self._own_timer = timer is not None
        self._lock = threading.Lock()
        #: Receive this breaker's events (besides its pipeline's listeners), however many
        #: pipelines share it.
        self.listeners: list[Callable[[Event], None]] = []

    def bind(self, host: Host) -> None:
        """Take the pipeline's name (when none was given) and timer.

        One breaker may serve several pipelines of a provider (reads, writes, payments):
        it reports to the first it was bound to, and to its own ``listeners``.
        """
        if self.host is not None:
            return
        super().bind(host)
        if self.name is None:
            self.name = self.machine.name = host.name
        if not self._own_timer:
            self.timer = host.timer

    def on(self, listener: Callable[[Event], None]) -> None:
        """Add a listener for this breaker's events."""
        self.listeners.append(listener)

    def _emit(self, event: Event) -> None:
        super()._emit(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001, S112 - a listener must not break a call
                continue

    @property
    def options(self) -> BreakerOptions:
        """The breaker's options."""
        return self.machine.options

    @property
    def state(self) -> BreakerState:
        """The current state."""
        return self.machine.state

    def _now(self) -> float:
        return self.timer.monotonic()

    def _flush(self) -> None:
        if self.machine.changes:
            with self._lock:
                changes, self.machine.changes = self.machine.changes, []
            for change in changes:
                self._emit(change)

    def _admit(self, ctx: CallContext, probe: bool | None) -> tuple[Any, float]:
        """Take a permit (or raise :class:`CircuitOpen`); also return the time it was
        taken, which is when the call starts."""
        now = self.timer.monotonic()
        permit = self.machine.free_permit
        if permit is not None:  # closed: nothing to decide, no lock to take
            return permit, now
        allow_probe = not self.background_probe if probe is None else probe
        with self._lock:
            permit = self.machine.acquire(now, probe=allow_probe)
            retry_after = None if permit is not None else self.machine.retry_after(now)
        if self.machine.changes:
            self._flush()
        if permit is None:
            self._emit(CallRejected(self.name or "", ctx.operation, "circuit open", retry_after))
            raise CircuitOpen(
                f"circuit {self.name!r} is {self.machine.state.value}",
                provider=self.name,
                operation=ctx.operation or None,
                retry_after=retry_after,
                request_sent=False,
            )
        return permit, now

    def acquire(self, ctx: CallContext, *, probe: bool | None = None) -> Any:
        """Take a permit or raise :class:`CircuitOpen` (for drivers outside a pipeline)."""
        return self._admit(ctx, probe)[0]

    def settle(self, permit: Any, start: float, exc: BaseException | None) -> None:
        """Record the result of a call made with ``permit``."""
        end = self.timer.monotonic()
        machine = self.machine
        lock = self._lock
        # acquire()/release() rather than ``with``: this runs on every call, mostly with
        # cold CPU caches, where the context manager's method lookups measured twice the
        # cost of the lock itself.
        lock.acquire()
        try:
            if exc is None:
                machine.record(permit, False, end - start, end)
            elif isinstance(exc, Exception) and self.failure_on(exc):
                machine.record(permit, True, end - start, end)
            else:
                machine.release(permit)
        finally:
            lock.release()
        if machine.changes:
            self._flush()

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Run the rest if the breaker admits the call; record its result."""
        # A closed breaker's admission, written out (see Deadline.run).
        timer = self.timer
        permit = self.machine.free_permit
        if permit is not None:
            start = timer.monotonic()
        else:
            permit, start = self._admit(ctx, ctx.probe)
        try:
            result = nxt(ctx)
        except BaseException as exc:
            self.settle(permit, start, exc)
            raise
        # settle() of a success, written out.
        end = timer.monotonic()
        machine = self.machine
        lock = self._lock
        lock.acquire()
        try:
            machine.record(permit, False, end - start, end)
        finally:
            lock.release()
        if machine.changes:
            self._flush()
        return result

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Await the rest if the breaker admits the call; record its result. A cancelled
        call gives its half-open permit back."""
        permit, start = self._admit(ctx, ctx.probe)
        try:
            result = await nxt(ctx)
        except BaseException as exc:
            self.settle(permit, start, exc)
            raise
        self.settle(permit, start, None)
        return result

    def probe_due(self) -> bool:
        """True when the breaker would admit a half-open probe now."""
        with self._lock:
            return self.machine.probe_due(self._now())

    def metrics(self) -> BreakerMetrics:
        """A snapshot for health reports."""
        with self._lock:
            return self.machine.metrics(self._now())

    def _manual(self, action: Callable[[float], None]) -> None:
        with self._lock:
            action(self._now())
        self._flush()

    def force_open(self) -> None:
        """Open now; probing resumes after the open time."""
        self._manual(self.machine.force_open)

    def isolate(self) -> None:
        """Reject every call until :meth:`reset`."""
        self._manual(self.machine.isolate)

    def disable(self) -> None:
        """Admit every call, record nothing, until :meth:`reset`."""
        self._manual(self.machine.disable)

    def metrics_only(self) -> None:
        """Admit every call, record and report, never open."""
        self._manual(self.machine.metrics_only)

    def reset(self) -> None:
        """Close and forget history."""
        self._manual(self.machine.reset)

    def __repr__(self) -> str:
        o = self.machine.options
        return (
            f"CircuitBreaker(name={self.name!r}, state={self.machine.state.value}, "
            f"window={o.window}:{o.window_size}, failure_rate={o.failure_rate}, "
            f"minimum_calls={o.minimum_calls})"
        )


# -- retry -----------------------------------------------------------------------------


class SharedBudget:
    """A :class:`~superapp_sdk.core.budget.RetryBudget` safe to share between threads:
    one per failure domain, shared by every pipeline of that domain.

    Every call deposits, and only retries withdraw, so deposits do not take the lock:
    they are appended to a buffer (``deque.append`` is atomic) and applied in order,
    under the lock, every 64 deposits and before anything reads the budget
    (:meth:`try_withdraw`, :meth:`balance`). Applying 64 at once gives the same totals
    as one at a time: each keeps the time it was made. Read ``budget`` itself only
    after :meth:`flush`.
    """

    __slots__ = ("_lock", "_pending", "budget")

    #: Deposits buffered before they are applied without a reader asking.
    FLUSH_EVERY = 64

    def __init__(self, budget: RetryBudget | None = None) -> None:
        self.budget = budget or RetryBudget()
        self._lock = threading.Lock()
        self._pending: collections.deque[float] = collections.deque()

    def deposit(self, now: float) -> None:
        """Record a first attempt made at ``now``."""
        pending = self._pending
        pending.append(now)
        if len(pending) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Apply the buffered deposits."""
        with self._lock:
            self._apply()

    def _apply(self) -> None:
        # Under the lock, so the only one taking from the buffer. Deposits appended
        # meanwhile are applied here or by the next one.
        pending = self._pending
        deposit = self.budget.deposit
        while pending:
            deposit(pending.popleft())

    def try_withdraw(self, now: float) -> bool:
        """Take one retry; False when the budget is spent."""
        with self._lock:
            self._apply()
            return self.budget.try_withdraw(now)

    def balance(self, now: float) -> float:
        """Retries that may still be withdrawn at ``now``."""
        with self._lock:
            self._apply()
            return self.budget.balance(now)

    def __repr__(self) -> str:
        return f"SharedBudget({self.budget!r})"


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop when the next sleep would end past the call's deadline."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        ctx: CallContext = retry_state.args[0]
        if ctx.deadline is None:
            return False
        return self.timer.monotonic() + (retry_state.upcoming_sleep or 0.0) >= ctx.deadline


class _StopWhenBudgetSpent(tenacity.stop.stop_base):
    """Stop when the failure domain's retry budget has no retry left.

    Evaluated last in ``stop_any`` so a retry is withdrawn only when it will be made.
    """

    def __init__(self, budget: SharedBudget, timer: Timer, retry: Retry) -> None:
        self.budget = budget
        self.timer = timer
        self.retry = retry

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self.budget.try_withdraw(self.timer.monotonic()):
            return False
        ctx: CallContext = retry_state.args[0]
        self.retry._emit(CallRejected(self.retry._name, ctx.operation, "retry budget spent", None))
        self.retry.budget_denied += 1
        return True


class _WaitRetryAfter(tenacity.wait.wait_base):
    """Full-jitter exponential backoff, but never less than the provider's Retry-After
    (the server's word wins over a local guess, as stripe-python does)."""

    def __init__(self, base: tenacity.wait.wait_base) -> None:
        self.base = base

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = self.base(retry_state)
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            retry_after = getattr(outcome.exception(), "retry_after", None)
            if isinstance(retry_after, int | float) and retry_after > wait:
                return float(retry_after)
        return wait


class _RetryIf(tenacity.retry_base):
    """tenacity's retry predicate, asking :meth:`Retry.should_retry` with the call's context."""

    def __init__(self, retry: Retry) -> None:
        self.retry = retry

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        return exc is not None and self.retry.should_retry(retry_state.args[0], exc)


class Retry(_Bound):
    """Retries with exponential backoff and full jitter, as a tenacity loop.

    The first attempt runs outside tenacity, so the success path costs one function call;
    only a failure enters the loop. Retries stop at ``attempts``, at the call's deadline
    (no sleep ends past it), or when the shared retry budget is spent.

    Args:
        attempts: total tries including the first (>= 1).
        budget: the failure domain's retry budget; ``None`` for no budget.
        wait: a tenacity wait strategy; default full jitter, 50 ms base, 2 s cap.
        retry_on: which exceptions are worth another try.
        retry_on_last_resort: the same, when no other provider is left to fail over to
            (``ctx.last_resort``); defaults to ``retry_on``. A router's pipelines use
            ``retry_on=retryable_unless_timeout`` with ``default_retryable`` here, so a
            timeout fails over while an alternate exists and is retried when none does.
    """

    __slots__ = (
        "_asyncer",
        "_own_timer",
        "_retrying",
        "attempts",
        "budget",
        "budget_denied",
        "host",
        "retry_on",
        "retry_on_last_resort",
        "timer",
        "wait",
    )

    def __init__(
        self,
        attempts: int = 3,
        *,
        budget: SharedBudget | RetryBudget | None = None,
        wait: tenacity.wait.wait_base | None = None,
        retry_on: Callable[[BaseException], bool] = default_retryable,
        retry_on_last_resort: Callable[[BaseException], bool] | None = None,
        timer: Timer | None = None,
    ) -> None:
        self.host: Host | None = None
        if attempts < 1:
            raise ValueError(f"Retry.attempts must be >= 1, got {attempts!r}")
        self.attempts = attempts
        self.budget = SharedBudget(budget) if isinstance(budget, RetryBudget) else budget
        self.wait = wait or tenacity.wait_random_exponential(multiplier=0.05, max=2.0)
        self.retry_on = retry_on
        self.retry_on_last_resort = retry_on_last_resort or retry_on
        # The pipeline's timer replaces the default when bound, unless one was given.
        self.timer: Timer = timer or SystemTimer()
        self._own_timer = timer is not None
        self.budget_denied = 0
        self._retrying: tenacity.Retrying | None = None
        self._asyncer: tenacity.AsyncRetrying | None = None

    def bind(self, host: Host) -> None:
        """Take the pipeline's timer unless given one."""
        super().bind(host)
        if not self._own_timer:
            self.timer = host.timer

    def _kwargs(self) -> dict[str, Any]:
        timer = self.timer
        stops: list[tenacity.stop.stop_base] = [
            tenacity.stop_after_attempt(self.attempts),
            _StopAtDeadline(timer),
        ]
        if self.budget is not None:
            stops.append(_StopWhenBudgetSpent(self.budget, timer, self))
        return {
            "stop": tenacity.stop_any(*stops),
            "wait": _WaitRetryAfter(self.wait),
            "retry": _RetryIf(self),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def _before_sleep(self, retry_state: tenacity.RetryCallState) -> None:
        ctx: CallContext = retry_state.args[0]
        outcome = retry_state.outcome
        error = type(outcome.exception()).__name__ if outcome is not None else ""
        wait = retry_state.upcoming_sleep or 0.0
        self._emit(
            RetryScheduled(self._name, ctx.operation, retry_state.attempt_number + 1, wait, error)
        )

    def should_retry(self, ctx: CallContext, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try of this call.

        With no alternate left (``ctx.last_resort``), the wider ``retry_on_last_resort``
        applies: a timeout is better retried than turned into ``Unavailable``. Whatever
        the predicates say, an at-most-once write that may have executed at a provider
        that does not deduplicate it (``ctx.resend`` False) is never sent again.
        """
        if not ctx.resend and may_have_executed(exc):
            return False
        if ctx.last_resort:
            return self.retry_on_last_resort(exc)
        return self.retry_on(exc)

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Run the rest; on a retryable failure, retry under tenacity."""
        if (budget := self.budget) is not None:
            budget.deposit(self.timer.monotonic())
        try:
            return nxt(ctx)
        except Exception as exc:
            if self.attempts == 1 or not self.should_retry(ctx, exc):
                raise
            first: list[BaseException] = [exc]
        if self._retrying is None:
            self._retrying = tenacity.Retrying(sleep=self.timer.sleep, **self._kwargs())

        def attempt(c: CallContext) -> Any:
            if first:
                raise first.pop()
            c.attempt += 1
            return nxt(c)

        # copy(): tenacity keeps per-loop state on the object; each call gets its own.
        return self._retrying.copy()(attempt, ctx)

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Await the rest; on a retryable failure, retry under tenacity's async loop."""
        if (budget := self.budget) is not None:
            budget.deposit(self.timer.monotonic())
        try:
            return await nxt(ctx)
        except Exception as exc:
            if self.attempts == 1 or not self.should_retry(ctx, exc):
                raise
            first: list[BaseException] = [exc]
        if self._asyncer is None:
            self._asyncer = tenacity.AsyncRetrying(sleep=self.timer.asleep, **self._kwargs())

        async def attempt(c: CallContext) -> Any:
            if first:
                raise first.pop()
            c.attempt += 1
            return await nxt(c)

        return await self._asyncer.copy()(attempt, ctx)

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, wait={self.wait!r}, budget={self.budget!r})"


# -- per-try timeout -------------------------------------------------------------------


class Timeout(_Bound):
    """A per-try timeout that adapts to the provider's observed latency.

    The timeout is ``multiplier`` times the recent ``percentile`` latency, clamped to
    ``[floor, seconds]``; until ``min_samples`` successes are seen it is ``seconds``. A
    provider that normally answers in 20 ms is declared dead after ~60 ms, not after a
    fixed second. The deadline, when shorter, wins.

    After ``backoff_after`` timeouts in a row the timeout doubles for each further one
    (up to ``seconds``) until a try succeeds: the timer back-off of TCP's retransmission
    timeout (RFC 6298, section 5.5). A provider that has slowed down for good (20 ms to
    100 ms) then gets through, and its new latency is learned; one that is dead is left to
    the breaker, which opens long before the back-off grows far.

    Sync callables must honour ``ctx.timeout`` (``ResilientTransport`` hands it to httpx);
    async ones are also cancelled when it passes.
    """

    __slots__ = (
        "_cached",
        "_timeouts_in_a_row",
        "adaptive",
        "backoff_after",
        "floor",
        "host",
        "min_samples",
        "multiplier",
        "percentile",
        "seconds",
    )

    def __init__(
        self,
        seconds: float,
        *,
        adaptive: bool = True,
        multiplier: float = 3.0,
        percentile: float = 0.99,
        floor: float = 0.05,
        min_samples: int = 20,
        backoff_after: int = 3,
    ) -> None:
        self.host: Host | None = None
        if not seconds > 0:
            raise ValueError(f"Timeout.seconds must be > 0, got {seconds!r}")
        if backoff_after < 1:
            raise ValueError(f"Timeout.backoff_after must be >= 1, got {backoff_after!r}")
        if not multiplier >= 1:
            raise ValueError(f"Timeout.multiplier must be >= 1, got {multiplier!r}")
        if not 0 < percentile <= 1:
            raise ValueError(f"Timeout.percentile must be in (0, 1], got {percentile!r}")
        if not 0 < floor <= seconds:
            raise ValueError(f"Timeout.floor must be in (0, seconds={seconds}], got {floor!r}")
        if min_samples < 1:
            raise ValueError(f"Timeout.min_samples must be >= 1, got {min_samples!r}")
        self.seconds = seconds
        self.adaptive = adaptive
        self.multiplier = multiplier
        self.percentile = percentile
        self.floor = floor
        self.min_samples = min_samples
        self.backoff_after = backoff_after
        self._cached: tuple[LatencyTracker | None, int, float] = (None, -1, seconds)
        self._timeouts_in_a_row = 0

    def current(self, latency: LatencyTracker | None = None) -> float:
        """The per-try timeout a call would get now."""
        learned = self._learned(latency)
        excess = self._timeouts_in_a_row - self.backoff_after + 1
        if excess <= 0 or learned >= self.seconds:
            return learned
        return min(self.seconds, learned * (1 << min(excess, 32)))

    def _learned(self, latency: LatencyTracker | None) -> float:
        tracker = latency if latency is not None else (self.host.latency if self.host else None)
        if not self.adaptive or tracker is None:
            return self.seconds
        cached_for, version, value = self._cached
        if cached_for is tracker and version == tracker.version:
            return value
        # Not cached below min_samples: the sample count grows between refreshes of the
        # tracker's sorted copy (its version), so min_samples may be reached in between.
        # Once reached it holds until a reset, which changes the version.
        if tracker.samples() < self.min_samples:
            return self.seconds
        p = tracker.percentile(self.percentile)
        assert p is not None
        value = min(self.seconds, max(self.floor, p * self.multiplier))
        self._cached = (tracker, tracker.version, value)
        return value

    def _limit(self, ctx: CallContext) -> float:
        """This try's timeout, before the deadline shortens it."""
        # A probe tests whether the provider answers at all: it gets the configured
        # maximum, or a slowed-down provider could never prove it is alive again.
        t = self.seconds if ctx.probe else self.current()
        if ctx.max_timeout is not None:
            t = min(t, ctx.max_timeout)
        return t

    def _prepare(self, ctx: CallContext) -> tuple[float, float]:
        assert self.host is not None
        now = self.host.timer.monotonic()
        t = self._limit(ctx)
        if ctx.deadline is not None:
            t = min(t, max(0.0, ctx.deadline - now))
        ctx.timeout = t
        return t, now

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Give the try its timeout; record the latency of a success."""
        host = self.host
        assert host is not None
        start = host.timer.monotonic()
        # _prepare(), written out for the common case (see Deadline.run): a user call,
        # the learned timeout still fresh, no timeouts in a row asking for a back-off.
        cached_for, version, t = self._cached
        if (
            ctx.probe
            or ctx.max_timeout is not None
            or cached_for is not host.latency
            or version != cached_for.version
            or self._timeouts_in_a_row >= self.backoff_after
        ):
            t = self._limit(ctx)
        if ctx.deadline is not None:
            t = min(t, max(0.0, ctx.deadline - start))
        ctx.timeout = t
        if t <= 0:
            raise OperationTimeout(
                "deadline passed before the try", operation=ctx.operation or None
            )
        try:
            result = nxt(ctx)
        except (TimeoutError, httpx.TimeoutException):
            self._timeouts_in_a_row += 1
            raise
        # _succeeded(), written out.
        self._timeouts_in_a_row = 0
        host.latency.record(host.timer.monotonic() - start)
        return result

    def _succeeded(self, start: float) -> None:
        assert self.host is not None
        self._timeouts_in_a_row = 0
        self.host.latency.record(self.host.timer.monotonic() - start)

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Await the try within its timeout; record the latency of a success."""
        t, start = self._prepare(ctx)
        if t <= 0:
            raise OperationTimeout(
                "deadline passed before the try", operation=ctx.operation or None
            )
        try:
            async with asyncio.timeout(t):
                result = await nxt(ctx)
        except httpx.TimeoutException:
            self._timeouts_in_a_row += 1
            raise
        except TimeoutError as exc:
            self._timeouts_in_a_row += 1
            if isinstance(exc, OperationTimeout):
                raise
            err = OperationTimeout(
                f"try timed out after {t:.3g}s",
                provider=self._name or None,
                operation=ctx.operation or None,
            )
            # The callable may have marked its cancellation "may have executed, do not
            # retry" (a non-idempotent request already sent); the timeout keeps that mark.
            if getattr(exc.__cause__ or exc.__context__, NO_RETRY_ATTR, False):
                setattr(err, NO_RETRY_ATTR, True)
            raise err from exc
        self._succeeded(start)
        return result

    def __repr__(self) -> str:
        mode = (
            f"adaptive x{self.multiplier} p{self.percentile * 100:g}" if self.adaptive else "fixed"
        )
        return f"Timeout(seconds={self.seconds}, {mode}, floor={self.floor})"


# -- hedging ---------------------------------------------------------------------------

_EXECUTOR_LOCK = threading.Lock()
_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None


def hedge_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The thread pool that runs sync hedged calls (shared, created on first use)."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=64, thread_name_prefix="superapp-hedge"
            )
        return _EXECUTOR


def hedge_delay(
    latency: LatencyTracker, percentile: float, initial: float, min_samples: int
) -> float:
    """The delay before a backup call: the ``percentile`` latency once known."""
    if latency.samples() < min_samples:
        return initial
    p = latency.percentile(percentile)
    return initial if p is None else p


def run_hedged(
    primary: Callable[[], Any],
    backups: Iterable[Callable[[], Any]],
    delay: float,
    on_launch: Callable[[], None] | None = None,
) -> Any:
    """Run ``primary``; if it has not answered after ``delay`` (or failed), start the next
    backup; the first success wins. Sync calls cannot be cancelled: a loser runs on in the
    pool until its own timeout and its result is dropped."""
    pool = hedge_executor()
    pending: set[concurrent.futures.Future[Any]] = {pool.submit(primary)}
    todo = list(backups)
    last_exc: BaseException | None = None
    while pending:
        wait_for = delay if todo else None
        done, pending = concurrent.futures.wait(
            pending, timeout=wait_for, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for fut in done:
            exc = fut.exception()
            if exc is None:
                return fut.result()
            last_exc = exc
        if todo and (not done or not pending):
            if on_launch is not None:
                on_launch()
            pending.add(pool.submit(todo.pop(0)))
    assert last_exc is not None
    raise last_exc


async def arun_hedged(
    primary: Callable[[], Any],
    backups: Iterable[Callable[[], Any]],
    delay: float,
    on_launch: Callable[[], None] | None = None,
) -> Any:
    """The async form of :func:`run_hedged`; losers are cancelled."""
    pending: set[asyncio.Future[Any]] = {asyncio.ensure_future(primary())}
    todo = list(backups)
    last_exc: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=delay if todo else None, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in done:
                exc = fut.exception()
                if exc is None:
                    return fut.result()
                last_exc = exc
            if todo and (not done or not pending):
                if on_launch is not None:
                    on_launch()
                pending.add(asyncio.ensure_future(todo.pop(0)()))
    finally:
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    assert last_exc is not None
    raise last_exc


class Hedge(_Bound):
    """For idempotent reads: if the call has not answered after the provider's
    ``percentile`` latency, start a backup of the same call; the first good answer wins,
    the loser is cancelled (async) or ignored (sync).

    Across providers, the router hedges to the next provider with the same rule.
    """

    __slots__ = ("host", "initial_delay", "max_hedges", "min_samples", "percentile")

    def __init__(
        self,
        *,
        percentile: float = 0.95,
        initial_delay: float = 0.05,
        max_hedges: int = 1,
        min_samples: int = 20,
    ) -> None:
        self.host: Host | None = None
        if not 0 < percentile <= 1:
            raise ValueError(f"Hedge.percentile must be in (0, 1], got {percentile!r}")
        if not initial_delay >= 0:
            raise ValueError(f"Hedge.initial_delay must be >= 0, got {initial_delay!r}")
        if max_hedges < 1:
            raise ValueError(f"Hedge.max_hedges must be >= 1, got {max_hedges!r}")
        self.percentile = percentile
        self.initial_delay = initial_delay
        self.max_hedges = max_hedges
        self.min_samples = min_samples

    def delay(self) -> float:
        """The delay a backup call would wait for now."""
        assert self.host is not None
        return hedge_delay(self.host.latency, self.percentile, self.initial_delay, self.min_samples)

    def _launch(self, ctx: CallContext, delay: float) -> Callable[[], None]:
        return lambda: self._emit(HedgeLaunched(self._name, ctx.operation, delay))

    def _backup_ctx(self, ctx: CallContext) -> CallContext:
        c = ctx.copy()
        c.hedged = True
        return c

    def run(self, ctx: CallContext, nxt: SyncNext) -> Any:
        """Run the rest, hedged."""
        d = self.delay()
        backups = [functools.partial(nxt, self._backup_ctx(ctx)) for _ in range(self.max_hedges)]
        return run_hedged(lambda: nxt(ctx), backups, d, self._launch(ctx, d))

    async def arun(self, ctx: CallContext, nxt: AsyncNext) -> Any:
        """Await the rest, hedged."""
        d = self.delay()
        backups = [functools.partial(nxt, self._backup_ctx(ctx)) for _ in range(self.max_hedges)]
        return await arun_hedged(lambda: nxt(ctx), backups, d, self._launch(ctx, d))

    def __repr__(self) -> str:
        return (
            f"Hedge(percentile={self.percentile}, initial_delay={self.initial_delay}, "
            f"max_hedges={self.max_hedges})"
        )
