"""Outbox benchmarks: durable enqueue rate, drain rate against a local provider, flatness.

Rows:

- enqueue items/s with sqlite ``synchronous=FULL`` (fsync per commit) and with the
  default (``NORMAL`` in WAL mode), one item per transaction, no batching;
- drain items/s through ``OutboxWorker`` (claim, send, ack: two commits per item) against
  a provider on loopback HTTP (uvicorn in this process, httpx client), against the rate of
  calling that provider directly, as a ratio;
- enqueue flatness: the rate of the first and last 10% of a long run (1,000,000 items;
  50,000 with ``--quick``), and the process RSS at the end.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench._common import table
from superapp_sdk.offline import Outbox, OutboxItem, OutboxWorker
from superapp_sdk.testing._servers import UvicornServer, echo_app


def _payload(n: int) -> dict[str, object]:
    return {"to": f"user-{n % 5000}", "text": "hello from the outbox", "n": n}


def _keys(count: int, seed: int) -> list[str]:
    # Idempotency keys are random in real use (UUIDs), which stresses the key index more
    # than sequential keys would.
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def _enqueue_rate(root: Path, durable: bool, count: int) -> float:
    path = root / f"enqueue-{durable}"
    keys = _keys(count, 1)
    with Outbox(path, durable=durable) as outbox:
        start = time.perf_counter()
        for n, key in enumerate(keys):
            outbox.enqueue(
                entity=f"chat:{n % 1000}",
                operation="chat.send",
                payload=_payload(n),
                idempotency_key=key,
            )
        elapsed = time.perf_counter() - start
    shutil.rmtree(path)
    return count / elapsed


def _drain(root: Path, count: int, concurrency: int) -> dict[str, float]:
    with UvicornServer(echo_app) as server, httpx.Client(base_url=server.url) as client:

        def send(item: OutboxItem) -> None:
            response = client.post(
                "/send", json=item.payload, headers={"Idempotency-Key": item.idempotency_key}
            )
            response.raise_for_status()

        items = [
            OutboxItem(
                id=str(n),
                entity="e",
                operation="chat.send",
                payload=_payload(n),
                idempotency_key=key,
                fingerprint="",
                created_at=0.0,
                queued_at=0.0,
            )
            for n, key in enumerate(_keys(count, 2))
        ]
        for item in items[:100]:  # warm the connection pool and the server
            send(item)
        start = time.perf_counter()
        for item in items:
            send(item)
        direct = count / (time.perf_counter() - start)

        path = root / f"drain-{concurrency}"
        with Outbox(path, durable=False) as outbox:
            for n, item in enumerate(items):
                outbox.enqueue(
                    entity=f"chat:{n % 100}",
                    operation=item.operation,
                    payload=item.payload,
                    idempotency_key=item.idempotency_key + "-q",
                )
            worker = OutboxWorker(outbox, send, poll_floor=0.05, concurrency=concurrency)
            start = time.perf_counter()
            worker.start()
            drained = worker.drain(timeout=600)
            elapsed = time.perf_counter() - start
            worker.stop()
        shutil.rmtree(path)
        assert drained, "the drain benchmark did not finish"
        rate = count / elapsed
        return {"direct": direct, "drain": rate, "ratio": rate / direct}


def _flatness(root: Path, count: int) -> dict[str, float]:
    path = root / "flat"
    tenth = count // 10
    keys = _keys(count, 3)
    marks: list[float] = []
    with Outbox(path, durable=False) as outbox:
        start = time.perf_counter()
        for n, key in enumerate(keys):
            if n % tenth == 0:
                marks.append(time.perf_counter())
            outbox.enqueue(
                entity=f"chat:{n % 1000}",
                operation="chat.send",
                payload=_payload(n),
                idempotency_key=key,
            )
        marks.append(time.perf_counter())
        total = time.perf_counter() - start
        page = outbox.list(offset=count - 100, limit=100)
        assert len(page) == 100
    rss = psutil.Process().memory_info().rss / 2**20
    shutil.rmtree(path)
    first = tenth / (marks[1] - marks[0])
    last = tenth / (marks[-1] - marks[-2])
    return {
        "items": count,
        "rate": count / total,
        "first_10pct": first,
        "last_10pct": last,
        "last_vs_first": last / first,
        "rss_mib": rss,
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the outbox benchmarks; print the rows and return them."""
    root = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    try:
        count = 2_000 if quick else 10_000
        full = _enqueue_rate(root, True, count)
        normal = _enqueue_rate(root, False, count)
        drains = {c: _drain(root, 1_000 if quick else 5_000, c) for c in (1, 4)}
        flat = _flatness(root, 50_000 if quick else 1_000_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        ("enqueue, synchronous=FULL", f"{full:.0f} items/s", ">= 4000/s", full >= 4000),
        ("enqueue, default (NORMAL)", f"{normal:.0f} items/s", ">= 7000/s", normal >= 7000),
    ]
    for concurrency, d in drains.items():
        rows.append(
            (
                f"drain, {concurrency} sender(s), vs direct",
                f"{d['drain']:.0f}/s vs {d['direct']:.0f}/s = {d['ratio']:.0%}",
                ">= 90%",
                d["ratio"] >= 0.9,
            )
        )
    rows += [
        (
            f"enqueue flatness, {flat['items']:,} items",
            f"{flat['first_10pct']:.0f}/s -> {flat['last_10pct']:.0f}/s "
            f"({flat['last_vs_first']:.0%})",
            "last within 20% of first",
            flat["last_vs_first"] >= 0.8,
        ),
        ("RSS after the long run", f"{flat['rss_mib']:.0f} MiB", "< 100 MB", flat["rss_mib"] < 95),
    ]
    print(table("outbox", ("measure", "result", "target", "met"), rows))
    return {
        "enqueue_full_per_s": full,
        "enqueue_normal_per_s": normal,
        "drain": {str(c): d for c, d in drains.items()},
        "flatness": flat,
    }


if __name__ == "__main__":
    run(quick=True)
