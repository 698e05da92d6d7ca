"""Hedging: a backup call after a latency percentile; the first good answer wins."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from superapp_sdk._errors import ProviderConnectError
from superapp_sdk.core.latency import LatencyTracker
from superapp_sdk.resilience import (
    CallContext,
    Event,
    Hedge,
    HedgeLaunched,
    Pipeline,
    arun_hedged,
    run_hedged,
)
from superapp_sdk.testing import FakeClock

WAIT = 5.0


def _launches(events: list[Event]) -> list[HedgeLaunched]:
    return [e for e in events if isinstance(e, HedgeLaunched)]


# -- sync ------------------------------------------------------------------------------


def test_slow_primary_loses_to_the_backup() -> None:
    """A primary that has not answered after the delay is hedged; the backup wins."""
    events: list[Event] = []
    release = threading.Event()
    p = Pipeline(
        Hedge(initial_delay=0.01), name="kakao", timer=FakeClock(), listeners=[events.append]
    )

    def fn(ctx: CallContext) -> str:
        if ctx.hedged:
            return "backup"
        release.wait(WAIT)
        return "primary"

    try:
        assert p.call(fn, operation="map.route") == "backup"
    finally:
        release.set()
    assert _launches(events) == [HedgeLaunched("kakao", "map.route", 0.01)]


def test_fast_primary_never_launches_a_backup() -> None:
    """A primary that answers before the delay is the only call made."""
    events: list[Event] = []
    calls: list[bool] = []
    p = Pipeline(Hedge(initial_delay=WAIT), timer=FakeClock(), listeners=[events.append])

    def fn(ctx: CallContext) -> str:
        calls.append(ctx.hedged)
        return "primary"

    assert p.call(fn) == "primary"
    assert calls == [False]
    assert _launches(events) == []


def test_fast_failing_primary_launches_the_backup_at_once() -> None:
    """A primary that fails before the delay is hedged without waiting for the delay."""
    events: list[Event] = []
    delay = 30.0
    p = Pipeline(Hedge(initial_delay=delay), timer=FakeClock(), listeners=[events.append])

    def fn(ctx: CallContext) -> str:
        if not ctx.hedged:
            raise ProviderConnectError("refused")
        return "backup"

    start = time.monotonic()
    assert p.call(fn) == "backup"
    assert time.monotonic() - start < delay / 2
    assert len(_launches(events)) == 1


def test_both_failing_raises_the_last_error() -> None:
    """When the primary and the backup both fail, an error is raised."""
    p = Pipeline(Hedge(initial_delay=0.0), timer=FakeClock())

    def fn(ctx: CallContext) -> str:
        raise ProviderConnectError("backup" if ctx.hedged else "primary")

    with pytest.raises(ProviderConnectError):
        p.call(fn)


def test_backup_gets_its_own_context() -> None:
    """The backup sees a copy of the context marked ``hedged``; the primary's is untouched."""
    release = threading.Event()
    contexts: list[CallContext] = []
    p = Pipeline(Hedge(initial_delay=0.01), timer=FakeClock())

    def fn(ctx: CallContext) -> str:
        contexts.append(ctx)
        if ctx.hedged:
            return "backup"
        release.wait(WAIT)
        return "primary"

    try:
        p.call(fn, operation="op")
    finally:
        release.set()
    primary, backup = contexts
    assert primary is not backup
    assert not primary.hedged
    assert backup.hedged
    assert backup.operation == "op"


def test_run_hedged_with_no_backups_returns_the_primary() -> None:
    """Without backups, run_hedged just waits for the primary."""
    assert run_hedged(lambda: 42, [], delay=0.0) == 42


# -- async -----------------------------------------------------------------------------


async def test_async_slow_primary_is_cancelled_when_the_backup_wins() -> None:
    """The async loser is cancelled: its CancelledError handler and finally run."""
    events: list[Event] = []
    cleanup: list[str] = []
    p = Pipeline(Hedge(initial_delay=0.01), timer=FakeClock(), listeners=[events.append])

    async def fn(ctx: CallContext) -> str:
        if ctx.hedged:
            return "backup"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleanup.append("cancelled")
            raise
        finally:
            cleanup.append("finally")
        return "primary"

    async with asyncio.timeout(WAIT):
        assert await p.acall(fn) == "backup"
    assert cleanup == ["cancelled", "finally"]
    assert len(_launches(events)) == 1


