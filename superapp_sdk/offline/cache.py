"""The stale-if-error read cache.

Idempotent reads (chat history, profile, estimates, payment status) store their last good
answer here. When every provider fails, the facade answers from the cache with
``Via.CACHE`` and ``stale_for`` (how old the value is), as long as it is no older than the
operation's max staleness; beyond that the read fails with ``Unavailable``. This is HTTP's
``stale-if-error`` (RFC 5861, section 4) applied per operation.

**Secrets never go into this cache**: tokens, card data, billing keys and anything else
a caller marks ``secret=True`` are refused, because the cache is plain sqlite on disk and
is meant to be served when the provider that could re-check them is down.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from superapp_sdk.core.clock import Clock, SystemClock
from superapp_sdk.store._protocol import Store

__all__ = ["CachedValue", "ReadCache"]

# stored_at (wall seconds), kind (0 bytes, 1 JSON), operation length; then operation, value.
_HEADER = struct.Struct(">dBH")
_KIND_BYTES = 0
_KIND_JSON = 1

#: What the read cache holds: raw bytes, or any JSON value.
CacheValue = bytes | Mapping[str, object] | list[object] | str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class CachedValue:
    """A value served from the cache.

    Attributes:
        value: as given to :meth:`ReadCache.put` (bytes, or the JSON value decoded).
        operation: the operation that produced it (``"chat.history"``).
        stored_at: wall seconds when it was stored.
        stale_for: seconds since it was stored (what ``Outcome.stale_for`` reports).
    """

    value: CacheValue
    operation: str
    stored_at: float
    stale_for: float


class ReadCache:
    """The last good answer of each idempotent read, kept in a :class:`Store`.

    Args:
        store: where entries live (usually ``DiskStore(...).namespace("cache")``).
        clock: wall time for ``stored_at`` and ``stale_for`` (they survive restarts).
        max_staleness: per operation, the oldest value (seconds) that may be served.
        default_max_staleness: for operations not in ``max_staleness``.

    Entries expire from the store once they are older than their operation's limit.

    Example::

        cache = ReadCache(store.namespace("cache"), max_staleness={"chat.history": 3600})
        cache.put("history:conv-1", {"messages": []}, operation="chat.history")
        hit = cache.get("history:conv-1")
        hit.stale_for if hit else None
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        max_staleness: Mapping[str, float] | None = None,
        default_max_staleness: float = 24 * 3600.0,
    ) -> None:
        for operation, limit in {
            "<default>": default_max_staleness,
            **(max_staleness or {}),
        }.items():
            if not (limit > 0 and math.isfinite(limit)):
                raise ValueError(
                    f"max_staleness for {operation!r} must be a finite number > 0, got {limit!r}"
                )
        self._store = store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._limits = dict(max_staleness or {})
        self._default = default_max_staleness

    def max_staleness(self, operation: str) -> float:
        """The oldest value (seconds) of ``operation`` that may be served."""
        return self._limits.get(operation, self._default)

    def put(self, key: str, value: CacheValue, *, operation: str, secret: bool = False) -> None:
        """Remember ``value`` as the last good answer for ``key``.

        Raises:
            ValueError: ``secret=True``: secrets (tokens, card data, billing keys) are never
                cached.
            TypeError: ``value`` is neither bytes nor JSON-serialisable.
            StoreError: the store could not write it.
        """
        if secret:
            raise ValueError(f"refusing to cache {key!r}: secrets never go into the read cache")
        if not operation:
            raise ValueError("operation must be a non-empty string")
        if isinstance(value, bytes | bytearray | memoryview):
            kind, body = _KIND_BYTES, bytes(value)
        else:
            try:
                text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"cached value for {key!r} is not JSON-serialisable: {exc}"
                ) from exc
            kind, body = _KIND_JSON, text.encode("utf-8")
        op = operation.encode("utf-8")
        record = _HEADER.pack(self.clock.time(), kind, len(op)) + op + body
        self._store.set(key, record, ttl=self.max_staleness(operation))

    def get(self, key: str, *, max_staleness: float | None = None) -> CachedValue | None:
        """The cached value of ``key`` if it is fresh enough, else ``None``.

        ``max_staleness`` overrides the operation's limit for this read (it can only be
        used to ask for fresher values than the entry's TTL keeps).
        """
        record = self._store.get(key)
        if record is None or len(record) < _HEADER.size:
            return None
        stored_at, kind, op_len = _HEADER.unpack_from(record)
        start = _HEADER.size
        operation = record[start : start + op_len].decode("utf-8", errors="replace")
        body = record[start + op_len :]
        limit = self.max_staleness(operation) if max_staleness is None else max_staleness
        stale_for = max(0.0, self.clock.time() - stored_at)
        if stale_for > limit:
            return None
        value: CacheValue = json.loads(body) if kind == _KIND_JSON else bytes(body)
        return CachedValue(
            value=value, operation=operation, stored_at=stored_at, stale_for=stale_for
        )

    def invalidate(self, key: str) -> bool:
        """Forget ``key``; True when it was cached."""
        return self._store.delete(key)

    def __repr__(self) -> str:
        return f"ReadCache({self._store!r})"
