"""Outbox: persistence before return, dedup, per-entity order, leases, backoff, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from superapp_sdk import IdempotencyConflict, StoreError
from superapp_sdk.offline import (
    AsyncOutboxWorker,
    ItemState,
    Outbox,
    OutboxItem,
    OutboxPolicy,
    OutboxWorker,
)
from superapp_sdk.store import DiskStore, ValueTooLarge
from superapp_sdk.testing import FakeClock

REPO = Path(__file__).resolve().parents[1]
POLICY = OutboxPolicy(max_attempts=3, max_age_seconds=600, backoff_base=1.0, backoff_cap=8.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "state", clock=clock, default_policy=POLICY, rng=random.Random(7))
    yield ob
    ob.close()


def put(ob: Outbox, key: str, entity: str = "chat:c1", text: str = "hi") -> OutboxItem:
    return ob.enqueue(
        entity=entity, operation="chat.send", payload={"text": text}, idempotency_key=key
    )


def claim(ob: Outbox, worker: str = "w1", lease: float = 30.0) -> OutboxItem | None:
    return ob.claim(worker, lease_seconds=lease)


def must_claim(ob: Outbox, worker: str = "w1", lease: float = 30.0) -> OutboxItem:
    item = claim(ob, worker, lease)
    assert item is not None
    assert item.lease_token is not None
    return item


def test_enqueue_is_persisted_before_returning(tmp_path: Path, clock: FakeClock) -> None:
    """An enqueued item is readable by a fresh Outbox opened on the same directory."""
    ob = Outbox(tmp_path / "state", clock=clock)
    item = put(ob, "k1")
    ob.close()
    again = Outbox(tmp_path / "state", clock=clock)
    try:
        stored = again.get(item.id)
        assert stored is not None
        assert (stored.payload, stored.idempotency_key, stored.state) == (
            {"text": "hi"},
            "k1",
            ItemState.PENDING,
        )
    finally:
        again.close()


def test_outbox_accepts_a_disk_store(tmp_path: Path, clock: FakeClock) -> None:
    """Given a DiskStore, the outbox lives in its state_dir."""
    store = DiskStore(tmp_path / "state", durable=False)
    ob = Outbox(store, clock=clock)
    try:
        put(ob, "k1")
        assert ob.path == tmp_path / "state" / "outbox.sqlite3"
        assert ob.depth() == 1
    finally:
        ob.close()
        store.close()


def test_tickets_sort_in_enqueue_order(outbox: Outbox) -> None:
    """Ticket strings sort like the order items were enqueued."""
    ids = [put(outbox, f"k{i}", entity=f"e{i % 3}").id for i in range(12)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 12


def test_bytes_payload_round_trips(outbox: Outbox) -> None:
    """A bytes payload comes back as the same bytes."""
    item = outbox.enqueue(entity="e", operation="op", payload=b"\x00\x01raw", idempotency_key="k")
    got = outbox.get(item.id)
    assert got is not None
    assert got.payload == b"\x00\x01raw"


def test_same_key_same_payload_returns_existing_item(outbox: Outbox) -> None:
    """Re-enqueueing an identical request returns the first item and stores nothing new."""
    first = put(outbox, "k1")
    second = put(outbox, "k1")
    assert second.id == first.id
    assert outbox.depth() == 1


def test_fingerprint_ignores_json_key_order(outbox: Outbox) -> None:
    """Two dicts with the same content in another key order are the same request."""
    a = outbox.enqueue(entity="e", operation="op", payload={"a": 1, "b": 2}, idempotency_key="k")
    b = outbox.enqueue(entity="e", operation="op", payload={"b": 2, "a": 1}, idempotency_key="k")
    assert a.id == b.id
    assert a.fingerprint == b.fingerprint


def test_same_key_different_payload_is_a_conflict(outbox: Outbox) -> None:
    """Reusing a key with another payload raises IdempotencyConflict and queues nothing."""
    put(outbox, "k1", text="hi")
    with pytest.raises(IdempotencyConflict, match="k1"):
        put(outbox, "k1", text="changed")
    assert outbox.depth() == 1


def test_conflict_is_detected_after_delivery(outbox: Outbox) -> None:
    """A delivered key is remembered: same payload returns DELIVERED, another conflicts."""
    item = put(outbox, "k1")
    leased = must_claim(outbox)
    assert outbox.ack(leased.id, leased.lease_token or "")
    again = put(outbox, "k1")
    assert (again.id, again.state) == (item.id, ItemState.DELIVERED)
    assert outbox.depth() == 0
    with pytest.raises(IdempotencyConflict):
        put(outbox, "k1", text="other")


def test_payload_over_the_limit_is_refused_naming_it(tmp_path: Path, clock: FakeClock) -> None:
    """A payload over max_payload_bytes raises ValueTooLarge naming the limit; nothing queued."""
    ob = Outbox(tmp_path / "s", clock=clock, max_payload_bytes=100)
    try:
        with pytest.raises(ValueTooLarge, match="100 bytes"):
            ob.enqueue(entity="e", operation="op", payload=b"x" * 101, idempotency_key="k")
        assert ob.depth() == 0
    finally:
        ob.close()


def test_non_json_payload_is_a_type_error(outbox: Outbox) -> None:
    """A payload that is neither bytes nor JSON is refused before anything is stored."""
    with pytest.raises(TypeError, match="JSON"):
        outbox.enqueue(entity="e", operation="op", payload={"x": object()}, idempotency_key="k")
    assert outbox.depth() == 0


def test_only_the_head_of_an_entity_is_claimable(outbox: Outbox) -> None:
    """While an entity's first item is leased, its second item is not handed out."""
    first = put(outbox, "k1", entity="chat:c1")
    put(outbox, "k2", entity="chat:c1")
    assert must_claim(outbox).id == first.id
    assert claim(outbox, "w2") is None


def test_other_entities_proceed_while_one_is_leased(outbox: Outbox) -> None:
    """A leased head of one entity does not block another entity."""
    put(outbox, "k1", entity="chat:c1")
    other = put(outbox, "k2", entity="chat:c2")
    must_claim(outbox)
    assert must_claim(outbox, "w2").id == other.id


