"""A primary that goes dark (accepts connections, never answers) with a healthy fallback.

Three clients make the same 200 sequential calls after the primary is blackholed, each
configured with a 1 s timeout:

* pybreaker (fail_max=5) + fallback on error: the classic stack;
* superapp's router without hedging: adaptive per-try timeout (3x the primary's recent
  p99), a breaker with minimum_calls=5, background half-open probes;
* superapp's router with hedging: a backup call to the fallback after the primary's p95.

Each first makes healthy calls so the primary's latency is known, then the primary's
proxy is switched to HANG. The server and the proxy run in a child process (see
``bench/_server.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import pybreaker

from bench._common import BenchProvider, median, pct, table
from bench._server import ChildServer
from superapp_sdk.capabilities._common import Capability
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.budget import RetryBudget
from superapp_sdk.core.routing import OperationKind
from superapp_sdk.resilience import (
    CircuitBreaker,
    Deadline,
    Pipeline,
    Retry,
    Route,
    Router,
    SharedBudget,
    SharedDetector,
    Timeout,
    retryable_unless_timeout,
)
from superapp_sdk.testing import Burn

TIMEOUT = 1.0
CALLS = 200
WARM = 300
OP = "bench.read"
# The adaptive timeout's floor, for loopback (the SDK's default, 50 ms, is for providers
# across the internet). Loopback answers in ~1 ms at p99 here, so 3x p99 is ~3 ms and a
# floor above that would make the wait for a dark primary longer than 3x p99. Measured
# with this pipeline and a 1 ms floor: 0 of 10,000 healthy calls cut short; 3 of 5,000
# (0.06 %) with a CPU-bound process competing for the 2 cores, each served by the
# fallback, while the learned timeout followed the contention up to 22 ms.
FLOOR = 0.001


def _pipeline(name: str, budget: SharedBudget) -> Pipeline:
    return Pipeline(
        Deadline(5.0),
        CircuitBreaker(
            BreakerOptions(minimum_calls=5, window_size=20, open_seconds=5.0),
            background_probe=True,
        ),
        Retry(2, budget=budget, retry_on=retryable_unless_timeout),
        Timeout(TIMEOUT, multiplier=3.0, floor=FLOOR, min_samples=20),
        name=name,
    )


def _summary(name: str, latencies: list[float], waits: list[float], full: int) -> dict[str, Any]:
    return {
        "variant": name,
        "calls": len(latencies),
        "full_timeout_waits": full,
        "primary_waits": len(waits),
        "max_primary_wait_ms": max(waits) * 1e3 if waits else 0.0,
        "p50_ms": median(latencies) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "total_s": sum(latencies),
    }


def run_pybreaker() -> dict[str, Any]:
    """pybreaker(fail_max=5) around the primary, fallback on any error."""
    with ChildServer() as server:
        primary = httpx.Client(base_url=server.proxy_url, timeout=TIMEOUT)
        fallback = httpx.Client(base_url=server.url, timeout=TIMEOUT)
        breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

        def call() -> Any:
            try:
                return breaker.call(primary.get, "/x")
            except Exception:  # noqa: BLE001 - any failure falls back, as such stacks do
                return fallback.get("/x")

        for _ in range(WARM):
            call()
        server.set(Burn.HANG)
        latencies = []
        for _ in range(CALLS):
            t0 = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - t0)
        primary.close()
        fallback.close()
    full = sum(1 for x in latencies if x >= TIMEOUT * 0.95)
    waits = [x for x in latencies if x >= TIMEOUT * 0.95]
    return _summary("pybreaker(5) + fallback", latencies, waits, full)


def run_router(*, hedge: bool) -> dict[str, Any]:
    """superapp's router over the blackholed primary and the healthy fallback."""
    with ChildServer() as server:
        clients = {
            "primary": httpx.Client(base_url=server.proxy_url),
            "fallback": httpx.Client(base_url=server.url),
        }
        budget = SharedBudget(RetryBudget())
        detector = SharedDetector()
        routes = [
            Route(
                BenchProvider(name, Capability.MOBILITY, f"dc-{name}", frozenset({OP})),
                _pipeline(name, budget),
            )
            for name in ("primary", "fallback")
        ]
        router: Router[BenchProvider] = Router("mobility", routes, detector=detector)

        def make(route: Route[Any]) -> Callable[[Any], Any]:
            client = clients[route.name]
            return lambda ctx: client.get("/x", timeout=ctx.timeout)

        for _ in range(WARM):
            router.call(OP, OperationKind.READ, make, hedge=hedge)
        healthy_p99 = routes[0].pipeline.latency.percentile(0.99) or 0.0
        adaptive = routes[0].pipeline.find(Timeout)
        assert adaptive is not None
        timeout_used = adaptive.current(routes[0].pipeline.latency)
        server.set(Burn.HANG)
        latencies: list[float] = []
        waits: list[float] = []
        served_by: dict[str, int] = {}
        paid_probe = 0
        breaker_opened = False
        for _ in range(CALLS):
            t0 = time.perf_counter()
            routed = router.call(OP, OperationKind.READ, make, hedge=hedge)
            latencies.append(time.perf_counter() - t0)
            served_by[routed.provider] = served_by.get(routed.provider, 0) + 1
            for a in routed.attempts:
                if a.provider != "primary":
                    continue
                if a.skipped:
                    breaker_opened = True
                elif a.error is not None:
                    waits.append(a.seconds)
                    if breaker_opened:
                        paid_probe += 1
        # What httpx alone waits with the same timeout against the dark primary: a read
        # timeout fires, the connection is torn down, the error climbs the stack. At
        # loopback scale (a p99 of ~1 ms) that overshoot is itself about one p99.
        alone: list[float] = []
        with httpx.Client(base_url=server.proxy_url) as bare:
            for _ in range(10):
                t0 = time.perf_counter()
                with contextlib.suppress(httpx.TimeoutException):
                    bare.get("/x", timeout=timeout_used)
                alone.append(time.perf_counter() - t0)
        for c in clients.values():
            c.close()
    overshoot = max(0.0, median(alone) - timeout_used)
    name = "superapp router + hedging" if hedge else "superapp router, no hedging"
    full = sum(1 for w in waits if w >= TIMEOUT * 0.95)
    result = _summary(name, latencies, waits, full)
    result.update(
        {
            "healthy_p99_ms": healthy_p99 * 1e3,
            "adaptive_timeout_ms": timeout_used * 1e3,
            "httpx_alone_wait_ms": median(alone) * 1e3,
            # 10 % slack: a timer fires a little after its deadline, and the thread that
            # sees it must then be scheduled.
            "waits_over_3x_healthy_p99": sum(1 for w in waits if w > 3 * healthy_p99 * 1.1),
            "waits_over_3x_healthy_p99_plus_httpx_overshoot": sum(
                1 for w in waits if w > (3 * healthy_p99 + overshoot) * 1.1
            ),
            "user_calls_that_paid_a_probe": paid_probe,
            "served_by": served_by,
        }
    )
    return result


