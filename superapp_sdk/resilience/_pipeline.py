"""A resilience pipeline: strategies listed outermost first, run sync or async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from superapp_sdk.core.breaker import BreakerState, StateChange
from superapp_sdk.core.latency import LatencyTracker
from superapp_sdk.resilience._base import (
    AsyncNext,
    CallContext,
    Event,
    Listener,
    Strategy,
    SyncNext,
    SystemTimer,
    Timer,
    default_retryable,
    retryable_unless_timeout,
)
from superapp_sdk.resilience._strategies import (
    Bulkhead,
    CircuitBreaker,
    Deadline,
    Hedge,
    Retry,
    SharedBudget,
    Timeout,
)

__all__ = ["Pipeline"]

T = TypeVar("T")


class Pipeline:
    """Strategies listed outermost first, composed once, run for every call::

        pipeline = Pipeline(
            Deadline(5.0),
            Bulkhead(64),
            CircuitBreaker(BreakerOptions(minimum_calls=5)),
            Retry(3, budget=kakao_budget),
            Timeout(1.0),                      # adaptive per-try timeout
            name="kakao.pay",
        )
        payment = pipeline.call(lambda ctx: client.get(url, timeout=ctx.timeout))

    The callable receives a :class:`CallContext` whose ``timeout`` it should honour.
    ``call`` and ``acall`` have the same semantics; the async form also cancels a try at
    its timeout and the whole call at its deadline.

    Args:
        strategies: outermost first.
        name: used in events and errors (usually the provider name).
        timer: clock and sleeps; ``FakeClock`` in tests.
        listeners: receive every :data:`Event`.
        latency: the provider's latency tracker (shared with the router's hedging).
    """

    def __init__(
        self,
        *strategies: Strategy,
        name: str = "pipeline",
        timer: Timer | None = None,
        listeners: Sequence[Listener] = (),
        latency: LatencyTracker | None = None,
    ) -> None:
        self.name = name
        self.timer: Timer = timer or SystemTimer()
        self.latency = latency or LatencyTracker()
        self.strategies: tuple[Strategy, ...] = strategies
        self.listeners: list[Listener] = list(listeners)
        self.listener_errors = 0
        for s in strategies:
            s.bind(self)
        breaker = self.breaker
        if breaker is not None:
            breaker.on(self._on_breaker_event)
        self._sync = self._compose_sync()
        self._async = self._compose_async()

    # -- composition -------------------------------------------------------------------

    def _compose_sync(self) -> SyncNext:
        def innermost(ctx: CallContext) -> Any:
            assert ctx._fn is not None
            return ctx._fn(ctx)

        nxt: SyncNext = innermost
        for s in reversed(self.strategies):
            nxt = _wrap_sync(s, nxt)
        return nxt

    def _compose_async(self) -> AsyncNext:
        async def innermost(ctx: CallContext) -> Any:
            assert ctx._afn is not None
            return await ctx._afn(ctx)

        nxt: AsyncNext = innermost
        for s in reversed(self.strategies):
            nxt = _wrap_async(s, nxt)
        return nxt

    # -- running -----------------------------------------------------------------------

    def call(
        self,
        fn: Callable[[CallContext], T],
        operation: str = "",
        *,
        probe: bool | None = None,
        max_timeout: float | None = None,
        last_resort: bool = True,
        resend: bool = True,
    ) -> T:
        """Run ``fn`` through the pipeline.

        Args:
            operation: a name for events and errors.
            probe: whether this call may be a half-open probe (default: the breaker's).
            max_timeout: a cap on the per-try timeout (a short probe timeout).
            last_resort: False when a router has another provider to fail over to.
            resend: False for an at-most-once write the provider does not deduplicate:
                a try that may have reached it is never retried.
        """
        # Positional: with cold CPU caches, keyword arguments to a constructor measured
        # ~5 us more than positional ones.
        ctx = CallContext(operation, None, probe, max_timeout, last_resort, resend)
        ctx._fn = fn
        return self._sync(ctx)  # type: ignore[no-any-return]

    async def acall(
        self,
        fn: Callable[[CallContext], Awaitable[T]],
        operation: str = "",
        *,
        probe: bool | None = None,
        max_timeout: float | None = None,
        last_resort: bool = True,
        resend: bool = True,
    ) -> T:
        """Await ``fn`` through the pipeline (arguments as for :meth:`call`)."""
        # Positional: with cold CPU caches, keyword arguments to a constructor measured
        # ~5 us more than positional ones.
        ctx = CallContext(operation, None, probe, max_timeout, last_resort, resend)
        ctx._afn = fn
        return await self._async(ctx)  # type: ignore[no-any-return]

    # -- events and lookup -------------------------------------------------------------

    def _on_breaker_event(self, event: Event) -> None:
        # A provider that recovered may have recovered at a new latency (a failover of
        # its own, a slower region): forget the old samples so the adaptive timeout
        # learns the new normal instead of cutting every call at 3x the old p99.
        if (
            isinstance(event, StateChange)
            and event.new is BreakerState.CLOSED
            and event.old is BreakerState.HALF_OPEN
        ):
            self.latency.reset()

    def on(self, listener: Listener) -> None:
        """Add a listener for every event of this pipeline."""
        self.listeners.append(listener)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every listener; a listener that raises is counted and
        skipped, never allowed to break the call."""
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener must not break a call
                self.listener_errors += 1

    def find(self, kind: type[T]) -> T | None:
        """The first strategy of type ``kind``, if any."""
        for s in self.strategies:
            if isinstance(s, kind):
                return s
        return None

    @property
    def breaker(self) -> CircuitBreaker | None:
        """This pipeline's circuit breaker, if it has one."""
        return self.find(CircuitBreaker)

    def __repr__(self) -> str:
        inner = " -> ".join(repr(s) for s in self.strategies)
        return f"Pipeline({self.name!r}: {inner})"

    # -- defaults per operation kind ---------------------------------------------------
    #
    # Shared arguments of the three: ``breaker`` and ``latency`` let one provider's read,
    # write and payment pipelines share its breaker and latency history (as SuperApp
    # does); ``alternates=True`` says a router can fail over, so a try that timed out is
    # failed over instead of retried (it is still retried when no alternate is left).

    @classmethod
    def _kind(
        cls,
        name: str,
        *,
        deadline: float,
        bulkhead: int,
        retry: Retry,
        timeout: Timeout,
        hedge: bool,
        breaker: CircuitBreaker | None,
        latency: LatencyTracker | None,
        timer: Timer | None,
        listeners: Sequence[Listener],
    ) -> Pipeline:
        strategies: list[Strategy] = [
            Deadline(deadline),
            Bulkhead(bulkhead),
            breaker or CircuitBreaker(),
            retry,
        ]
        if hedge:
            strategies.append(Hedge())
        strategies.append(timeout)
        return cls(*strategies, name=name, timer=timer, listeners=listeners, latency=latency)

    @classmethod
    def for_read(
        cls,
        name: str,
        *,
        timeout: float = 1.0,
        deadline: float = 5.0,
        budget: SharedBudget | None = None,
        hedge: bool = False,
        timer: Timer | None = None,
        listeners: Sequence[Listener] = (),
        breaker: CircuitBreaker | None = None,
        latency: LatencyTracker | None = None,
        floor: float = 0.05,
        alternates: bool = False,
    ) -> Pipeline:
        """Defaults for an idempotent read: three tries, adaptive timeout, optional hedge."""
        return cls._kind(
            name,
            deadline=deadline,
            bulkhead=256,
            retry=_retry(3, budget, alternates),
            timeout=Timeout(timeout, floor=min(floor, timeout)),
            hedge=hedge,
            breaker=breaker,
            latency=latency,
            timer=timer,
            listeners=listeners,
        )

    @classmethod
    def for_write(
        cls,
        name: str,
        *,
        timeout: float = 2.0,
        deadline: float = 8.0,
        budget: SharedBudget | None = None,
        timer: Timer | None = None,
        listeners: Sequence[Listener] = (),
        breaker: CircuitBreaker | None = None,
        latency: LatencyTracker | None = None,
        floor: float = 0.05,
        alternates: bool = False,
    ) -> Pipeline:
        """Defaults for an idempotent write (one carrying an idempotency key)."""
        return cls._kind(
            name,
            deadline=deadline,
            bulkhead=128,
            retry=_retry(3, budget, alternates),
            timeout=Timeout(timeout, floor=min(floor, timeout)),
            hedge=False,
            breaker=breaker,
            latency=latency,
            timer=timer,
            listeners=listeners,
        )

    @classmethod
    def for_payment(
        cls,
        name: str,
        *,
        timeout: float = 10.0,
        deadline: float = 30.0,
        budget: SharedBudget | None = None,
        timer: Timer | None = None,
        listeners: Sequence[Listener] = (),
        breaker: CircuitBreaker | None = None,
        latency: LatencyTracker | None = None,
        floor: float = 0.05,
    ) -> Pipeline:
        """Defaults for a payment: retried only on errors that prove nothing was sent
        (an ambiguous timeout is resolved by a status query, not a blind retry), with a
        fixed, generous per-try timeout (a payment taking long is not a dead provider)."""
        return cls._kind(
            name,
            deadline=deadline,
            bulkhead=64,
            retry=Retry(2, budget=budget, retry_on=_not_sent, retry_on_last_resort=_not_sent),
            timeout=Timeout(timeout, adaptive=False, floor=min(floor, timeout)),
            hedge=False,
            breaker=breaker,
            latency=latency,
            timer=timer,
            listeners=listeners,
        )


def _retry(attempts: int, budget: SharedBudget | None, alternates: bool) -> Retry:
    if alternates:
        return Retry(
            attempts,
            budget=budget,
            retry_on=retryable_unless_timeout,
            retry_on_last_resort=default_retryable,
        )
    return Retry(attempts, budget=budget)


def _not_sent(exc: BaseException) -> bool:
    return getattr(exc, "request_sent", None) is False


def _wrap_sync(strategy: Strategy, nxt: SyncNext) -> SyncNext:
    run = strategy.run

    def step(ctx: CallContext) -> Any:
        return run(ctx, nxt)

    return step


def _wrap_async(strategy: Strategy, nxt: AsyncNext) -> AsyncNext:
    arun = strategy.arun

    async def step(ctx: CallContext) -> Any:
        return await arun(ctx, nxt)

    return step
