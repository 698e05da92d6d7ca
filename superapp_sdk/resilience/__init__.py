"""Sync and async shells that drive the sans-IO core: pipelines of resilience strategies
and httpx transports that use them."""

from superapp_sdk.resilience._base import (
    CallContext,
    CallRejected,
    Event,
    HedgeLaunched,
    Listener,
    RetryScheduled,
    Strategy,
    SystemTimer,
    Timer,
    default_failure,
    default_retryable,
    retryable_unless_timeout,
)
from superapp_sdk.resilience._pipeline import Pipeline
from superapp_sdk.resilience._router import (
    DomainOpen,
    OutcomeUnknown,
    Route,
    Routed,
    Router,
    SharedDetector,
)
from superapp_sdk.resilience._strategies import (
    Bulkhead,
    CircuitBreaker,
    Deadline,
    Hedge,
    Retry,
    SharedBudget,
    Timeout,
    arun_hedged,
    run_hedged,
)
from superapp_sdk.resilience._transport import AsyncResilientTransport, ResilientTransport

__all__ = [
    "AsyncResilientTransport",
    "Bulkhead",
    "CallContext",
    "CallRejected",
    "CircuitBreaker",
    "Deadline",
    "DomainOpen",
    "Event",
    "Hedge",
    "HedgeLaunched",
    "Listener",
    "OutcomeUnknown",
    "Pipeline",
    "ResilientTransport",
    "Retry",
    "RetryScheduled",
    "Route",
    "Routed",
    "Router",
    "SharedBudget",
    "SharedDetector",
    "Strategy",
    "SystemTimer",
    "Timeout",
    "Timer",
    "arun_hedged",
    "default_failure",
    "default_retryable",
    "retryable_unless_timeout",
    "run_hedged",
]
