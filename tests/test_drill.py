"""The fire drill: a quick run against a real loopback data center keeps every promise, and
its report says how each phase was served."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from superapp_sdk import _drill


@pytest.fixture(scope="module")
def drill_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any]]:
    """One quick drill for the module (it takes a few seconds): exit status and report."""
    path = tmp_path_factory.mktemp("drill") / "r.json"
    status = _drill.main(argparse.Namespace(quick=True, json=str(path)))
    return status, json.loads(path.read_text())


def _phase(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in report["phases"] if p["phase"] == name)


@pytest.mark.network
def test_quick_drill_exits_zero_with_every_check_true(
    drill_run: tuple[int, dict[str, Any]],
) -> None:
    """main(quick) returns 0 and every promise in the JSON report holds."""
    status, report = drill_run
    assert status == 0
    assert set(report["checks"]) >= {
        "outbox drained",
        "no payment made twice",
        "no message lost",
        "no message sent twice",
        "no user logged out",
        "back on Kakao",
    }
    assert all(report["checks"].values()), report["checks"]


@pytest.mark.network
def test_drill_report_names_no_double_charge_lost_message_or_dead_letter(
    drill_run: tuple[int, dict[str, Any]],
) -> None:
    """The report's detail lists are empty: nothing charged twice, lost or dead-lettered."""
    _, report = drill_run
    assert (report["double_charged"], report["lost_messages"], report["dead_letters"]) == (
        [],
        [],
        0,
    )


@pytest.mark.network
def test_drill_phases_are_served_as_the_story_says(
    drill_run: tuple[int, dict[str, Any]],
) -> None:
    """Normal: Kakao; fire: alternates; everything down: queue and cache; restored: Kakao."""
    _, report = drill_run
    assert [p["phase"] for p in report["phases"]] == [
        "normal",
        "fire",
        "everything down",
        "restored",
    ]
    assert set(_phase(report, "normal")["via"]) == {"primary"}
    assert _phase(report, "fire")["via"].get("alternate", 0) > 0
    dark = _phase(report, "everything down")["via"]
    assert dark.get("queued", 0) > 0
    assert dark.get("cache", 0) > 0
    assert "primary" not in dark
    assert _phase(report, "restored")["via"].get("primary", 0) > 0


@pytest.mark.network
def test_drill_fire_costs_at_most_one_full_timeout(
    drill_run: tuple[int, dict[str, Any]],
) -> None:
    """The whole kakao domain hanging costs at most one user call a full timeout."""
    _, report = drill_run
    assert _phase(report, "fire")["full_timeout_waits"] <= 1


@pytest.mark.network
def test_drill_sees_the_kakao_domain_open_and_close(
    drill_run: tuple[int, dict[str, Any]],
) -> None:
    """The event log shows the kakao failure domain opening, then closing again."""
    _, report = drill_run
    events = report["events"]
    assert "domain kakao: open" in events
    assert events.index("domain kakao: closed") > events.index("domain kakao: open")


def test_broken_promise_makes_the_drill_exit_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report with one failed check: main returns 1 and prints it as FAILED."""

    class FakeDrill:
        def __init__(self, state_dir: Path, *, rounds: int, say: Any) -> None:
            self.rounds = rounds

        def run(self) -> dict[str, Any]:
            return {
                "phases": [],
                "events": [],
                "checks": {"no payment made twice": True, "no message lost": False},
            }

        def close(self) -> None:
            """Nothing to stop."""

    monkeypatch.setattr(_drill, "Drill", FakeDrill)
    status = _drill.main(argparse.Namespace(quick=True, json=str(tmp_path / "r.json")))
    out = capsys.readouterr().out
    assert status == 1
    assert "[FAILED] no message lost" in out
    assert "[ok] no payment made twice" in out
    assert json.loads((tmp_path / "r.json").read_text())["checks"]["no message lost"] is False


def _broken_drill(tmp_path: Path, breakage: str) -> dict[str, Any]:
    """A quick drill whose run breaks one promise for real just before the verdict."""
    drill = _drill.Drill(tmp_path / "state", rounds=2, say=lambda *a, **k: None)
    original = drill.verdict

    def verdict(phases: list[Any], drained: bool) -> dict[str, Any]:
        if breakage == "logged out":
            drill.app.identity.logout(drill.session_id)
        elif breakage == "stuck":
            drill.rentals.append("scooter-never-ended")
            drill.dc.mobility.start_rental("scooter-never-ended")
        elif breakage == "not back":
            drill.server.burn(_drill.Burn.REFUSE, ["chat"])
        elif breakage == "dead letter":
            # A message to a user no provider knows: dead-lettered at its first replay.
            drill.app._parts.state.outbox.enqueue(
                entity="chat:x",
                operation="chat.send",
                payload={"to": "nobody", "text": "x", "conversation": None},
                idempotency_key="bad",
            )
            drill.app.drain(5.0)
        return original(phases, drained)

    drill.verdict = verdict  # type: ignore[method-assign]
    try:
        return drill.run()
    finally:
        drill.close()


@pytest.mark.network
@pytest.mark.parametrize(
    ("breakage", "check"),
    [
        ("logged out", "no user logged out"),
        ("stuck", "no rider stuck in a rental"),
        ("not back", "back on Kakao"),
        ("dead letter", "outbox drained"),
    ],
)
def test_each_promise_fails_when_broken(tmp_path: Path, breakage: str, check: str) -> None:
    """Each check reads what providers and the app did: breaking the promise for real
    (a logged-out session, a rental never ended, KakaoTalk still down, a dead letter)
    fails that check and only that one."""
    report = _broken_drill(tmp_path, breakage)
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert failed == [check]
