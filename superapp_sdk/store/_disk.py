"""The embedded default store: diskcache under ``state_dir``."""

from __future__ import annotations

import math
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import diskcache

from superapp_sdk._errors import StoreError
from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.store._files import (
    SqliteFile,
    ensure_private_dir,
    ensure_private_file,
    store_error,
)
from superapp_sdk.store._namespace import NamespacedStore
from superapp_sdk.store._protocol import DEFAULT_MAX_VALUE_BYTES, Store, ValueTooLarge

__all__ = ["DiskStore"]

T = TypeVar("T")

# Every value carries its expiry (wall seconds on the store's clock, +inf for none) in a
# fixed header, so expiry follows the injected clock rather than diskcache's time.time().
_HEADER = struct.Struct(">d")
_KV_DIR = "kv"
_KV_FILE = "cache.db"


class DiskStore:
    """The embedded :class:`~superapp_sdk.store.Store`: diskcache (sqlite) under ``state_dir``.

    Args:
        state_dir: directory holding every piece of durable SDK state; created 0700 if
            missing, files inside are 0600.
        durable: True (default) runs sqlite with ``synchronous=FULL``: a write returns
            only after it is fsynced. False uses ``NORMAL``: writes survive a killed
            process but the last ones may be lost on power failure.
        clock: the clock that ``ttl`` is measured on (default: the system clock).
        max_value_bytes: values larger than this are refused with :class:`ValueTooLarge`.

    Raises:
        StoreError: the directory cannot be created or written, or the state file is
            corrupted; the message names the path.

    Example::

        store = DiskStore(".superapp")
        store.set("greeting", b"hello", ttl=60)
        store.namespace("outbox").add("lock", b"me")
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        durable: bool = True,
        clock: Clock | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if max_value_bytes < 1:
            raise ValueError(f"max_value_bytes must be >= 1, got {max_value_bytes!r}")
        self.path = Path(state_dir)
        self.durable = durable
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_value_bytes = max_value_bytes
        ensure_private_dir(self.path)
        kv_dir = self.path / _KV_DIR
        ensure_private_dir(kv_dir)
        self._kv_file = kv_dir / _KV_FILE
        ensure_private_file(self._kv_file)
        try:
            self._cache = diskcache.Cache(
                str(kv_dir),
                timeout=60,
                # Eviction would silently drop queued state: never evict.
                eviction_policy="none",
                sqlite_synchronous=2 if durable else 1,
                # Keep every value inside sqlite (no side files with their own modes).
                disk_min_file_size=max_value_bytes + _HEADER.size + 1,
            )
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            raise store_error(self._kv_file, "opening the state file", exc) from exc
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self._kv_file}{suffix}")
            if side.exists():
                ensure_private_file(side)

    # -- helpers -------------------------------------------------------------------------

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            raise store_error(self._kv_file, action, exc) from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[None]:
        try:
            with self._cache.transact(retry=True):
                yield
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            raise store_error(self._kv_file, action, exc) from exc

    def _check_size(self, key: str, value: bytes) -> None:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"store values must be bytes, got {type(value).__name__}")
        if len(value) > self.max_value_bytes:
            raise ValueTooLarge(
                f"value for {key!r} is {len(value)} bytes, over the store limit of "
                f"{self.max_value_bytes} bytes (max_value_bytes) ({self._kv_file})",
                limit=self.max_value_bytes,
                size=len(value),
                path=str(self._kv_file),
            )

    def _encode(self, value: bytes, ttl: float | None) -> bytes:
        if ttl is None:
            expires = math.inf
        else:
            if not ttl > 0:
                raise ValueError(f"ttl must be > 0 seconds or None, got {ttl!r}")
            expires = self.clock.time() + ttl
        return _HEADER.pack(expires) + bytes(value)

    def _decode(self, raw: object) -> bytes | None:
        if not isinstance(raw, bytes) or len(raw) < _HEADER.size:
            raise StoreError(
                f"reading the state failed: an entry is corrupted ({self._kv_file})",
                path=str(self._kv_file),
            )
        (expires,) = _HEADER.unpack_from(raw)
        if expires <= self.clock.time():
            return None
        return raw[_HEADER.size :]

    def _raw_get(self, key: str) -> bytes | None:
        raw = self._call("reading the state", lambda: self._cache.get(key, retry=True))
        if raw is None:
            return None
        return self._decode(raw)

    def _raw_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._check_size(key, value)
        encoded = self._encode(value, ttl)
        # diskcache's own expiry (on its clock) only reclaims space; ours decides.
        expire = None if ttl is None else ttl + 1.0

        def write() -> None:
            if not self._cache.set(key, encoded, expire=expire, retry=True):
                raise OSError(f"diskcache refused to store {key!r}")

        self._call("writing the state", write)

    # -- Store ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None`` when absent or expired."""
        return self._raw_get(key)

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (fsynced before returning when ``durable``)."""
        self._raw_set(key, value, ttl)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was present."""
        return bool(self._call("writing the state", lambda: self._cache.delete(key, retry=True)))

    def add(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; True when stored."""
        self._check_size(key, value)
        with self._transaction("writing the state"):
            if self._raw_get(key) is not None:
                return False
            self._raw_set(key, value, ttl)
            return True

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Replace the value of ``key`` with ``new`` only if it equals ``expected``."""
        self._check_size(key, new)
        with self._transaction("writing the state"):
            if self._raw_get(key) != expected:
                return False
            self._raw_set(key, new, None)
            return True

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer at ``key`` (absent counts as 0); the new value."""
        with self._transaction("writing the state"):
            current = self._raw_get(key)
            try:
                value = int(current) if current is not None else 0
            except ValueError:
                raise ValueError(f"the value of {key!r} is not an integer") from None
            value += delta
            self._raw_set(key, str(value).encode("ascii"), None)
            return value

    def namespace(self, name: str) -> Store:
        """A view of this store whose keys are prefixed with ``name``."""
        return NamespacedStore(self, name)

    # -- sqlite files for structured state (the outbox) ------------------------------------

    def sqlite_file(self, name: str) -> SqliteFile:
        """Open (creating 0600) the sqlite database ``<state_dir>/<name>.sqlite3``.

        Used by components that need indexed, transactional state (the outbox); it
        follows this store's ``durable`` setting.
        """
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"name must be a plain file name, got {name!r}")
        return SqliteFile(self.path / f"{name}.sqlite3", durable=self.durable)

    def close(self) -> None:
        """Close the underlying cache (idempotent)."""
        self._cache.close()

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskStore({str(self.path)!r}, durable={self.durable})"
