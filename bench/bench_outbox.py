"""Outbox benchmarks: durable enqueue against the disk's fsync rate, drain against direct
calls to a provider in another process, and a 1,000,000-item run in a child process.

Rows:

- raw ``write + fsync`` of a small file: the ceiling of any store that makes each write
  durable before returning (one fsync per item);
- enqueue items/s with sqlite ``synchronous=FULL`` (each item fsynced before ``enqueue``
  returns, one transaction per item, no batching), measured in blocks interleaved with
  blocks of raw fsyncs so both see the same disk (this VM's disk is shared and noisy), and
  reported as a fraction of that ceiling; the same with 8 threads enqueueing at once
  (callers that arrive during a commit share the next one, each still returning only
  after its own item is fsynced); and with the default (``NORMAL`` in WAL mode);
- the bookkeeping of one delivery: microseconds per ``ack_and_claim`` (one commit per
  item) and per item of ``ack_and_claim_many`` in ``OutboxWorker``'s default batch, and
  the pages each commit writes (WAL frames, counted by a passive checkpoint from another
  connection, with automatic checkpoints off while counting);
- drain items/s through ``OutboxWorker`` against a loopback echo server running in a
  child process (so its event loop does not compete with the client for the GIL), against
  the rate of calling the same server directly with the same number of concurrent calls;
  with the worker's default batch and with ``batch=1`` (one commit per item);
- a child process that only enqueues 1,000,000 items (50,000 with ``--quick``): the rate
  of the first and the last 10% (the last 10% interleaved block by block with the first
  10% of a second, fresh outbox, so both are measured under the same disk conditions),
  its peak RSS (``VmHWM``), and how long ``list`` takes for the last page by offset and
  by ticket (``after=``), and the first.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import diskcache
import httpx

from bench._common import table
from bench._server import ChildServer
from superapp_sdk.offline import Outbox, OutboxItem, OutboxWorker

_BLOCK = 200
# The durable-enqueue target, 4,000 items/s, was set on a disk doing one write+fsync in
# ~90 us (11,100/s): 36 % of that disk's fsync rate. This VM's disk is shared and its
# fsync rate moves between runs (8,400-11,700/s on one day), so the rate is also judged
# against the fsync rate measured in the same blocks.
_FULL_TARGET_VS_FSYNC = 4000 / (1 / 90e-6)
_DEFAULT_BATCH: int = inspect.signature(OutboxWorker).parameters["batch"].default


def _payload(n: int) -> dict[str, object]:
    return {"to": f"user-{n % 5000}", "text": "hello from the outbox", "n": n}


def _key(rng: random.Random) -> str:
    # Idempotency keys are random in real use (UUIDs), which stresses the key index more
    # than sequential keys would.
    return f"{rng.getrandbits(128):032x}"


def _enqueue_range(outbox: Outbox, start: int, stop: int, rng: random.Random) -> float:
    """Seconds to enqueue items ``start`` to ``stop``, one transaction each."""
    began = time.perf_counter()
    for n in range(start, stop):
        outbox.enqueue(
            entity=f"chat:{n % 1000}",
            operation="chat.send",
            payload=_payload(n),
            idempotency_key=_key(rng),
        )
    return time.perf_counter() - began


def _enqueue_block(outbox: Outbox, start: int, rng: random.Random) -> float:
    """Seconds to enqueue ``_BLOCK`` items, one transaction each."""
    return _enqueue_range(outbox, start, start + _BLOCK, rng)


def _fsync_block(fd: int) -> float:
    """Seconds for ``_BLOCK`` rounds of writing 64 bytes and fsyncing the file."""
    began = time.perf_counter()
    for _ in range(_BLOCK):
        os.pwrite(fd, b"x" * 64, 0)
        os.fsync(fd)
    return time.perf_counter() - began


def _deque_block(deque: diskcache.Deque, start: int) -> float:
    """Seconds to ``append`` ``_BLOCK`` payloads to a diskcache ``Deque``."""
    began = time.perf_counter()
    for n in range(start, start + _BLOCK):
        deque.append(_payload(n))
    return time.perf_counter() - began


def _enqueue(root: Path, count: int) -> dict[str, float]:
    """FULL and NORMAL enqueue rates, interleaved block by block with raw fsyncs and with
    ``diskcache.Deque.append`` on the same settings (a queue with no keys, no dedup, no
    per-entity order: the floor of what diskcache costs)."""
    rng = random.Random(1)
    fd = os.open(root / "fsync-probe", os.O_CREAT | os.O_WRONLY, 0o600)
    fsync_s: list[float] = []
    full_s: list[float] = []
    normal_s: list[float] = []
    deque_full_s: list[float] = []
    deque_normal_s: list[float] = []
    deque_full_cache = diskcache.Cache(
        str(root / "deque-full"), eviction_policy="none", sqlite_synchronous=2
    )
    deque_normal_cache = diskcache.Cache(
        str(root / "deque-normal"), eviction_policy="none", sqlite_synchronous=1
    )
    try:
        deque_full = diskcache.Deque.fromcache(deque_full_cache)
        deque_normal = diskcache.Deque.fromcache(deque_normal_cache)
        with (
            Outbox(root / "full", durable=True) as full,
            Outbox(root / "normal", durable=False) as normal,
        ):
            for block in range(count // _BLOCK):
                start = block * _BLOCK
                fsync_s.append(_fsync_block(fd))
                full_s.append(_enqueue_block(full, start, rng))
                deque_full_s.append(_deque_block(deque_full, start))
                normal_s.append(_enqueue_block(normal, start, rng))
                deque_normal_s.append(_deque_block(deque_normal, start))
    finally:
        os.close(fd)
        deque_full_cache.close()
        deque_normal_cache.close()
    ratios = [f / e for f, e in zip(fsync_s, full_s, strict=True)]
    total = len(full_s) * _BLOCK
    return {
        "fsync_per_s": total / sum(fsync_s),
        "full_per_s": total / sum(full_s),
        "full_vs_fsync": sum(fsync_s) / sum(full_s),
        "full_vs_fsync_median_block": statistics.median(ratios),
        "normal_per_s": total / sum(normal_s),
        "deque_full_per_s": total / sum(deque_full_s),
        "deque_normal_per_s": total / sum(deque_normal_s),
    }


def _concurrent_block(outbox: Outbox, start: int, callers: int) -> float:
    """Seconds for ``callers`` threads to enqueue ``_BLOCK`` items between them."""
    per = _BLOCK // callers

    def work(first: int) -> None:
        _enqueue_range(outbox, first, first + per, random.Random(first))

    threads = [threading.Thread(target=work, args=(start + i * per,)) for i in range(callers)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def _enqueue_concurrent(root: Path, count: int, callers: int) -> dict[str, float]:
    """FULL enqueue by ``callers`` threads at once (group commit), interleaved block by
    block with raw fsyncs."""
    fd = os.open(root / "fsync-probe-concurrent", os.O_CREAT | os.O_WRONLY, 0o600)
    fsync_s: list[float] = []
    full_s: list[float] = []
    try:
        with Outbox(root / "full-concurrent", durable=True) as full:
            for block in range(count // _BLOCK):
                fsync_s.append(_fsync_block(fd))
                full_s.append(_concurrent_block(full, block * _BLOCK, callers))
    finally:
        os.close(fd)
    total = len(full_s) * _BLOCK
    return {
        "callers": callers,
        "fsync_per_s": total / sum(fsync_s),
        "full_per_s": total / sum(full_s),
        "full_vs_fsync": sum(fsync_s) / sum(full_s),
    }


class _Senders:
    """One httpx client per thread, all closed at the end."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def send(self, item: OutboxItem) -> None:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(base_url=self._url)
            with self._lock:
                self._clients.append(client)
        response = client.post(
            "/send", json=item.payload, headers={"Idempotency-Key": item.idempotency_key}
        )
        response.raise_for_status()

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _direct(send: Any, items: list[OutboxItem], concurrency: int) -> float:
    """Items/s calling the provider directly from ``concurrency`` threads."""
    feed = iter(items)
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                item = next(feed, None)
            if item is None:
                return
            send(item)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(items) / (time.perf_counter() - began)


