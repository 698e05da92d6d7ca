"""A mobile app's backend on AsyncSuperApp: chat, rides and payments that keep working
when the super-app they depend on is down.

Run it against the simulated Kakao data center::

    uvicorn examples.mobile_backend.app:app

With ``SUPERAPP_CONFIG=superapp.toml`` it reads its providers from that file instead (see
``superapp_sdk/_config.py``). Every answer says how it was served (``via``), so the app
can show "sent", "will be sent when the service is back" or "estimate from the
timetable".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from superapp_sdk import AsyncSuperApp, Outcome, SuperAppError, Unavailable, Undeliverable
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.testing.echo import EchoChat, EchoMobility
from superapp_sdk.testing.kakao import KakaoDataCenter


class MessageIn(BaseModel):
    to: str
    text: str
    conversation: str | None = None
    idempotency_key: str | None = None


class PlaceIn(BaseModel):
    lat: float
    lng: float


class EstimateIn(BaseModel):
    origin: PlaceIn
    destination: PlaceIn


def _served(outcome: Outcome[Any]) -> dict[str, Any]:
    return {
        "via": outcome.via.value,
        "provider": outcome.provider,
        "degraded": outcome.degraded,
        "stale_for": outcome.stale_for,
        "ticket": outcome.ticket,
    }


def _demo_app() -> tuple[AsyncSuperApp, httpx.AsyncClient]:
    """The SDK wired to an in-process simulated Kakao data center and alternates."""
    dc = KakaoDataCenter()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=dc.app))
    kakao = dc.adapters("http://kakao.sim")
    sdk = AsyncSuperApp(
        chat=[kakao.talk, EchoChat()],
        mobility=[kakao.mobility, EchoMobility()],
        state_dir=os.environ.get("SUPERAPP_STATE_DIR", ".superapp-example"),
        http_client=client,
    )
    sdk.directory.put("demo-user", provider="kakao.talk", address=dc.credentials.friend_uuids[0])
    sdk.directory.put("demo-user", provider="echo.chat", address="demo@example.com")
    return sdk, client


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    config = os.environ.get("SUPERAPP_CONFIG")
    client = None
    sdk = AsyncSuperApp.from_config(config) if config else None
    if sdk is None:
        sdk, client = _demo_app()
    async with sdk:
        api.state.sdk = sdk
        yield
    if client is not None:
        await client.aclose()


app = FastAPI(title="mobile backend on superapp-sdk", lifespan=lifespan)


def _sdk() -> AsyncSuperApp:
    sdk: AsyncSuperApp = app.state.sdk
    return sdk


@app.post("/messages")
async def send_message(body: MessageIn) -> dict[str, Any]:
    """Send a chat message; queued (and delivered later) when no chat provider is up."""
    try:
        outcome = await _sdk().chat.send(
            to=body.to,
            text=body.text,
            conversation=body.conversation,
            idempotency_key=body.idempotency_key,
        )
    except (ValueError, Undeliverable) as exc:
        # Undeliverable: no provider has this recipient; it would never be delivered.
        raise HTTPException(422, str(exc)) from exc
    except SuperAppError as exc:
        raise HTTPException(502, f"{type(exc).__name__}: {exc}") from exc
    return {"message_id": outcome.value.message_id, **_served(outcome)}


@app.post("/rides/estimate")
async def estimate(body: EstimateIn) -> dict[str, Any]:
    """Fare and duration; from the cache (with its age) when every provider is down."""
    try:
        outcome = await _sdk().mobility.estimate(
            origin=Place(body.origin.lat, body.origin.lng),
            destination=Place(body.destination.lat, body.destination.lng),
        )
    except Unavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    value = outcome.value
    fare = value.fare.amount if value.fare is not None else None
    return {
        "distance_m": value.distance_m,
        "duration_s": value.duration_s,
        "fare": fare,
        **_served(outcome),
    }


@app.get("/health")
async def health() -> dict[str, Any]:
    """Per capability FULL / DEGRADED / OFFLINE, and the outbox depth."""
    h = _sdk().health()
    return {
        "level": h.level.value,
        "capabilities": {name: c.level.value for name, c in h.capabilities.items()},
        "outbox_depth": h.outbox_depth,
        "dead_letters": h.dead_letters,
    }
