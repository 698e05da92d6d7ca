"""Durable state: the ``Store`` protocol and its embedded diskcache backend.

Everything the SDK keeps across restarts (the outbox, the read cache, keys, sessions)
lives in a :class:`Store`. :class:`DiskStore` keeps it under ``state_dir`` with
directories 0700 and files 0600; errors name the path and are never swallowed.
"""

from superapp_sdk.store._disk import DiskStore
from superapp_sdk.store._files import SqliteFile
from superapp_sdk.store._namespace import NamespacedStore
from superapp_sdk.store._protocol import DEFAULT_MAX_VALUE_BYTES, Store, ValueTooLarge

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "DiskStore",
    "NamespacedStore",
    "SqliteFile",
    "Store",
    "ValueTooLarge",
]
