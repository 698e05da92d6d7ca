"""DiskStore: key/value with TTL on the injected clock, atomic updates, private files, errors."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from superapp_sdk import StoreError
from superapp_sdk.store import DiskStore, Store, ValueTooLarge
from superapp_sdk.testing import FakeClock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[DiskStore]:
    s = DiskStore(tmp_path / "state", clock=clock)
    yield s
    s.close()


def test_satisfies_the_store_protocol(store: DiskStore) -> None:
    """DiskStore and its namespaces are Stores."""
    assert isinstance(store, Store)
    assert isinstance(store.namespace("x"), Store)


def test_set_then_get_round_trips_bytes(store: DiskStore) -> None:
    """A stored value reads back byte for byte."""
    store.set("k", b"\x00value\xff")
    assert store.get("k") == b"\x00value\xff"


def test_missing_key_reads_none(store: DiskStore) -> None:
    """An absent key reads as None."""
    assert store.get("nope") is None


def test_ttl_follows_the_injected_clock(store: DiskStore, clock: FakeClock) -> None:
    """A key expires when the injected clock passes its TTL, not before."""
    store.set("k", b"v", ttl=10)
    clock.advance(9.9)
    assert store.get("k") == b"v"
    clock.advance(0.2)
    assert store.get("k") is None


def test_delete_reports_presence(store: DiskStore) -> None:
    """delete returns True only for a present key and removes it."""
    store.set("k", b"v")
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is None


def test_add_only_when_absent(store: DiskStore) -> None:
    """add stores a value once and refuses while the key exists."""
    assert store.add("k", b"first") is True
    assert store.add("k", b"second") is False
    assert store.get("k") == b"first"


def test_add_succeeds_over_an_expired_key(store: DiskStore, clock: FakeClock) -> None:
    """An expired key counts as absent for add."""
    store.set("k", b"old", ttl=1)
    clock.advance(2)
    assert store.add("k", b"new") is True
    assert store.get("k") == b"new"


def test_compare_and_set_replaces_only_on_match(store: DiskStore) -> None:
    """compare_and_set swaps only when the current value equals expected."""
    assert store.compare_and_set("k", None, b"1") is True
    assert store.compare_and_set("k", b"0", b"2") is False
    assert store.compare_and_set("k", b"1", b"2") is True
    assert store.get("k") == b"2"


def test_incr_counts_from_zero(store: DiskStore) -> None:
    """incr treats an absent key as 0 and returns the new value."""
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    assert store.get("n") == b"6"


def test_incr_is_atomic_across_threads(store: DiskStore) -> None:
    """Concurrent increments from several threads are never lost."""

    def bump() -> None:
        for _ in range(50):
            store.incr("n")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.get("n") == b"200"


def test_incr_is_atomic_across_processes(tmp_path: Path) -> None:
    """Two processes incrementing one key through DiskStore lose no update."""
    code = textwrap.dedent(
        f"""
        from superapp_sdk.store import DiskStore
        s = DiskStore({str(tmp_path / "state")!r}, durable=False)
        for _ in range(100):
            s.incr("n")
        s.close()
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO) for _ in range(2)]
    for p in procs:
        assert p.wait(60) == 0
    s = DiskStore(tmp_path / "state")
    try:
        assert s.get("n") == b"200"
    finally:
        s.close()


def _posix_locks_held(path: Path) -> int:
    """How many POSIX locks this process holds on ``path`` (from /proc/locks)."""
    st = os.stat(path)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    held = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 1234 fd:01:5678 128 128"; blocked waiters add "->".
        if "->" in fields or len(fields) < 6:
            continue
        if fields[1] == "POSIX" and fields[4] == str(os.getpid()) and fields[5] == wanted:
            held += 1
    return held


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_opening_the_store_twice_keeps_sqlites_locks(tmp_path: Path) -> None:
    """A second DiskStore on the same directory must not drop the first one's sqlite locks.

    Closing any descriptor of a file drops every POSIX lock the process holds on it: if
    opening the store opened and closed the live ``-shm`` file, another process could take
    itself for the first opener and truncate the shared memory under this one (SIGBUS).
    """
    first = DiskStore(tmp_path / "state", durable=False)
    try:
        first.set("k", b"v")
        shm = tmp_path / "state" / "kv" / "cache.db-shm"
        before = _posix_locks_held(shm)
        assert before >= 1, "sqlite should hold its shared-memory lock while the store is open"
        second = DiskStore(tmp_path / "state", durable=False)
        try:
            assert _posix_locks_held(shm) >= before
            assert second.get("k") == b"v"
        finally:
            second.close()
        assert _posix_locks_held(shm) >= 1
        assert first.get("k") == b"v"
    finally:
        first.close()