def test_ack_releases_the_next_item_of_the_entity(outbox: Outbox) -> None:
    """After ack, the entity's next item is claimable and depth drops."""
    put(outbox, "k1")
    second = put(outbox, "k2")
    first = must_claim(outbox)
    assert outbox.ack(first.id, first.lease_token or "") is True
    assert outbox.depth() == 1
    assert must_claim(outbox).id == second.id


def test_expired_lease_is_reclaimed_and_stale_ack_refused(outbox: Outbox, clock: FakeClock) -> None:
    """After the lease runs out another worker gets the item; the old token can no longer ack."""
    put(outbox, "k1")
    first = must_claim(outbox, "w1", lease=10)
    clock.advance(5)
    assert claim(outbox, "w2") is None
    clock.advance(6)
    second = must_claim(outbox, "w2")
    assert second.id == first.id
    assert second.lease_token != first.lease_token
    assert second.attempts == 2
    assert outbox.ack(first.id, first.lease_token or "") is False
    assert outbox.ack(second.id, second.lease_token or "") is True


def test_late_ack_is_accepted_if_nobody_reclaimed(outbox: Outbox, clock: FakeClock) -> None:
    """An ack after the lease expired still counts when no one else claimed the item."""
    put(outbox, "k1")
    item = must_claim(outbox, lease=1)
    clock.advance(5)
    assert outbox.ack(item.id, item.lease_token or "") is True
    assert outbox.depth() == 0


def test_fail_schedules_jittered_exponential_backoff(outbox: Outbox, clock: FakeClock) -> None:
    """A retryable failure hides the item for a delay within tenacity's exponential bound."""
    put(outbox, "k1")
    for attempt, bound in ((1, 1.0), (2, 2.0)):
        item = must_claim(outbox)
        assert item.attempts == attempt
        assert outbox.fail(item.id, item.lease_token or "", "boom") is True
        stored = outbox.get(item.id)
        assert stored is not None
        delay = stored.not_before - clock.time()
        assert 0.0 <= delay <= bound
        assert stored.last_error == "boom"
        clock.advance(delay + 0.001)


def test_fail_before_backoff_ends_is_not_claimable(outbox: Outbox, clock: FakeClock) -> None:
    """An item waiting out retry_after is skipped until then."""
    put(outbox, "k1")
    item = must_claim(outbox)
    outbox.fail(item.id, item.lease_token or "", "slow down", retry_after=30)
    clock.advance(29.9)
    assert claim(outbox) is None
    clock.advance(0.2)
    assert must_claim(outbox).id == item.id


def test_dead_letter_after_max_attempts_emits_event(outbox: Outbox, clock: FakeClock) -> None:
    """The failure that reaches max_attempts moves the item to dead letters and tells listeners."""
    events: list[OutboxItem] = []
    outbox.on_dead_letter(events.append)
    put(outbox, "k1")
    nxt = put(outbox, "k2")
    for _ in range(POLICY.max_attempts):
        assert events == []
        item = must_claim(outbox)
        outbox.fail(item.id, item.lease_token or "", "boom", retry_after=0)
    assert [e.idempotency_key for e in events] == ["k1"]
    assert events[0].state is ItemState.DEAD
    assert "max_attempts" in (events[0].dead_reason or "")
    assert [d.idempotency_key for d in outbox.dead_letters()] == ["k1"]
    assert must_claim(outbox).id == nxt.id


def test_non_retryable_failure_dead_letters_at_once(outbox: Outbox) -> None:
    """retryable=False moves the item to dead letters on the first failure."""
    events: list[OutboxItem] = []
    outbox.on_dead_letter(events.append)
    put(outbox, "k1")
    item = must_claim(outbox)
    outbox.fail(item.id, item.lease_token or "", "Declined: card", retryable=False)
    assert [e.id for e in events] == [item.id]
    assert outbox.depth() == 0
    assert outbox.dead_count() == 1


def test_head_past_max_age_is_dead_lettered_not_sent(outbox: Outbox, clock: FakeClock) -> None:
    """A head older than max_age_seconds is buried at claim time and the next one is returned."""
    events: list[OutboxItem] = []
    outbox.on_dead_letter(events.append)
    old = put(outbox, "k1")
    clock.advance(POLICY.max_age_seconds - 1)
    young = put(outbox, "k2")
    clock.advance(2)
    assert must_claim(outbox).id == young.id
    assert [e.id for e in events] == [old.id]
    assert "max_age_seconds" in (events[0].dead_reason or "")


def test_lease_lost_on_last_attempt_is_dead_lettered(outbox: Outbox, clock: FakeClock) -> None:
    """A worker dying on the last allowed attempt leaves the item to dead letters, not a resend."""
    put(outbox, "k1")
    for _ in range(POLICY.max_attempts):
        must_claim(outbox, lease=1)
        clock.advance(2)
    assert claim(outbox) is None
    assert outbox.dead_count() == 1


def test_expire_sweeps_items_behind_the_head(outbox: Outbox, clock: FakeClock) -> None:
    """expire() buries every old unleased item, not only heads."""
    put(outbox, "k1", entity="e1")
    put(outbox, "k2", entity="e1")
    clock.advance(POLICY.max_age_seconds + 1)
    put(outbox, "k3", entity="e1")
    assert outbox.expire() == 2
    assert outbox.depth() == 1
    assert must_claim(outbox).idempotency_key == "k3"


def test_policy_is_chosen_per_operation(tmp_path: Path, clock: FakeClock) -> None:
    """An operation with its own policy uses it; others use the default."""
    ob = Outbox(
        tmp_path / "s",
        clock=clock,
        policies={"payment.confirm": OutboxPolicy(max_attempts=1)},
        default_policy=OutboxPolicy(max_attempts=5),
    )
    try:
        ob.enqueue(entity="p", operation="payment.confirm", payload=b"1", idempotency_key="a")
        item = must_claim(ob)
        ob.fail(item.id, item.lease_token or "", "x", retry_after=0)
        assert ob.dead_count() == 1
        assert ob.policy("chat.send").max_attempts == 5
    finally:
        ob.close()


