"""The process the crash harness kills: enqueues items and drains them to a deduping provider.

Usage: ``python crash_worker.py STATE_DIR PROVIDER_DB CYCLE ITEMS``

Prints ``QUEUED <ticket> <key>`` only after ``Outbox.enqueue`` has returned (the moment a
caller would answer ``Via.QUEUED``), then ``DRAINED`` once the outbox is empty.

Environment (all optional):

- ``CRASH_KILL_AT``: ``<point>:<n>``, SIGKILL this process at the n-th pass through a point:
  ``enqueue_before_commit``, ``enqueue_after_commit`` (persisted, QUEUED not printed yet),
  ``after_send`` (the provider executed it, not acknowledged), ``ack_before_commit``,
  ``claim_before_commit``.
- ``CRASH_SEND_DELAY``: seconds to wait between the provider's execution and the ack, so
  that a kill from outside lands there more often.
- ``CRASH_CONCURRENCY``: sender threads of the worker (default 1).
- ``CRASH_ENQUEUERS``: threads enqueueing at once, sharing commits (default 1).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from superapp_sdk.offline import Outbox, OutboxItem, OutboxPolicy, OutboxWorker

LEASE_SECONDS = 0.5


class KillSwitch:
    """SIGKILLs the process the n-th time the configured point is passed."""

    def __init__(self, spec: str) -> None:
        point, _, count = spec.partition(":")
        self.point = point
        self.remaining = int(count or "1") if point else 0
        self._lock = threading.Lock()

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            self.remaining -= 1
            if self.remaining == 0:
                os.kill(os.getpid(), signal.SIGKILL)


class DedupingProvider:
    """A provider that executes each idempotency key once, as Stripe and Toss do.

    Every call is recorded (fsynced) with whether it was a replay of an executed key.
    """

    def __init__(self, path: str) -> None:
        self._con = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS calls (n INTEGER PRIMARY KEY, key TEXT, ticket TEXT,"
            " entity TEXT, fingerprint TEXT, duplicate INTEGER, pid INTEGER)"
        )
        self._lock = threading.Lock()

    def execute(self, item: OutboxItem) -> None:
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            seen = self._con.execute(
                "SELECT 1 FROM calls WHERE key = ? AND duplicate = 0", (item.idempotency_key,)
            ).fetchone()
            self._con.execute(
                "INSERT INTO calls (key, ticket, entity, fingerprint, duplicate, pid)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    item.idempotency_key,
                    item.id,
                    item.entity,
                    item.fingerprint,
                    int(seen is not None),
                    os.getpid(),
                ),
            )
            self._con.execute("COMMIT")

    def close(self) -> None:
        self._con.close()


def item_for(cycle: int, index: int) -> tuple[str, str, dict[str, object]]:
    key = f"k{cycle:05d}-{index:03d}"
    return key, f"chat:conv-{index % 4}", {"to": f"user-{index}", "text": f"message {key}"}


def main() -> int:
    state_dir, provider_db, cycle, items = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5])
    kill = KillSwitch(os.environ.get("CRASH_KILL_AT", ""))
    delay = float(os.environ.get("CRASH_SEND_DELAY", "0"))
    outbox = Outbox(
        Path(state_dir),
        default_policy=OutboxPolicy(max_attempts=10_000, backoff_base=0.01, backoff_cap=0.05),
    )
    original = outbox._db.transaction  # the kill points sit inside the outbox's transactions

    @contextmanager
    def transaction(action: str) -> Iterator[sqlite3.Connection]:
        with original(action) as con:
            yield con
            for prefix, point in (
                ("enqueueing", "enqueue_before_commit"),
                ("acknowledging", "ack_before_commit"),
                ("claiming", "claim_before_commit"),
            ):
                if action.startswith(prefix):
                    kill.hit(point)

    outbox._db.transaction = transaction  # type: ignore[method-assign]
    provider = DedupingProvider(provider_db)

    def send(item: OutboxItem) -> None:
        provider.execute(item)
        if delay:
            time.sleep(delay)
        kill.hit("after_send")

    worker = OutboxWorker(
        outbox,
        send,
        poll_floor=0.02,
        lease_seconds=LEASE_SECONDS,
        concurrency=int(os.environ.get("CRASH_CONCURRENCY", "1")),
    )
    worker.start()
    # Re-submit the previous cycle's last keys: the outbox must deduplicate them.
    plan = [(cycle - 1, i) for i in range(max(0, items - 3), items) if cycle > 0]
    plan += [(cycle, i) for i in range(items)]
    printing = threading.Lock()

    def enqueue(part: list[tuple[int, int]]) -> None:
        for c, i in part:
            key, entity, payload = item_for(c, i)
            item = outbox.enqueue(
                entity=entity, operation="chat.send", payload=payload, idempotency_key=key
            )
            kill.hit("enqueue_after_commit")
            with printing:
                print(f"QUEUED {item.id} {key}", flush=True)

    # Several enqueuing threads share commits (group commit); a kill inside one commit
    # must lose only items whose callers were never told QUEUED.
    enqueuers = int(os.environ.get("CRASH_ENQUEUERS", "1"))
    threads = [
        threading.Thread(target=enqueue, args=(plan[n::enqueuers],)) for n in range(enqueuers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drained = worker.drain(timeout=60)
    worker.stop()
    outbox.close()
    provider.close()
    print("DRAINED" if drained else "NOT-DRAINED", flush=True)
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
