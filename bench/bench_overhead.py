"""Healthy-path cost: over loopback HTTP against raw httpx, and in-process against pybreaker,
circuitbreaker and tenacity.

Variants run interleaved (over HTTP call by call, in-process round by round), so a noisy
neighbour slows every variant alike instead of biasing one.
"""

from __future__ import annotations

import statistics
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
    """Loopback GETs: raw httpx vs ResilientTransport vs pybreaker + tenacity.

    The variants take turns call by call (the order rotating), so a slow moment of this
    shared machine lands on all of them alike; the ratio is of median call times. Each
    call's client CPU time (``time.thread_time``) is measured too: the server's share of
    the noise is not in it, so the CPU each variant adds over raw httpx is the steadier
    figure. The spread is the ratio over each tenth of the run.
    """
    calls, blocks = (800, 4) if quick else (5_000, 10)
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
            for _ in range(100):
                fn()
        names = list(variants)
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        clock, cpu_clock = time.perf_counter, time.thread_time
        for i in range(calls):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                fn = variants[name]
                c0 = cpu_clock()
                t0 = clock()
                fn()
                t1 = clock()
                cpu[name].append(cpu_clock() - c0)
                wall[name].append(t1 - t0)
        for c in (raw, ours, peer_client):
            c.close()
    base = "raw httpx"
    size = calls // blocks
    spread = {
        name: [
            median(wall[name][b * size : (b + 1) * size])
            / median(wall[base][b * size : (b + 1) * size])
            for b in range(blocks)
        ]
        for name in names
    }
    med = {name: median(wall[name]) for name in names}
    ratio = {name: med[name] / med[base] for name in names}
    cpu_us = {name: statistics.fmean(cpu[name]) * 1e6 for name in names}
    rows = [
        (
            name,
            med[name] * 1e6,
            ratio[name],
            min(spread[name]),
            max(spread[name]),
            cpu_us[name],
            cpu_us[name] - cpu_us[base],
        )
        for name in names
    ]
    print(
        table(
            f"Healthy path over loopback HTTP ({calls} GETs each, interleaved call by call)",
            (
                "variant",
                "us/call (median)",
                "x raw",
                f"x raw (min of {blocks} parts)",
                "(max)",
                "client CPU us/call",
                "CPU over raw",
            ),
            rows,
        )
    )
    return {
        "calls": calls,
        "us_per_call": {k: v * 1e6 for k, v in med.items()},
        "ratio_to_raw": ratio,
        "ratio_spread": {k: [min(v), max(v)] for k, v in spread.items()},
        "client_cpu_us": cpu_us,
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