def test_listener_error_does_not_undo_the_dead_letter(outbox: Outbox) -> None:
    """A failing listener is logged; the item stays dead-lettered and later listeners run."""
    seen: list[str] = []

    def broken(item: OutboxItem) -> None:
        raise RuntimeError("listener bug")

    outbox.on_dead_letter(broken)
    outbox.on_dead_letter(lambda item: seen.append(item.id))
    put(outbox, "k1")
    item = must_claim(outbox)
    outbox.fail(item.id, item.lease_token or "", "x", retryable=False)
    assert seen == [item.id]
    assert outbox.dead_count() == 1


def test_retry_dead_requeues_with_fresh_attempts(outbox: Outbox, clock: FakeClock) -> None:
    """retry_dead puts a dead letter back, same id and key, attempts reset."""
    put(outbox, "k1")
    item = must_claim(outbox)
    outbox.fail(item.id, item.lease_token or "", "x", retryable=False)
    back = outbox.retry_dead(item.id)
    assert back is not None
    assert (back.id, back.attempts, back.state) == (item.id, 0, ItemState.PENDING)
    again = must_claim(outbox)
    assert (again.id, again.attempts) == (item.id, 1)
    assert outbox.retry_dead("ob-unknown") is None


def test_drop_removes_an_item_and_frees_its_entity(outbox: Outbox) -> None:
    """drop deletes the item; the entity's next item becomes claimable."""
    first = put(outbox, "k1")
    second = put(outbox, "k2")
    assert outbox.drop(first.id) is True
    assert outbox.drop(first.id) is False
    assert must_claim(outbox).id == second.id


def test_list_paginates_in_enqueue_order(outbox: Outbox) -> None:
    """list(offset, limit) pages through pending items oldest first."""
    ids = [put(outbox, f"k{i}", entity=f"e{i}").id for i in range(25)]
    pages = [outbox.list(offset=o, limit=10) for o in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i.id for p in pages for i in p] == ids


def test_policy_validation_names_the_field() -> None:
    """Invalid policy options raise ValueError naming the field."""
    with pytest.raises(ValueError, match="max_attempts"):
        OutboxPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff_cap"):
        OutboxPolicy(backoff_base=10, backoff_cap=1)


def test_corrupted_outbox_file_raises_store_error(tmp_path: Path) -> None:
    """A garbage outbox file gives StoreError naming it at open."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "outbox.sqlite3").write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match=r"outbox\.sqlite3"):
        Outbox(tmp_path / "s")


def test_threads_never_claim_one_item_twice(outbox: Outbox) -> None:
    """Four threads claiming concurrently each get distinct items; every item is claimed."""
    for i in range(60):
        put(outbox, f"k{i}", entity=f"e{i}")
    got: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        for _ in range(100):
            item = claim(outbox, name)
            if item is None:
                return
            with lock:
                got.append(item.id)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 60
    assert len(set(got)) == 60


def test_processes_never_claim_one_item_twice(tmp_path: Path) -> None:
    """Two processes draining one state_dir each claim distinct items, and together all."""
    ob = Outbox(tmp_path / "s", durable=False)
    for i in range(200):
        ob.enqueue(entity=f"e{i % 20}", operation="op", payload=b"x", idempotency_key=f"k{i}")
    ob.close()
    code = textwrap.dedent(
        f"""
        from superapp_sdk.offline import Outbox
        import sys
        import time
        ob = Outbox({str(tmp_path / "s")!r}, durable=False)
        print("READY", flush=True)
        sys.stdin.readline()
        for _ in range(1000):
            item = ob.claim("p", lease_seconds=300)
            if item is None:
                break
            print(item.id, flush=True)
            time.sleep(0.001)  # a send takes time; lets the other process interleave
            ob.ack(item.id, item.lease_token)
        ob.close()
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(outs), "both processes should have worked"
    claimed = outs[0] + outs[1]
    assert len(claimed) == 200
    assert len(set(claimed)) == 200


def test_worker_thread_drains_and_acks(outbox: Outbox) -> None:
    """The thread worker sends every item once, in per-entity order, and drain returns True."""
    sent: list[str] = []
    for i in range(10):
        put(outbox, f"k{i}", entity=f"e{i % 2}")
    with OutboxWorker(outbox, lambda item: sent.append(item.idempotency_key)) as worker:
        assert worker.drain(timeout=10) is True
    assert sorted(sent) == sorted(f"k{i}" for i in range(10))
    for entity in (0, 1):
        keys = [k for k in sent if int(k[1:]) % 2 == entity]
        assert keys == sorted(keys, key=lambda k: int(k[1:]))
    assert outbox.depth() == 0


class Refused(Exception):
    retryable = False


def test_worker_dead_letters_a_non_retryable_exception(outbox: Outbox) -> None:
    """A sender exception with retryable=False dead-letters the item with its message."""

    def sender(item: OutboxItem) -> None:
        raise Refused("unknown recipient")

    put(outbox, "k1")
    with OutboxWorker(outbox, sender) as worker:
        assert worker.drain(timeout=10) is True
    dead = outbox.dead_letters()
    assert [d.last_error for d in dead] == ["Refused: unknown recipient"]


def test_worker_retries_after_backoff_when_woken(outbox: Outbox, clock: FakeClock) -> None:
    """A failed send is retried once its backoff has passed and the worker is woken."""
    calls: list[int] = []

    def sender(item: OutboxItem) -> None:
        calls.append(item.attempts)
        if len(calls) == 1:
            raise ConnectionError("down")

    put(outbox, "k1")
    with OutboxWorker(outbox, sender, poll_floor=0.05) as worker:
        assert worker.drain(timeout=0.3) is False
        clock.advance(POLICY.backoff_cap)
        worker.wake()
        assert worker.drain(timeout=10) is True
    assert calls == [1, 2]


