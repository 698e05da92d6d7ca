"""The ``superapp`` command: what an operator needs while a provider is down.

::

    superapp status [--json]                  service level, breakers, domains, outbox,
                                              as published by the running app
    superapp outbox list [--dead] [--offset N | --after TICKET] [--limit N] [--json]
    superapp outbox show TICKET [--json]
    superapp outbox retry TICKET              put a dead letter back in its queue
    superapp outbox drop TICKET --yes         delete an undelivered write for good
    superapp outbox reconcile TICKET (--executed | --not-executed) --by NAME
                                              settle a write held as needs reconciliation
    superapp keys [--json]                    where the sealing key lives, and its mode
    superapp drill [--quick] [--json PATH]    the blackhole drill, as a demonstration

Global options come before the command: ``--state-dir DIR`` (default: the config's
``state_dir``, else ``.superapp``) and ``--config FILE`` (a TOML file for
:meth:`SuperApp.from_config <superapp_sdk.SuperApp.from_config>`). The command never
creates a state directory, and never prints a payload or a key: payloads may hold
message texts, card approvals or billing keys, so only their size is shown.

Exit status: 0 on success; 1 when the command failed (unknown ticket, unusable state
directory or configuration, a key file readable by others); 2 for a usage error
(including ``drop`` without ``--yes`` and a ``drill`` that is not installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import stat
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from superapp_sdk._errors import InvalidRequest, SuperAppError
from superapp_sdk._health import HEALTH_DIR, STALE_AFTER, health_report, pid_alive, read_published
from superapp_sdk._ops import reconcile
from superapp_sdk.capabilities.payment import Payment
from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.offline.outbox import ItemState, Outbox, OutboxItem, _encode_payload
from superapp_sdk.store import DiskStore

__all__ = ["main"]

PROG = "superapp"
DEFAULT_STATE_DIR = ".superapp"
#: The longest ``last error`` shown in a table row; ``outbox show`` prints it whole.
ERROR_WIDTH = 60
_TICKET_HINT = "tickets look like ob-000000000001; see `superapp outbox list`"
# Where SuperApp keeps the AES-GCM key that seals tokens and billing keys at rest
# (superapp_sdk.tokens._seal), relative to the state directory.
_KEYS_DIR = "keys"
_KNOWN_KEYS = {"seal.key": "sealing key (AES-256-GCM)"}
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600


class CommandError(Exception):
    """A failure to report in one line, with the exit status to return."""

    def __init__(self, message: str, *, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- output ----------------------------------------------------------------------------------


def _rich_console(stream: TextIO) -> Any | None:
    """A rich console for ``stream`` when rich is installed and a person is watching.

    rich is a development extra, not a runtime dependency; output piped to another
    program stays plain text, so scripts can parse it.
    """
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream)


def _table(
    stream: TextIO, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    console = _rich_console(stream)
    if console is not None:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    print(title, file=stream)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        print(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=stream
        )


def _print_json(stream: TextIO, value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False), file=stream)


def _age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: how long ago, for a table cell."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _clip(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _mode(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


# -- state -----------------------------------------------------------------------------------


def _state_dir(args: argparse.Namespace) -> Path:
    """The state directory: ``--state-dir``, else the config's ``state_dir``, else the default."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is not None:
        configured = _configured_state_dir(Path(args.config))
        if configured is not None:
            return configured
    return Path(DEFAULT_STATE_DIR)


def _configured_state_dir(config: Path) -> Path | None:
    """The config file's ``state_dir``, read without building its providers.

    The outbox and keys commands need no provider, so a provider secret missing from this
    shell's environment must not stop them.
    """
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"cannot read config file {config}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"config file {config} is not valid TOML: {exc}") from exc
    value = data.get("state_dir")
    if value is None:
        return None
    if not isinstance(value, str):
        raise CommandError(f"config file {config}: state_dir must be a string")
    return Path(value)


