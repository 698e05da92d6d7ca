"""Peak RSS growth while concurrent calls are answered with a gzip bomb.

The server answers every call with 60 MiB of zeros gzip-compressed (about 61 KB on the
wire, ``content-encoding: gzip``). Twenty calls run at once on one ``httpx.AsyncClient``,
in three variants:

* ``arun_call``: the SDK's flow driver, which decodes through ``BodyDecoder``;
* ``ResilientTransport``: a plain ``client.get`` behind ``AsyncResilientTransport``,
  which checks the body through the same decoder before handing it back raw;
* ``decoded, then capped``: the driver as it was, counting the bytes ``aiter_bytes``
  yields (httpx inflates each wire chunk whole before the count sees it).

Growth is the process's peak RSS during the burst (``VmHWM``, reset before each variant
through ``/proc/self/clear_refs``) minus its RSS just before. The server runs in this
process: it serves a 61 KB body, so it adds little, and what is measured is memory, not
latency. Linux only; elsewhere the section reports nothing.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench._common import table
from superapp_sdk._errors import ProviderError
from superapp_sdk.providers._http import MAX_BODY_BYTES, Flow, arun_call
from superapp_sdk.resilience import AsyncResilientTransport, Pipeline
from superapp_sdk.testing import UvicornServer
from superapp_sdk.testing._servers import Receive, Scope, Send

MIB = 1 << 20
BOMB_MIB = 60


def _bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return b"".join(packer.compress(bytes(MIB)) for _ in range(BOMB_MIB)) + packer.flush()


def _app(body: bytes) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        (b"content-length", b"%d" % len(body)),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def _get(url: str) -> Flow[bytes]:
    response = yield httpx.Request("GET", url)
    return response.content


async def _sdk(client: httpx.AsyncClient, url: str) -> str:
    try:
        await arun_call(client, _get(url), provider="bench", operation="bench.bomb")
    except ProviderError as exc:
        return exc.code or "ProviderError"
    return "accepted"


async def _transport(client: httpx.AsyncClient, url: str) -> str:
    try:
        await client.get(url)
    except ProviderError as exc:
        return exc.code or "ProviderError"
    return "accepted"


async def _decoded_then_capped(client: httpx.AsyncClient, url: str) -> str:
    async with client.stream("GET", url) as response:
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                return "over the cap after decoding"
    return "accepted"


VARIANTS: list[tuple[str, Callable[[], httpx.AsyncClient], Any]] = [
    ("arun_call", httpx.AsyncClient, _sdk),
    (
        "ResilientTransport",
        lambda: httpx.AsyncClient(
            transport=AsyncResilientTransport(pipeline=Pipeline(name="bench"))
        ),
        _transport,
    ),
    ("decoded, then capped", httpx.AsyncClient, _decoded_then_capped),
]


async def _burst(
    make: Callable[[], httpx.AsyncClient], call: Any, url: str, n: int
) -> dict[str, Any]:
    async with make() as client:
        gc.collect()
        before = _status_kib("VmRSS")
        _reset_peak()
        outcomes: list[str] = await asyncio.gather(*(call(client, url) for _ in range(n)))
        peak = _status_kib("VmHWM")
    growth = (peak - before) * 1024
    return {
        "calls": n,
        "outcomes": sorted(set(outcomes)),
        "rss_before_mib": before / 1024,
        "peak_growth_mib": growth / MIB,
        "growth_per_call_mib": growth / n / MIB,
        "per_call_vs_cap": growth / n / MAX_BODY_BYTES,
    }


def run(quick: bool) -> dict[str, Any]:
    """Peak RSS growth per call for concurrent bomb answers, per variant."""
    if not sys.platform.startswith("linux"):
        print("gzip_bomb: needs /proc (Linux); skipped")
        return {}
    n = 5 if quick else 20
    body = _bomb()
    results: dict[str, Any] = {"bomb_wire_bytes": len(body), "bomb_decoded_mib": BOMB_MIB}
    rows = []
    # Bounded variants first: the unbounded one leaves the allocator holding its arenas.
    with UvicornServer(_app(body), lifespan="off") as server:
        for name, make, call in VARIANTS:
            result = asyncio.run(_burst(make, call, server.url + "/bomb", n))
            results[name] = result
            rows.append(
                [
                    name,
                    n,
                    ", ".join(result["outcomes"]),
                    result["peak_growth_mib"],
                    result["growth_per_call_mib"],
                    result["per_call_vs_cap"],
                ]
            )
    print(
        table(
            f"gzip bomb: {len(body) // 1000} KB on the wire, {BOMB_MIB} MiB decoded, "
            f"cap {MAX_BODY_BYTES // MIB} MiB, {n} concurrent calls",
            [
                "variant",
                "calls",
                "outcome",
                "peak RSS growth MiB",
                "per call MiB",
                "per call / cap",
            ],
            rows,
        )
    )
    return results
