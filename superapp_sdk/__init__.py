"""superapp-sdk: keep an app's backend working when the super-app it depends on goes dark."""

from superapp_sdk._app import (
    AsyncSuperApp,
    CapabilityHealth,
    DeadLettered,
    Health,
    ProviderHealth,
    ServiceLevel,
    SuperApp,
    Timeouts,
)
from superapp_sdk._directory import Contact
from superapp_sdk._errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    NoAnswer,
    NotApplicable,
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
from superapp_sdk._ops import IdentityPolicy, OfflinePolicy
from superapp_sdk._outcome import Attempt, Outcome, Via
from superapp_sdk.capabilities._common import Capability, Money

__version__ = "0.1.0"

__all__ = [
    "AsyncSuperApp",
    "Attempt",
    "BudgetExhausted",
    "BulkheadFull",
    "Capability",
    "CapabilityHealth",
    "CircuitOpen",
    "ConfigError",
    "Contact",
    "DeadLettered",
    "Declined",
    "Health",
    "IdempotencyConflict",
    "IdentityPolicy",
    "InvalidRequest",
    "Money",
    "NoAnswer",
    "NotApplicable",
    "OfflineCapExceeded",
    "OfflinePolicy",
    "OperationTimeout",
    "Outcome",
    "ProviderConnectError",
    "ProviderError",
    "ProviderHealth",
    "ProviderRefused",
    "RateLimited",
    "Rejected",
    "ServiceLevel",
    "StoreError",
    "SuperApp",
    "SuperAppError",
    "Timeouts",
    "Unauthorized",
    "Unavailable",
    "Via",
]
