"""Healthy-path cost: over loopback HTTP against raw httpx, and in-process against pybreaker,
circuitbreaker and tenacity.

Variants run interleaved, round after round, and the report is the median over rounds of
each round's ratio to raw httpx, so a noisy neighbour slows every variant of a round
alike instead of biasing one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import circuitbreaker
import httpx
import pybreaker
import tenacity

from bench._common import median, table
from bench._server import ChildServer
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.budget import RetryBudget
from superapp_sdk.resilience import (
    CircuitBreaker,
    Deadline,
    Pipeline,
    ResilientTransport,
    Retry,
    SharedBudget,
    Timeout,
)


def full_pipeline(name: str) -> Pipeline:
    """Breaker + retry with budget + deadline + adaptive per-try timeout."""
    return Pipeline(
        Deadline(5.0),
        CircuitBreaker(BreakerOptions(minimum_calls=10)),
        Retry(3, budget=SharedBudget(RetryBudget())),
        Timeout(1.0),
        name=name,
    )


def _pybreaker_tenacity(call: Callable[[], Any]) -> Callable[[], Any]:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=2),
        retry=tenacity.retry_if_exception_type(httpx.TransportError),
        reraise=True,
    )
    return lambda: retrying(breaker.call, call)


def http_overhead(quick: bool) -> dict[str, Any]:
    """Loopback GETs: raw httpx vs ResilientTransport vs pybreaker + tenacity."""
    rounds, per_round = (7, 100) if quick else (21, 300)
    with ChildServer() as server:
        raw = httpx.Client(base_url=server.url)
        ours = httpx.Client(
            base_url=server.url,
            transport=ResilientTransport(httpx.HTTPTransport(), pipeline=full_pipeline("bench")),
        )
        peer_client = httpx.Client(base_url=server.url)
        peer = _pybreaker_tenacity(lambda: peer_client.get("/x"))
        variants: dict[str, Callable[[], Any]] = {
            "raw httpx": lambda: raw.get("/x"),
            "ResilientTransport": lambda: ours.get("/x"),
            "pybreaker + tenacity": peer,
        }
        for fn in variants.values():  # warm connections and caches
            for _ in range(50):
                fn()
        per_call: dict[str, list[float]] = {k: [] for k in variants}
        ratios: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            times: dict[str, float] = {}
            for name in order:
                fn = variants[name]
                t0 = time.perf_counter()
                for _ in range(per_round):
                    fn()
                times[name] = (time.perf_counter() - t0) / per_round
            for name in names:
                per_call[name].append(times[name] * 1e6)
                ratios[name].append(times[name] / times["raw httpx"])
        for c in (raw, ours, peer_client):
            c.close()
    rows = [
        (name, median(per_call[name]), median(ratios[name]), min(ratios[name]), max(ratios[name]))
        for name in names
    ]
    print(
        table(
            f"Healthy path over loopback HTTP ({rounds} rounds x {per_round} GETs, interleaved)",
            ("variant", "us/call (median)", "x raw (median)", "x raw (min)", "x raw (max)"),
            rows,
        )
    )
    return {
        "rounds": rounds,
        "per_round": per_round,
        "us_per_call": {k: median(v) for k, v in per_call.items()},
        "ratio_to_raw": {k: median(v) for k, v in ratios.items()},
    }


def inprocess_cost(quick: bool) -> dict[str, Any]:
    """Success-path cost of the protection alone, around a function that returns at once."""
    rounds, n = (5, 5_000) if quick else (9, 20_000)

    def target() -> int:
        return 1

    ours = Pipeline(
        Deadline(5.0),
        CircuitBreaker(BreakerOptions(minimum_calls=10)),
        Retry(3, budget=SharedBudget(RetryBudget())),
        name="inproc",
    )
    ours_timeout = full_pipeline("inproc-timeout")
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    cb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)
    cb_target = cb(target)
    ten = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), reraise=True)
    stack = _pybreaker_tenacity(target)
    variants: dict[str, Callable[[], Any]] = {
        "bare call": target,
        "superapp: breaker+budget+deadline+retry": lambda: ours.call(lambda _c: 1),
        "superapp: + adaptive timeout": lambda: ours_timeout.call(lambda _c: 1),
        "pybreaker": lambda: pyb.call(target),
        "circuitbreaker": cb_target,
        "tenacity": lambda: ten(target),
        "pybreaker + tenacity": stack,
    }
    results: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            results[name].append((time.perf_counter() - t0) / n * 1e6)
    bare = median(results["bare call"])
    rows = [(k, median(v), median(v) - bare) for k, v in results.items()]
    print(
        table(
            f"In-process success-path cost ({rounds} rounds x {n} calls)",
            ("variant", "us/call (median)", "us over bare call"),
            rows,
        )
    )
    return {"us_per_call": {k: median(v) for k, v in results.items()}}


def concurrency(quick: bool) -> dict[str, Any]:
    """8 threads x 10 calls of 10 ms each through one breaker: our breaker holds its lock
    only around decisions; pybreaker holds it for the whole call."""
    import threading

    threads, calls, work = 8, (5 if quick else 10), 0.010

    def target() -> None:
        time.sleep(work)

    ours = Pipeline(CircuitBreaker(BreakerOptions(minimum_calls=10)), name="concurrent")
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    variants: dict[str, Callable[[], Any]] = {
        "no breaker": target,
        "superapp CircuitBreaker": lambda: ours.call(lambda _c: target()),
        "pybreaker": lambda: pyb.call(target),
    }
    results: dict[str, float] = {}
    for name, fn in variants.items():
        barrier = threading.Barrier(threads)

        def worker(fn: Callable[[], Any] = fn, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            for _ in range(calls):
                fn()

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        results[name] = time.perf_counter() - t0
    base = results["no breaker"]
    print(
        table(
            f"Concurrency: {threads} threads x {calls} calls of {work * 1e3:g} ms "
            "through one breaker",
            ("variant", "wall s", "x no breaker"),
            [(k, v, v / base) for k, v in results.items()],
        )
    )
    return {"wall_s": results, "ratio": {k: v / base for k, v in results.items()}}