def _existing_state_dir(args: argparse.Namespace) -> Path:
    path = _state_dir(args)
    if not path.exists():
        raise CommandError(
            f"state directory {path} does not exist (pass --state-dir, or run the app once "
            "to create it)"
        )
    if not path.is_dir():
        raise CommandError(f"state directory {path} is not a directory")
    return path


@contextmanager
def _open_outbox(args: argparse.Namespace) -> Iterator[Outbox]:
    """The outbox of the state directory, without building any provider."""
    store = DiskStore(_existing_state_dir(args))
    try:
        outbox = Outbox(store)
        try:
            yield outbox
        finally:
            outbox.close()
    finally:
        store.close()


def _find(outbox: Outbox, ticket: str) -> OutboxItem:
    item = outbox.get(ticket)
    if item is None:
        raise CommandError(
            f"no outbox item with ticket {ticket!r} in {outbox.path} ({_TICKET_HINT})"
        )
    return item


def _payload_bytes(item: OutboxItem) -> int:
    return len(_encode_payload(item.payload)[1])


def _record(item: OutboxItem, now: float) -> dict[str, object]:
    """Everything about ``item`` an operator may see: its payload only as a size."""
    return {
        "ticket": item.id,
        "state": item.state.value,
        "entity": item.entity,
        "operation": item.operation,
        "attempts": item.attempts,
        "created_at": item.created_at,
        "queued_at": item.queued_at,
        "age_seconds": max(0.0, now - item.created_at),
        "not_before": item.not_before,
        "last_error": item.last_error,
        "dead_reason": item.dead_reason,
        "idempotency_key": item.idempotency_key,
        "fingerprint": item.fingerprint,
        "payload_kind": "bytes" if isinstance(item.payload, bytes) else "json",
        "payload_bytes": _payload_bytes(item),
        "leased_until": item.lease_until,
    }


def _describe(item: OutboxItem) -> str:
    return f"{item.id} ({item.state.value}, {item.operation} for {item.entity})"


# -- commands --------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    state_dir = _existing_state_dir(args)
    now = clock.time()
    published = read_published(state_dir / HEALTH_DIR)
    live = [p for p in published if now - p.written_at <= STALE_AFTER or pid_alive(p.pid)]
    if live:
        report: dict[str, Any] = dict(live[0].report)
    else:
        report = _configured_report(args, state_dir)
    processes = [
        {
            "pid": p.pid,
            "written_at": p.written_at,
            "age_seconds": round(max(0.0, now - p.written_at), 3),
            "stale": now - p.written_at > STALE_AFTER,
        }
        for p in live
    ]
    report.update(
        state_dir=str(state_dir),
        running=bool(live),
        process=processes[0] if processes else None,
        processes=processes,
    )
    if args.json:
        _print_json(out, report)
        return 0
    print(f"state directory: {state_dir}", file=out)
    if live:
        first = processes[0]
        print(
            f"live state of process {first['pid']}, written {first['age_seconds']:.1f}s ago",
            file=out,
        )
        if first["stale"]:
            print(
                f"warning: not updated for over {STALE_AFTER:g}s; the process may be stuck",
                file=out,
            )
        if len(live) > 1:
            others = ", ".join(str(p.pid) for p in live[1:])
            print(f"also publishing here: process {others} (see --json)", file=out)
    else:
        last = f" (the last, process {published[0].pid}, has exited)" if published else ""
        print(
            f"no process is running: no app has published its state here{last}; "
            "breakers and domains below are as configured, not live",
            file=out,
        )
    capabilities: dict[str, Any] = report["capabilities"]
    if not capabilities:
        print("providers: none configured (pass --config FILE)", file=out)
    else:
        print(f"service level: {str(report['level']).upper()}", file=out)
        rows = [
            [
                name,
                str(cap["level"]).upper(),
                p["name"],
                p["failure_domain"],
                p["breaker"],
                "yes" if p["available"] else "no",
                f"{p['failure_rate']:.0%} of {p['calls']}",
                p["skip_reason"] or "",
            ]
            for name, cap in capabilities.items()
            for p in cap["providers"]
        ]
        headers = [
            "capability",
            "level",
            "provider",
            "domain",
            "breaker",
            "available",
            "failures",
            "skipped as",
        ]
        _table(out, "providers (in priority order):", headers, rows)
        domains = [[name, state] for name, state in report["domains"].items()]
        _table(out, "failure domains:", ["domain", "state"], domains)
    outbox = report["outbox"]
    print(f"outbox: {outbox['depth']} pending, {outbox['dead_letters']} dead", file=out)
    return 0


