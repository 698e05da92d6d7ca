"""Crash harness: kill -9 the outbox at random points; nothing queued is lost or run twice.

A subprocess (tests/crash_worker.py) enqueues chat messages and drains them to a provider
that deduplicates by idempotency key (as Stripe and Toss do) and records every call. The
harness SIGKILLs it at a random moment or at a chosen point (inside the enqueue
transaction, after the provider executed but before the ack, inside ack or claim), starts
it again, and after SUPERAPP_CRASH_CYCLES cycles (40 here, 1000 in ``make test-long``)
checks every promise the outbox makes.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from superapp_sdk.offline import Outbox

WORKER = Path(__file__).with_name("crash_worker.py")
REPO = Path(__file__).resolve().parents[1]
CYCLES = int(os.environ.get("SUPERAPP_CRASH_CYCLES", "40"))
ITEMS_PER_CYCLE = 12
POINTS = (
    "enqueue_before_commit",
    "enqueue_after_commit",
    "after_send",
    "ack_before_commit",
    "claim_before_commit",
)


def run_cycle(
    state: Path, provider: Path, cycle: int, items: int, env: dict[str, str], kill_after: float
) -> tuple[list[tuple[str, str]], int]:
    """Run the worker once; SIGKILL it after ``kill_after`` seconds if still running."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(state), str(provider), str(cycle), str(items)],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGKILL), err
    queued = []
    # Only complete lines count: a line cut by the kill was never acknowledged to anyone.
    for line in out.splitlines(keepends=True):
        if line.startswith("QUEUED ") and line.endswith("\n"):
            _, ticket, key = line.split()
            queued.append((ticket, key))
    return queued, proc.returncode


def test_kill_minus_nine_loses_nothing_and_executes_each_key_once(tmp_path: Path) -> None:
    """Across random SIGKILLs every QUEUED item is delivered, once per key, in entity order."""
    rng = random.Random(int(os.environ.get("SUPERAPP_CRASH_SEED", "4")))
    state, provider = tmp_path / "state", tmp_path / "provider.sqlite3"
    promised: dict[str, str] = {}
    kills_after_send = 0
    for cycle in range(CYCLES):
        env = {
            "CRASH_CONCURRENCY": str(rng.choice((1, 1, 2))),
            "CRASH_ENQUEUERS": str(rng.choice((1, 1, 4))),
            "CRASH_SEND_DELAY": str(rng.choice((0.0, 0.002, 0.01))),
        }
        if rng.random() < 0.5:
            point = rng.choice(POINTS)
            env["CRASH_KILL_AT"] = f"{point}:{rng.randint(1, ITEMS_PER_CYCLE)}"
            kill_after = 20.0
        else:
            point = "timer"
            kill_after = rng.uniform(0.15, 0.8)
        queued, code = run_cycle(state, provider, cycle, ITEMS_PER_CYCLE, env, kill_after)
        if point in ("after_send", "ack_before_commit") and code == -signal.SIGKILL:
            kills_after_send += 1
        for ticket, key in queued:
            assert promised.setdefault(key, ticket) == ticket, f"{key} got two tickets"

    final, code = run_cycle(state, provider, CYCLES, 0, {}, 90.0)
    assert code == 0, "the final, unkilled run must drain the outbox"
    assert final == []

    with sqlite3.connect(provider) as con:
        calls = con.execute(
            "SELECT key, ticket, entity, fingerprint, duplicate FROM calls ORDER BY n"
        ).fetchall()
    con.close()
    executed: dict[str, int] = defaultdict(int)
    fingerprints: dict[str, set[str]] = defaultdict(set)
    tickets: dict[str, set[str]] = defaultdict(set)
    order: dict[str, list[str]] = defaultdict(list)
    for key, ticket, entity, fingerprint, duplicate in calls:
        fingerprints[key].add(fingerprint)
        tickets[key].add(ticket)
        if not duplicate:
            executed[key] += 1
            order[entity].append(ticket)

    lost = sorted(set(promised) - set(executed))
    assert lost == [], f"QUEUED but never delivered: {lost[:10]}"
    twice = sorted(k for k, n in executed.items() if n != 1)
    assert twice == [], f"executed more than once: {twice[:10]}"
    assert all(len(v) == 1 for v in fingerprints.values()), "a key was sent with two payloads"
    assert all(len(v) == 1 for v in tickets.values()), "a key was sent under two tickets"
    for entity, seen in order.items():
        assert seen == sorted(seen), f"{entity} delivered out of order"
    for key, ticket in promised.items():
        assert ticket in tickets[key]

    outbox = Outbox(state)
    try:
        assert outbox.depth() == 0
        assert outbox.dead_letters() == []
    finally:
        outbox.close()
    assert len(promised) >= CYCLES, "the harness should have queued items in most cycles"
    duplicates = sum(1 for *_, dup in calls if dup)
    print(f"cycles={CYCLES} queued={len(promised)} calls={len(calls)} replays={duplicates}")
    if kills_after_send:
        assert duplicates, "a kill after send must cause a deduped replay"
