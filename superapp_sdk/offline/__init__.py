"""Offline behaviour: the durable outbox for writes and the stale-if-error read cache."""

from superapp_sdk.offline.cache import CachedValue, ReadCache
from superapp_sdk.offline.outbox import (
    AsyncOutboxWorker,
    ItemState,
    Outbox,
    OutboxItem,
    OutboxPolicy,
    OutboxWorker,
    Payload,
)

__all__ = [
    "AsyncOutboxWorker",
    "CachedValue",
    "ItemState",
    "Outbox",
    "OutboxItem",
    "OutboxPolicy",
    "OutboxWorker",
    "Payload",
    "ReadCache",
]