def _configured_report(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    """The status of the configured providers when no process runs: their breakers and
    domains are fresh, but the outbox counts are read from the state directory."""
    from superapp_sdk._app import SuperApp

    if args.config is not None:
        app = SuperApp.from_config(args.config, state_dir=state_dir)
    else:
        app = SuperApp(state_dir=state_dir)
    try:
        return health_report(app.health())
    finally:
        app.close()


def _cmd_outbox_list(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    with _open_outbox(args) as outbox:
        if args.dead:
            items, total, what = (
                outbox.dead_letters(args.offset, args.limit, after=args.after),
                outbox.dead_count(),
                "dead letters",
            )
        else:
            items, total, what = (
                outbox.list(args.offset, args.limit, after=args.after),
                outbox.depth(),
                "pending items",
            )
    now = clock.time()
    if args.json:
        _print_json(
            out,
            {
                "total": total,
                "offset": args.offset,
                "after": args.after,
                "limit": args.limit,
                "items": [_record(item, now) for item in items],
            },
        )
        return 0
    if not items:
        where = f" from offset {args.offset}" if args.offset and total else ""
        if args.after is not None:
            where = f" after {args.after}"
        print(f"no {what}{where} ({total} in all)", file=out)
        return 0
    headers = ["ticket", "entity", "operation", "attempts", "age", "payload", "last error"]
    rows = [
        [
            item.id,
            item.entity,
            item.operation,
            str(item.attempts),
            _age(now - item.created_at),
            f"{_payload_bytes(item)} B",
            _clip(item.last_error),
        ]
        for item in items
    ]
    if args.dead:
        headers.append("why dead")
        for row, item in zip(rows, items, strict=True):
            row.append(_clip(item.dead_reason))
    if args.after is not None:
        # Where the page sits would take counting every item before it, which is what
        # --after avoids; the next page starts after this one's last ticket.
        _table(out, f"{what} after {args.after} ({total} in all):", headers, rows)
        if len(items) == args.limit:
            print(f"more: --after {items[-1].id}", file=out)
        return 0
    first, last = args.offset + 1, args.offset + len(items)
    _table(out, f"{what} {first}-{last} of {total}:", headers, rows)
    if last < total:
        print(f"more: --offset {last} (or --after {items[-1].id})", file=out)
    return 0


def _cmd_outbox_show(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    with _open_outbox(args) as outbox:
        item = _find(outbox, args.ticket)
    record = _record(item, clock.time())
    if args.json:
        _print_json(out, record)
        return 0
    record["age_seconds"] = _age(cast(float, record["age_seconds"]))
    record["payload_bytes"] = f"{record['payload_bytes']} bytes (contents not shown)"
    width = max(len(k) for k in record)
    for key, value in record.items():
        print(f"{key.ljust(width)}  {'-' if value is None else value}", file=out)
    return 0


def _cmd_outbox_retry(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    with _open_outbox(args) as outbox:
        item = _find(outbox, args.ticket)
        if item.state is not ItemState.DEAD:
            raise CommandError(
                f"{_describe(item)} is not a dead letter: it is still queued, nothing to retry"
            )
        requeued = outbox.retry_dead(item.id)
    if requeued is None:
        raise CommandError(f"{item.id} left the dead-letter store before it could be retried")
    print(f"requeued {_describe(requeued)}; attempts start again from 0", file=out)
    return 0


def _cmd_outbox_drop(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    with _open_outbox(args) as outbox:
        item = _find(outbox, args.ticket)
        if not args.yes:
            raise CommandError(
                f"refusing to drop {_describe(item)} without --yes: the write would never be "
                f"delivered. Run `{PROG} outbox drop {item.id} --yes` to confirm.",
                status=2,
            )
        if not outbox.drop(item.id):
            raise CommandError(f"{item.id} left the outbox before it could be dropped")
    print(f"dropped {_describe(item)}", file=out)
    return 0


def _cmd_outbox_reconcile(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    store = DiskStore(_existing_state_dir(args))
    try:
        settled = reconcile(
            store.namespace("state"),
            ticket=args.ticket,
            executed=args.executed,
            by=args.by,
            now=clock.time(),
            provider_ref=args.provider_ref,
        )
    except InvalidRequest as exc:
        raise CommandError(exc.message) from exc
    finally:
        store.close()
    verdict = "executed" if args.executed else "not executed"
    what = f": {settled.order_id} paid" if isinstance(settled, Payment) else ""
    print(f"reconciled {args.ticket} as {verdict} by {args.by}{what}", file=out)
    return 0


@dataclass(frozen=True, slots=True)
class _KeyFile:
    path: Path
    purpose: str
    mode: int | None
    size: int | None
    owner: int | None

    @property
    def private(self) -> bool:
        return self.mode is None or stat.S_IMODE(self.mode) & 0o077 == 0

    def as_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "purpose": self.purpose,
            "exists": self.mode is not None,
            "mode": None if self.mode is None else _mode(self.mode),
            "bytes": self.size,
            "owner_uid": self.owner,
            "private": self.private,
        }


def _key_file(path: Path, purpose: str) -> _KeyFile:
    try:
        # lstat: report a symlink as such instead of the file it points to.
        st = path.lstat()
    except FileNotFoundError:
        return _KeyFile(path, purpose, None, None, None)
    except OSError as exc:
        raise CommandError(f"cannot inspect {path}: {exc.strerror or exc}") from exc
    return _KeyFile(path, purpose, st.st_mode, st.st_size, st.st_uid)


def _cmd_keys(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    keys_dir = _existing_state_dir(args) / _KEYS_DIR
    directory = _key_file(keys_dir, "key directory")
    files = [_key_file(keys_dir / name, purpose) for name, purpose in _KNOWN_KEYS.items()]
    if directory.mode is not None and stat.S_ISDIR(directory.mode):
        try:
            others = sorted(p.name for p in keys_dir.iterdir() if p.name not in _KNOWN_KEYS)
        except OSError as exc:
            raise CommandError(f"cannot list {keys_dir}: {exc.strerror or exc}") from exc
        files += [_key_file(keys_dir / name, "other key file") for name in others]
    loose = [f for f in (directory, *files) if not f.private]
    if args.json:
        _print_json(out, {"directory": directory.as_json(), "files": [f.as_json() for f in files]})
    else:
        if directory.mode is None:
            print(f"no keys yet: the sealing key is created in {keys_dir} on first use", file=out)
        rows = [
            [
                f.purpose,
                str(f.path),
                "missing" if f.mode is None else _mode(f.mode),
                "-" if f.size is None else f"{f.size} B",
                "-" if f.owner is None else str(f.owner),
            ]
            for f in (directory, *files)
            if f.mode is not None
        ]
        if rows:
            _table(
                out, "keys (contents never shown):", ["what", "path", "mode", "size", "uid"], rows
            )
    if loose:
        names = ", ".join(f"{f.path} ({_mode(f.mode or 0)})" for f in loose)
        print(
            f"{PROG}: warning: readable or writable by others: {names}; "
            f"expected {_PRIVATE_DIR:04o} for the directory and {_PRIVATE_FILE:04o} for files",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_drill(args: argparse.Namespace, out: TextIO, clock: Clock) -> int:
    try:
        # Imported lazily: the drill pulls in the simulators and loopback servers, which
        # the operator commands do not need.
        module = importlib.import_module("superapp_sdk._drill")
    except ModuleNotFoundError as exc:
        if exc.name != "superapp_sdk._drill":
            raise CommandError(f"the drill cannot start: {exc}", status=2) from exc
        raise CommandError(
            "the drill is not available in this installation of superapp-sdk "
            "(module superapp_sdk._drill is missing)",
            status=2,
        ) from exc
    drill_main = cast(Callable[[argparse.Namespace], object], module.main)
    result = drill_main(args)
    return result if isinstance(result, int) else 0


# -- parser ----------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _ticket(text: str) -> str:
    prefix, _, digits = text.partition("-")
    if prefix != "ob" or len(digits) != 12 or not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a ticket ({_TICKET_HINT})")
    return text


def _limit(text: str) -> int:
    value = _non_negative(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be in 1..10000, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``superapp`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate superapp-sdk: service health, the offline outbox, keys, drills.",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the SDK's state directory "
        f"(default: the config's state_dir, else {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration, as for SuperApp.from_config"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    status = commands.add_parser(
        "status",
        help="service level per capability, providers, failure domains, outbox depth",
        description="Health as this process sees it: breakers and failure domains start "
        "closed in a new process, so this shows the configuration and the durable outbox.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_cmd_status)

    outbox = commands.add_parser("outbox", help="list, show, retry or drop queued writes")
    actions = outbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="queued writes (payload sizes only)",
        description="Queued writes, oldest first.",
    )
    listing.add_argument("--dead", action="store_true", help="list the dead-letter store")
    listing.add_argument("--offset", type=_non_negative, default=0, metavar="N")
    listing.add_argument(
        "--after",
        type=_ticket,
        metavar="TICKET",
        help="start after this ticket (as fast at the end of a long queue as at the start)",
    )
    listing.add_argument("--limit", type=_limit, default=50, metavar="N", help="1..10000")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_cmd_outbox_list)
    show = actions.add_parser("show", help="one item's details (payload size only)")
    show.add_argument("ticket", metavar="TICKET")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=_cmd_outbox_show)
    retry = actions.add_parser("retry", help="put a dead letter back into its queue")
    retry.add_argument("ticket", metavar="TICKET")
    retry.set_defaults(run=_cmd_outbox_retry)
    drop = actions.add_parser("drop", help="delete an undelivered write for good")
    drop.add_argument("ticket", metavar="TICKET")
    drop.add_argument("--yes", action="store_true", help="confirm: the write is never delivered")
    drop.set_defaults(run=_cmd_outbox_drop)
    settle = actions.add_parser(
        "reconcile", help="settle a held write after checking the provider's own records"
    )
    settle.add_argument("ticket", metavar="TICKET", help="the OutcomeUnknown's ticket")
    verdict = settle.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--executed", dest="executed", action="store_true", help="the provider executed it"
    )
    verdict.add_argument(
        "--not-executed", dest="executed", action="store_false", help="it never executed"
    )
    settle.add_argument("--by", required=True, metavar="NAME", help="who decided (kept)")
    settle.add_argument("--provider-ref", metavar="REF", help="the provider's payment id")
    settle.set_defaults(run=_cmd_outbox_reconcile)

    keys = commands.add_parser("keys", help="where the keys live and their file modes")
    keys.add_argument("--json", action="store_true", help="print JSON")
    keys.set_defaults(run=_cmd_keys)

    drill = commands.add_parser("drill", help="burn the primary on loopback and watch failover")
    drill.add_argument("--quick", action="store_true", help="a short run")
    drill.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    drill.set_defaults(run=_cmd_drill)
    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run ``superapp`` with ``argv`` (default: the process arguments); the exit status.

    ``clock`` gives "now" for item ages (default: the system clock).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help and usage errors: argparse has printed them already.
        return exc.code if isinstance(exc.code, int) else 2
    run = cast(Callable[[argparse.Namespace, TextIO, Clock], int], args.run)
    try:
        return run(args, sys.stdout, clock or SystemClock())
    except CommandError as exc:
        return _fail(str(exc), exc.status)
    except SuperAppError as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
