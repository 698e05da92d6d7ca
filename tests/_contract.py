"""What the contract suites share: a simulator reached either in-process
(``httpx.ASGITransport``, the async driver) or over a real loopback socket (uvicorn, the
sync driver run in a thread), and a provider's calls run through whichever it is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

import httpx

from superapp_sdk.providers._http import Call, arun_call, run_call
from superapp_sdk.testing._servers import UvicornServer

T = TypeVar("T")

#: Every contract test runs once per way of reaching the simulator.
TRANSPORTS = ["asgi", "loopback"]


class Reach:
    """Where a simulator answers (``base``) and the clients that reach it.

    ``sync_client`` is set over loopback: calls then go through the sync driver.
    """

    def __init__(
        self, base: str, client: httpx.AsyncClient, sync_client: httpx.Client | None
    ) -> None:
        self.base = base
        self.client = client
        self.sync_client = sync_client

    async def run(self, call: Call[T], *, provider: str, operation: str) -> T:
        if self.sync_client is None:
            return await arun_call(self.client, call, provider=provider, operation=operation)
        return await asyncio.to_thread(
            run_call, self.sync_client, call, provider=provider, operation=operation, timeout=10
        )


@contextlib.asynccontextmanager
async def reach(app: Any, transport: str) -> AsyncIterator[Reach]:
    """Serve ``app`` the way ``transport`` (one of :data:`TRANSPORTS`) names."""
    if transport == "asgi":
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            yield Reach("http://sim", client, None)
        return
    with UvicornServer(app) as server:
        async with httpx.AsyncClient() as client:
            with httpx.Client() as sync_client:
                yield Reach(server.url, client, sync_client)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


P = TypeVar("P", bound=_Named)


class Driver(Generic[P]):
    """Drives the calls of one provider through one async client (in-process suites)."""

    def __init__(self, provider: P, http: httpx.AsyncClient) -> None:
        self.provider = provider
        self.http = http

    async def __call__(self, call: Call[T], operation: str) -> T:
        return await arun_call(
            self.http, call, provider=self.provider.name, operation=operation, timeout=10
        )
