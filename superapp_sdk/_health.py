"""A running app's health, published for ``superapp status`` in another process.

Breakers and failure domains live in the memory of the process that routes the calls; a
command run beside it would only see its own fresh, closed breakers. So a started app
(``with app:``, ``app.start()``) writes its :class:`~superapp_sdk.Health` as JSON to
``<state_dir>/health/<pid>.json`` about once a second, from a background thread or task,
never from a user call: one file per process, since several processes (a server's
workers) may share a state directory. The file is written whole and renamed into place
(readers never see half of it), mode 0600 in a 0700 directory, and removed on close.

A file older than :data:`STALE_AFTER` whose pid is gone was left by a process that died
without closing: nothing is running there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superapp_sdk.core.clock import Clock
from superapp_sdk.store._files import ensure_private_dir

if TYPE_CHECKING:
    from superapp_sdk._app import Health

__all__ = [
    "HEALTH_DIR",
    "PUBLISH_INTERVAL",
    "STALE_AFTER",
    "AsyncHealthPublisher",
    "HealthPublisher",
    "Published",
    "health_report",
    "pid_alive",
    "read_published",
]

#: Where, under the state directory, running processes publish their health.
HEALTH_DIR = "health"
#: Seconds between two publications of one process.
PUBLISH_INTERVAL = 1.0
#: A publication older than this is stale: its process is stuck, or gone.
STALE_AFTER = 5.0
_VERSION = 1
_FILE_MODE = 0o600


def health_report(health: Health) -> dict[str, Any]:
    """``health`` as JSON-ready data: the shape ``superapp status --json`` prints."""
    return {
        "level": health.level.value if health.capabilities else None,
        "capabilities": {
            name: {
                "level": cap.level.value,
                "providers": [
                    {
                        "name": p.name,
                        "failure_domain": p.failure_domain,
                        "breaker": p.breaker.value,
                        "available": p.available,
                        "failure_rate": p.failure_rate,
                        "calls": p.calls,
                        "skip_reason": p.skip_reason,
                    }
                    for p in cap.providers
                ],
            }
            for name, cap in health.capabilities.items()
        },
        # "suspect" for a closed domain that user calls skip, else the state's value.
        "domains": {
            name: (d.label if (d := health.domain_health.get(name)) else state.value)
            for name, state in health.domains.items()
        },
        "outbox": {"depth": health.outbox_depth, "dead_letters": health.dead_letters},
    }


@dataclass(frozen=True, slots=True)
class Published:
    """One process's publication, as read back."""

    pid: int
    written_at: float
    report: dict[str, Any]


def _path(directory: Path, pid: int) -> Path:
    return directory / f"{pid}.json"


def _write(directory: Path, pid: int, written_at: float, health: Health) -> None:
    data = {"version": _VERSION, "pid": pid, "written_at": written_at, **health_report(health)}
    body = json.dumps(data, sort_keys=True).encode()
    tmp = directory / f".{pid}.json.tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE
    )
    try:
        os.fchmod(fd, _FILE_MODE)  # a leftover temp file keeps its old mode through O_TRUNC
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(tmp, _path(directory, pid))


def _remove(directory: Path, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(directory, pid).unlink()


def read_published(directory: Path) -> list[Published]:
    """Every readable publication in ``directory``, newest first (unreadable ones and
    other versions are skipped: a file being replaced, or another release's)."""
    found: list[Published] = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return found
    for path in paths:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            continue
        pid, written_at = data.get("pid"), data.get("written_at")
        if not isinstance(pid, int) or not isinstance(written_at, int | float):
            continue
        report = {k: v for k, v in data.items() if k not in ("version", "pid", "written_at")}
        found.append(Published(pid, float(written_at), report))
    found.sort(key=lambda p: p.written_at, reverse=True)
    return found


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (possibly another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class HealthPublisher:
    """Writes ``snapshot()`` to this process's file every ``interval`` seconds from a
    daemon thread, until :meth:`stop` (which removes the file).

    The interval is paced on the wall clock (``Event.wait``) rather than the app's timer:
    a ``FakeClock`` that never moves would otherwise stop publication, or spin it.
    """

    def __init__(
        self,
        directory: Path,
        snapshot: Callable[[], Health],
        clock: Clock,
        *,
        interval: float = PUBLISH_INTERVAL,
    ) -> None:
        self.directory = directory
        self.snapshot = snapshot
        self.clock = clock
        self.interval = interval
        self.pid = os.getpid()
        #: Publications that failed (a full disk, a closed store); the loop goes on.
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, snapshot: Callable[[], Health] | None = None) -> None:
        """Write one publication now, of ``snapshot()`` (default: the publisher's)."""
        try:
            health = (snapshot or self.snapshot)()
            ensure_private_dir(self.directory)
            _write(self.directory, self.pid, self.clock.time(), health)
        except Exception:  # noqa: BLE001 - health reporting must never break the app
            self.errors += 1

    def _run(self) -> None:
        while True:
            self.publish()
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        """Publish now, then every ``interval`` seconds."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="superapp-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing and remove this process's file."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        with contextlib.suppress(OSError):
            _remove(self.directory, self.pid)


class AsyncHealthPublisher:
    """The asyncio twin of :class:`HealthPublisher`: a task takes ``routing()`` on the
    event loop (where the router's state changes) and hands ``complete(routing)`` (the
    outbox counts read from disk) and the write to a worker thread."""

    def __init__(
        self,
        publisher: HealthPublisher,
        routing: Callable[[], Any],
        complete: Callable[[Any], Health],
    ) -> None:
        self.publisher = publisher
        self.routing = routing
        self.complete = complete
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        pub = self.publisher
        while True:
            snapshot = self.routing()
            await asyncio.to_thread(pub.publish, functools.partial(self.complete, snapshot))
            # Wall-clock pacing, as in HealthPublisher.
            await asyncio.sleep(pub.interval)

    def start(self) -> None:
        """Start the task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the task and remove this process's file."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_remove, self.publisher.directory, self.publisher.pid)
