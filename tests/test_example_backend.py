"""The FastAPI example backend serves through AsyncSuperApp and says how it served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from superapp_sdk.testing import UvicornServer

pytestmark = pytest.mark.network


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv("SUPERAPP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SUPERAPP_CONFIG", raising=False)
    from examples.mobile_backend.app import app

    with UvicornServer(app, lifespan="on") as server, httpx.Client(base_url=server.url) as c:
        yield c


def test_message_estimate_and_health(client: httpx.Client) -> None:
    """A message and an estimate are served by Kakao, and health reports full service."""
    sent = client.post("/messages", json={"to": "demo-user", "text": "hello"})
    assert sent.status_code == 200
    assert (sent.json()["via"], sent.json()["provider"]) == ("primary", "kakao.talk")
    est = client.post(
        "/rides/estimate",
        json={
            "origin": {"lat": 37.4979, "lng": 127.0276},
            "destination": {"lat": 37.5663, "lng": 126.9779},
        },
    )
    assert est.status_code == 200
    assert est.json()["distance_m"] > 5000
    assert client.get("/health").json()["capabilities"] == {"chat": "full", "mobility": "full"}


def test_bad_input_is_a_422(client: httpx.Client) -> None:
    """An empty message text is refused with the field named."""
    bad = client.post("/messages", json={"to": "demo-user", "text": ""})
    assert bad.status_code == 422
    assert "text" in bad.json()["detail"]


def test_a_message_to_nobody_is_a_422_not_queued(client: httpx.Client) -> None:
    """A recipient no chat provider knows is refused (it was answered 200 "queued")."""
    bad = client.post("/messages", json={"to": "nobody", "text": "hello"})
    assert bad.status_code == 422
    assert "nobody" in bad.json()["detail"]
