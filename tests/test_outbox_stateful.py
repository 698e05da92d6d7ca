"""The outbox against a reference model: enqueue, claim, ack, fail, crash, time, expire.

Invariants checked after every step: nothing is lost (every enqueued key is pending, dead
or delivered), pending items are listed in enqueue order, at most one item per entity is
leased and it is the entity's oldest, and an item is dead-lettered only once it reached
a limit (attempts, age) or was failed as not retryable.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from superapp_sdk import IdempotencyConflict
from superapp_sdk.offline import ItemState, Outbox, OutboxItem, OutboxPolicy
from superapp_sdk.testing import FakeClock

POLICY = OutboxPolicy(max_attempts=2, max_age_seconds=300.0, backoff_base=1.0, backoff_cap=8.0)
ENTITIES = ("chat:a", "chat:b", "pay:o1")
KEYS = tuple(f"key-{n}" for n in range(8))


@dataclass
class ModelItem:
    id: str
    key: str
    entity: str
    text: str
    queued_at: float
    attempts: int = 0
    not_before: float = 0.0
    token: str | None = None
    lease_until: float | None = None
    state: str = "pending"
    seq: int = 0


@dataclass
class Model:
    items: dict[str, ModelItem] = field(default_factory=dict)
    by_id: dict[str, ModelItem] = field(default_factory=dict)
    next_seq: int = 0

    def pending(self, entity: str | None = None) -> list[ModelItem]:
        found = [
            i
            for i in self.items.values()
            if i.state == "pending" and (entity is None or i.entity == entity)
        ]
        return sorted(found, key=lambda i: i.seq)

    def head(self, entity: str) -> ModelItem | None:
        queue = self.pending(entity)
        return queue[0] if queue else None

    def ready(self, item: ModelItem, now: float) -> bool:
        leased = item.lease_until is not None and item.lease_until > now
        return item.not_before <= now and not leased

    def limit_reached(self, item: ModelItem, now: float) -> bool:
        return item.attempts >= POLICY.max_attempts or now - item.queued_at >= (
            POLICY.max_age_seconds
        )


class OutboxMachine(RuleBasedStateMachine):
    """Drives a real Outbox on a temporary directory next to the reference model."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-stateful-"))
        self.clock = FakeClock()
        self.model = Model()
        self.outbox = self._open(0)

    def _open(self, seed: int) -> Outbox:
        return Outbox(
            self.dir,
            clock=self.clock,
            default_policy=POLICY,
            rng=random.Random(seed),
            durable=False,
        )

    @initialize(seed=st.integers(0, 2**16))
    def seed_rng(self, seed: int) -> None:
        self.outbox.close()
        self.outbox = self._open(seed)

    def teardown(self) -> None:
        self.outbox.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _sync_dead(self) -> set[str]:
        dead = {d.id for d in self.outbox.dead_letters(limit=1000)}
        known = {i.id for i in self.model.items.values() if i.state == "dead"}
        return dead - known

    @rule(entity=st.sampled_from(ENTITIES), key=st.sampled_from(KEYS), text=st.sampled_from("xy"))
    def enqueue(self, entity: str, key: str, text: str) -> None:
        known = self.model.items.get(key)
        try:
            item = self.outbox.enqueue(
                entity=entity, operation="op", payload={"text": text}, idempotency_key=key
            )
        except IdempotencyConflict:
            assert known is not None, "conflict for a key never used"
            assert (known.entity, known.text) != (entity, text)
            return
        if known is not None:
            assert (known.entity, known.text) == (entity, text), "different payload accepted"
            assert item.id == known.id
            expected = ItemState.DELIVERED if known.state == "delivered" else None
            assert expected is None or item.state is expected
            return
        now = self.clock.time()
        new = ModelItem(item.id, key, entity, text, queued_at=now, not_before=now)
        new.seq = self.model.next_seq
        self.model.next_seq += 1
        self.model.items[key] = new
        self.model.by_id[item.id] = new

    @rule(target=leases, lease=st.sampled_from([1.0, 10.0, 60.0]))
    def claim(self, lease: float) -> tuple[str, str]:
        now = self.clock.time()
        got = self.outbox.claim("w", lease_seconds=lease)
        for dead_id in self._sync_dead():
            item = self.model.by_id[dead_id]
            assert item.state == "pending"
            assert self.model.limit_reached(item, now), f"{dead_id} buried before its limits"
            item.state = "dead"
        if got is None:
            for entity in ENTITIES:
                head = self.model.head(entity)
                assert head is None or not self.model.ready(head, now), f"{entity} was ready"
            return ("none", "none")
        return self._claimed(got, now, lease)

    def _claimed(self, got: OutboxItem, now: float, lease: float) -> tuple[str, str]:
        item = self.model.by_id[got.id]
        assert self.model.head(item.entity) is item, "claimed an item that is not its head"
        assert self.model.ready(item, now)
        assert not self.model.limit_reached(item, now)
        item.attempts += 1
        assert got.attempts == item.attempts
        assert got.lease_token is not None
        item.token, item.lease_until = got.lease_token, now + lease
        return (got.id, got.lease_token)

    @rule(
        target=leases,
        lease=consumes(leases),
        limit=st.integers(0, 3),
        seconds=st.sampled_from([1.0, 60.0]),
    )
    def ack_and_claim_many(
        self, lease: tuple[str, str], limit: int, seconds: float
    ) -> MultipleResults[tuple[str, str]]:
        """Acknowledge one lease and lease up to ``limit`` heads in one transaction."""
        item = self._current(*lease)
        now = self.clock.time()
        acked, got = self.outbox.ack_and_claim_many(
            [lease], "w", lease_seconds=seconds, limit=limit
        )
        assert acked == [item is not None]
        if item is not None:
            item.state = "delivered"
        for dead_id in self._sync_dead():
            dead = self.model.by_id[dead_id]
            assert self.model.limit_reached(dead, now), f"{dead_id} buried before its limits"
            dead.state = "dead"
        assert len(got) <= limit
        assert len({g.entity for g in got}) == len(got), "two items of one entity leased"
        claimed = [self._claimed(g, now, seconds) for g in got]
        if len(got) < limit:
            for entity in ENTITIES:
                head = self.model.head(entity)
                assert head is None or not self.model.ready(head, now), f"{entity} was ready"
        return multiple(*claimed)

    @rule(lease=consumes(leases))
    def release(self, lease: tuple[str, str]) -> None:
        """A leased item given back unsent is claimable again, its attempt not counted."""
        item = self._current(*lease)
        self.outbox.ack_and_claim_many([], "w", lease_seconds=1.0, limit=0, release=[lease])
        if item is None:
            return
        item.attempts -= 1
        item.token = item.lease_until = None
        stored = self.outbox.get(item.id)
        assert stored is not None
        assert stored.attempts == item.attempts
        assert stored.lease_token is None

    def _current(self, item_id: str, token: str) -> ModelItem | None:
        item = self.model.by_id.get(item_id)
        if item is None or item.state != "pending" or item.token != token:
            return None
        return item

    @rule(lease=consumes(leases))
    def ack(self, lease: tuple[str, str]) -> None:
        item = self._current(*lease)
        assert self.outbox.ack(*lease) is (item is not None)
        if item is not None:
            item.state = "delivered"

    @rule(
        lease=consumes(leases),
        retryable=st.booleans(),
        retry_after=st.sampled_from([None, 0.0, 7.0]),
    )
    def fail(self, lease: tuple[str, str], retryable: bool, retry_after: float | None) -> None:
        item = self._current(*lease)
        now = self.clock.time()
        ok = self.outbox.fail(*lease, "boom", retryable=retryable, retry_after=retry_after)
        assert ok is (item is not None)
        if item is None:
            return
        item.token = item.lease_until = None
        stored = self.outbox.get(item.id)
        assert stored is not None
        if not retryable or self.model.limit_reached(item, now):
            assert stored.state is ItemState.DEAD
            item.state = "dead"
            return
        assert stored.state is ItemState.PENDING
        delay = stored.not_before - now
        if retry_after is not None:
            assert delay == retry_after
        else:
            assert 0.0 <= delay <= min(POLICY.backoff_cap, 2 ** (item.attempts - 1))
        item.not_before = stored.not_before

    @rule(seconds=st.sampled_from([0.5, 1.0, 8.0, 61.0, 200.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def crash(self) -> None:
        """The process dies: in-memory state is gone; its leases run out in the store."""
        self.outbox.close()
        self.outbox = self._open(random.Random(self.model.next_seq).randrange(2**16))

    @rule()
    def expire(self) -> None:
        now = self.clock.time()
        self.outbox.expire()
        for dead_id in self._sync_dead():
            item = self.model.by_id[dead_id]
            assert now - item.queued_at >= POLICY.max_age_seconds
            assert item.lease_until is None or item.lease_until <= now
            item.state = "dead"

    @invariant()
    def nothing_lost_and_in_order(self) -> None:
        pending = [i.id for i in self.model.pending()]
        assert [i.id for i in self.outbox.list(limit=1000)] == pending
        assert self.outbox.depth() == len(pending)
        dead = sorted(i.id for i in self.model.items.values() if i.state == "dead")
        assert sorted(d.id for d in self.outbox.dead_letters(limit=1000)) == dead

    @invariant()
    def one_lease_per_entity_on_its_head(self) -> None:
        now = self.clock.time()
        for entity in ENTITIES:
            leased = [
                i
                for i in self.outbox.list(limit=1000)
                if i.entity == entity and i.lease_until is not None and i.lease_until > now
            ]
            assert len(leased) <= 1
            if leased:
                head = self.model.head(entity)
                assert head is not None
                assert leased[0].id == head.id


TestOutboxStateful = OutboxMachine.TestCase
