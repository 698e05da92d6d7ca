"""The ``superapp`` command, run in-process against a state directory filled through Outbox."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from superapp_sdk import SuperApp
from superapp_sdk.cli import main
from superapp_sdk.offline import Outbox, OutboxItem
from superapp_sdk.testing import FakeClock

REPO = Path(__file__).resolve().parents[1]
SECRET = "card-4242-secret"
DEAD_ERROR = "Declined: unknown recipient u-404"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(tmp_path: Path, clock: FakeClock) -> Path:
    """A state directory with one dead letter (ob-...1) and four pending items (ob-...2-5)."""
    path = tmp_path / "state"
    with Outbox(path, clock=clock, durable=False) as outbox:
        for n in range(5):
            outbox.enqueue(
                entity=f"chat:conv-{n % 2}",
                operation="chat.send",
                payload={"to": "u-404" if n == 0 else f"u-{n}", "text": f"{SECRET}-{n}"},
                idempotency_key=f"msg-{n}",
            )
        item = outbox.claim("w1", lease_seconds=30)
        assert item is not None
        assert item.lease_token is not None
        assert outbox.fail(item.id, item.lease_token, DEAD_ERROR, retryable=False)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str, **kwargs: object) -> tuple[int, str, str]:
    code = main(list(argv), **kwargs)  # type: ignore[arg-type]
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ticket(n: int) -> str:
    return f"ob-{n:012d}"


def get(path: Path, item_id: str) -> OutboxItem | None:
    with Outbox(path, durable=False) as outbox:
        return outbox.get(item_id)


# -- outbox list -------------------------------------------------------------------------------


def test_list_shows_pending_items_in_order(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox list` shows every pending ticket with entity, operation and attempts."""
    code, out, err = run(capsys, "--state-dir", str(state), "outbox", "list")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("ob-")]
    assert [line.split()[0] for line in lines] == [ticket(n) for n in (2, 3, 4, 5)]
    assert lines[0].split()[1:4] == ["chat:conv-1", "chat.send", "0"]
    assert "pending items 1-4 of 4" in out


