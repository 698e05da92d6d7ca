"""Health says what routing does: a suspect or open failure domain and a breaker that is
not closed make their providers unavailable in ``app.health()``, and ``superapp status``
in another process reads what a running app publishes in its state directory."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from superapp_sdk import OperationTimeout, ServiceLevel, SuperApp, Via
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.core.domains import DomainState
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.echo import EchoChat, EchoMobility

GANGNAM = Place(37.4979, 127.0276, "Gangnam Station")
CITY_HALL = Place(37.5663, 126.9779, "Seoul City Hall")


class Rig:
    """Kakao mobility and chat (domain ``kakao``), each with an alternate elsewhere."""

    def __init__(self, tmp: Path) -> None:
        clock = self.clock = FakeClock()
        self.kakao_mobility = EchoMobility(
            name="kakao.mobility", failure_domain="kakao", clock=clock
        )
        self.transit = EchoMobility(name="transit", failure_domain="transit", clock=clock)
        self.kakao_talk = EchoChat(name="kakao.talk", failure_domain="kakao", clock=clock)
        self.line = EchoChat(name="line", failure_domain="line", clock=clock)
        self.app = SuperApp(
            mobility=[self.kakao_mobility, self.transit],
            chat=[self.kakao_talk, self.line],
            state_dir=tmp / "state",
            timer=clock,
            rng=random.Random(7),
        )

    def estimate(self) -> Via:
        return self.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL).via


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.app.close()


def test_health_is_not_full_while_routing_skips_a_suspect_kakao(rig: Rig) -> None:
    """The reported case: estimates skip kakao.mobility (suspect domain), so health is not
    FULL, shows the domain suspect and the provider unavailable, now and 0.5 s later."""
    rig.kakao_mobility.fail = OperationTimeout("dark", provider="kakao.mobility")
    rig.estimate()
    out = rig.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    assert (out.attempts[0].provider, out.attempts[0].error, out.attempts[0].skipped) == (
        "kakao.mobility",
        "DomainOpen",
        True,
    )
    for _ in range(2):
        health = rig.app.health()
        assert health.level is not ServiceLevel.FULL
        mobility = health.capabilities["mobility"]
        assert mobility.level is ServiceLevel.DEGRADED
        kakao = mobility.providers[0]
        assert (kakao.name, kakao.available, kakao.skip_reason) == (
            "kakao.mobility",
            False,
            "DomainOpen",
        )
        assert health.capabilities["chat"].level is ServiceLevel.DEGRADED
        domain = health.domain_health["kakao"]
        assert (domain.state, domain.suspect, domain.allows) == (DomainState.CLOSED, True, False)
        assert domain.label == "suspect"
        rig.clock.advance(0.5)


def test_health_shows_a_breaker_not_closed_and_the_window_failure_rate(rig: Rig) -> None:
    """A forced-open breaker is skipped as CircuitOpen; failure_rate is the window's."""
    rig.app.breaker("kakao.talk").force_open()
    rig.estimate()
    health = rig.app.health()
    talk = health.capabilities["chat"].providers[0]
    assert (talk.available, talk.skip_reason) == (False, "CircuitOpen")
    assert health.capabilities["chat"].level is ServiceLevel.DEGRADED
    assert health.capabilities["mobility"].level is ServiceLevel.FULL
    mobility = health.capabilities["mobility"].providers[0]
    assert (mobility.calls, mobility.failure_rate, mobility.skip_reason) == (1, 0.0, None)


def test_health_counts_failures_in_the_breaker_window(rig: Rig) -> None:
    """A timed-out estimate shows in the provider's failure_rate."""
    rig.kakao_mobility.fail = OperationTimeout("dark", provider="kakao.mobility")
    rig.estimate()
    kakao = rig.app.health().capabilities["mobility"].providers[0]
    assert (kakao.calls, kakao.failure_rate) == (1, 1.0)


# -- superapp status in another process --------------------------------------------------------


def _status(state_dir: Path) -> dict[str, Any]:
    """``superapp status --json`` run in a second process."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "superapp_sdk.cli",
            "--state-dir",
            str(state_dir),
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _published(state_dir: Path, domain: str, label: str) -> Path:
    """Wait (on the wall clock: publication is) until this process's file says so."""
    path = state_dir / "health" / f"{os.getpid()}.json"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text())["domains"].get(domain) == label:
                return path
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never showed {domain} {label}")


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[SuperApp]:
    """A started app on the system clock, Kakao chat and mobility each with an alternate."""
    app = SuperApp(
        mobility=[
            EchoMobility(name="kakao.mobility", failure_domain="kakao"),
            EchoMobility(name="transit", failure_domain="transit"),
        ],
        chat=[
            EchoChat(name="kakao.talk", failure_domain="kakao"),
            EchoChat(name="line", failure_domain="line"),
        ],
        state_dir=tmp_path / "state",
        durable=False,
    )
    with app:
        yield app


def test_status_in_another_process_shows_a_domain_this_process_opened(
    live_app: SuperApp, tmp_path: Path
) -> None:
    """A second process's `superapp status --json` sees kakao open and the level degraded."""
    state_dir = tmp_path / "state"
    live_app.domains.force_open("kakao")
    path = _published(state_dir, "kakao", "open")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    report = _status(state_dir)
    assert report["running"] is True
    assert report["process"]["pid"] == os.getpid()
    assert report["process"]["age_seconds"] < 5
    assert report["domains"]["kakao"] == "open"
    assert report["level"] == "degraded"
    kakao = report["capabilities"]["mobility"]["providers"][0]
    assert (kakao["name"], kakao["available"], kakao["skip_reason"]) == (
        "kakao.mobility",
        False,
        "DomainOpen",
    )


def test_status_says_no_process_runs_after_the_app_closed(
    live_app: SuperApp, tmp_path: Path
) -> None:
    """Once the app closed, a second process's status says nothing is running."""
    state_dir = tmp_path / "state"
    live_app.domains.force_open("kakao")
    _published(state_dir, "kakao", "open")
    live_app.close()
    report = _status(state_dir)
    assert report["running"] is False
    assert report["process"] is None
    assert report["domains"] == {}
    text = subprocess.run(
        [sys.executable, "-m", "superapp_sdk.cli", "--state-dir", str(state_dir), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "no process is running" in text