def _fill(outbox: Outbox, count: int, rng: random.Random) -> None:
    for n in range(count):
        outbox.enqueue(
            entity=f"chat:{n % 100}",
            operation="chat.send",
            payload=_payload(n),
            idempotency_key=_key(rng),
        )


def _wal_frames(path: Path) -> int:
    """Frames in the WAL of ``path`` not yet checkpointed, from a separate connection."""
    con = sqlite3.connect(path)
    try:
        _busy, frames, _done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        con.close()
    return int(frames)


def _truncate_wal(path: Path) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        con.close()


def _bookkeeping(root: Path, samples: int) -> dict[str, float]:
    """Microseconds per delivered item and WAL pages per commit, one item per commit and
    the worker's default batch per commit."""
    rng = random.Random(4)
    per_item: dict[str, list[float]] = {"one_us": [], "batch_us": []}
    pages: dict[str, list[float]] = {"one_pages": [], "batch_pages": []}
    batch = _DEFAULT_BATCH
    commits = 800 // batch
    with Outbox(root / "bookkeeping", durable=False) as outbox:
        _fill(outbox, 20_000 + samples * 200 * 9, rng)
        # No automatic checkpoint while counting: one would restart the WAL midway and
        # the frame count would cover only the commits after it.
        outbox._db._writer_connection().execute("PRAGMA wal_autocheckpoint=0")
        held = outbox.claim_many("bench", lease_seconds=600, limit=batch)
        for _ in range(samples):
            _truncate_wal(outbox.path)
            began = time.perf_counter()
            for _ in range(100):
                item = held.pop()
                assert item.lease_token is not None
                _, following = outbox.ack_and_claim(
                    item.id, item.lease_token, "bench", lease_seconds=600
                )
                assert following is not None
                held.append(following)
            per_item["one_us"].append((time.perf_counter() - began) / 100 * 1e6)
            pages["one_pages"].append(_wal_frames(outbox.path) / 100)
            _truncate_wal(outbox.path)
            began = time.perf_counter()
            for _ in range(commits):
                _, held = outbox.ack_and_claim_many(
                    [(i.id, i.lease_token or "") for i in held],
                    "bench",
                    lease_seconds=600,
                    limit=batch,
                )
                assert len(held) == batch
            per_item["batch_us"].append((time.perf_counter() - began) / (commits * batch) * 1e6)
            pages["batch_pages"].append(_wal_frames(outbox.path) / commits)
    return {k: statistics.median(v) for k, v in (per_item | pages).items()}


