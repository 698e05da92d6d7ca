"""The durable outbox: writes that no provider can take now, kept until they can.

An item is committed to sqlite (fsynced when the store is durable) *before*
:meth:`Outbox.enqueue` returns, together with its idempotency key and a fingerprint of
its payload; only then may the caller answer ``Via.QUEUED`` with the item's ``id`` as the
ticket. A replay worker then claims items (at most one per entity at a time)::

    enqueue ──▶ PENDING ──claim (lease)──▶ sent ──ack──▶ DELIVERED (key remembered)
                   ▲                         │
                   └── fail (backoff) ◀──────┤
                                             └── fail after max_attempts / max_age,
                                                 or not retryable ──▶ DEAD (event)

Guarantees:

- **Per-entity order.** Only the oldest pending item of an entity (a conversation, an
  order) can be claimed, and only one item per entity is ever leased.
- **Leases.** A claimed item is invisible to other claimers (threads or processes sharing
  the state directory) until it is acknowledged, failed, or its lease expires; an expired
  lease is reclaimed. Delivery is therefore at least once, and exactly once at any
  provider that deduplicates by idempotency key (Stripe, Toss, LINE's retry key): the key
  is persisted before the first send and reused by every replay.
- **Deduplication.** Enqueueing the same idempotency key with the same fingerprint returns
  the existing item (also for a while after delivery); with a different fingerprint it
  raises :class:`~superapp_sdk.IdempotencyConflict` and nothing is stored.
- **Nothing dropped silently.** Items past their limits move to the dead-letter store
  and every ``on_dead_letter`` listener is told; only an operator's :meth:`Outbox.drop`
  deletes an undelivered item.

Why not ``diskcache.Deque``: a deque has one order and no leases, so per-entity FIFO,
claim-with-lease and deduplication by key would need a scan per claim. The outbox keeps
its own indexed sqlite tables (one row per item, one row per entity head) in
``<state_dir>/outbox.sqlite3``. Enqueues are committed one by one, except that callers
arriving while another caller's commit is in progress are written together by the next
one (group commit: one fsync for all of them, each caller still returning only once its
own item is committed); :class:`OutboxWorker` acknowledges the items it sent and leases
its next ones in one transaction per batch, with a fixed number of statements per batch.
Delivered items stay as tombstones (key and fingerprint, no payload) for
``remember_delivered_seconds``; the file's layout version is kept in
``PRAGMA user_version`` and older files are migrated when opened.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import tenacity

from superapp_sdk._errors import IdempotencyConflict, StoreError
from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.store._disk import DiskStore
from superapp_sdk.store._files import SqliteFile
from superapp_sdk.store._protocol import DEFAULT_MAX_VALUE_BYTES, ValueTooLarge

__all__ = [
    "AsyncOutboxWorker",
    "ItemState",
    "Outbox",
    "OutboxItem",
    "OutboxPolicy",
    "OutboxWorker",
    "Payload",
]

logger = logging.getLogger("superapp_sdk.outbox")

#: What an outbox item carries: raw bytes, or a JSON object (stored canonically).
Payload = bytes | Mapping[str, object]

_KIND_BYTES = 0
_KIND_JSON = 1
_PENDING = 0
_DEAD = 1
_DELIVERED = 2
# A claim that finds expired heads dead-letters them and looks again; bounded so one claim
# cannot hold the write lock for long.
_CLAIM_SCAN_LIMIT = 256
# Every _PRUNE_EVERY acknowledgements, up to _PRUNE_BATCH expired delivery records are
# deleted: twice the rate they are created, in one statement instead of one per ack.
_PRUNE_EVERY = 16
_PRUNE_BATCH = 32
# Tickets are grouped in blocks of 2**_BUCKET_BITS in the per-entity index. Queries spell
# the block exactly as the index does, so that sqlite matches the expression to it.
_BUCKET_BITS = 12
_BLOCK_OF_I = f"(i.seq >> {_BUCKET_BITS})"
_BLOCK_OF_H = f"(h.seq >> {_BUCKET_BITS})"
# At most this many concurrent enqueues share one commit.
_GROUP_MAX = 256
# Acknowledgements per statement (two bound parameters each; sqlite allows 32,766).
_ACK_CHUNK = 500
#: The layout of the tables below, kept in ``PRAGMA user_version``. Version 1 (files
#: written before it was recorded, read as 0) kept delivered keys in a ``delivered`` table.
_SCHEMA_VERSION = 3

# A delivered item stays in ``items`` as a tombstone (state 2, payload emptied) until
# ``remember_delivered_seconds`` after delivery: its key then stays in the index that
# deduplicates enqueues, so an acknowledgement updates one row in place. Moving it to a
# separate table (version 1) wrote ~9 pages per acknowledgement; the tombstone writes ~6.
#
# Version 3 writes fewer pages per enqueue (each page is one WAL frame, two writes and its
# share of the fsync): ``seq`` is a plain rowid instead of AUTOINCREMENT, which rewrote
# ``sqlite_sequence`` on every insert (the highest ticket ever handed out is kept in
# ``meta`` instead, written only when the newest row is deleted, so tickets are never
# reused); and keys are looked up by a 64-bit hash (``key_hash``, not unique, the key
# itself compared after) rather than a unique index of the 32+ character keys: an index
# a third the size (at a million items it did not change the enqueue rate measurably).
#
# The pending items of an entity are found through ``items_entity_bucket``, indexed by
# (seq >> 12, entity, seq) rather than (entity, seq): an index ordered by entity first
# appends every new item at that entity's own end of the index, one page per entity
# (a thousand busy conversations, a thousand pages written back by every checkpoint);
# ordered by a block of 4,096 tickets first, new items of every entity land in the same
# few pages. Measured on 500,000 items: the last tenth enqueued at 70 % of a fresh
# queue's rate with the (entity, seq) index, 87 % without it; on a million items with
# the block-first index, 91 % (the random-key index is the rest). An entity's next item is
# then looked up block by block from its head up to ``heads.tail``, the newest ticket of
# the entity (usually the first block or the next).
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,
    entity TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    key_hash INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    not_before REAL NOT NULL,
    last_error TEXT,
    dead_reason TEXT,
    state INTEGER NOT NULL,
    lease_token TEXT,
    lease_until REAL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS items_key_hash ON items(key_hash);
CREATE INDEX IF NOT EXISTS items_entity_bucket ON items(seq >> {_BUCKET_BITS}, entity, seq)
    WHERE state = 0;
CREATE INDEX IF NOT EXISTS items_pending ON items(seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS items_dead ON items(seq) WHERE state = 1;
CREATE INDEX IF NOT EXISTS items_delivered ON items(delivered_at) WHERE state = 2;
CREATE TABLE IF NOT EXISTS heads (
    entity TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    ready_at REAL NOT NULL,
    tail INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS heads_ready ON heads(ready_at, seq);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID
"""

# From version 1: delivered keys become tombstones under their original ticket (AUTOINCREMENT
# never hands a deleted seq out again, so the seq is free).
_MIGRATE_FROM_1 = """
ALTER TABLE items ADD COLUMN delivered_at REAL;
INSERT OR IGNORE INTO items (seq, entity, operation, kind, payload, idempotency_key,
    fingerprint, created_at, queued_at, attempts, not_before, state, delivered_at)
    SELECT CAST(substr(id, 4) AS INTEGER), entity, operation, 0, x'', idempotency_key,
        fingerprint, created_at, created_at, 0, created_at, 2, delivered_at
    FROM delivered;
DROP TABLE delivered
"""

# From version 2: the table is rebuilt around the new layout (sqlite cannot drop
# AUTOINCREMENT in place); the highest ticket AUTOINCREMENT handed out becomes
# ``meta.last_seq``.
_MIGRATE_FROM_2_BEFORE = """
ALTER TABLE items RENAME TO items_v2;
DROP INDEX IF EXISTS items_key;
DROP INDEX IF EXISTS items_entity;
DROP INDEX IF EXISTS items_pending;
DROP INDEX IF EXISTS items_dead;
DROP INDEX IF EXISTS items_delivered
"""
_MIGRATE_FROM_2_AFTER = """
INSERT INTO items (seq, entity, operation, kind, payload, idempotency_key, key_hash,
    fingerprint, created_at, queued_at, attempts, not_before, last_error, dead_reason,
    state, lease_token, lease_until, delivered_at)
    SELECT seq, entity, operation, kind, payload, idempotency_key,
        superapp_key_hash(idempotency_key), fingerprint, created_at, queued_at, attempts,
        not_before, last_error, dead_reason, state, lease_token, lease_until, delivered_at
    FROM items_v2;
INSERT OR REPLACE INTO meta (name, value)
    SELECT 'last_seq', seq FROM sqlite_sequence WHERE name = 'items_v2';
DROP TABLE items_v2;
ALTER TABLE heads ADD COLUMN tail INTEGER NOT NULL DEFAULT 0;
UPDATE heads SET tail = coalesce(
    (SELECT max(seq) FROM items WHERE items.entity = heads.entity AND items.state = 0), seq)
"""