async def test_async_worker_drains(outbox: Outbox) -> None:
    """The asyncio worker awaits the sender for every item and drains the outbox."""
    sent: list[str] = []

    async def sender(item: OutboxItem) -> None:
        sent.append(item.idempotency_key)

    for i in range(5):
        put(outbox, f"k{i}", entity="e")
    async with AsyncOutboxWorker(outbox, sender) as worker:
        assert await worker.drain(timeout=10) is True
    assert sent == [f"k{i}" for i in range(5)]


async def test_async_worker_sends_concurrently_in_entity_order(outbox: Outbox) -> None:
    """With concurrency, sends of distinct entities overlap; each entity stays in order,
    one send at a time."""
    sent: list[tuple[str, str]] = []
    in_flight: dict[str, int] = {}
    most = 0

    async def sender(item: OutboxItem) -> None:
        nonlocal most
        assert in_flight.get(item.entity, 0) == 0, "two sends of one entity at once"
        in_flight[item.entity] = 1
        most = max(most, sum(in_flight.values()))
        await asyncio.sleep(0.002)
        in_flight[item.entity] = 0
        sent.append((item.entity, item.idempotency_key))

    for i in range(60):
        put(outbox, f"k{i:02d}", entity=f"e{i % 6}")
    async with AsyncOutboxWorker(outbox, sender, concurrency=4, batch=8) as worker:
        assert await worker.drain(timeout=20) is True
    assert len(sent) == 60
    assert most > 1
    for e in range(6):
        keys = [k for entity, k in sent if entity == f"e{e}"]
        assert keys == sorted(keys)
    assert outbox.depth() == 0


async def test_stopping_the_async_worker_gives_back_what_it_did_not_start(
    outbox: Outbox,
) -> None:
    """Cancelled mid-batch, the async worker acknowledges what it sent and gives back the
    items it never started: they are claimable at once, their attempt not counted."""
    started = asyncio.Event()
    release = asyncio.Event()
    sent: list[str] = []

    async def sender(item: OutboxItem) -> None:
        if item.idempotency_key == "k1":
            started.set()
            await release.wait()  # cut off here by the stop
        sent.append(item.idempotency_key)

    for i in range(4):
        put(outbox, f"k{i}", entity=f"e{i}")
    worker = AsyncOutboxWorker(outbox, sender, batch=4)
    worker.start()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop()
    assert sent == ["k0"]
    # k0 acknowledged; k1 was cut off midway (still leased); k2 and k3 given back.
    claimable = outbox.claim_many("other", lease_seconds=30, limit=10)
    assert sorted(i.idempotency_key for i in claimable) == ["k2", "k3"]
    assert all(i.attempts == 1 for i in claimable)
    assert outbox.depth() == 3


async def test_async_worker_validates_its_arguments(outbox: Outbox) -> None:
    """Bad concurrency or batch sizes are refused by name."""

    async def sender(item: OutboxItem) -> None:
        return None

    with pytest.raises(ValueError, match="concurrency"):
        AsyncOutboxWorker(outbox, sender, concurrency=0)
    with pytest.raises(ValueError, match="batch"):
        AsyncOutboxWorker(outbox, sender, batch=0)


def test_ack_and_claim_acks_then_returns_the_entitys_next_item(outbox: Outbox) -> None:
    """The merged call acknowledges the item and leases the next one of the same entity."""
    put(outbox, "k1")
    second = put(outbox, "k2")
    first = must_claim(outbox)
    acked, following = outbox.ack_and_claim(
        first.id, first.lease_token or "", "w1", lease_seconds=30
    )
    assert acked is True
    assert following is not None
    assert following.id == second.id
    assert following.attempts == 1
    assert outbox.get(first.id) is None
    assert claim(outbox, "w2") is None  # the new head is leased by the merged call


def test_ack_and_claim_with_a_lost_lease_acks_nothing(outbox: Outbox, clock: FakeClock) -> None:
    """A stale token acknowledges nothing; the claim half still leases the reclaimable item."""
    put(outbox, "k1")
    stale = must_claim(outbox, "w1", lease=10)
    clock.advance(11)
    current = must_claim(outbox, "w2")
    acked, following = outbox.ack_and_claim(
        stale.id, stale.lease_token or "", "w1", lease_seconds=30
    )
    assert acked is False
    assert following is None
    assert outbox.ack(current.id, current.lease_token or "") is True


def test_ack_and_claim_returns_none_when_the_queue_empties(outbox: Outbox) -> None:
    """Acknowledging the last item returns no next item and leaves the outbox empty."""
    put(outbox, "k1")
    item = must_claim(outbox)
    assert outbox.ack_and_claim(item.id, item.lease_token or "", "w1", lease_seconds=30) == (
        True,
        None,
    )
    assert outbox.depth() == 0


def test_worker_sends_one_at_a_time_in_entity_order(outbox: Outbox) -> None:
    """With concurrency=1 no two sends overlap, and each entity's items go out in order."""
    sent: list[str] = []
    in_flight = 0
    overlap = False
    lock = threading.Lock()

    def sender(item: OutboxItem) -> None:
        nonlocal in_flight, overlap
        with lock:
            in_flight += 1
            overlap = overlap or in_flight > 1
        threading.Event().wait(0.001)  # a send takes time, so a second sender could overlap
        with lock:
            in_flight -= 1
            sent.append(item.idempotency_key)

    for i in range(40):
        put(outbox, f"k{i}", entity=f"e{i % 3}")
    with OutboxWorker(outbox, sender, poll_floor=0.05, concurrency=1) as worker:
        assert worker.drain(timeout=20) is True
    assert overlap is False
    assert sorted(sent) == sorted(f"k{i}" for i in range(40))
    for entity in range(3):
        mine = [int(k[1:]) for k in sent if int(k[1:]) % 3 == entity]
        assert mine == sorted(mine)


def test_stopping_the_worker_leaves_no_item_leased(outbox: Outbox) -> None:
    """After stop, every item is delivered or claimable: none is left held by a dead lease."""
    for i in range(30):
        put(outbox, f"k{i}", entity=f"e{i}")
    started = threading.Event()

    def sender(item: OutboxItem) -> None:
        started.set()
        threading.Event().wait(0.002)

    worker = OutboxWorker(outbox, sender, poll_floor=0.05, concurrency=1)
    worker.start()
    assert started.wait(10)
    worker.stop()
    assert worker.running is False
    leased = [item.id for item in outbox.list(limit=100) if item.lease_token is not None]
    assert leased == []


