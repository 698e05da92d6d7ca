"""The whole Kakao domain goes dark at once (every service accepts and hangs).

Traffic on all four capabilities runs through ``SuperApp`` against the simulated Kakao
data center on loopback, with in-process alternates. After a warm-up, every Kakao service
is switched to HANG and the same traffic continues. Counted: user calls that waited a
timeout on Kakao (and how many of those waited the full configured timeout), and the
latency of idempotent reads (hedged estimates).

Run twice: with failure-domain detection (one timeout makes the domain suspect, and every
capability fails over at once), and with it turned off so that each service's breaker
must learn the outage by itself, which is what per-service breakers pay.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import median, pct, table
from superapp_sdk import OfflinePolicy, SuperApp, Timeouts
from superapp_sdk._errors import SuperAppError
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.domains import DomainOptions
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay
from superapp_sdk.testing.kakao import Burn, DataCenterServer, KakaoDataCenter

TIMEOUT = 1.0
USER = "user-minji"
A, B = Place(37.4979, 127.0276), Place(37.5663, 126.9779)


def _scenario(*, domains: bool, warm: int, rounds: int) -> dict[str, Any]:
    dc = KakaoDataCenter(hang_seconds=5.0)
    server = DataCenterServer(dc)
    server.start()
    kakao = server.adapters()
    echo_pay, echo_login = EchoPay(), EchoLogin(redirect_uri="https://app.example/cb")
    options = (
        DomainOptions()
        if domains
        else DomainOptions(suspect_seconds=0, failures_per_capability=10**6, min_capabilities=5)
    )
    with tempfile.TemporaryDirectory(prefix="superapp-bench-") as tmp:
        app = SuperApp(
            identity=[kakao.login, echo_login],
            chat=[kakao.talk, EchoChat()],
            payment=[kakao.pay, echo_pay],
            mobility=[kakao.mobility, EchoMobility()],
            state_dir=Path(tmp),
            timeouts=Timeouts(read=TIMEOUT, write=TIMEOUT, payment=TIMEOUT, floor=0.01),
            breaker=BreakerOptions(minimum_calls=5, window_size=20, open_seconds=30),
            domains=options,
        )
        try:
            d = app.directory
            d.put(USER, provider="kakao.talk", address=dc.credentials.friend_uuids[0])
            d.put(USER, provider="echo.chat", address="minji@echo")
            d.put(USER, provider="kakao.pay", billing_key=dc.credentials.billing_key)
            d.put(USER, provider="echo.pay", billing_key=echo_pay.issue_billing_key(USER))
            session = app.identity.complete_login(
                provider="kakao.login", code=dc.issue_code(nonce="b"), nonce="b"
            ).value.session_id
            n = 0

            def round_(record: bool) -> None:
                nonlocal n
                n += 1
                calls = [
                    ("chat", lambda: app.chat.send(to=USER, text=f"m{n}", conversation="c")),
                    (
                        "payment",
                        lambda: app.payment.charge(
                            order_id=f"o{n}-{domains}",
                            amount=1000,
                            user_id=USER,
                            offline=OfflinePolicy.QUEUE,
                        ),
                    ),
                    ("read", lambda: app.mobility.estimate(origin=A, destination=B)),
                    ("identity", lambda: app.identity.refresh(session)),
                ]
                for kind, fn in calls:
                    t0 = time.perf_counter()
                    try:
                        out = fn()
                        attempts = out.attempts
                    except SuperAppError as exc:
                        attempts = getattr(exc, "attempts", ())
                    elapsed = time.perf_counter() - t0
                    if not record:
                        continue
                    stats["calls"] += 1
                    if kind == "read":
                        reads.append(elapsed)
                    waited = [
                        a
                        for a in attempts
                        if a.provider.startswith("kakao")
                        and not a.skipped
                        and a.error is not None
                        and "Timeout" in a.error
                    ]
                    if waited:
                        stats["calls_that_waited_a_timeout"] += 1
                        per_capability[kind] = per_capability.get(kind, 0) + 1
                    if any(a.seconds >= TIMEOUT * 0.95 for a in waited):
                        stats["calls_that_waited_the_full_timeout"] += 1

            stats = {
                "calls": 0,
                "calls_that_waited_a_timeout": 0,
                "calls_that_waited_the_full_timeout": 0,
            }
            per_capability: dict[str, int] = {}
            reads: list[float] = []
            for _ in range(warm):
                round_(False)
            server.burn(Burn.HANG)
            t0 = time.perf_counter()
            for _ in range(rounds):
                round_(True)
            total = time.perf_counter() - t0
        finally:
            app.close()
            server.stop()
    return {
        "variant": "failure domains" if domains else "per-service breakers only",
        **stats,
        "timeouts_by_capability": per_capability,
        "read_p50_ms": median(reads) * 1e3,
        "read_p99_ms": pct(reads, 0.99) * 1e3,
        "total_s": total,
    }


def run(quick: bool) -> dict[str, Any]:
    """Both variants; prints a table."""
    warm, rounds = (30, 20) if quick else (60, 50)
    results = [
        _scenario(domains=True, warm=warm, rounds=rounds),
        _scenario(domains=False, warm=warm, rounds=rounds),
    ]
    print(
        table(
            f"The whole kakao domain dark ({rounds} rounds x 4 capabilities after {warm} warm "
            f"rounds, {TIMEOUT:g} s timeout)",
            (
                "variant",
                "calls",
                "waited a timeout",
                "waited full timeout",
                "read p50 ms",
                "read p99 ms",
                "total s",
            ),
            [
                (
                    r["variant"],
                    r["calls"],
                    r["calls_that_waited_a_timeout"],
                    r["calls_that_waited_the_full_timeout"],
                    r["read_p50_ms"],
                    r["read_p99_ms"],
                    r["total_s"],
                )
                for r in results
            ],
        )
    )
    for r in results:
        print(f"  {r['variant']}: timeouts by capability {r['timeouts_by_capability']}")
    return {"variants": results}
