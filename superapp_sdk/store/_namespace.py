"""A prefixed view of any :class:`~superapp_sdk.store.Store`."""

from __future__ import annotations

from superapp_sdk.store._protocol import Store

__all__ = ["NamespacedStore"]


class NamespacedStore:
    """A view of ``store`` whose keys are prefixed with ``name`` and a colon.

    Namespaces nest: ``store.namespace("a").namespace("b")`` prefixes keys with ``a:b:``.
    """

    __slots__ = ("_prefix", "_store")

    def __init__(self, store: Store, name: str) -> None:
        if not name or ":" in name:
            raise ValueError(f"namespace name must be non-empty without ':', got {name!r}")
        self._store = store
        self._prefix = f"{name}:"

    def _key(self, key: str) -> str:
        return self._prefix + key

    def get(self, key: str) -> bytes | None:
        """The value of ``key`` in this namespace, or ``None``."""
        return self._store.get(self._key(key))

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` in this namespace."""
        self._store.set(self._key(key), value, ttl=ttl)

    def delete(self, key: str) -> bool:
        """Remove ``key`` from this namespace; True when it was present."""
        return self._store.delete(self._key(key))

    def add(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; True when stored."""
        return self._store.add(self._key(key), value, ttl=ttl)

    def compare_and_set(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Replace the value of ``key`` only if it equals ``expected``."""
        return self._store.compare_and_set(self._key(key), expected, new)

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer at ``key``; the new value."""
        return self._store.incr(self._key(key), delta)

    def namespace(self, name: str) -> Store:
        """A nested namespace."""
        return NamespacedStore(self, name)

    def close(self) -> None:
        """Namespaces share the parent's resources: closing the view closes nothing."""

    def __repr__(self) -> str:
        return f"NamespacedStore({self._store!r}, {self._prefix[:-1]!r})"