# The layout written before PRAGMA user_version was recorded (schema 1): delivered keys
# lived in their own table.
_SCHEMA_1 = """
CREATE TABLE items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, operation TEXT NOT NULL,
    kind INTEGER NOT NULL, payload BLOB NOT NULL, idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL, created_at REAL NOT NULL, queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL, not_before REAL NOT NULL, last_error TEXT, dead_reason TEXT,
    state INTEGER NOT NULL, lease_token TEXT, lease_until REAL
);
CREATE UNIQUE INDEX items_key ON items(idempotency_key);
CREATE INDEX items_entity ON items(entity, seq) WHERE state = 0;
CREATE INDEX items_dead ON items(seq) WHERE state = 1;
CREATE TABLE heads (entity TEXT PRIMARY KEY, seq INTEGER NOT NULL, ready_at REAL NOT NULL)
    WITHOUT ROWID;
CREATE INDEX heads_ready ON heads(ready_at, seq);
CREATE TABLE delivered (
    idempotency_key TEXT PRIMARY KEY, id TEXT NOT NULL, entity TEXT NOT NULL,
    operation TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at REAL NOT NULL,
    delivered_at REAL NOT NULL
);
CREATE INDEX delivered_at ON delivered(delivered_at);
"""


def _schema_1_file(path: Path, clock: FakeClock) -> dict[str, OutboxItem]:
    """A schema-1 state file holding a delivered key (k1), a pending item (k2) and a dead
    letter (k3), written as that version did; returns what the current code reports for
    the same operations, to compare with."""
    reference_dir = path.parent / "reference"
    with Outbox(reference_dir, clock=clock, default_policy=POLICY) as ref:
        items = {k: put(ref, k, entity=f"chat:{k}") for k in ("k1", "k2", "k3")}
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(_SCHEMA_1)
        for n, key in enumerate(("k1", "k2", "k3"), start=1):
            item = items[key]
            con.execute(
                "INSERT INTO items (entity, operation, kind, payload, idempotency_key,"
                " fingerprint, created_at, queued_at, attempts, not_before, state, dead_reason)"
                " VALUES (?, 'chat.send', 1, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    item.entity,
                    json.dumps(item.payload, sort_keys=True, separators=(",", ":")).encode(),
                    key,
                    item.fingerprint,
                    clock.time(),
                    clock.time(),
                    clock.time(),
                    1 if key == "k3" else 0,
                    "not retryable" if key == "k3" else None,
                ),
            )
            if key == "k2":
                con.execute("INSERT INTO heads VALUES (?, ?, ?)", (item.entity, n, clock.time()))
        con.execute("DELETE FROM items WHERE idempotency_key = 'k1'")
        con.execute(
            "INSERT INTO delivered VALUES ('k1', 'ob-000000000001', ?, 'chat.send', ?, 0, ?)",
            (items["k1"].entity, items["k1"].fingerprint, clock.time()),
        )
        con.commit()
    finally:
        con.close()
    return items


def _check_migrated(
    state: Path, clock: FakeClock, items: dict[str, OutboxItem], *, next_ticket: str
) -> None:
    """An older state file holding a delivered k1, a pending k2 and a dead k3 (tickets 1,
    2, 3) reads back the same under the current layout, and the next enqueue gets
    ``next_ticket``."""
    with Outbox(state, clock=clock, default_policy=POLICY) as ob:
        assert [i.id for i in ob.list()] == ["ob-000000000002"]
        assert [i.payload for i in ob.list()] == [items["k2"].payload]
        assert [i.id for i in ob.dead_letters()] == ["ob-000000000003"]
        again = put(ob, "k1", entity="chat:k1")
        assert (again.id, again.state) == ("ob-000000000001", ItemState.DELIVERED)
        with pytest.raises(IdempotencyConflict):
            put(ob, "k1", entity="chat:k1", text="changed")
        with pytest.raises(IdempotencyConflict):
            put(ob, "k2", entity="chat:k2", text="changed")
        assert must_claim(ob).id == "ob-000000000002"
        assert put(ob, "new").id == next_ticket
    con = sqlite3.connect(state / "outbox.sqlite3")
    try:
        assert con.execute("PRAGMA user_version").fetchone() == (3,)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_schema")}
    finally:
        con.close()
    assert not {"delivered", "items_v2"} & tables


def test_schema_1_file_opens_and_keeps_its_items(tmp_path: Path, clock: FakeClock) -> None:
    """A state file of the previous layout keeps its pending, dead and delivered items."""
    state = tmp_path / "state"
    items = _schema_1_file(state / "outbox.sqlite3", clock)
    _check_migrated(state, clock, items, next_ticket="ob-000000000004")


_SCHEMA_2 = """
CREATE TABLE items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, operation TEXT NOT NULL,
    kind INTEGER NOT NULL, payload BLOB NOT NULL, idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL, created_at REAL NOT NULL, queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL, not_before REAL NOT NULL, last_error TEXT, dead_reason TEXT,
    state INTEGER NOT NULL, lease_token TEXT, lease_until REAL, delivered_at REAL
);
CREATE UNIQUE INDEX items_key ON items(idempotency_key);
CREATE INDEX items_entity ON items(entity, seq) WHERE state = 0;
CREATE INDEX items_pending ON items(seq) WHERE state = 0;
CREATE INDEX items_dead ON items(seq) WHERE state = 1;
CREATE INDEX items_delivered ON items(delivered_at) WHERE state = 2;
CREATE TABLE heads (entity TEXT PRIMARY KEY, seq INTEGER NOT NULL, ready_at REAL NOT NULL)
    WITHOUT ROWID;
CREATE INDEX heads_ready ON heads(ready_at, seq);
PRAGMA user_version = 2;
"""