def test_namespaces_do_not_collide(store: DiskStore) -> None:
    """The same key in two namespaces holds two values."""
    a, b = store.namespace("a"), store.namespace("b")
    a.set("k", b"A")
    b.set("k", b"B")
    assert (a.get("k"), b.get("k"), store.get("k")) == (b"A", b"B", None)
    assert store.get("a:k") == b"A"


def test_nested_namespace_prefixes_both_names(store: DiskStore) -> None:
    """A namespace inside a namespace prefixes keys with both names."""
    store.namespace("a").namespace("b").set("k", b"v")
    assert store.get("a:b:k") == b"v"


def test_values_over_the_cap_are_refused_naming_the_limit(tmp_path: Path) -> None:
    """A value larger than max_value_bytes raises ValueTooLarge naming the limit."""
    s = DiskStore(tmp_path / "state", max_value_bytes=1000)
    try:
        with pytest.raises(ValueTooLarge, match="1000 bytes") as info:
            s.set("k", b"x" * 1001)
        assert info.value.limit == 1000
        assert s.get("k") is None
        s.set("k", b"x" * 1000)
        assert s.get("k") == b"x" * 1000
    finally:
        s.close()


def test_values_survive_reopening(tmp_path: Path) -> None:
    """A value written by one DiskStore is read by the next one on the same directory."""
    s = DiskStore(tmp_path / "state")
    s.set("k", b"v")
    s.close()
    s = DiskStore(tmp_path / "state")
    try:
        assert s.get("k") == b"v"
    finally:
        s.close()


def test_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    """Everything created under state_dir is private, whatever the umask."""
    old = os.umask(0o022)
    try:
        s = DiskStore(tmp_path / "state")
        s.set("k", b"v")
        db = s.sqlite_file("extra")
        with db.transaction("test") as con:
            con.execute("CREATE TABLE IF NOT EXISTS t (x)")
        modes = {
            p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode)
            for p in [tmp_path / "state", *(tmp_path / "state").rglob("*")]
        }
        db.close()
        s.close()
    finally:
        os.umask(old)
    assert modes, "nothing was created"
    for path, mode in modes.items():
        expected = 0o700 if (tmp_path / path).is_dir() else 0o600
        assert mode == expected, f"{path} has mode {oct(mode)}"
    assert any(str(p).endswith("-wal") for p in modes)


def test_loose_permissions_are_tightened_on_open(tmp_path: Path) -> None:
    """An existing state_dir with group/other access is narrowed to 0700."""
    (tmp_path / "state").mkdir(mode=0o755)
    (tmp_path / "state").chmod(0o755)
    DiskStore(tmp_path / "state").close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_garbage_state_file_raises_store_error_naming_it(tmp_path: Path) -> None:
    """A state file that is not a database gives StoreError with its path."""
    DiskStore(tmp_path / "state").close()
    db = tmp_path / "state" / "kv" / "cache.db"
    for side in db.parent.glob("cache.db-*"):
        side.unlink()
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="corrupted") as info:
        DiskStore(tmp_path / "state")
    assert str(db) in str(info.value)
    assert info.value.path == str(db)


def _open_and_read(state: Path, count: int) -> None:
    s = DiskStore(state)
    try:
        for i in range(count):
            s.get(f"k{i}")
    finally:
        s.close()


def test_truncated_state_file_raises_store_error_naming_it(tmp_path: Path) -> None:
    """A state file cut short gives StoreError with its path, not a crash or empty read."""
    s = DiskStore(tmp_path / "state")
    for i in range(2000):
        s.set(f"k{i}", os.urandom(300))
    s.close()
    db = tmp_path / "state" / "kv" / "cache.db"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 3)
    with pytest.raises(StoreError) as info:
        _open_and_read(tmp_path / "state", 2000)
    assert str(db) in str(info.value)


def test_state_dir_that_is_a_file_raises_store_error(tmp_path: Path) -> None:
    """A state_dir path occupied by a regular file gives StoreError naming it."""
    (tmp_path / "state").write_text("oops")
    with pytest.raises(StoreError, match="state"):
        DiskStore(tmp_path / "state")


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_available(), reason="needs unshare -rm (user + mount namespaces)"
)


def _run_in_mount_ns(tmp_path: Path, setup: str, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(code))
    shell = f"{setup} && exec {sys.executable} {script}"
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


