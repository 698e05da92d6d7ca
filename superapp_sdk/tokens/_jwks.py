"""A provider's JSON Web Key Set, kept with its age, and the decisions about refetching it.

Sans-IO: the cache never fetches. A shell asks :meth:`JwksCache.begin_fetch` whether to
fetch now (one fetch at a time, never more often than ``min_refetch_interval``), fetches
with the provider's ``jwks()`` call, and reports back with :meth:`JwksCache.end_fetch`.
This is what lets ID tokens be verified while the identity provider is down: the last
good key set stays usable for ``max_stale`` seconds.

Times are wall-clock seconds (``Clock.time()``), not monotonic: ``fetched_at`` is
persisted with the keys and must mean the same thing after a restart.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from superapp_sdk.core.clock import Clock

__all__ = ["JwksCache", "JwksCacheOptions"]


@dataclass(frozen=True, slots=True)
class JwksCacheOptions:
    """How long a key set is trusted and how often it may be refetched.

    Attributes:
        refresh_after: age in seconds after which a refetch is due (the keys stay usable).
        max_stale: age in seconds after which the keys are no longer used at all; bounds
            how long a revoked key can still verify tokens while the provider is down.
        min_refetch_interval: minimum seconds between two fetch attempts, whatever their
            reason: an unknown ``kid`` in a forged token must not make us hammer the
            provider (OpenID Connect Core 10.1.1 expects refetch on unknown kid).
        fetch_timeout: seconds after which a fetch that never reported back no longer
            blocks the next one.
    """

    refresh_after: float = 3600.0
    max_stale: float = 7 * 86400.0
    min_refetch_interval: float = 60.0
    fetch_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.refresh_after > 0:
            raise ValueError(f"refresh_after must be > 0 seconds, got {self.refresh_after!r}")
        if not self.refresh_after <= self.max_stale:
            raise ValueError(
                f"max_stale must be >= refresh_after ({self.refresh_after!r}), "
                f"got {self.max_stale!r}"
            )
        if not self.min_refetch_interval >= 0:
            raise ValueError(
                f"min_refetch_interval must be >= 0 seconds, got {self.min_refetch_interval!r}"
            )
        if not self.fetch_timeout > 0:
            raise ValueError(f"fetch_timeout must be > 0 seconds, got {self.fetch_timeout!r}")


def _validated(jwks: Mapping[str, Any]) -> dict[str, Any]:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError("a JWKS must be an object with a 'keys' list")
    for index, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise ValueError(f"JWKS key #{index} is not an object with a string 'kty'")
    return copy.deepcopy(dict(jwks))


class JwksCache:
    """One provider's key set, its age, and when to fetch it again. Thread-safe.

    Example::

        cache = JwksCache(clock=clock)
        if cache.begin_fetch():               # due, nobody else fetching, not too soon
            try:
                jwks = run_call(client, login.jwks(), ...)
            except SuperAppError:
                cache.end_fetch(None)         # keep the old keys
            else:
                cache.end_fetch(jwks)
        document = cache.document()           # None when empty or too stale

    On an unknown ``kid``, ``begin_fetch(force=True)`` refetches early, subject to the
    same rate limit.
    """

    def __init__(self, *, clock: Clock, options: JwksCacheOptions | None = None) -> None:
        self._clock = clock
        self.options = options or JwksCacheOptions()
        self._lock = threading.Lock()
        self._jwks: dict[str, Any] | None = None
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._fetching_since: float | None = None

    def _now(self, now: float | None) -> float:
        return self._clock.time() if now is None else now

    @property
    def fetched_at(self) -> float | None:
        """When the current keys were fetched (epoch seconds), or ``None`` when empty."""
        return self._fetched_at

    def update(self, jwks: Mapping[str, Any], *, fetched_at: float | None = None) -> None:
        """Replace the keys, e.g. with a set loaded from disk with its original time.

        Raises:
            ValueError: ``jwks`` is not ``{"keys": [{"kty": ...}, ...]}``.
        """
        document = _validated(jwks)
        with self._lock:
            self._jwks = document
            self._fetched_at = self._now(fetched_at)

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the keys were fetched, or ``None`` when empty."""
        with self._lock:
            if self._fetched_at is None:
                return None
            return max(0.0, self._now(now) - self._fetched_at)

    def needs_refresh(self, now: float | None = None) -> bool:
        """True when empty or older than ``refresh_after``."""
        age = self.age(now)
        return age is None or age >= self.options.refresh_after

    def is_usable(self, now: float | None = None) -> bool:
        """True when there are keys no older than ``max_stale``."""
        age = self.age(now)
        return age is not None and age <= self.options.max_stale

    def document(self, now: float | None = None) -> dict[str, Any] | None:
        """A copy of the key set to verify with, or ``None`` when empty or too stale."""
        if not self.is_usable(now):
            return None
        with self._lock:
            return copy.deepcopy(self._jwks)

    def find(self, kid: str | None) -> dict[str, Any] | None:
        """The key with ``kid`` (whatever its age); with ``kid=None``, the only key."""
        with self._lock:
            keys: list[dict[str, Any]] = [] if self._jwks is None else self._jwks["keys"]
            if kid is None:
                return copy.deepcopy(keys[0]) if len(keys) == 1 else None
            for key in keys:
                if key.get("kid") == kid:
                    return copy.deepcopy(key)
            return None

    def may_fetch(self, now: float | None = None) -> bool:
        """True when no fetch is in flight and the last attempt is old enough."""
        with self._lock:
            return self._may_fetch(self._now(now))

    def _may_fetch(self, now: float) -> bool:
        if (
            self._fetching_since is not None
            and now - self._fetching_since < self.options.fetch_timeout
        ):
            return False
        return (
            self._last_attempt is None
            or now - self._last_attempt >= self.options.min_refetch_interval
        )

    def begin_fetch(self, now: float | None = None, *, force: bool = False) -> bool:
        """Claim the right to fetch now; True means: fetch, then call :meth:`end_fetch`.

        Without ``force``, a fetch is due only when :meth:`needs_refresh`; ``force``
        (an unknown ``kid``) skips that, never the single-flight guard or the rate limit.
        """
        at = self._now(now)
        with self._lock:
            due = (
                force
                or self._fetched_at is None
                or at - self._fetched_at >= self.options.refresh_after
            )
            if not due or not self._may_fetch(at):
                return False
            self._fetching_since = at
            self._last_attempt = at
            return True

    def end_fetch(self, jwks: Mapping[str, Any] | None, now: float | None = None) -> None:
        """Report a fetch: the new key set, or ``None`` when it failed (keys are kept).

        Raises:
            ValueError: ``jwks`` is malformed (the old keys are kept, the fetch ends).
        """
        at = self._now(now)
        try:
            document = None if jwks is None else _validated(jwks)
        finally:
            with self._lock:
                self._fetching_since = None
        if document is not None:
            with self._lock:
                self._jwks = document
                self._fetched_at = at

    def __repr__(self) -> str:
        count = 0 if self._jwks is None else len(self._jwks["keys"])
        return f"JwksCache(keys={count}, fetched_at={self._fetched_at!r})"