_COLUMNS = (
    "seq, entity, operation, kind, payload, idempotency_key, fingerprint, created_at, "
    "queued_at, attempts, not_before, last_error, dead_reason, state, lease_token, lease_until"
)

# The queries below are assembled from constants only (the column list); every value is a
# bound parameter.
_SELECT_BY_KEY = f"SELECT {_COLUMNS} FROM items WHERE key_hash = ? AND idempotency_key = ?"  # noqa: S608
_SELECT_PENDING_ID = f"SELECT {_COLUMNS} FROM items WHERE seq = ? AND state = 0"  # noqa: S608
_SELECT_DEAD_ID = f"SELECT {_COLUMNS} FROM items WHERE seq = ? AND state = 1"  # noqa: S608
_SELECT_ID = f"SELECT {_COLUMNS} FROM items WHERE seq = ? AND state != 2"  # noqa: S608
_SELECT_ALL_PENDING = f"SELECT {_COLUMNS} FROM items WHERE state = 0 ORDER BY seq"  # noqa: S608
# One query per state, with the state written out: sqlite uses a partial index only when
# the query's WHERE implies the index's, which a bound ``state = ?`` does not; by rowid the
# page would walk past every delivered tombstone before the first pending item.
_SELECT_PAGE = {
    state: (
        f"SELECT {_COLUMNS} FROM items WHERE state = {state} AND seq > ?"  # noqa: S608
        " ORDER BY seq LIMIT ? OFFSET ?"
    )
    for state in (_PENDING, _DEAD)
}

# The next ticket: one past the highest row, or past the highest ever handed out when the
# newest rows were deleted since.
_INSERT_NEW = (
    "INSERT INTO items (seq, entity, operation, kind, payload, idempotency_key, key_hash,"
    " fingerprint, created_at, queued_at, attempts, not_before, state)"
    " VALUES (max(coalesce((SELECT max(seq) FROM items), 0),"
    " coalesce((SELECT value FROM meta WHERE name = 'last_seq'), 0)) + 1,"
    " ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0)"
)


class ItemState(enum.Enum):
    """Where an outbox item is."""

    #: Waiting to be sent (possibly leased by a worker right now).
    PENDING = "pending"
    #: Moved to the dead-letter store; kept until an operator retries or drops it.
    DEAD = "dead"
    #: Acknowledged by the worker; only its key and fingerprint are remembered.
    DELIVERED = "delivered"


_STATES = {_PENDING: ItemState.PENDING, _DEAD: ItemState.DEAD, _DELIVERED: ItemState.DELIVERED}