def _drained(root: Path, send: Any, items: list[OutboxItem], concurrency: int, batch: int) -> float:
    """Items/s draining ``items`` (queued beforehand) with ``concurrency`` sends in flight."""
    path = root / f"drain-{concurrency}-{time.perf_counter_ns()}"
    with Outbox(path, durable=False) as outbox:
        for n, item in enumerate(items):
            outbox.enqueue(
                entity=f"chat:{n % 100}",
                operation=item.operation,
                payload=item.payload,
                idempotency_key=f"{item.idempotency_key}-{path.name}",
            )
        worker = OutboxWorker(outbox, send, poll_floor=0.05, concurrency=concurrency, batch=batch)
        began = time.perf_counter()
        worker.start()
        drained = worker.drain(timeout=600)
        elapsed = time.perf_counter() - began
        worker.stop()
    shutil.rmtree(path)
    assert drained, "the drain benchmark did not finish"
    return len(items) / elapsed


def _drain(root: Path, count: int, concurrency: int, rounds: int, batch: int) -> dict[str, float]:
    """Drain vs direct, alternating (direct, drain, direct) ``rounds`` times."""
    rng = random.Random(2)
    items = [
        OutboxItem(
            id=str(n),
            entity="e",
            operation="chat.send",
            payload=_payload(n),
            idempotency_key=_key(rng),
            fingerprint="",
            created_at=0.0,
            queued_at=0.0,
        )
        for n in range(count)
    ]
    with ChildServer() as server:
        senders = _Senders(server.url)
        try:
            _direct(senders.send, items[:200], concurrency)  # warm the clients and server
            ratios, directs, drains = [], [], []
            for _ in range(rounds):
                before = _direct(senders.send, items, concurrency)
                drain = _drained(root, senders.send, items, concurrency, batch)
                after = _direct(senders.send, items, concurrency)
                directs.append((before + after) / 2)
                drains.append(drain)
                ratios.append(drain / directs[-1])
        finally:
            senders.close()
    return {
        "direct": statistics.median(directs),
        "drain": statistics.median(drains),
        "ratio": statistics.median(ratios),
    } | {f"ratio_round_{n}": r for n, r in enumerate(ratios)}


