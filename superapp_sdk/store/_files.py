"""Private files and sqlite databases under ``state_dir``.

Everything the SDK persists (tokens, queued payments, receipts) is private to the user
running the backend: directories are created 0700 and files 0600, whatever the umask.
Every sqlite or OS error is turned into a :class:`~superapp_sdk.StoreError` naming the
path, so a corrupted file, a read-only directory or a full disk is reported, never dropped.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from superapp_sdk._errors import StoreError

__all__ = ["SqliteFile", "ensure_private_dir", "ensure_private_file", "store_error"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def store_error(path: Path | str, action: str, exc: BaseException) -> StoreError:
    """A :class:`StoreError` for ``exc`` raised while doing ``action`` on ``path``."""
    text = str(exc)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered:
        why = "the state file is corrupted or truncated"
    elif "full" in lowered or getattr(exc, "errno", None) == 28:
        why = "the disk is full"
    elif "readonly" in lowered or "read-only" in lowered or isinstance(exc, PermissionError):
        why = "the state is not writable"
    elif "unable to open" in lowered:
        why = "the state file cannot be opened"
    else:
        why = "the state cannot be read or written"
    return StoreError(f"{action} failed: {why} ({path}): {text}", path=str(path))


#: The oldest sqlite the state files work with (3.35: RETURNING; 3.33: UPDATE ... FROM).
MIN_SQLITE = (3, 35, 0)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing and make it 0700; StoreError if impossible."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
            path.chmod(DIR_MODE)
    except OSError as exc:
        raise store_error(path, "creating the state directory", exc) from exc


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty if missing, and make it 0600; StoreError if impossible.

    An existing file is never opened, only chmod-ed by name: sqlite locks its files with
    POSIX advisory locks, and closing *any* descriptor of a file drops every such lock the
    process holds on it. Opening and closing a live database (or its ``-shm``) here would
    let another process believe it is the first to open it and truncate the shared memory
    this one has mapped (SIGBUS). https://www.sqlite.org/howtocorrupt.html#_posix_advisory_locks_canceled_by_a_separate_thread_doing_close_
    """
    try:
        with contextlib.suppress(FileExistsError):
            # Only a file this call creates is opened (and closed at once).
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE))
        if stat.S_IMODE(os.stat(path).st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)  # the umask may have narrowed a new file's mode
    except OSError as exc:
        raise store_error(path, "creating the state file", exc) from exc