def _check(condition: bool, field: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"OutboxPolicy.{field} must be {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """How long and how often the outbox retries one operation.

    Attributes:
        max_attempts: sends before the item moves to the dead-letter store (>= 1).
        max_age_seconds: an item older than this (since it was queued) is dead-lettered
            instead of sent. For payments, use the provider's approval window: a KakaoPay
            ``pg_token`` is only valid for a limited time after approval.
        backoff_base: the first retry waits up to this many seconds (> 0).
        backoff_cap: no retry waits longer than this (>= backoff_base).
    """

    max_attempts: int = 10
    max_age_seconds: float = 24 * 3600.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0

    def __post_init__(self) -> None:
        _check(self.max_attempts >= 1, "max_attempts", ">= 1", self.max_attempts)
        _check(self.max_age_seconds > 0, "max_age_seconds", "> 0", self.max_age_seconds)
        _check(self.backoff_base > 0, "backoff_base", "> 0", self.backoff_base)
        _check(
            self.backoff_cap >= self.backoff_base,
            "backoff_cap",
            f">= backoff_base ({self.backoff_base})",
            self.backoff_cap,
        )


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One queued write.

    Attributes:
        id: the ticket; zero-padded so tickets sort in enqueue order.
        entity: the ordering key (``"chat:conv-1"``, ``"payment:order-9"``): items of one
            entity are delivered one at a time, oldest first.
        operation: what to do (``"chat.send"``).
        payload: the request, as given to :meth:`Outbox.enqueue` (bytes or a JSON object).
        idempotency_key: sent with every attempt, so the provider executes it once.
        fingerprint: sha256 (hex) of operation, entity and canonical payload.
        created_at: wall seconds when first enqueued.
        queued_at: wall seconds when it last entered the queue (enqueue or
            :meth:`Outbox.retry_dead`); ``max_age_seconds`` counts from here.
        attempts: sends started so far (a claim counts as one).
        not_before: wall seconds before which it is not claimed (backoff).
        last_error: the last failure, as ``"ErrorType: message"``.
        state: :class:`ItemState`.
        dead_reason: why it was dead-lettered.
        lease_token: set on an item returned by :meth:`Outbox.claim`; pass it to
            :meth:`Outbox.ack` or :meth:`Outbox.fail`.
        lease_until: wall seconds when the current lease expires.
    """

    id: str
    entity: str
    operation: str
    payload: Payload
    idempotency_key: str
    fingerprint: str
    created_at: float
    queued_at: float
    attempts: int = 0
    not_before: float = 0.0
    last_error: str | None = None
    state: ItemState = ItemState.PENDING
    dead_reason: str | None = None
    lease_token: str | None = None
    lease_until: float | None = None

    @property
    def ticket(self) -> str:
        """The ticket a caller gets with ``Via.QUEUED`` (same as ``id``)."""
        return self.id


def _encode_payload(payload: Payload) -> tuple[int, bytes]:
    if isinstance(payload, bytes | bytearray | memoryview):
        return _KIND_BYTES, bytes(payload)
    if isinstance(payload, Mapping):
        try:
            text = json.dumps(
                payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise TypeError(f"payload is not JSON-serialisable: {exc}") from exc
        return _KIND_JSON, text.encode("utf-8")
    raise TypeError(f"payload must be bytes or a JSON object, got {type(payload).__name__}")


def _decode_payload(kind: int, body: bytes) -> Payload:
    if kind == _KIND_JSON:
        value: dict[str, object] = json.loads(body)
        return value
    return bytes(body)


def _fingerprint(operation: str, entity: str, kind: int, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (operation.encode(), entity.encode(), bytes([kind]), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _run_script(con: sqlite3.Connection, script: str) -> None:
    # Statement by statement: ``executescript`` would commit the open transaction.
    for statement in script.split(";"):
        con.execute(statement)


def _keep_high_water(con: sqlite3.Connection, deleted: Sequence[int]) -> None:
    """After deleting rows ``deleted``: if the newest row was among them, remember its seq,
    so the next enqueue does not hand its ticket out again."""
    if not deleted:
        return
    top = max(deleted)
    (remaining,) = con.execute("SELECT max(seq) FROM items").fetchone()
    if remaining is None or top > remaining:
        con.execute(
            "INSERT INTO meta (name, value) VALUES ('last_seq', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
            (top,),
        )


def _key_hash(key: str) -> int:
    """A signed 64-bit hash of an idempotency key (what ``items_key_hash`` indexes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _ticket(seq: int) -> str:
    return f"ob-{seq:012d}"


def _seq(item_id: str) -> int:
    """The row of ticket ``item_id``; -1 (no row) for anything that is not a ticket."""
    prefix, _, digits = item_id.partition("-")
    if prefix != "ob" or len(digits) != 12 or not digits.isdigit():
        return -1
    return int(digits)


def _row_item(row: tuple[object, ...]) -> OutboxItem:
    (
        seq,
        entity,
        operation,
        kind,
        payload,
        key,
        fingerprint,
        created_at,
        queued_at,
        attempts,
        not_before,
        last_error,
        dead_reason,
        state,
        lease_token,
        lease_until,
    ) = row
    assert isinstance(kind, int)
    assert isinstance(payload, bytes)
    return OutboxItem(
        id=_ticket(int(seq)),  # type: ignore[call-overload]
        entity=str(entity),
        operation=str(operation),
        payload=_decode_payload(kind, payload),
        idempotency_key=str(key),
        fingerprint=str(fingerprint),
        created_at=float(created_at),  # type: ignore[arg-type]
        queued_at=float(queued_at),  # type: ignore[arg-type]
        attempts=int(attempts),  # type: ignore[call-overload]
        not_before=float(not_before),  # type: ignore[arg-type]
        last_error=None if last_error is None else str(last_error),
        state=_STATES[int(state)],  # type: ignore[call-overload]
        dead_reason=None if dead_reason is None else str(dead_reason),
        lease_token=None if lease_token is None else str(lease_token),
        lease_until=None if lease_until is None else float(lease_until),  # type: ignore[arg-type]
    )


class _FullJitter:
    """Exponential backoff with full jitter, drawn from an injected ``random.Random``.

    The exponential bound comes from :class:`tenacity.wait_exponential`;
    ``tenacity.wait_random_exponential`` computes the same bound but draws from the global
    ``random`` module, which a test or a replay cannot seed, so only the draw is ours.
    """

    __slots__ = ("_bound", "_rng")

    def __init__(self, policy: OutboxPolicy, rng: random.Random) -> None:
        self._bound = tenacity.wait_exponential(
            multiplier=policy.backoff_base, max=policy.backoff_cap
        )
        self._rng = rng

    def __call__(self, attempt: int) -> float:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = max(1, attempt)
        return self._rng.uniform(0.0, self._bound(state))


def _leases(items: Iterable[OutboxItem]) -> builtins.list[tuple[str, str]]:
    """``(item_id, lease_token)`` of leased items, as ack and release take them."""
    return [(item.id, item.lease_token or "") for item in items]


def _own_copy(exc: Exception) -> Exception:
    if type(exc) is not StoreError:
        return exc
    copy = StoreError(str(exc), path=exc.path)
    copy.__cause__ = exc.__cause__
    return copy


DeadLetterListener = Callable[[OutboxItem], None]


@dataclass(slots=True, eq=False)
class _Enqueue:
    """One caller's enqueue, waiting for the group commit that writes it."""

    entity: str
    operation: str
    payload: Payload
    idempotency_key: str
    kind: int
    body: bytes
    fingerprint: str
    #: Set (before the committing thread releases the group lock) to the item, or to the
    #: error this caller raises.
    outcome: OutboxItem | BaseException | None = None


class Outbox:
    """The durable outbox (see the module docstring for the guarantees).

    Args:
        store_or_state_dir: a :class:`~superapp_sdk.store.DiskStore` (the outbox lives in
            its ``state_dir`` and follows its ``durable`` setting), or a directory path.
        clock: wall time for ``created_at``, backoff and leases (default: system clock).
        policies: retry policy per operation name; others use ``default_policy``.
        default_policy: the policy of operations not in ``policies``.
        rng: randomness for backoff jitter and lease tokens.
        durable: with a path, whether commits are fsynced (``synchronous=FULL``).
        max_payload_bytes: larger payloads are refused with
            :class:`~superapp_sdk.store.ValueTooLarge`.
        remember_delivered_seconds: how long a delivered item's key is remembered for
            deduplication (Stripe keeps idempotency keys for 24 hours).

    Raises:
        StoreError: the state directory or file is unusable (named in the message).

    Example::

        policies = {"payment.confirm": OutboxPolicy(max_age_seconds=900)}
        outbox = Outbox(".superapp", policies=policies)
        item = outbox.enqueue(entity="chat:conv-1", operation="chat.send",
                              payload={"to": "u1", "text": "hi"}, idempotency_key="msg-1")
        item.ticket  # 'ob-000000000001'
    """

    def __init__(
        self,
        store_or_state_dir: DiskStore | str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        policies: Mapping[str, OutboxPolicy] | None = None,
        default_policy: OutboxPolicy | None = None,
        rng: random.Random | None = None,
        durable: bool = True,
        max_payload_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        remember_delivered_seconds: float = 24 * 3600.0,
    ) -> None:
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be >= 1, got {max_payload_bytes!r}")
        if remember_delivered_seconds < 0:
            raise ValueError(
                f"remember_delivered_seconds must be >= 0, got {remember_delivered_seconds!r}"
            )
        if isinstance(store_or_state_dir, DiskStore):
            self._db = store_or_state_dir.sqlite_file("outbox")
        else:
            self._db = SqliteFile(Path(store_or_state_dir) / "outbox.sqlite3", durable=durable)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._policies = dict(policies or {})
        self._default_policy = default_policy or OutboxPolicy()
        self._rng = rng if rng is not None else random.Random()
        self._waits: dict[str, _FullJitter] = {}
        self.max_payload_bytes = max_payload_bytes
        self._remember = remember_delivered_seconds
        self._listeners: builtins.list[DeadLetterListener] = []
        self._lock = threading.Lock()
        self._acks = 0
        self._group: builtins.list[_Enqueue] = []
        self._group_cond = threading.Condition(threading.Lock())
        self._committing = False
        try:
            with self._db.transaction("creating the outbox tables") as con:
                self._create_or_migrate(con)
        except BaseException:
            self._db.close()
            raise

    def _create_or_migrate(self, con: sqlite3.Connection) -> None:
        (version,) = con.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise StoreError(
                f"the outbox file was written by a newer version of the SDK (schema"
                f" {version}, this one reads up to {_SCHEMA_VERSION}) ({self.path})",
                path=str(self.path),
            )
        if version >= _SCHEMA_VERSION:
            return
        existing = {
            row[0] for row in con.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
        if "items" in existing:
            if "delivered" in existing:
                _run_script(con, _MIGRATE_FROM_1)
            con.create_function("superapp_key_hash", 1, _key_hash, deterministic=True)
            _run_script(con, _MIGRATE_FROM_2_BEFORE)
            _run_script(con, _SCHEMA)
            _run_script(con, _MIGRATE_FROM_2_AFTER)
            logger.info("outbox %s migrated to schema %d", self.path, _SCHEMA_VERSION)
        else:
            _run_script(con, _SCHEMA)
        con.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @property
    def path(self) -> Path:
        """The sqlite file holding the outbox."""
        return self._db.path

    def policy(self, operation: str) -> OutboxPolicy:
        """The retry policy of ``operation``."""
        return self._policies.get(operation, self._default_policy)

    def on_dead_letter(self, callback: DeadLetterListener) -> Callable[[], None]:
        """Call ``callback(item)`` whenever an item moves to the dead-letter store.

        Listeners run in the thread that dead-lettered the item, after the change is
        committed; an exception in a listener is logged and does not undo it.
        Returns a function that removes the listener.
        """
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def _emit(self, items: builtins.list[OutboxItem]) -> None:
        if not items:
            return
        with self._lock:
            listeners = builtins.list(self._listeners)
        for item in items:
            for listener in listeners:
                try:
                    listener(item)
                except Exception:
                    logger.exception("dead-letter listener %r failed for %s", listener, item.id)

    def _wait(self, operation: str) -> _FullJitter:
        wait = self._waits.get(operation)
        if wait is None:
            wait = self._waits[operation] = _FullJitter(self.policy(operation), self._rng)
        return wait

    # -- writing -------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        entity: str,
        operation: str,
        payload: Payload,
        idempotency_key: str,
    ) -> OutboxItem:
        """Persist a write; returns only once it is committed (fsynced when durable).

        Returns the new item, or the existing one when ``idempotency_key`` was already
        enqueued (or recently delivered) with the same fingerprint.

        Raises:
            IdempotencyConflict: the key was used with a different operation, entity or
                payload; nothing is stored.
            ValueTooLarge: the encoded payload is over ``max_payload_bytes``.
            StoreError: the item could not be persisted (full disk, read-only or
                corrupted state); it is *not* queued.
        """
        for name, value in (
            ("entity", entity),
            ("operation", operation),
            ("idempotency_key", idempotency_key),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        kind, body = _encode_payload(payload)
        if len(body) > self.max_payload_bytes:
            raise ValueTooLarge(
                f"outbox payload for {idempotency_key!r} is {len(body)} bytes, over the limit "
                f"of {self.max_payload_bytes} bytes (max_payload_bytes) ({self.path})",
                limit=self.max_payload_bytes,
                size=len(body),
                path=str(self.path),
            )
        request = _Enqueue(
            entity,
            operation,
            payload,
            idempotency_key,
            kind,
            body,
            _fingerprint(operation, entity, kind, body),
        )
        # Group commit: callers that arrive while a commit is in progress are written
        # together in the next one (one fsync for all of them); each still returns only
        # after the commit that holds its item.
        with self._group_cond:
            self._group.append(request)
            try:
                while request.outcome is None:
                    if self._committing:
                        self._group_cond.wait()
                        continue
                    # Nobody is committing: this caller writes everything queued so far.
                    self._committing = True
                    batch = self._group[:_GROUP_MAX]
                    del self._group[:_GROUP_MAX]
                    self._group_cond.release()
                    try:
                        self._commit_group(batch)
                    finally:
                        self._group_cond.acquire()
                        self._committing = False
                        self._group_cond.notify_all()
            except BaseException:
                # Interrupted (KeyboardInterrupt) before this caller's item was taken: take
                # it back, so it is not committed after the caller was told it failed.
                if request in self._group:
                    self._group.remove(request)
                raise
        outcome = request.outcome
        assert outcome is not None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _commit_group(self, batch: builtins.list[_Enqueue]) -> None:
        """Write ``batch`` in one transaction and give every request its outcome."""
        outcomes: builtins.list[OutboxItem | BaseException] = []
        try:
            now = self.clock.time()
            with self._db.transaction("enqueueing to the outbox") as con:
                for request in batch:
                    try:
                        outcomes.append(self._insert(con, request, now))
                    except IdempotencyConflict as exc:
                        outcomes.append(exc)
        except Exception as exc:  # noqa: BLE001 - handed to every caller, who raises it
            # Nothing of this batch was committed: every caller in it gets the error (its
            # own copy of a StoreError, so threads do not raise one shared object).
            for request in batch:
                request.outcome = _own_copy(exc)
            return
        except BaseException as exc:
            for request in batch:
                request.outcome = exc
            raise
        for request, outcome in zip(batch, outcomes, strict=True):
            request.outcome = outcome

    def _insert(self, con: sqlite3.Connection, request: _Enqueue, now: float) -> OutboxItem:
        # A key already queued, dead or recently delivered is found by its hash (one
        # index probe, inside the write transaction, so no other writer can slip in).
        key = request.idempotency_key
        key_hash = _key_hash(key)
        row = con.execute(_SELECT_BY_KEY, (key_hash, key)).fetchone()
        if row is not None:
            existing = _row_item(row)
            self._same_or_conflict(existing.fingerprint, request.fingerprint, key)
            if existing.state is ItemState.DELIVERED:
                # The tombstone no longer holds the payload; it was this one.
                return replace(existing, payload=request.payload)
            return existing
        cursor = con.execute(
            _INSERT_NEW,
            (
                request.entity,
                request.operation,
                request.kind,
                request.body,
                key,
                key_hash,
                request.fingerprint,
                now,
                now,
                now,
            ),
        )
        seq = cursor.lastrowid
        assert seq is not None
        con.execute(
            "INSERT INTO heads (entity, seq, ready_at, tail) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (entity) DO UPDATE SET tail = excluded.tail",
            (request.entity, seq, now, seq),
        )
        return OutboxItem(
            id=_ticket(seq),
            entity=request.entity,
            operation=request.operation,
            payload=request.payload,
            idempotency_key=key,
            fingerprint=request.fingerprint,
            created_at=now,
            queued_at=now,
            not_before=now,
        )

    @staticmethod
    def _same_or_conflict(stored: str, new: str, key: str) -> None:
        if stored != new:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was already used with a different payload;"
                " nothing was queued"
            )

    @staticmethod
    def _advance_head(con: sqlite3.Connection, entity: str) -> None:
        Outbox._advance_heads(con, [entity])

    @staticmethod
    def _advance_heads(con: sqlite3.Connection, entities: Sequence[str]) -> None:
        """Point each entity's head at its oldest pending item from the current head on
        (the head itself when it is still pending), or remove the head when none is left.

        One statement looks in the head's block of tickets and the next one for every
        entity at once (where the next item nearly always is); only an entity whose
        next item is further away is looked up block by block, up to its tail.
        """
        marks = ",".join("?" * len(entities))
        found = con.execute(
            f"SELECT h.entity, h.seq, h.tail, coalesce("  # noqa: S608
            f"(SELECT i.seq FROM items AS i WHERE i.state = 0 AND {_BLOCK_OF_I} = {_BLOCK_OF_H}"
            f" AND i.entity = h.entity AND i.seq >= h.seq ORDER BY i.seq LIMIT 1),"
            f" (SELECT i.seq FROM items AS i WHERE i.state = 0"
            f" AND {_BLOCK_OF_I} = {_BLOCK_OF_H} + 1 AND i.entity = h.entity"
            f" ORDER BY i.seq LIMIT 1))"
            f" FROM heads AS h WHERE h.entity IN ({marks})",
            entities,
        ).fetchall()
        moved: builtins.list[tuple[str, int]] = []
        gone: builtins.list[str] = []
        for entity, head, tail, nxt in found:
            block = (head >> _BUCKET_BITS) + 2
            while nxt is None and block <= tail >> _BUCKET_BITS:
                row = con.execute(
                    f"SELECT i.seq FROM items AS i WHERE i.state = 0 AND {_BLOCK_OF_I} = ?"  # noqa: S608
                    " AND i.entity = ? ORDER BY i.seq LIMIT 1",
                    (block, entity),
                ).fetchone()
                nxt = row[0] if row is not None else None
                block += 1
            if nxt is None:
                gone.append(entity)
            else:
                # Also when the head stays (a released item): its ready time is recomputed.
                moved.append((entity, nxt))
        if moved:
            values = ",".join(["(?, ?)"] * len(moved))
            con.execute(
                "UPDATE heads SET seq = next.column2,"  # noqa: S608
                " ready_at = max(items.not_before, coalesce(items.lease_until, items.not_before))"
                f" FROM (VALUES {values}) AS next JOIN items ON items.seq = next.column2"
                " WHERE heads.entity = next.column1",
                [part for pair in moved for part in pair],
            )
        if gone:
            con.execute(
                f"DELETE FROM heads WHERE entity IN ({','.join('?' * len(gone))})",  # noqa: S608
                gone,
            )

    def _bury(self, con: sqlite3.Connection, item: OutboxItem, reason: str) -> OutboxItem:
        con.execute(
            "UPDATE items SET state = 1, dead_reason = ?, attempts = ?, lease_token = NULL,"
            " lease_until = NULL WHERE seq = ?",
            (reason, item.attempts, _seq(item.id)),
        )
        self._advance_head(con, item.entity)
        return replace(
            item, state=ItemState.DEAD, dead_reason=reason, lease_token=None, lease_until=None
        )

    def _limit_reached(self, item: OutboxItem, now: float) -> str | None:
        return self._limit_reason(item.operation, item.attempts, item.queued_at, now)

    def _limit_reason(
        self, operation: str, attempts: int, queued_at: float, now: float
    ) -> str | None:
        policy = self.policy(operation)
        if attempts >= policy.max_attempts:
            return f"gave up after {attempts} attempts (max_attempts={policy.max_attempts})"
        if now - queued_at >= policy.max_age_seconds:
            return (
                f"expired after {now - queued_at:.0f} s in the outbox"
                f" (max_age_seconds={policy.max_age_seconds:g})"
            )
        return None

    def claim(
        self, worker_id: str, *, lease_seconds: float, now: float | None = None
    ) -> OutboxItem | None:
        """Lease the next deliverable item, or return ``None`` when none is ready.

        Only the oldest pending item of each entity is eligible; items waiting for their
        backoff and items leased by someone else are skipped. The lease lasts
        ``lease_seconds``; the returned item carries the ``lease_token`` for :meth:`ack`
        or :meth:`fail`. Claiming counts as an attempt. A head found past its
        ``max_age_seconds``, or whose last allowed attempt was leased by a worker that
        never reported back, is dead-lettered instead of returned.
        """
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        now = self.clock.time() if now is None else now
        buried: builtins.list[OutboxItem] = []
        with self._db.transaction("claiming from the outbox") as con:
            claimed = self._claim_in(con, worker_id, lease_seconds, now, buried)
        self._emit(buried)
        return claimed

    def _claim_in(
        self,
        con: sqlite3.Connection,
        worker_id: str,
        lease_seconds: float,
        now: float,
        buried: builtins.list[OutboxItem],
    ) -> OutboxItem | None:
        claimed = self._claim_many_in(con, worker_id, lease_seconds, now, 1, buried)
        return claimed[0] if claimed else None

    def _claim_many_in(
        self,
        con: sqlite3.Connection,
        worker_id: str,
        lease_seconds: float,
        now: float,
        limit: int,
        buried: builtins.list[OutboxItem],
    ) -> builtins.list[OutboxItem]:
        """Lease up to ``limit`` ready heads, oldest ready first: three statements for the
        whole batch (read the heads, lease their items, push the heads' ready time past
        the lease) instead of three per item."""
        claimed: builtins.list[OutboxItem] = []
        examined = 0
        while len(claimed) < limit and examined < _CLAIM_SCAN_LIMIT:
            heads = con.execute(
                "SELECT entity, seq FROM heads WHERE ready_at <= ? ORDER BY ready_at, seq LIMIT ?",
                (now, limit - len(claimed)),
            ).fetchall()
            if not heads:
                break
            examined += len(heads)
            lease_until = now + lease_seconds
            # One random part per batch; the seq makes each item's token its own.
            prefix = f"{worker_id}:{self._rng.getrandbits(64):016x}:"
            marks = ",".join("?" * len(heads))
            rows = con.execute(
                "UPDATE items SET attempts = attempts + 1, lease_token = ? || seq,"  # noqa: S608
                f" lease_until = ? WHERE state = 0 AND seq IN ({marks}) RETURNING {_COLUMNS}",
                (prefix, lease_until, *(seq for _, seq in heads)),
            ).fetchall()
            con.execute(
                f"UPDATE heads SET ready_at = ? WHERE entity IN ({marks})",  # noqa: S608
                (lease_until, *(entity for entity, _ in heads)),
            )
            leased = {row[0]: row for row in rows}
            for entity, seq in heads:
                row = leased.get(seq)
                if row is None:
                    # A head whose item is gone (it never should be): repair it.
                    self._advance_head(con, entity)
                    continue
                item = _row_item(row)
                reason = self._limit_reason(item.operation, item.attempts - 1, item.queued_at, now)
                if reason is not None:
                    # Past its limits: dead-lettered instead of sent, the lease undone.
                    buried.append(
                        self._bury(con, replace(item, attempts=item.attempts - 1), reason)
                    )
                    continue
                claimed.append(item)
        return claimed

    def _leased(self, con: sqlite3.Connection, item_id: str, token: str) -> OutboxItem | None:
        row = con.execute(_SELECT_PENDING_ID, (_seq(item_id),)).fetchone()
        if row is None:
            return None
        item = _row_item(row)
        return item if item.lease_token == token else None

    def ack(self, item_id: str, lease_token: str) -> bool:
        """Mark a claimed item delivered and release its entity's next item.

        Returns False (and changes nothing) when the lease was lost: the item was
        reclaimed by another worker after the lease expired, or dropped by an operator.
        """
        now = self.clock.time()
        with self._db.transaction("acknowledging an outbox item") as con:
            return self._ack_in(con, item_id, lease_token, now)

    def ack_and_claim(
        self, item_id: str, lease_token: str, worker_id: str, *, lease_seconds: float
    ) -> tuple[bool, OutboxItem | None]:
        """:meth:`ack` then :meth:`claim`, in one transaction (one commit, one fsync).

        A worker that keeps sending calls this after each successful send; the pair costs
        one commit instead of two. The claim sees the acknowledgement, so the next item of
        the same entity can be the one returned, still strictly after this one. Returns
        ``(acknowledged, next_item)``; when the lease was lost nothing is acknowledged
        and the claim still runs.
        """
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        now = self.clock.time()
        buried: builtins.list[OutboxItem] = []
        with self._db.transaction("acknowledging an outbox item") as con:
            acked = self._ack_in(con, item_id, lease_token, now)
            claimed = self._claim_in(con, worker_id, lease_seconds, now, buried)
        self._emit(buried)
        return acked, claimed

    def ack_and_claim_many(
        self,
        delivered: Sequence[tuple[str, str]],
        worker_id: str,
        *,
        lease_seconds: float,
        limit: int,
        release: Sequence[tuple[str, str]] = (),
    ) -> tuple[builtins.list[bool], builtins.list[OutboxItem]]:
        """Acknowledge several items, give some back, and lease up to ``limit`` more, in
        one transaction (one commit, one fsync).

        ``delivered`` and ``release`` hold ``(item_id, lease_token)`` pairs. A released
        item was claimed but not sent: its lease ends and the claim's attempt is not
        counted, so it is claimable again at once, still at the head of its entity. The
        items leased are heads of distinct entities, as :meth:`claim` would return them one
        by one. Returns whether each of ``delivered`` was acknowledged (False: its lease
        was lost) and the items leased.
        """
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        now = self.clock.time()
        buried: builtins.list[OutboxItem] = []
        claimed: builtins.list[OutboxItem] = []
        with self._db.transaction("acknowledging outbox items") as con:
            acked = self._ack_many_in(con, delivered, now)
            for item_id, token in release:
                self._release_in(con, item_id, token)
            if limit:
                claimed = self._claim_many_in(con, worker_id, lease_seconds, now, limit, buried)
        self._emit(buried)
        return acked, claimed

    def claim_many(
        self, worker_id: str, *, lease_seconds: float, limit: int
    ) -> builtins.list[OutboxItem]:
        """Lease up to ``limit`` deliverable items (heads of distinct entities) in one
        transaction; see :meth:`claim`."""
        return self.ack_and_claim_many((), worker_id, lease_seconds=lease_seconds, limit=limit)[1]

    def _release_in(self, con: sqlite3.Connection, item_id: str, lease_token: str) -> None:
        rows = con.execute(
            "UPDATE items SET attempts = max(attempts - 1, 0), lease_token = NULL,"
            " lease_until = NULL WHERE seq = ? AND state = 0 AND lease_token = ?"
            " RETURNING entity",
            (_seq(item_id), lease_token),
        ).fetchall()
        if rows:
            self._advance_head(con, rows[0][0])

    def _ack_in(self, con: sqlite3.Connection, item_id: str, lease_token: str, now: float) -> bool:
        return self._ack_many_in(con, [(item_id, lease_token)], now)[0]

    def _ack_many_in(
        self, con: sqlite3.Connection, delivered: Sequence[tuple[str, str]], now: float
    ) -> builtins.list[bool]:
        """Acknowledge every ``(item_id, lease_token)`` whose lease still holds, and move
        the heads of their entities on: a fixed number of statements per batch."""
        if len(delivered) > _ACK_CHUNK:
            return [
                acked
                for start in range(0, len(delivered), _ACK_CHUNK)
                for acked in self._ack_many_in(con, delivered[start : start + _ACK_CHUNK], now)
            ]
        if not delivered:
            return []
        pairs = [(_seq(item_id), token) for item_id, token in delivered]
        values = ",".join(["(?, ?)"] * len(pairs))
        params = [part for pair in pairs for part in pair]
        # fetchall: each statement must run to completion before the next one.
        if self._remember > 0:
            rows = con.execute(
                "UPDATE items SET state = 2, delivered_at = ?, kind = 0, payload = x'',"  # noqa: S608
                " lease_token = NULL, lease_until = NULL, last_error = NULL"
                f" FROM (VALUES {values}) AS done"
                " WHERE items.seq = done.column1 AND items.state = 0"
                " AND items.lease_token = done.column2 RETURNING seq, entity",
                (now, *params),
            ).fetchall()
        else:
            rows = con.execute(
                f"DELETE FROM items WHERE seq IN ({','.join('?' * len(pairs))})"  # noqa: S608
                f" AND state = 0 AND (seq, lease_token) IN (VALUES {values})"
                " RETURNING seq, entity",
                (*(seq for seq, _ in pairs), *params),
            ).fetchall()
            _keep_high_water(con, [row[0] for row in rows])
        done = {seq for seq, _ in rows}
        acked: builtins.list[bool] = []
        for seq, _ in pairs:
            acked.append(seq in done)
            done.discard(seq)  # the same pair twice: only the first one acknowledged it
        if not rows:
            return acked
        before = self._acks
        self._acks += len(rows)
        crossings = self._acks // _PRUNE_EVERY - before // _PRUNE_EVERY
        if crossings:
            pruned = con.execute(
                "DELETE FROM items WHERE seq IN (SELECT seq FROM items"
                " WHERE state = 2 AND delivered_at < ? ORDER BY delivered_at LIMIT ?)"
                " RETURNING seq",
                (now - self._remember, _PRUNE_BATCH * crossings),
            ).fetchall()
            _keep_high_water(con, [row[0] for row in pruned])
        self._advance_heads(con, sorted({entity for _, entity in rows}))
        return acked

    def fail(
        self,
        item_id: str,
        lease_token: str,
        error: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> bool:
        """Report a failed send of a claimed item.

        A retryable failure schedules the item again after ``retry_after`` seconds when
        the provider asked for it, else after an exponential backoff with full jitter.
        A non-retryable failure, or one that reaches ``max_attempts`` or
        ``max_age_seconds``, moves it to the dead-letter store and tells the listeners.
        Returns False (and changes nothing) when the lease was lost.
        """
        if retry_after is not None and not retry_after >= 0:
            raise ValueError(f"retry_after must be >= 0 or None, got {retry_after!r}")
        now = self.clock.time()
        buried: builtins.list[OutboxItem] = []
        with self._db.transaction("recording an outbox failure") as con:
            item = self._leased(con, item_id, lease_token)
            if item is None:
                return False
            item = replace(item, last_error=error)
            con.execute("UPDATE items SET last_error = ? WHERE seq = ?", (error, _seq(item_id)))
            reason = "not retryable" if not retryable else self._limit_reached(item, now)
            if reason is not None:
                buried.append(self._bury(con, item, reason))
            else:
                delay = (
                    retry_after
                    if retry_after is not None
                    else self._wait(item.operation)(item.attempts)
                )
                not_before = now + delay
                con.execute(
                    "UPDATE items SET not_before = ?, lease_token = NULL, lease_until = NULL"
                    " WHERE seq = ?",
                    (not_before, _seq(item_id)),
                )
                con.execute(
                    "UPDATE heads SET ready_at = ? WHERE entity = ?", (not_before, item.entity)
                )
        self._emit(buried)
        return True

    def expire(self, now: float | None = None) -> int:
        """Dead-letter every pending, unleased item older than its ``max_age_seconds``.

        Claims do this lazily for the head of each entity; this sweeps the whole queue
        (an operator or a periodic task calls it). Returns how many items moved.
        """
        now = self.clock.time() if now is None else now
        buried: builtins.list[OutboxItem] = []
        with self._db.transaction("expiring outbox items") as con:
            rows = con.execute(_SELECT_ALL_PENDING)
            for row in rows.fetchall():
                item = _row_item(row)
                if item.lease_until is not None and item.lease_until > now:
                    continue
                policy = self.policy(item.operation)
                if now - item.queued_at >= policy.max_age_seconds:
                    reason = (
                        f"expired after {now - item.queued_at:.0f} s in the outbox"
                        f" (max_age_seconds={policy.max_age_seconds:g})"
                    )
                    buried.append(self._bury(con, item, reason))
        self._emit(buried)
        return len(buried)

    # -- operators -----------------------------------------------------------------------

    def expedite(self) -> int:
        """Make every pending item that waits out a backoff ready now; returns how many.

        Called when a provider recovers: an item that failed while it was down should go
        now, not after a backoff that grew during the outage. Leased items keep their
        lease.
        """
        now = self.clock.time()
        with self._db.transaction("expediting the outbox") as con:
            moved = con.execute(
                "UPDATE items SET not_before = ?"
                " WHERE state = 0 AND lease_token IS NULL AND not_before > ?",
                (now, now),
            ).rowcount
            con.execute(
                "UPDATE heads SET ready_at = ? FROM items"
                " WHERE items.seq = heads.seq AND items.lease_token IS NULL"
                " AND heads.ready_at > ?",
                (now, now),
            )
        return moved

    def retry_dead(self, item_id: str) -> OutboxItem | None:
        """Put a dead-lettered item back into its entity's queue, at its original place.

        Its attempts and age start again from zero; its id, key and payload stay. Keeping
        its place means it goes before younger items of its entity (once a lease held on
        the current head has run out), as it would have without the failures.
        Returns the requeued item, or ``None`` when no dead letter has that id.
        """
        now = self.clock.time()
        seq = _seq(item_id)
        with self._db.transaction("retrying a dead letter") as con:
            row = con.execute(_SELECT_DEAD_ID, (seq,)).fetchone()
            if row is None:
                return None
            item = replace(
                _row_item(row),
                queued_at=now,
                attempts=0,
                not_before=now,
                state=ItemState.PENDING,
                dead_reason=None,
            )
            con.execute(
                "UPDATE items SET state = 0, attempts = 0, queued_at = ?, not_before = ?,"
                " dead_reason = NULL, lease_token = NULL, lease_until = NULL WHERE seq = ?",
                (now, now, seq),
            )
            head = con.execute("SELECT seq FROM heads WHERE entity = ?", (item.entity,)).fetchone()
            if head is None or head[0] > seq:
                ready = now
                if head is not None:
                    (lease_until,) = con.execute(
                        "SELECT lease_until FROM items WHERE seq = ?", (head[0],)
                    ).fetchone()
                    ready = max(now, lease_until if lease_until is not None else now)
                con.execute(
                    "INSERT INTO heads (entity, seq, ready_at, tail) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (entity) DO UPDATE SET seq = excluded.seq,"
                    " ready_at = excluded.ready_at, tail = max(tail, excluded.tail)",
                    (item.entity, seq, ready, seq),
                )
            else:
                con.execute(
                    "UPDATE heads SET tail = max(tail, ?) WHERE entity = ?", (seq, item.entity)
                )
        return item

    def drop(self, item_id: str) -> bool:
        """Delete an item (pending or dead) for good; True when it existed.

        This is the only way an undelivered item leaves the outbox: an operator's decision.
        """
        with self._db.transaction("dropping an outbox item") as con:
            row = con.execute(
                "SELECT seq, entity FROM items WHERE seq = ? AND state != 2", (_seq(item_id),)
            ).fetchone()
            if row is None:
                return False
            con.execute("DELETE FROM items WHERE seq = ?", (row[0],))
            _keep_high_water(con, [row[0]])
            head = con.execute("SELECT seq FROM heads WHERE entity = ?", (row[1],)).fetchone()
            if head is not None and head[0] == row[0]:
                self._advance_head(con, row[1])
        logger.warning("outbox item %s dropped by request", item_id)
        return True

    # -- reading -------------------------------------------------------------------------

    def get(self, item_id: str) -> OutboxItem | None:
        """The pending or dead item ``item_id``, or ``None``."""
        with self._db.reading("reading the outbox") as con:
            row = con.execute(_SELECT_ID, (_seq(item_id),)).fetchone()
        return None if row is None else _row_item(row)

    def list(
        self, offset: int = 0, limit: int = 100, *, after: str | None = None
    ) -> builtins.list[OutboxItem]:
        """Pending items in enqueue order, ``limit`` at a time from ``offset``.

        With ``after`` (a ticket, typically the last one of the previous page) the page
        starts at the first item enqueued after it, and ``offset`` counts from there: a
        page then costs the same wherever it is in the queue, while a large ``offset``
        walks past every item before it.
        """
        return self._page(_PENDING, offset, limit, after)

    def dead_letters(
        self, offset: int = 0, limit: int = 100, *, after: str | None = None
    ) -> builtins.list[OutboxItem]:
        """Dead-lettered items, oldest first, ``limit`` at a time from ``offset`` (or from
        the first one after the ticket ``after``, as in :meth:`list`)."""
        return self._page(_DEAD, offset, limit, after)

    def _page(
        self, state: int, offset: int, limit: int, after: str | None
    ) -> builtins.list[OutboxItem]:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset!r}")
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be in 1..10000, got {limit!r}")
        start = 0
        if after is not None:
            start = _seq(after)
            if start < 0:
                raise ValueError(f"after must be a ticket like ob-000000000001, got {after!r}")
        with self._db.reading("reading the outbox") as con:
            rows = con.execute(_SELECT_PAGE[state], (start, limit, offset)).fetchall()
        return [_row_item(row) for row in rows]

    def has_pending(self, entity: str) -> bool:
        """True when ``entity`` has an undelivered item: a new write to it must queue
        behind, or it would overtake the older ones."""
        with self._db.reading("reading the outbox") as con:
            # An entity has a head exactly while it has a pending item.
            row = con.execute("SELECT 1 FROM heads WHERE entity = ?", (entity,)).fetchone()
        return row is not None

    def depth(self) -> int:
        """How many items wait to be delivered (dead letters not counted)."""
        with self._db.reading("reading the outbox") as con:
            (count,) = con.execute("SELECT count(*) FROM items WHERE state = 0").fetchone()
        return int(count)

    def dead_count(self) -> int:
        """How many items are in the dead-letter store."""
        with self._db.reading("reading the outbox") as con:
            (count,) = con.execute("SELECT count(*) FROM items WHERE state = 1").fetchone()
        return int(count)

    def next_ready_at(self) -> float | None:
        """Wall time at which the next item becomes claimable, or ``None`` when empty."""
        with self._db.reading("reading the outbox") as con:
            (ready,) = con.execute("SELECT min(ready_at) FROM heads").fetchone()
        return None if ready is None else float(ready)

    def close(self) -> None:
        """Close the outbox's database connections (idempotent)."""
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class _WorkerOptions:
    """What the thread and the asyncio replay workers are configured with (validated)."""

    def __init__(
        self,
        outbox: Outbox,
        clock: Clock | None,
        poll_floor: float,
        lease_seconds: float,
        worker_id: str,
        concurrency: int,
        batch: int,
    ) -> None:
        if not poll_floor > 0:
            raise ValueError(f"poll_floor must be > 0 seconds, got {poll_floor!r}")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0 seconds, got {lease_seconds!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        if not 1 <= batch <= 1000:
            raise ValueError(f"batch must be in 1..1000, got {batch!r}")
        self.outbox = outbox
        self.clock: Clock = clock if clock is not None else outbox.clock
        self.poll_floor = poll_floor
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.batch = batch
        #: A provider recovered since the worker last looked: expedite backed-off items.
        self._recovered = False

    def _take_recovered(self) -> bool:
        recovered, self._recovered = self._recovered, False
        return recovered

    def _wait_until(self, ready: float | None) -> float:
        """How long an idle worker sleeps: until the next item is ready, at most
        ``poll_floor``."""
        if ready is None:
            return self.poll_floor
        return min(self.poll_floor, max(0.001, ready - self.clock.time()))


class OutboxWorker(_WorkerOptions):
    """Replays the outbox in background threads.

    Each thread leases up to ``batch`` items (heads of distinct entities) in one
    transaction, calls ``sender(item)`` for each in turn, and then acknowledges the ones
    sent and leases the next batch in one more: a busy worker commits once per ``batch``
    items. When the sender raises, the item is failed at once (retryable unless the
    exception has ``retryable = False``, honouring its ``retry_after``). When nothing is
    ready the thread sleeps until the next item's backoff ends, at most ``poll_floor``
    seconds, or until :meth:`wake` (called on breaker or failure-domain close events).

    Items of one entity are never in one batch, so a delivered item's successor is only
    leased once the delivery is committed. A leased item waits for the sends before it in
    its batch: one whose lease has less than half of ``lease_seconds`` left when its turn
    comes is given back unsent (its attempt not counted) rather than sent late, when
    another worker may already have reclaimed it. After a crash, at most the items sent in
    the unfinished batch are sent again, under the same idempotency keys.

    Args:
        outbox: the outbox to drain.
        sender: delivers one item; raises on failure.
        clock: unused for sleeping (the thread waits on an event); kept for symmetry with
            the outbox's clock when computing waits.
        poll_floor: the longest the worker sleeps without looking (> 0).
        lease_seconds: how long a claimed item stays invisible to other workers; choose
            it well above the sender's worst-case duration.
        worker_id: names the worker in lease tokens (default: process id and thread).
        concurrency: how many sends may be in flight at once, one per thread (>= 1).
            Items of one entity are still sent one at a time, in order.
        batch: how many items a thread leases per transaction (1..1000). Measured on a
            2-core VM against a provider in another process (``python -m bench --only
            outbox``): one item per transaction costs ~120 us, about a sixth of a
            loopback call, so batch=1 drains at 71-80% of the rate of calling the
            provider directly; batch=32 (25-40 us an item) at 92-100%. The cost of a larger
            batch: after a crash, up to one batch per thread is sent again, under the
            same idempotency keys; an item whose lease is half gone when its turn comes
            is given back unsent. An extra thread committing while another sends did not help there:
            both threads need the one core left to the process, and the GIL.

    Example::

        with OutboxWorker(outbox, send_to_provider) as worker:
            worker.drain(timeout=30)
    """

    def __init__(
        self,
        outbox: Outbox,
        sender: Callable[[OutboxItem], object],
        *,
        clock: Clock | None = None,
        poll_floor: float = 1.0,
        lease_seconds: float = 60.0,
        worker_id: str | None = None,
        concurrency: int = 1,
        batch: int = 32,
    ) -> None:
        super().__init__(
            outbox,
            clock,
            poll_floor,
            lease_seconds,
            worker_id or f"pid{os.getpid()}-w{id(self):x}",
            concurrency,
            batch,
        )
        self._sender = sender
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._threads: list[threading.Thread] = []
        #: The last error the worker hit while talking to the store, if any.
        self.last_store_error: StoreError | None = None

    def run_once(self) -> bool:
        """Claim and send one item in the calling thread; True when an item was handled."""
        item = self.outbox.claim(self.worker_id, lease_seconds=self.lease_seconds)
        if item is None:
            return False
        self._deliver(item)
        return True

    def _send(self, item: OutboxItem) -> bool:
        """Call the sender; on an exception record the failure. True when it was sent."""
        assert item.lease_token is not None
        try:
            self._sender(item)
        # Any exception from the sender is a failed delivery to record, not a crash of
        # the worker: the outbox decides between retry and dead letter.
        except Exception as exc:  # noqa: BLE001
            retryable = bool(getattr(exc, "retryable", True))
            if not self.outbox.fail(
                item.id,
                item.lease_token,
                _describe(exc),
                retryable=retryable,
                retry_after=_retry_after(exc),
            ):
                logger.warning("lease of outbox item %s was lost before fail", item.id)
            return False
        return True

    def _deliver(self, item: OutboxItem) -> None:
        """Send ``item`` and acknowledge it."""
        assert item.lease_token is not None
        if self._send(item) and not self.outbox.ack(item.id, item.lease_token):
            logger.warning("lease of outbox item %s was lost before ack", item.id)

    def _deliver_batch(self, items: list[OutboxItem]) -> list[OutboxItem]:
        """Send ``items`` in turn, then acknowledge the sent ones, give back the unsent
        ones and lease the next batch (unless stopping) in one transaction."""
        sent: list[tuple[str, str]] = []
        unsent: list[tuple[str, str]] = []
        for item in items:
            assert item.lease_token is not None
            assert item.lease_until is not None
            left = item.lease_until - self.clock.time()
            if self._stop.is_set() or left < self.lease_seconds / 2:
                unsent.append((item.id, item.lease_token))
            elif self._send(item):
                sent.append((item.id, item.lease_token))
        acked, following = self.outbox.ack_and_claim_many(
            sent,
            self.worker_id,
            lease_seconds=self.lease_seconds,
            limit=0 if self._stop.is_set() else self.batch,
            release=unsent,
        )
        for (item_id, _), ok in zip(sent, acked, strict=True):
            if not ok:
                logger.warning("lease of outbox item %s was lost before ack", item_id)
        return following

    def _idle_wait(self) -> float:
        return self._wait_until(self.outbox.next_ready_at())

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _run(self) -> None:
        held: list[OutboxItem] = []
        # Held items are leased to this thread: they are settled (sent, or given back when
        # a stop was asked meanwhile), so that stopping never leaves an item leased by
        # nobody.
        while held or not self._stop.is_set():
            self._wake.clear()
            try:
                if self._take_recovered():
                    self.outbox.expedite()
                if not held:
                    held = self.outbox.claim_many(
                        self.worker_id, lease_seconds=self.lease_seconds, limit=self.batch
                    )
                if not held:
                    handled, wait = False, self._idle_wait()
                else:
                    items, held = held, []
                    held = self._deliver_batch(items)
                    handled, wait = True, 0.0
            except StoreError as exc:
                logger.error("outbox worker: %s", exc)
                self.last_store_error = exc
                held, handled, wait = [], False, self.poll_floor
            if not handled:
                # drain() re-checks the depth only when a worker finds nothing to claim:
                # counting after every item would cost more than the item itself.
                self._notify()
                self._wake.wait(wait)

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, name=f"superapp-outbox-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the items in flight (if any) are acknowledged or failed."""
        self._stop.set()
        self._wake.set()
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def wake(self, *, recovered: bool = False) -> None:
        """Look for work now; ``recovered``: a provider became healthy again, so items
        waiting out a backoff go now too."""
        self._recovered = self._recovered or recovered
        self._wake.set()

    @property
    def running(self) -> bool:
        """True while a worker thread is alive."""
        return any(thread.is_alive() for thread in self._threads)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the outbox has no pending item; False when ``timeout`` passed first."""
        self.wake()
        with self._progress:
            return self._progress.wait_for(lambda: self.outbox.depth() == 0, timeout)

    def __enter__(self) -> OutboxWorker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"OutboxWorker({self.outbox!r}, worker_id={self.worker_id!r})"


class AsyncOutboxWorker(_WorkerOptions):
    """Replays the outbox in an asyncio task, with an async ``sender``.

    Behaves like :class:`OutboxWorker`: it leases up to ``batch`` items (heads of distinct
    entities) in one transaction, sends them (up to ``concurrency`` at once, as tasks of
    the loop: items of one entity are never in one batch, so each entity still gets one
    send at a time, in order), then acknowledges the sent ones and leases the next batch
    in one more. Store operations run in a thread (``asyncio.to_thread``) so an fsync
    never blocks the event loop. When the task is cancelled (:meth:`stop`), the items
    already sent are acknowledged and the ones not yet started are given back; a send cut
    off midway keeps its lease until it expires, as its outcome is unknown.
    """

    def __init__(
        self,
        outbox: Outbox,
        sender: Callable[[OutboxItem], Awaitable[object]],
        *,
        clock: Clock | None = None,
        poll_floor: float = 1.0,
        lease_seconds: float = 60.0,
        worker_id: str | None = None,
        concurrency: int = 1,
        batch: int = 32,
    ) -> None:
        super().__init__(
            outbox,
            clock,
            poll_floor,
            lease_seconds,
            worker_id or f"pid{os.getpid()}-a{id(self):x}",
            concurrency,
            batch,
        )
        self._sender = sender
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        #: The last error the worker hit while talking to the store, if any.
        self.last_store_error: StoreError | None = None

    async def run_once(self) -> bool:
        """Claim and send one item; True when an item was handled."""
        item = await asyncio.to_thread(
            self.outbox.claim, self.worker_id, lease_seconds=self.lease_seconds
        )
        if item is None:
            return False
        assert item.lease_token is not None
        if await self._send(item) and not await asyncio.to_thread(
            self.outbox.ack, item.id, item.lease_token
        ):
            logger.warning("lease of outbox item %s was lost before ack", item.id)
        return True

    async def _send(self, item: OutboxItem) -> bool:
        """Call the sender; on an exception record the failure. True when it was sent."""
        assert item.lease_token is not None
        try:
            await self._sender(item)
        # As in OutboxWorker: a sender exception is a failed delivery, not a worker crash.
        except Exception as exc:  # noqa: BLE001
            if not await asyncio.to_thread(
                self.outbox.fail,
                item.id,
                item.lease_token,
                _describe(exc),
                retryable=bool(getattr(exc, "retryable", True)),
                retry_after=_retry_after(exc),
            ):
                logger.warning("lease of outbox item %s was lost before fail", item.id)
            return False
        return True

    async def _deliver_batch(self, items: builtins.list[OutboxItem]) -> builtins.list[OutboxItem]:
        """Send ``items``, then acknowledge the sent ones, give back the unsent ones and
        lease the next batch in one transaction."""
        sent: builtins.list[tuple[str, str]] = []
        started: set[str] = set()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: OutboxItem) -> None:
            assert item.lease_token is not None
            assert item.lease_until is not None
            async with gate:
                if item.lease_until - self.clock.time() < self.lease_seconds / 2:
                    return  # given back below, rather than sent late
                started.add(item.id)
                if await self._send(item):
                    sent.append((item.id, item.lease_token))

        def unsent() -> builtins.list[tuple[str, str]]:
            return _leases(i for i in items if i.id not in started)

        try:
            if self.concurrency == 1:
                for item in items:
                    await one(item)
            else:
                outcomes = await asyncio.gather(
                    *(one(item) for item in items), return_exceptions=True
                )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome  # a StoreError while recording a failure
        except asyncio.CancelledError:
            # Settle what is known before stopping: sent items acknowledged, items never
            # started given back.
            await self._settle(sent, unsent())
            raise
        settle = self._commit(sent, unsent(), self.batch)
        try:
            # Shielded: the commit runs in a thread either way, and its result (the next
            # batch, leased to this worker) must be given back if the task is stopping.
            acked, following = await asyncio.shield(settle)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                _, leased = await settle
                await self._settle([], _leases(leased))
            raise
        for (item_id, _), ok in zip(sent, acked, strict=True):
            if not ok:
                logger.warning("lease of outbox item %s was lost before ack", item_id)
        return following

    def _commit(
        self,
        sent: builtins.list[tuple[str, str]],
        unsent: builtins.list[tuple[str, str]],
        limit: int,
    ) -> asyncio.Future[tuple[builtins.list[bool], builtins.list[OutboxItem]]]:
        """``ack_and_claim_many`` in a thread, as a future of its own: awaited through
        ``asyncio.shield``, a cancellation of the worker cannot cut the commit short."""
        return asyncio.ensure_future(
            asyncio.to_thread(
                self.outbox.ack_and_claim_many,
                list(sent),
                self.worker_id,
                lease_seconds=self.lease_seconds,
                limit=limit,
                release=unsent,
            )
        )

    async def _settle(
        self, sent: builtins.list[tuple[str, str]], unsent: builtins.list[tuple[str, str]]
    ) -> None:
        """Acknowledge ``sent`` and give back ``unsent`` while the task is being cancelled:
        shielded, so the cancellation cannot cut the commit short; errors only logged."""
        if not sent and not unsent:
            return
        try:
            await asyncio.shield(self._commit(sent, unsent, 0))
        except asyncio.CancelledError:
            # Cancelled again while waiting: the thread still finishes the commit.
            pass
        except StoreError as exc:
            logger.error("outbox worker: settling on stop: %s", exc)

    async def _run(self) -> None:
        held: builtins.list[OutboxItem] = []
        while True:
            self._wake.clear()
            try:
                if self._take_recovered():
                    await asyncio.to_thread(self.outbox.expedite)
                if not held:
                    held = await asyncio.to_thread(
                        self.outbox.claim_many,
                        self.worker_id,
                        lease_seconds=self.lease_seconds,
                        limit=self.batch,
                    )
                handled, wait = bool(held), 0.0
                if held:
                    items, held = held, []
                    held = await self._deliver_batch(items)
                else:
                    wait = self._wait_until(await asyncio.to_thread(self.outbox.next_ready_at))
            except asyncio.CancelledError:
                # Leased to this worker and never started: give them back.
                await self._settle([], _leases(held))
                raise
            except StoreError as exc:
                logger.error("outbox worker: %s", exc)
                self.last_store_error = exc
                held, handled, wait = [], False, self.poll_floor
            if not handled:
                self._progress.set()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the
                # inner result when the wake-up and a cancellation land together,
                # swallowing the cancellation, and stop() then waits forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    def start(self) -> None:
        """Start the worker task on the running loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="superapp-outbox")

    async def stop(self) -> None:
        """Cancel the worker task and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def wake(self, *, recovered: bool = False) -> None:
        """Look for work now; safe to call from any thread. ``recovered``: a provider
        became healthy again, so items waiting out a backoff go now too."""
        self._recovered = self._recovered or recovered
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until the outbox has no pending item; False when ``timeout`` passed first."""
        self.wake()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._progress.clear()
                    if await asyncio.to_thread(self.outbox.depth) == 0:
                        return True
                    await self._progress.wait()
        except TimeoutError:
            return False

    async def __aenter__(self) -> AsyncOutboxWorker:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"AsyncOutboxWorker({self.outbox!r}, worker_id={self.worker_id!r})"
