"""ReadCache: last good value with its age, per-operation staleness, never secrets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from superapp_sdk.offline import ReadCache
from superapp_sdk.store import DiskStore
from superapp_sdk.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[DiskStore]:
    s = DiskStore(tmp_path / "state", clock=clock, durable=False)
    yield s
    s.close()


@pytest.fixture
def cache(store: DiskStore, clock: FakeClock) -> ReadCache:
    return ReadCache(
        store.namespace("cache"),
        clock=clock,
        max_staleness={"chat.history": 60.0, "payment.status": 5.0},
        default_max_staleness=600.0,
    )


def test_returns_value_with_its_age(cache: ReadCache, clock: FakeClock) -> None:
    """A cached JSON value comes back equal, with stored_at and stale_for from the clock."""
    cache.put("h:c1", {"messages": ["hi"]}, operation="chat.history")
    stored = clock.time()
    clock.advance(12.5)
    hit = cache.get("h:c1")
    assert hit is not None
    assert hit.value == {"messages": ["hi"]}
    assert hit.operation == "chat.history"
    assert hit.stored_at == stored
    assert hit.stale_for == pytest.approx(12.5)


def test_bytes_round_trip(cache: ReadCache) -> None:
    """A bytes value comes back as the same bytes."""
    cache.put("raw", b"\x00\xff", operation="x")
    hit = cache.get("raw")
    assert hit is not None
    assert hit.value == b"\x00\xff"


def test_per_operation_staleness_limit(cache: ReadCache, clock: FakeClock) -> None:
    """Each operation's max staleness decides when its values stop being served."""
    cache.put("status", {"state": "paid"}, operation="payment.status")
    cache.put("history", [], operation="chat.history")
    clock.advance(6)
    assert cache.get("status") is None
    assert cache.get("history") is not None
    clock.advance(60)
    assert cache.get("history") is None


def test_default_staleness_for_unknown_operations(cache: ReadCache, clock: FakeClock) -> None:
    """Operations without their own limit use default_max_staleness."""
    cache.put("est", {"eta": 3}, operation="mobility.estimate")
    clock.advance(599)
    assert cache.get("est") is not None
    clock.advance(2)
    assert cache.get("est") is None


def test_caller_can_ask_for_fresher_values(cache: ReadCache, clock: FakeClock) -> None:
    """A max_staleness argument tighter than the operation's limit is honoured."""
    cache.put("history", [], operation="chat.history")
    clock.advance(10)
    assert cache.get("history", max_staleness=5) is None
    assert cache.get("history", max_staleness=20) is not None


def test_secrets_are_refused(cache: ReadCache) -> None:
    """put(secret=True) raises and stores nothing."""
    with pytest.raises(ValueError, match="secrets never go into the read cache"):
        cache.put("token", b"eyJ...", operation="identity.verify", secret=True)
    assert cache.get("token") is None


def test_survives_reopening_the_store(tmp_path: Path, clock: FakeClock) -> None:
    """A cached value is still served by a new ReadCache on a reopened store."""
    s = DiskStore(tmp_path / "st", clock=clock)
    ReadCache(s, clock=clock).put("k", {"v": 1}, operation="op")
    s.close()
    s = DiskStore(tmp_path / "st", clock=clock)
    try:
        hit = ReadCache(s, clock=clock).get("k")
        assert hit is not None
        assert hit.value == {"v": 1}
    finally:
        s.close()


def test_newer_put_replaces_older(cache: ReadCache, clock: FakeClock) -> None:
    """The latest good value wins and its age restarts."""
    cache.put("k", 1, operation="op")
    clock.advance(30)
    cache.put("k", 2, operation="op")
    hit = cache.get("k")
    assert hit is not None
    assert (hit.value, hit.stale_for) == (2, 0.0)


def test_invalid_staleness_is_refused(store: DiskStore) -> None:
    """A non-positive or infinite staleness limit raises ValueError naming the operation."""
    with pytest.raises(ValueError, match=r"chat\.history"):
        ReadCache(store, max_staleness={"chat.history": 0})
    with pytest.raises(ValueError, match="default"):
        ReadCache(store, default_max_staleness=float("inf"))


def test_non_json_value_is_a_type_error(cache: ReadCache) -> None:
    """A value that is neither bytes nor JSON is refused."""
    with pytest.raises(TypeError, match="JSON"):
        cache.put("k", {"x": object()}, operation="op")