@needs_unshare
def test_read_only_state_dir_raises_store_error_naming_it(tmp_path: Path) -> None:
    """A state directory on a read-only mount gives StoreError naming the path on write."""
    state = tmp_path / "ro"
    DiskStore(state).close()
    result = _run_in_mount_ns(
        tmp_path,
        f"mount --bind {state} {state} && mount -o remount,bind,ro {state}",
        f"""
        from superapp_sdk import StoreError
        from superapp_sdk.store import DiskStore
        try:
            s = DiskStore({str(state)!r})
            s.set("k", b"v")
        except StoreError as exc:
            print("STORE-ERROR", exc)
        else:
            print("WROTE")
        """,
    )
    assert "STORE-ERROR" in result.stdout, result.stdout + result.stderr
    assert str(state) in result.stdout


@needs_unshare
def test_full_disk_raises_store_error_and_keeps_earlier_values(tmp_path: Path) -> None:
    """Writing to a full filesystem raises StoreError naming the path; nothing is faked."""
    state = tmp_path / "small"
    state.mkdir()
    result = _run_in_mount_ns(
        tmp_path,
        f"mount -t tmpfs -o size=512k tmpfs {state}",
        f"""
        import os
        from superapp_sdk import StoreError
        from superapp_sdk.store import DiskStore
        s = DiskStore({str(state / "s")!r})
        written = 0
        try:
            for i in range(10_000):
                s.set(f"k{{i}}", os.urandom(4000))
                written += 1
        except StoreError as exc:
            print("STORE-ERROR", exc)
            print("READBACK", s.get("k0") is not None)
        print("WRITTEN", written)
        """,
    )
    assert "STORE-ERROR" in result.stdout, result.stdout + result.stderr
    assert "disk is full" in result.stdout
    assert str(state / "s") in result.stdout
    assert "READBACK True" in result.stdout


def test_close_waits_for_an_operation_in_progress(tmp_path: Path) -> None:
    """Closing while another thread is inside a transaction waits for it, then refuses new
    work: closing a connection in use would crash the interpreter."""
    from superapp_sdk.store import SqliteFile

    db = SqliteFile(tmp_path / "x.sqlite3")
    inside, release = threading.Event(), threading.Event()
    done: list[bool] = []

    def hold() -> None:
        with db.transaction("holding") as con:
            con.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            inside.set()
            release.wait(10)
            con.execute("INSERT INTO t VALUES (1)")
        done.append(True)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(10)
    closer = threading.Thread(target=db.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waiting for the transaction
    release.set()
    closer.join(10)
    t.join(10)
    assert done == [True]
    with pytest.raises(StoreError, match="closed"), db.reading("after close"):
        pass


def test_an_old_sqlite_is_refused_naming_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python linking a sqlite without RETURNING gets a StoreError naming both versions."""
    import sqlite3

    from superapp_sdk.store._files import SqliteFile

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(StoreError, match=r"3\.35\.0 or newer.*3\.31\.1"):
        SqliteFile(tmp_path / "x.sqlite3")
    assert not (tmp_path / "x.sqlite3").exists()


def test_a_truncated_outbox_is_refused_not_opened_empty(tmp_path: Path) -> None:
    """An outbox file truncated to 0 bytes (20 items in it) raises StoreError naming the
    file, and the file is left where it is; it used to open as an empty queue."""
    from superapp_sdk.offline import Outbox

    ob = Outbox(tmp_path / "state")
    for i in range(20):
        ob.enqueue(entity="e", operation="chat.send", payload={"i": i}, idempotency_key=f"k{i}")
    ob.close()
    path = tmp_path / "state" / "outbox.sqlite3"
    for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        side.unlink(missing_ok=True)
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="empty") as info:
        Outbox(tmp_path / "state")
    assert str(path) in str(info.value)
    assert path.exists()
    assert path.stat().st_size == 0


@pytest.mark.parametrize(("durable", "level"), [(True, 2), (False, 1)])
def test_a_durable_outbox_syncs_every_commit(tmp_path: Path, durable: bool, level: int) -> None:
    """The connection that commits an enqueue runs with synchronous=FULL (2) when the
    store is durable: sqlite then fsyncs the WAL before the commit returns, so a queued
    write survives a power loss, not only kill -9. NORMAL (1) only when asked."""
    from superapp_sdk.offline import Outbox

    ob = Outbox(tmp_path / "state", durable=durable)
    try:
        ob.enqueue(entity="e", operation="chat.send", payload={}, idempotency_key="k1")
        with ob._db.transaction("checking durability") as con:
            assert con.execute("PRAGMA synchronous").fetchone()[0] == level
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        ob.close()