def test_list_never_prints_payload_contents(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Payloads may hold secrets: the listing shows their size only."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "list")
    _, dead, _ = run(capsys, "--state-dir", str(state), "outbox", "list", "--dead")
    assert code == 0
    assert SECRET not in out + dead
    size = len(json.dumps({"text": f"{SECRET}-2", "to": "u-2"}, separators=(",", ":")))
    assert f"{size} B" in out


def test_list_dead_shows_dead_letters_with_reason(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`outbox list --dead` lists the dead-letter store, with the last error and why."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "list", "--dead")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("ob-")]
    assert len(rows) == 1
    assert rows[0].startswith(ticket(1))
    assert DEAD_ERROR in rows[0]
    assert "not retryable" in rows[0]


def test_list_paginates_with_offset_and_limit(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--offset and --limit select one page and say where the next one starts."""
    code, out, _ = run(
        capsys, "--state-dir", str(state), "outbox", "list", "--offset", "1", "--limit", "2"
    )
    assert code == 0
    assert [line.split()[0] for line in out.splitlines() if line.startswith("ob-")] == [
        ticket(3),
        ticket(4),
    ]
    assert "pending items 2-3 of 4" in out
    assert "more: --offset 3" in out


def test_list_past_the_end_says_so(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An offset past the last item prints no rows and the total."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "list", "--offset", "10")
    assert code == 0
    assert "ob-" not in out
    assert "(4 in all)" in out


def test_list_json_has_sizes_not_payloads(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox list --json` gives the total and one record per item, payload as a size."""
    code, out, _ = run(
        capsys, "--state-dir", str(state), "outbox", "list", "--limit", "3", "--json"
    )
    assert code == 0
    page = json.loads(out)
    assert page["total"] == 4
    assert [item["ticket"] for item in page["items"]] == [ticket(n) for n in (2, 3, 4)]
    assert all(item["payload_bytes"] > 0 for item in page["items"])
    assert SECRET not in out
    assert "payload" not in page["items"][0]


def test_list_age_follows_the_clock(
    state: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The age column is measured on the clock the command is given."""
    clock.advance(2 * 3600 + 5)
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "list", clock=clock)
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("ob-")]
    assert {row[4] for row in rows} == {"2h"}


def test_list_after_a_ticket_pages_by_ticket(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--after TICKET lists from the next ticket and names where the next page starts."""
    args = ("--state-dir", str(state), "outbox", "list", "--limit", "2", "--after", ticket(2))
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines() if line.startswith("ob-")] == [
        ticket(3),
        ticket(4),
    ]
    assert f"pending items after {ticket(2)} (4 in all)" in out
    assert f"more: --after {ticket(4)}" in out


def test_list_after_rejects_something_not_a_ticket(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--after with a non-ticket is a usage error that says what tickets look like."""
    code, _, err = run(capsys, "--state-dir", str(state), "outbox", "list", "--after", "msg-2")
    assert code == 2
    assert "ob-000000000001" in err


def test_list_rejects_a_limit_out_of_range(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit 0 is a usage error naming the allowed range."""
    code, _, err = run(capsys, "--state-dir", str(state), "outbox", "list", "--limit", "0")
    assert code == 2
    assert "1..10000" in err


# -- outbox show / retry / drop ----------------------------------------------------------------


def test_show_prints_details_and_payload_size(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`outbox show` prints the item's fields, the payload only as a size."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "show", ticket(1))
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["ticket"] == ticket(1)
    assert fields["state"] == "dead"
    assert fields["idempotency_key"] == "msg-0"
    assert fields["last_error"] == DEAD_ERROR
    assert fields["payload_bytes"].endswith("bytes (contents not shown)")
    assert SECRET not in out


def test_show_json(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox show --json` prints one record."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "show", ticket(3), "--json")
    assert code == 0
    record = json.loads(out)
    assert record["ticket"] == ticket(3)
    assert record["state"] == "pending"
    assert record["entity"] == "chat:conv-0"
    assert SECRET not in out


def test_show_unknown_ticket_fails_with_a_message(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown ticket exits 1 with a message naming it, and no traceback."""
    code, out, err = run(capsys, "--state-dir", str(state), "outbox", "show", "ob-999")
    assert code == 1
    assert out == ""
    assert "'ob-999'" in err
    assert "Traceback" not in err


def test_retry_moves_a_dead_letter_back(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox retry` requeues a dead letter with its attempts reset."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "retry", ticket(1))
    assert code == 0
    assert ticket(1) in out
    item = get(state, ticket(1))
    assert item is not None
    assert item.state.value == "pending"
    assert item.attempts == 0
    _, dead, _ = run(capsys, "--state-dir", str(state), "outbox", "list", "--dead")
    assert "no dead letters" in dead


def test_retry_refuses_a_pending_item(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Retrying an item that is not a dead letter exits 1 and says why."""
    code, _, err = run(capsys, "--state-dir", str(state), "outbox", "retry", ticket(2))
    assert code == 1
    assert "not a dead letter" in err


def test_retry_unknown_ticket_fails(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Retrying an unknown ticket exits 1 naming it."""
    code, _, err = run(capsys, "--state-dir", str(state), "outbox", "retry", ticket(77))
    assert code == 1
    assert ticket(77) in err


def test_drop_without_yes_refuses(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox drop` without --yes refuses, exits 2, and keeps the item."""
    code, out, err = run(capsys, "--state-dir", str(state), "outbox", "drop", ticket(2))
    assert code == 2
    assert out == ""
    assert "--yes" in err
    assert get(state, ticket(2)) is not None


def test_drop_with_yes_deletes(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`outbox drop --yes` deletes the item for good."""
    code, out, _ = run(capsys, "--state-dir", str(state), "outbox", "drop", ticket(2), "--yes")
    assert code == 0
    assert f"dropped {ticket(2)}" in out
    assert get(state, ticket(2)) is None


def test_drop_unknown_ticket_fails(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dropping an unknown ticket exits 1 naming it, even with --yes."""
    code, _, err = run(capsys, "--state-dir", str(state), "outbox", "drop", "nope", "--yes")
    assert code == 1
    assert "'nope'" in err


# -- state directory and configuration ------------------------------------------------------


def test_missing_state_dir_fails_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state directory that does not exist is named in the error and not created."""
    missing = tmp_path / "nowhere"
    code, _, err = run(capsys, "--state-dir", str(missing), "outbox", "list")
    assert code == 1
    assert str(missing) in err
    assert not missing.exists()


def test_corrupted_outbox_fails_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupted outbox file exits 1 with a message naming it, never a traceback."""
    path = tmp_path / "state"
    path.mkdir()
    (path / "outbox.sqlite3").write_bytes(b"this is not a sqlite database" * 100)
    code, _, err = run(capsys, "--state-dir", str(path), "outbox", "list")
    assert code == 1
    assert "outbox.sqlite3" in err
    assert "corrupted" in err
    assert "Traceback" not in err


def test_state_dir_comes_from_the_config(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --state-dir, the config's state_dir is used."""
    config = tmp_path / "superapp.toml"
    config.write_text(f"state_dir = {json.dumps(str(state))}\n", encoding="utf-8")
    code, out, _ = run(capsys, "--config", str(config), "outbox", "list", "--json")
    assert code == 0
    assert json.loads(out)["total"] == 4


def test_outbox_commands_do_not_build_providers(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A provider secret missing from the environment does not stop `outbox list`."""
    monkeypatch.delenv("SUPERAPP_TEST_UNSET_TOKEN", raising=False)
    config = tmp_path / "superapp.toml"
    config.write_text(
        f"state_dir = {json.dumps(str(state))}\n\n"
        '[[chat]]\ntype = "kakao.talk"\naccess_token = { env = "SUPERAPP_TEST_UNSET_TOKEN" }\n',
        encoding="utf-8",
    )
    code, out, err = run(capsys, "--config", str(config), "outbox", "list", "--json")
    assert code == 0, err
    assert json.loads(out)["total"] == 4
    code, _, err = run(capsys, "--config", str(config), "status")
    assert code == 1
    assert "SUPERAPP_TEST_UNSET_TOKEN" in err


def test_invalid_config_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config that is not valid TOML exits 1 naming the file."""
    config = tmp_path / "broken.toml"
    config.write_text("chat = [", encoding="utf-8")
    code, _, err = run(capsys, "--config", str(config), "status")
    assert code == 1
    assert "broken.toml" in err
    assert "Traceback" not in err


# -- status ----------------------------------------------------------------------------------


def test_status_without_providers(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` on an app with no providers says so and counts the outbox."""
    code, out, err = run(capsys, "--state-dir", str(state), "status")
    assert code == 0, err
    assert "none configured" in out
    assert "outbox: 4 pending, 1 dead" in out


def test_status_json_without_providers(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --json` reports no capabilities, no level, and the outbox counts."""
    code, out, _ = run(capsys, "--state-dir", str(state), "status", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["capabilities"] == {}
    assert report["level"] is None
    assert report["outbox"] == {"depth": 4, "dead_letters": 1}


def test_status_with_configured_providers(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` lists each capability's providers with domain and breaker state."""
    config = tmp_path / "superapp.toml"
    config.write_text(
        '[[chat]]\ntype = "echo.chat"\n\n'
        '[[chat]]\ntype = "echo.chat"\nname = "backup.chat"\nfailure_domain = "backup"\n',
        encoding="utf-8",
    )
    code, out, err = run(
        capsys, "--state-dir", str(state), "--config", str(config), "status", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["level"] == "full"
    providers = report["capabilities"]["chat"]["providers"]
    assert [(p["name"], p["failure_domain"], p["breaker"]) for p in providers] == [
        ("echo.chat", "echo", "closed"),
        ("backup.chat", "backup", "closed"),
    ]
    assert report["domains"] == {"echo": "closed", "backup": "closed"}
    code, text, _ = run(capsys, "--state-dir", str(state), "--config", str(config), "status")
    assert code == 0
    assert re.search(r"chat\s+FULL\s+backup\.chat\s+backup\s+closed\s+yes", text)


# -- keys ------------------------------------------------------------------------------------


@pytest.fixture
def keyed_state(tmp_path: Path) -> Path:
    """A state directory where SuperApp created its sealing key."""
    path = tmp_path / "state"
    SuperApp(state_dir=path, durable=False).close()
    assert (path / "keys" / "seal.key").exists()
    return path


def test_keys_shows_path_and_mode_never_the_key(
    keyed_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys` names the key file and its mode 0600, and prints nothing of the key."""
    key_file = keyed_state / "keys" / "seal.key"
    code, out, _ = run(capsys, "--state-dir", str(keyed_state), "keys", "--json")
    assert code == 0
    report = json.loads(out)
    seal = report["files"][0]
    assert seal["path"] == str(key_file)
    assert seal["mode"] == "0600"
    assert seal["private"] is True
    assert report["directory"]["mode"] == "0700"
    key = key_file.read_bytes()
    _, text, _ = run(capsys, "--state-dir", str(keyed_state), "keys")
    for shown in (out, text):
        assert key.hex() not in shown
        assert key.decode("latin-1") not in shown
    assert str(key_file) in text
    assert "0600" in text


def test_keys_readable_by_others_is_an_error(
    keyed_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key file readable by group or others makes `keys` exit 1 with a warning."""
    key_file = keyed_state / "keys" / "seal.key"
    key_file.chmod(0o644)
    code, _, err = run(capsys, "--state-dir", str(keyed_state), "keys")
    assert code == 1
    assert f"{key_file} (0644)" in err


def test_keys_before_the_key_exists(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before first use, `keys` says where the key will be created."""
    code, out, _ = run(capsys, "--state-dir", str(state), "keys")
    assert code == 0
    assert f"created in {state / 'keys'} on first use" in out


# -- drill and help --------------------------------------------------------------------------


def test_drill_without_its_module_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the drill module is not installed, `drill` exits 2 with a clear message."""
    monkeypatch.setitem(sys.modules, "superapp_sdk._drill", None)
    code, _, err = run(capsys, "--state-dir", str(tmp_path), "drill", "--quick")
    assert code == 2
    assert "drill is not available" in err
    assert "Traceback" not in err


def test_drill_hands_its_arguments_to_the_drill_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`drill --quick --json PATH` calls the drill's main with those options and its status."""
    seen = []

    def fake_main(args: object) -> int:
        seen.append(args)
        return 3

    module = types.ModuleType("superapp_sdk._drill")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "superapp_sdk._drill", module)
    report = tmp_path / "drill.json"
    code, _, _ = run(capsys, "drill", "--quick", "--json", str(report))
    assert code == 3
    assert len(seen) == 1
    assert seen[0].quick is True  # type: ignore[attr-defined]
    assert seen[0].json == str(report)  # type: ignore[attr-defined]


def test_help_in_process_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` prints usage and returns 0 instead of exiting the caller."""
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "outbox" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, usage goes to stderr and the status is 2."""
    code, _, err = run(capsys)
    assert code == 2
    assert "usage: superapp" in err


def test_module_help_runs_in_a_subprocess() -> None:
    """`python -m superapp_sdk.cli --help` works and lists the commands."""
    proc = subprocess.run(
        [sys.executable, "-m", "superapp_sdk.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("status", "outbox", "keys", "drill"):
        assert command in proc.stdout


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_use_rich_on_a_terminal(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal with rich installed, tables are drawn by rich."""
    pytest.importorskip("rich")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--state-dir", str(state), "outbox", "list"]) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())
    assert "━" in text or "─" in text
    for n in (2, 3, 4, 5):
        assert ticket(n) in text
    assert SECRET not in text