def blackhole(quick: bool) -> dict[str, Any]:
    """Run the three variants against one healthy server."""
    results = [run_pybreaker(), run_router(hedge=False), run_router(hedge=True)]
    rows = [
        (
            r["variant"],
            r["full_timeout_waits"],
            r["primary_waits"],
            r["max_primary_wait_ms"],
            r["p50_ms"],
            r["p99_ms"],
            r["total_s"],
        )
        for r in results
    ]
    print(
        table(
            f"Blackholed primary, healthy fallback "
            f"({CALLS} sequential calls, {TIMEOUT:g} s timeout)",
            (
                "variant",
                "full-timeout waits",
                "primary waits",
                "max wait ms",
                "p50 ms",
                "p99 ms",
                "total s",
            ),
            rows,
        )
    )
    for r in results[1:]:
        print(
            f"  {r['variant']}: healthy p99 {r['healthy_p99_ms']:.2f} ms, adaptive timeout "
            f"{r['adaptive_timeout_ms']:.2f} ms (httpx alone with it waits "
            f"{r['httpx_alone_wait_ms']:.2f} ms), waits over 3x healthy p99: "
            f"{r['waits_over_3x_healthy_p99']} (over it plus httpx's own overshoot: "
            f"{r['waits_over_3x_healthy_p99_plus_httpx_overshoot']}), user calls that paid a "
            f"half-open probe: {r['user_calls_that_paid_a_probe']}, served by {r['served_by']}"
        )
    return {"variants": results}