async def test_async_fast_primary_never_launches_a_backup() -> None:
    """An async primary that answers in time is the only call."""
    events: list[Event] = []
    calls: list[bool] = []
    p = Pipeline(Hedge(initial_delay=WAIT), timer=FakeClock(), listeners=[events.append])

    async def fn(ctx: CallContext) -> str:
        calls.append(ctx.hedged)
        return "primary"

    async with asyncio.timeout(WAIT):
        assert await p.acall(fn) == "primary"
    assert calls == [False]
    assert _launches(events) == []


async def test_async_fast_failing_primary_launches_the_backup_at_once() -> None:
    """An async primary that fails is hedged without waiting for the delay."""
    p = Pipeline(Hedge(initial_delay=30.0), timer=FakeClock())

    async def fn(ctx: CallContext) -> str:
        if not ctx.hedged:
            raise ProviderConnectError("refused")
        return "backup"

    async with asyncio.timeout(WAIT):
        assert await p.acall(fn) == "backup"


async def test_arun_hedged_cancels_every_pending_call_when_cancelled() -> None:
    """Cancelling the hedged call cancels the primary and the backup."""
    cancelled: list[str] = []
    started = asyncio.Event()

    def hanging(name: str) -> object:
        async def run() -> str:
            try:
                if name == "backup":
                    started.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
            return name

        return run()

    async with asyncio.timeout(WAIT):
        task = asyncio.create_task(
            arun_hedged(lambda: hanging("primary"), [lambda: hanging("backup")], 0.0)
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(cancelled) == ["backup", "primary"]


# -- delay -----------------------------------------------------------------------------


def _hedge_with(samples: list[float], **kwargs: float) -> Hedge:
    latency = LatencyTracker(refresh_every=1)
    for s in samples:
        latency.record(s)
    hedge = Hedge(**kwargs)  # type: ignore[arg-type]
    Pipeline(hedge, timer=FakeClock(), latency=latency)
    return hedge


def test_delay_is_initial_until_min_samples() -> None:
    """Before ``min_samples`` latencies, the backup waits ``initial_delay``."""
    hedge = _hedge_with([0.2] * 19, initial_delay=0.05, min_samples=20)
    assert hedge.delay() == 0.05


def test_delay_is_the_latency_percentile_after_min_samples() -> None:
    """With enough samples, the backup waits the provider's p95 latency."""
    samples = [0.01] * 95 + [0.5] * 5
    hedge = _hedge_with(samples, percentile=0.95, initial_delay=0.05, min_samples=20)
    assert hedge.delay() == 0.01
    hedge = _hedge_with([0.01] * 90 + [0.5] * 10, percentile=0.95, min_samples=20)
    assert hedge.delay() == 0.5


def test_launched_event_carries_the_learned_delay() -> None:
    """The HedgeLaunched event reports the percentile delay that was used."""
    events: list[Event] = []
    latency = LatencyTracker(refresh_every=1)
    for _ in range(20):
        latency.record(0.02)
    release = threading.Event()
    p = Pipeline(
        Hedge(initial_delay=WAIT, min_samples=20),
        timer=FakeClock(),
        latency=latency,
        listeners=[events.append],
    )

    def fn(ctx: CallContext) -> str:
        if ctx.hedged:
            return "backup"
        release.wait(WAIT)
        return "primary"

    try:
        assert p.call(fn) == "backup"
    finally:
        release.set()
    assert [e.delay for e in _launches(events)] == [0.02]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"percentile": 0}, "percentile"),
        ({"percentile": 1.1}, "percentile"),
        ({"initial_delay": -1}, "initial_delay"),
        ({"max_hedges": 0}, "max_hedges"),
    ],
)
def test_invalid_options_name_the_field(kwargs: dict[str, float], field: str) -> None:
    """Bad hedge options raise ValueError naming the field."""
    with pytest.raises(ValueError, match=rf"Hedge\.{field} must be"):
        Hedge(**kwargs)  # type: ignore[arg-type]