def _long_run_child(count: int, root: Path) -> None:
    """In a child process: enqueue ``count`` items, print the figures as JSON.

    The first 90% go into one outbox in one go. The last 10% are then enqueued in blocks
    of 1,000, each block followed by one into a second, fresh outbox: the fresh one sees
    the first 10% of a queue's life at the same moments (same disk, same neighbours) as
    the deep one sees its last 10%. Measured one after the other, two minutes apart, the
    ratio of the first and last 10% swung between 66% and 96% from run to run on this
    shared VM; interleaved, each pair of blocks is compared under the same conditions.
    """
    rng = random.Random(3)
    tenth = count // 10
    block = max(1, min(1_000, tenth // 20))
    with (
        Outbox(root / "long", durable=False) as deep,
        Outbox(root / "fresh", durable=False) as fresh,
    ):
        began = time.perf_counter()
        first_tenth = _enqueue_range(deep, 0, tenth, rng)
        _enqueue_range(deep, tenth, count - tenth, rng)
        fill = time.perf_counter() - began
        deep_s: list[float] = []
        fresh_s: list[float] = []
        for start in range(count - tenth, count, block):
            stop = min(start + block, count)
            deep_s.append(_enqueue_range(deep, start, stop, rng))
            fresh_s.append(
                _enqueue_range(fresh, start - (count - tenth), stop - (count - tenth), rng)
            )
        total = fill + sum(deep_s)
        t0 = time.perf_counter()
        last = deep.list(offset=count - 100, limit=100)
        t1 = time.perf_counter()
        first = deep.list(offset=0, limit=100)
        t2 = time.perf_counter()
        before_last = deep.list(offset=count - 101, limit=1)[0].id
        t3 = time.perf_counter()
        last_by_ticket = deep.list(limit=100, after=before_last)
        t4 = time.perf_counter()
        assert len(last) == 100
        assert len(first) == 100
        assert last[-1].payload == _payload(count - 1)
        assert [i.id for i in last_by_ticket] == [i.id for i in last]
        assert deep.depth() == count
    ratios = [f / d for f, d in zip(fresh_s, deep_s, strict=True)]
    figures = {
        "items": count,
        "rate": count / total,
        "first_10pct": tenth / sum(fresh_s),
        "last_10pct": tenth / sum(deep_s),
        "median_block_ratio": statistics.median(ratios),
        "first_10pct_sequential": tenth / first_tenth,
        "list_last_page_ms": (t1 - t0) * 1000,
        "list_first_page_ms": (t2 - t1) * 1000,
        "list_last_page_after_ms": (t4 - t3) * 1000,
    }
    print(json.dumps({**figures, "peak_rss_mib": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """This process's peak RSS. Linux's ``ru_maxrss`` keeps the parent's peak across fork
    and exec (so a child of the benchmark would report the benchmark's uvicorn and httpx),
    while ``VmHWM`` belongs to the current address space only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _long_run(root: Path, count: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_outbox", "--long-run", str(count), str(root)],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["last_vs_first"] = result["last_10pct"] / result["first_10pct"]
    result["last_vs_first_sequential"] = result["last_10pct"] / result["first_10pct_sequential"]
    return result


def run(quick: bool) -> dict[str, Any]:
    """Run the outbox benchmarks; print the rows and return them."""
    root = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    try:
        enq = _enqueue(root, 2_000 if quick else 10_000)
        group = _enqueue_concurrent(root, 2_000 if quick else 10_000, 8)
        books = _bookkeeping(root, 3 if quick else 9)
        drains = {
            (c, b): _drain(root, 500 if quick else 2_000, c, 1 if quick else 3, b)
            for c in (1, 4)
            for b in (_DEFAULT_BATCH, 1)
        }
        long = _long_run(root, 50_000 if quick else 1_000_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    full, normal = enq["full_per_s"], enq["normal_per_s"]
    rows = [
        ("raw write+fsync (ceiling)", f"{enq['fsync_per_s']:.0f}/s", "", ""),
        (
            "enqueue, synchronous=FULL",
            f"{full:.0f} items/s = {enq['full_vs_fsync']:.0%} of fsync",
            ">= 4000/s",
            full >= 4000,
        ),
        (
            "  the same against this run's fsync",
            f"{enq['full_vs_fsync']:.0%} of fsync (median block"
            f" {enq['full_vs_fsync_median_block']:.0%})",
            f">= {_FULL_TARGET_VS_FSYNC:.0%} (4000/s at 90 us)",
            enq["full_vs_fsync"] >= _FULL_TARGET_VS_FSYNC,
        ),
        (
            "  diskcache Deque.append, FULL (no keys)",
            f"{enq['deque_full_per_s']:.0f} items/s",
            "",
            "",
        ),
        (
            f"enqueue, FULL, {group['callers']:.0f} callers at once",
            f"{group['full_per_s']:.0f} items/s = {group['full_vs_fsync']:.0%} of fsync",
            ">= 4000/s",
            group["full_per_s"] >= 4000,
        ),
        ("enqueue, default (NORMAL)", f"{normal:.0f} items/s", ">= 7000/s", normal >= 7000),
        (
            "  diskcache Deque.append, NORMAL (no keys)",
            f"{enq['deque_normal_per_s']:.0f} items/s",
            "",
            "",
        ),
    ]
    rows += [
        (
            "ack+claim, 1 per commit",
            f"{books['one_us']:.0f} us, {books['one_pages']:.1f} pages/commit",
            "",
            "",
        ),
        (
            f"ack+claim, {_DEFAULT_BATCH} per commit",
            f"{books['batch_us']:.0f} us/item, {books['batch_pages']:.1f} pages/commit",
            "",
            "",
        ),
    ]
    for (concurrency, batch), d in drains.items():
        rows.append(
            (
                f"drain vs direct, {concurrency} in flight, batch {batch}",
                f"{d['drain']:.0f}/s vs {d['direct']:.0f}/s = {d['ratio']:.0%}",
                ">= 90%" if batch == _DEFAULT_BATCH else "",
                d["ratio"] >= 0.9 if batch == _DEFAULT_BATCH else "",
            )
        )
    rows += [
        (
            f"enqueue flatness, {long['items']:,.0f} items",
            f"{long['first_10pct']:.0f}/s -> {long['last_10pct']:.0f}/s "
            f"({long['last_vs_first']:.0%}, median block {long['median_block_ratio']:.0%};"
            f" not interleaved {long['last_vs_first_sequential']:.0%})",
            "last within 20% of first",
            long["last_vs_first"] >= 0.8,
        ),
        (
            "peak RSS, outbox-only child",
            f"{long['peak_rss_mib']:.0f} MiB",
            "< 100 MB",
            long["peak_rss_mib"] * 2**20 < 100e6,
        ),
        (
            "list(), last page / first page",
            f"{long['list_last_page_ms']:.1f} ms / {long['list_first_page_ms']:.1f} ms",
            "paginates",
            True,
        ),
        (
            "list(after=ticket), last page",
            f"{long['list_last_page_after_ms']:.1f} ms",
            "",
            "",
        ),
    ]
    print(table("outbox", ("measure", "result", "target", "met"), rows))
    return {
        "enqueue": enq,
        "enqueue_concurrent": group,
        "bookkeeping": books,
        "drain": {f"{c}-batch{b}": d for (c, b), d in drains.items()},
        "long_run": long,
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--long-run":
        _long_run_child(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        run(quick=True)