def test_schema_2_file_opens_keeps_its_items_and_never_reuses_a_ticket(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A schema-2 file keeps its pending, dead and delivered items, and tickets handed out
    by its AUTOINCREMENT (even of rows deleted since) are not handed out again."""
    state = tmp_path / "state"
    reference_dir = tmp_path / "reference"
    with Outbox(reference_dir, clock=clock, default_policy=POLICY) as ref:
        items = {k: put(ref, k, entity=f"chat:{k}") for k in ("k1", "k2", "k3", "k4")}
    state.mkdir()
    con = sqlite3.connect(state / "outbox.sqlite3")
    try:
        con.executescript(_SCHEMA_2)
        states = {"k1": 2, "k2": 0, "k3": 1, "k4": 0}
        for key, item in items.items():
            con.execute(
                "INSERT INTO items (entity, operation, kind, payload, idempotency_key,"
                " fingerprint, created_at, queued_at, attempts, not_before, state,"
                " dead_reason, delivered_at) VALUES (?, 'chat.send', ?, ?, ?, ?, ?, ?, 0, ?,"
                " ?, ?, ?)",
                (
                    item.entity,
                    0 if key == "k1" else 1,
                    b"" if key == "k1" else json.dumps(item.payload).encode(),
                    key,
                    item.fingerprint,
                    clock.time(),
                    clock.time(),
                    clock.time(),
                    states[key],
                    "not retryable" if key == "k3" else None,
                    clock.time() if key == "k1" else None,
                ),
            )
        con.execute("INSERT INTO heads VALUES ('chat:k2', 2, ?)", (clock.time(),))
        # The newest item (ticket 4) was dropped: its ticket must stay retired.
        con.execute("DELETE FROM items WHERE idempotency_key = 'k4'")
        con.commit()
    finally:
        con.close()
    # Ticket 4 was handed out before (then dropped): the next one is 5.
    _check_migrated(state, clock, items, next_ticket="ob-000000000005")


def test_a_dropped_newest_ticket_is_never_handed_out_again(outbox: Outbox) -> None:
    """Dropping (or delivering, when keys are not remembered) the newest item retires its
    ticket: the next enqueue gets a new one."""
    first = put(outbox, "a", entity="e1")
    newest = put(outbox, "b", entity="e2")
    assert outbox.drop(newest.id)
    assert put(outbox, "c", entity="e3").id > newest.id
    assert outbox.drop(first.id)
    assert put(outbox, "d", entity="e4").id > newest.id


def test_an_acknowledged_newest_ticket_is_retired_without_tombstones(
    tmp_path: Path, clock: FakeClock
) -> None:
    """With remember_delivered_seconds=0 the acknowledged row is deleted; its ticket is not
    reused by the next enqueue, also after reopening the file."""
    with Outbox(tmp_path / "s", clock=clock, remember_delivered_seconds=0) as ob:
        item = put(ob, "a")
        leased = must_claim(ob)
        assert ob.ack(leased.id, leased.lease_token or "")
        assert ob.get(item.id) is None
    with Outbox(tmp_path / "s", clock=clock, remember_delivered_seconds=0) as ob:
        assert put(ob, "b").id > item.id


def test_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A state file with a newer schema raises StoreError naming the file, untouched."""
    (tmp_path / "s").mkdir()
    con = sqlite3.connect(tmp_path / "s" / "outbox.sqlite3")
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreError, match=r"newer version.*outbox\.sqlite3"):
        Outbox(tmp_path / "s")


