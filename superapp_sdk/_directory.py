"""The directory: one app-level user, every provider's address, subject and billing key.

A user who logged in with Kakao and whose Kakao is burning can log in with the alternate
identity provider and land in the same account (``identity.link``), be messaged on LINE
or by e-mail, and be charged with a Toss or Stripe billing key. Billing keys are secrets:
they are sealed (AES-GCM) at rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from superapp_sdk._errors import StoreError
from superapp_sdk.store._protocol import Store
from superapp_sdk.tokens._seal import Sealer

__all__ = ["Contact", "Directory"]


@dataclass(frozen=True, slots=True)
class Contact:
    """Everything the SDK knows about reaching one user.

    Attributes:
        user_id: the app-level id.
        addresses: provider name -> the user's address there (Kakao uuid, LINE userId,
            e-mail address).
        subjects: identity provider name -> the user's subject (``sub``) there.
        billing_providers: providers holding a billing key for the user (the keys
            themselves are only handed to payment adapters, never returned here).
    """

    user_id: str
    addresses: Mapping[str, str] = field(default_factory=dict)
    subjects: Mapping[str, str] = field(default_factory=dict)
    billing_providers: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return (
            f"Contact(user_id={self.user_id!r}, addresses={dict(self.addresses)!r}, "
            f"subjects={dict(self.subjects)!r}, "
            f"billing_providers={sorted(self.billing_providers)!r})"
        )


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or "\x00" in value:
        raise ValueError(
            f"{name} must be a non-empty string of at most 256 characters, got {value!r}"
        )
    return value


class Directory:
    """App-level users mapped to provider identities, kept in a :class:`Store`."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer

    def _load(self, user_id: str) -> dict[str, dict[str, str]]:
        raw = self._store.get(f"user:{user_id}")
        if raw is None:
            return {"addresses": {}, "subjects": {}, "billing": {}}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as exc:
            raise StoreError(f"directory entry of user {user_id!r} is unreadable: {exc}") from exc
        for part in ("addresses", "subjects", "billing"):
            data.setdefault(part, {})
        return data

    def _save(self, user_id: str, data: dict[str, dict[str, str]]) -> None:
        self._store.set(f"user:{user_id}", json.dumps(data, sort_keys=True).encode())

    def put(
        self,
        user_id: str,
        *,
        provider: str,
        address: str | None = None,
        billing_key: str | None = None,
    ) -> None:
        """Record the user's address and/or billing key at ``provider``."""
        _check_id("user_id", user_id)
        _check_id("provider", provider)
        if address is None and billing_key is None:
            raise ValueError("put() needs an address or a billing_key")
        data = self._load(user_id)
        if address is not None:
            data["addresses"][provider] = _check_id("address", address)
        if billing_key is not None:
            sealed = self._sealer.seal(
                _check_id("billing_key", billing_key).encode(),
                purpose=f"billing:{user_id}:{provider}",
            )
            data["billing"][provider] = sealed.hex()
        self._save(user_id, data)

    def link(self, user_id: str, *, provider: str, subject: str) -> None:
        """Record that ``subject`` at identity ``provider`` is ``user_id``.

        Raises:
            ValueError: the subject is already linked to another user.
        """
        _check_id("user_id", user_id)
        _check_id("provider", provider)
        _check_id("subject", subject)
        owner_key = f"subject:{provider}:{subject}"
        if not self._store.add(owner_key, user_id.encode()):
            owner = self._store.get(owner_key)
            if owner is not None and owner.decode() != user_id:
                raise ValueError(
                    f"subject {subject!r} at {provider!r} is already linked to another user"
                )
        data = self._load(user_id)
        data["subjects"][provider] = subject
        self._save(user_id, data)

    def user_for(self, provider: str, subject: str) -> str | None:
        """The app-level user linked to ``subject`` at ``provider``, if any."""
        raw = self._store.get(f"subject:{provider}:{subject}")
        return raw.decode() if raw is not None else None

    def get(self, user_id: str) -> Contact:
        """Everything known about ``user_id`` (empty mappings for an unknown user)."""
        data = self._load(_check_id("user_id", user_id))
        return Contact(
            user_id=user_id,
            addresses=dict(data["addresses"]),
            subjects=dict(data["subjects"]),
            billing_providers=frozenset(data["billing"]),
        )

    def billing_key(self, user_id: str, provider: str) -> str | None:
        """The user's billing key at ``provider``, unsealed, or ``None``."""
        sealed = self._load(user_id)["billing"].get(provider)
        if sealed is None:
            return None
        try:
            raw = bytes.fromhex(sealed)
        except ValueError as exc:
            raise StoreError(f"billing key of {user_id!r} at {provider!r} is corrupted") from exc
        return self._sealer.open(raw, purpose=f"billing:{user_id}:{provider}").decode()
