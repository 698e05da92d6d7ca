"""The ``Store`` protocol: the durable key/value state every offline feature builds on.

The embedded default is :class:`~superapp_sdk.store.DiskStore` (diskcache, under
``state_dir``); a shared Redis backend implements the same protocol when one backend runs
as several replicas.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from superapp_sdk._errors import StoreError

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "Store", "ValueTooLarge"]

#: Values larger than this are refused unless the store is configured otherwise.
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024


class ValueTooLarge(StoreError, ValueError):
    """A value is larger than the store accepts; the message names the limit.

    Attributes:
        limit: the limit in bytes.
        size: the size of the refused value in bytes.
    """

    def __init__(self, message: str, *, limit: int, size: int, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.limit = limit
        self.size = size


@runtime_checkable
class Store(Protocol):
    """Durable key/value state with expiry and atomic updates.

    Keys are strings, values are bytes. ``ttl`` is in seconds measured on the store's
    clock; an expired key reads as absent. Every method raises
    :class:`~superapp_sdk.StoreError` (naming the path or address) when the state cannot
    be read or written, and :class:`ValueTooLarge` for a value over the store's cap: a
    write is never dropped silently.
    """

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None`` when absent or expired."""
        ...

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was present."""
        ...

    def add(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (or expired); True when stored.

        Atomic across threads and processes sharing the store.
        """
        ...

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Replace the value of ``key`` with ``new`` only if it currently equals ``expected``.

        ``expected=None`` means "only if absent". Atomic across threads and processes.
        Returns True when the value was replaced. The new value does not expire.
        """
        ...

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer stored at ``key`` (absent counts as 0); the new value.

        Atomic across threads and processes.
        """
        ...

    def namespace(self, name: str) -> Store:
        """A view of this store whose keys are prefixed with ``name``."""
        ...

    def close(self) -> None:
        """Release connections and file handles (idempotent)."""
        ...