def test_list_after_a_ticket_pages_by_key(outbox: Outbox) -> None:
    """list(after=ticket) starts after that ticket, wherever the page is."""
    ids = [put(outbox, f"k{i}", entity=f"e{i}").id for i in range(25)]
    pages: list[list[str]] = []
    after: str | None = None
    for _ in range(5):
        page = [i.id for i in outbox.list(limit=10, after=after)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == ids
    assert [i.id for i in outbox.list(offset=2, limit=2, after=ids[10])] == ids[13:15]


def test_dead_letters_after_a_ticket(outbox: Outbox) -> None:
    """dead_letters(after=ticket) skips dead letters up to that ticket."""
    for n in range(3):
        put(outbox, f"k{n}", entity=f"e{n}")
    for _ in range(3):
        leased = must_claim(outbox)
        outbox.fail(leased.id, leased.lease_token or "", "Refused: no", retryable=False)
    dead = [d.id for d in outbox.dead_letters()]
    assert len(dead) == 3
    assert [d.id for d in outbox.dead_letters(after=dead[0])] == dead[1:]


def test_list_after_something_not_a_ticket_is_refused(outbox: Outbox) -> None:
    """after= must be a ticket; anything else is a ValueError naming the option."""
    with pytest.raises(ValueError, match="after"):
        outbox.list(after="k1")


def test_delivered_key_is_forgotten_after_the_window(tmp_path: Path, clock: FakeClock) -> None:
    """remember_delivered_seconds after delivery a key can be enqueued again as new."""
    ob = Outbox(tmp_path / "s", clock=clock, default_policy=POLICY, remember_delivered_seconds=60)
    try:
        first = put(ob, "k0")
        leased = must_claim(ob)
        assert ob.ack(leased.id, leased.lease_token or "")
        clock.advance(61)
        # Expired delivery records are pruned in batches as later items are acknowledged.
        for n in range(1, 40):
            put(ob, f"k{n}", entity=f"e{n}")
            leased = must_claim(ob)
            assert ob.ack(leased.id, leased.lease_token or "")
        again = put(ob, "k0")
        assert again.state is ItemState.PENDING
        assert again.id != first.id
    finally:
        ob.close()


def test_delivered_item_is_not_listed_or_gettable(outbox: Outbox) -> None:
    """A delivered item leaves list, get, drop and the depth; only its key is kept."""
    item = put(outbox, "k1")
    leased = must_claim(outbox)
    assert outbox.ack(leased.id, leased.lease_token or "")
    assert outbox.get(item.id) is None
    assert outbox.list() == []
    assert outbox.depth() == 0
    assert outbox.drop(item.id) is False


def test_ack_and_claim_many_leases_heads_of_distinct_entities(outbox: Outbox) -> None:
    """One transaction acknowledges, and leases at most one item per entity, oldest first."""
    a1, a2, b1 = put(outbox, "a1", "chat:a"), put(outbox, "a2", "chat:a"), put(outbox, "b1", "b")
    first = outbox.claim_many("w", lease_seconds=30, limit=5)
    assert [i.id for i in first] == [a1.id, b1.id]
    acked, following = outbox.ack_and_claim_many(
        [(a1.id, first[0].lease_token or "")], "w", lease_seconds=30, limit=5
    )
    assert acked == [True]
    assert [i.id for i in following] == [a2.id]


def test_released_item_is_claimable_again_without_an_attempt(outbox: Outbox) -> None:
    """An item given back unsent is the head again and its attempt is not counted."""
    put(outbox, "k1")
    leased = must_claim(outbox)
    assert claim(outbox) is None
    outbox.ack_and_claim_many(
        [], "w", lease_seconds=30, limit=0, release=[(leased.id, leased.lease_token or "")]
    )
    again = must_claim(outbox)
    assert (again.id, again.attempts) == (leased.id, 1)


def test_worker_gives_back_items_whose_lease_ran_half_out(outbox: Outbox, clock: FakeClock) -> None:
    """In a batch, an item whose lease is half gone when its turn comes is not sent late:
    it is given back and sent in a later batch, its attempt not counted."""
    sent: list[tuple[str, int, float]] = []

    def slow_sender(item: OutboxItem) -> None:
        assert item.lease_until is not None
        sent.append((item.idempotency_key, item.attempts, item.lease_until - clock.time()))
        if len(sent) == 1:
            clock.advance(6.0)  # more than half of the 10 s lease

    put(outbox, "a", entity="chat:a")
    put(outbox, "b", entity="chat:b")
    worker = OutboxWorker(outbox, slow_sender, poll_floor=0.05, lease_seconds=10, batch=2)
    with worker:
        assert worker.drain(timeout=10) is True
    assert sent == [("a", 1, 10.0), ("b", 1, 10.0)]


def test_worker_batch_is_validated(outbox: Outbox) -> None:
    """batch outside 1..1000 is a ValueError naming it."""
    with pytest.raises(ValueError, match="batch"):
        OutboxWorker(outbox, lambda item: None, batch=0)


class _CountingFile:
    """Wraps an Outbox's sqlite file: counts transactions, can hold writers back, can fail."""

    def __init__(self, ob: Outbox) -> None:
        self.commits = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: Exception | None = None
        self._inner = ob._db.transaction
        ob._db.transaction = self._transaction  # type: ignore[method-assign]

    def _transaction(self, action: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.commits += 1
        return self._inner(action)


def _enqueue_in_threads(
    ob: Outbox, keys: list[str], *, payloads: list[str] | None = None
) -> tuple[list[threading.Thread], dict[str, OutboxItem | BaseException]]:
    results: dict[str, OutboxItem | BaseException] = {}

    def one(i: int, key: str) -> None:
        try:
            results[f"{i}:{key}"] = put(ob, key, entity=f"chat:{key}", text=(payloads or keys)[i])
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[f"{i}:{key}"] = exc

    threads = [threading.Thread(target=one, args=(i, k)) for i, k in enumerate(keys)]
    return threads, results


@contextlib.contextmanager
def _commit_in_progress(ob: Outbox) -> Iterator[None]:
    """Make enqueues wait as if another caller were committing, then let them go."""
    with ob._group_cond:
        ob._committing = True
    try:
        yield
    finally:
        with ob._group_cond:
            ob._committing = False
            ob._group_cond.notify_all()


def _wait_queued(ob: Outbox, n: int) -> None:
    for _ in range(1000):
        with ob._group_cond:
            if len(ob._group) >= n:
                return
        threading.Event().wait(0.005)
    raise AssertionError(f"{n} enqueues never queued up")


def _enqueue_as_one_group(
    ob: Outbox, keys: list[str], *, payloads: list[str] | None = None
) -> dict[str, OutboxItem | BaseException]:
    """Enqueue ``keys`` from one thread each, all held back until every one is queued, so
    that a single group commit writes them; returns each caller's item or error."""
    with _commit_in_progress(ob):
        threads, results = _enqueue_in_threads(ob, keys, payloads=payloads)
        for t in threads:
            t.start()
        _wait_queued(ob, len(keys))
    for t in threads:
        t.join(10)
    return results


def test_concurrent_enqueues_share_one_commit(tmp_path: Path, clock: FakeClock) -> None:
    """Callers arriving while a commit is in progress are written in one later commit."""
    ob = Outbox(tmp_path / "state", clock=clock)
    counting = _CountingFile(ob)
    try:
        # The first caller becomes the committer and is held at the transaction; the
        # other seven queue up behind it and are all written by the next commit.
        counting.gate.clear()
        first, results = _enqueue_in_threads(ob, ["k0"])
        first[0].start()
        for _ in range(1000):
            if ob._committing:
                break
            threading.Event().wait(0.005)
        rest, more = _enqueue_in_threads(ob, [f"k{i}" for i in range(1, 8)])
        for t in rest:
            t.start()
        _wait_queued(ob, 7)
        counting.gate.set()
        for t in [*first, *rest]:
            t.join(10)
        results.update(more)
        items = [r for r in results.values() if isinstance(r, OutboxItem)]
        assert len(items) == 8
        assert counting.commits == 2
        assert len({i.id for i in items}) == 8
        assert ob.depth() == 8
    finally:
        ob.close()
    again = Outbox(tmp_path / "state", clock=clock)
    try:
        assert {i.idempotency_key for i in again.list(limit=100)} == {f"k{i}" for i in range(8)}
    finally:
        again.close()


@pytest.fixture
def counted(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Outbox, _CountingFile]]:
    ob = Outbox(tmp_path / "state", clock=clock)
    yield ob, _CountingFile(ob)
    ob.close()


def test_one_conflict_in_a_group_does_not_fail_the_others(
    counted: tuple[Outbox, _CountingFile],
) -> None:
    """In one group commit, a reused key with another payload is refused; the rest commit."""
    ob, counting = counted
    results = _enqueue_as_one_group(
        ob,
        ["a", "dup", "dup", "b", "same", "same"],
        payloads=["a", "one", "two", "b", "x", "x"],
    )
    assert counting.commits == 1
    conflicts = [r for r in results.values() if isinstance(r, IdempotencyConflict)]
    assert len(conflicts) == 1
    assert "dup" in str(conflicts[0])
    same = [r for k, r in results.items() if k.endswith(":same")]
    assert all(isinstance(r, OutboxItem) for r in same)
    assert len({r.id for r in same if isinstance(r, OutboxItem)}) == 1
    assert ob.depth() == 4


def test_a_failed_group_commit_fails_every_caller_in_it(
    counted: tuple[Outbox, _CountingFile],
) -> None:
    """When the shared commit fails, each caller gets its own StoreError and nothing is queued."""
    ob, counting = counted
    counting.fail_with = StoreError("enqueueing failed: disk full (x)", path="x")
    results = _enqueue_as_one_group(ob, [f"k{i}" for i in range(4)])
    errors = list(results.values())
    assert all(isinstance(e, StoreError) and "disk full" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 4
    counting.fail_with = None
    assert ob.depth() == 0
    assert ob._group == []


def _skip_tickets(ob: Outbox, count: int) -> None:
    """Make the next ticket ``count`` later, as if that many items had come and gone."""
    with ob._db.transaction("test") as con:
        (top,) = con.execute("SELECT max(seq) FROM items").fetchone()
        con.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('last_seq', ?)",
            ((top or 0) + count,),
        )


def test_an_entitys_next_item_is_found_many_ticket_blocks_later(outbox: Outbox) -> None:
    """The per-entity index is grouped in blocks of 4,096 tickets: an entity's next item
    several blocks after its head is still found, and nothing beyond its tail is read."""
    first = put(outbox, "a1", entity="chat:a")
    _skip_tickets(outbox, 5 * 4096)
    later = put(outbox, "a2", entity="chat:a")
    _skip_tickets(outbox, 3 * 4096)
    other = put(outbox, "b1", entity="chat:b")
    assert int(later.id[3:]) >> 12 >= (int(first.id[3:]) >> 12) + 5
    leased = must_claim(outbox)
    assert leased.id == first.id
    acked, following = outbox.ack_and_claim_many(
        [(leased.id, leased.lease_token or "")], "w1", lease_seconds=30, limit=10
    )
    assert acked == [True]
    assert sorted(i.id for i in following) == sorted([later.id, other.id])
    assert outbox.has_pending("chat:a")
    for item in following:
        assert outbox.ack(item.id, item.lease_token or "")
    assert not outbox.has_pending("chat:a")
    assert outbox.depth() == 0


def test_a_retried_dead_letter_far_behind_the_head_goes_first(
    outbox: Outbox, clock: FakeClock
) -> None:
    """Retrying a dead letter older than the entity's head makes it the head again; the
    items after it, blocks away, follow in order."""
    dead = put(outbox, "d1", entity="chat:a")
    leased = must_claim(outbox)
    outbox.fail(leased.id, leased.lease_token or "", "refused", retryable=False)
    _skip_tickets(outbox, 3 * 4096)
    newer = put(outbox, "d2", entity="chat:a")
    assert outbox.retry_dead(dead.id) is not None
    order: list[str] = []
    while (item := claim(outbox)) is not None:
        order.append(item.id)
        assert outbox.ack(item.id, item.lease_token or "")
    assert order == [dead.id, newer.id]
    assert not outbox.has_pending("chat:a")


@pytest.mark.timeout(60)
def test_async_worker_stops_when_woken_as_it_is_cancelled(tmp_path: Path) -> None:
    """A wake-up that lands together with stop() does not swallow the cancellation (as
    asyncio.wait_for does on Python 3.11): stop() always returns."""
    outbox = Outbox(DiskStore(tmp_path / "o"))

    async def sender(item: OutboxItem) -> None:
        return None

    async def main() -> None:
        for _ in range(5):
            worker = AsyncOutboxWorker(outbox, sender, poll_floor=10.0)
            worker.start()
            await asyncio.sleep(0.05)  # idle: waiting to be woken
            worker.wake()
            loop = asyncio.get_running_loop()
            asked = loop.time()
            await worker.stop()
            # Not a speed check: a swallowed cancellation leaves stop() waiting out the
            # worker's 10 s poll.
            assert loop.time() - asked < 5.0

    asyncio.run(main())
    outbox.close()


def test_expedite_makes_backed_off_items_ready_now(outbox: Outbox, clock: FakeClock) -> None:
    """A provider recovered: items waiting out a backoff are claimable at once, in order;
    a leased item keeps its lease."""
    first = put(outbox, "k1", entity="chat:a")
    leased_key = put(outbox, "k2", entity="chat:b")
    item = claim(outbox)
    assert item is not None
    assert item.id == first.id
    outbox.fail(item.id, item.lease_token or "", "down", retry_after=300)
    held = claim(outbox, worker="w2")
    assert held is not None
    assert held.id == leased_key.id
    assert claim(outbox) is None
    assert outbox.expedite() == 1
    again = claim(outbox)
    assert again is not None
    assert again.id == first.id
    assert claim(outbox) is None  # the leased one stays with w2


def test_worker_woken_on_recovery_sends_backed_off_items(tmp_path: Path) -> None:
    """wake(recovered=True) (a breaker or domain closed) sends an item that waits out a
    long backoff now; a plain wake leaves it waiting."""
    ob = Outbox(tmp_path / "r")
    sent: list[str] = []
    put(ob, "k1")
    item = ob.claim("w0", lease_seconds=30.0)
    assert item is not None
    ob.fail(item.id, item.lease_token or "", "provider down", retry_after=300)
    with OutboxWorker(ob, lambda i: sent.append(i.idempotency_key), poll_floor=0.05) as worker:
        worker.wake()
        assert worker.drain(0.3) is False
        worker.wake(recovered=True)
        assert worker.drain(10.0) is True
    assert sent == ["k1"]
    ob.close()
