"""superapp-sdk: keep an app's backend working when the super-app it depends on goes dark."""

from superapp_sdk._errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    NoAnswer,
    OfflineCapExceeded,
    OperationTimeout,
    ProviderConnectError,
    ProviderError,
    ProviderRefused,
    RateLimited,
    Rejected,
    StoreError,
    SuperAppError,
    Unauthorized,
    Unavailable,
)
from superapp_sdk._outcome import Attempt, Outcome, Via

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "BudgetExhausted",
    "BulkheadFull",
    "CircuitOpen",
    "ConfigError",
    "Declined",
    "IdempotencyConflict",
    "InvalidRequest",
    "NoAnswer",
    "OfflineCapExceeded",
    "OperationTimeout",
    "Outcome",
    "ProviderConnectError",
    "ProviderError",
    "ProviderRefused",
    "RateLimited",
    "Rejected",
    "StoreError",
    "SuperAppError",
    "Unauthorized",
    "Unavailable",
    "Via",
]