def _refuse_emptied(path: Path) -> None:
    """StoreError when ``path`` exists but is empty and has no WAL beside it.

    sqlite opens a zero-byte file as a new, empty database: a state file truncated by a
    full disk, a bad restore or a stray ``>`` would silently become an empty queue and
    every write in it would be lost. A database this class created has its header from
    its first transaction on, so an empty one is damage; it is left where it is for the
    operator, who moves it aside to start over.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise store_error(path, "inspecting the state file", exc) from exc
    if size:
        return
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        return
    raise StoreError(
        f"the state file {path} exists but is empty: it was truncated, and opening it would"
        " start over with nothing in it. Restore it from a backup, or move it aside to"
        " start with an empty one.",
        path=str(path),
    )


class SqliteFile:
    """A sqlite database in WAL mode: one connection for writes, one per thread for reads.

    ``durable=True`` sets ``synchronous=FULL``: every commit is fsynced before it returns,
    so a committed write survives power loss. With ``durable=False`` (``NORMAL``) a commit
    survives a crash of the process (``kill -9``) but the last commits may be lost if the
    machine itself loses power (https://www.sqlite.org/pragma.html#pragma_synchronous).

    ``wal_autocheckpoint`` is how many WAL pages trigger a checkpoint (sqlite's default,
    1000). A checkpoint copies the WAL into the database and syncs it, inside whichever
    commit crossed the threshold. Measured on the outbox: 4000 pages cut the commit time
    of an acknowledgement by ~30% and made the first 100,000 enqueues of a fresh queue ~20%
    faster, but not the last 100,000 of a million (the random-key index no longer fits in
    the cache either way); the default stays sqlite's, which keeps the WAL near 4 MiB.

    Every :meth:`transaction` of this object runs on one shared connection (writers of
    this process take turns on a mutex anyway). In WAL mode a connection that sees another
    connection's commit discards its whole page cache at its next transaction, so when
    two threads took turns writing on their own connections each commit started cold:
    measured on the outbox, an acknowledgement alternating between two threads took ~150
    us against ~90 us on one connection.
    """

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        busy_timeout: float = 60.0,
        cache_kib: int = 8192,
        wal_autocheckpoint: int = 1000,
    ) -> None:
        if wal_autocheckpoint < 0:
            raise ValueError(f"wal_autocheckpoint must be >= 0 pages, got {wal_autocheckpoint!r}")
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"the state file needs sqlite {'.'.join(map(str, MIN_SQLITE))} or newer"
                f" (RETURNING, UPDATE ... FROM); this Python links sqlite"
                f" {sqlite3.sqlite_version} ({path})",
                path=str(path),
            )
        self.path = path
        self.durable = durable
        self._busy_timeout = busy_timeout
        self._cache_kib = cache_kib
        self._wal_autocheckpoint = wal_autocheckpoint
        # Writers of this process queue here rather than in sqlite's busy handler, which
        # sleeps between retries (milliseconds) instead of waking the next writer at once.
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._writer: sqlite3.Connection | None = None
        self._closed = False
        self._in_use = 0
        self._idle = threading.Condition(threading.Lock())
        ensure_private_dir(path.parent)
        _refuse_emptied(path)
        ensure_private_file(path)
        with self.reading("opening the state file") as con:
            con.execute("PRAGMA schema_version").fetchone()
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                ensure_private_file(side)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            con.execute("PRAGMA journal_mode=WAL").fetchone()
            con.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            con.execute(f"PRAGMA cache_size=-{int(self._cache_kib)}")
            con.execute("PRAGMA temp_store=MEMORY")
            con.execute(f"PRAGMA wal_autocheckpoint={int(self._wal_autocheckpoint)}")
        except BaseException:
            con.close()
            raise
        return con

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            with self._lock:
                if self._closed:
                    raise StoreError(f"the state file is closed ({self.path})", path=str(self.path))
            con = self._connect()
            with self._lock:
                self._connections.append(con)
            self._local.con = con
        return con

    def _writer_connection(self) -> sqlite3.Connection:
        """The connection every transaction uses; call with ``_write_lock`` held."""
        con = self._writer
        if con is None:
            con = self._writer = self._connect()
            with self._lock:
                self._connections.append(con)
        return con

    @contextmanager
    def reading(self, action: str) -> Iterator[sqlite3.Connection]:
        """A connection for reads; any sqlite/OS error becomes a StoreError naming the path."""
        with self._using():
            try:
                yield self.connection()
            except (sqlite3.Error, OSError) as exc:
                raise store_error(self.path, action, exc) from exc

    @contextmanager
    def _using(self) -> Iterator[None]:
        # close() waits for every operation in progress: closing a sqlite connection that
        # another thread is using crashes the interpreter (a segmentation fault, seen when
        # an async worker's claim ran in a thread while the app closed).
        with self._idle:
            if self._closed:
                raise StoreError(f"the state file is closed ({self.path})", path=str(self.path))
            self._in_use += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_use -= 1
                if self._in_use == 0:
                    self._idle.notify_all()

    @contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: one writer at a time across threads and processes.

        The write lock is taken up front, so a read-then-write inside the block is atomic.
        Threads of this process wait for each other on a mutex first, so only one of them
        at a time asks sqlite for the lock.
        On any exception the transaction is rolled back; sqlite/OS errors become
        StoreError naming the path.
        """
        with self._using(), self._write_lock:
            try:
                con = self._writer_connection()
                con.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, OSError) as exc:
                raise store_error(self.path, action, exc) from exc
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                try:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                except sqlite3.Error:
                    # The original error is the one worth reporting; a failed rollback
                    # leaves the transaction to sqlite's own recovery on the next open.
                    pass
                if isinstance(exc, sqlite3.Error | OSError):
                    raise store_error(self.path, action, exc) from exc
                raise

    def close(self, timeout: float = 30.0) -> None:
        """Close every thread's connection (idempotent), after the operations in progress
        finish (waiting up to ``timeout`` seconds); new operations are refused."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._in_use == 0, timeout)
        with self._lock:
            connections, self._connections = self._connections, []
            self._writer = None
        for con in connections:
            con.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SqliteFile({str(self.path)!r}, durable={self.durable})"
