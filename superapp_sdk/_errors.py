"""The error tree.

Errors are grouped by cause, so a caller can decide what to do from the class alone::

    SuperAppError
    ├── NoAnswer                  no usable answer came back (retry or fail over)
    │   ├── ProviderConnectError     the connection could not be made or was reset
    │   ├── OperationTimeout         a try or the overall deadline ran out (also TimeoutError)
    │   └── ProviderError            an answer came back but is unusable: 5xx, malformed
    │                                JSON, wrong types, a body over the size cap
    ├── ProviderRefused           the provider answered "no" (never fails over by itself)
    │   ├── Declined                 a business refusal: card declined, unknown recipient
    │   │   └── AlreadyExecuted          "already done": an earlier try of this very
    │   │                                request executed (its answer was lost)
    │   ├── Unauthorized             credentials or token rejected
    │   ├── InvalidRequest           the provider says the request is malformed
    │   └── RateLimited              429; carries ``retry_after``
    ├── Rejected                  we refused before calling anyone
    │   ├── CircuitOpen              the breaker or the failure domain is open
    │   ├── BudgetExhausted          the retry budget of the failure domain is spent
    │   ├── BulkheadFull             too many concurrent calls
    │   ├── IdempotencyConflict      one idempotency key, two different payloads
    │   ├── NotApplicable            this provider cannot serve this call (no address
    │   │   │                        or billing key for the user there)
    │   │   └── Undeliverable            no configured provider could ever take this
    │   │                                write: refused at once, never queued
    │   └── OfflineCapExceeded       an offline allowance (voucher cap, grace scope) is spent
    ├── OutcomeUnknown            an at-most-once write may or may not have executed at
    │                             ``provider``; held, never sent again (``ticket``)
    ├── Unavailable               nothing could serve and the call cannot be deferred;
    │                             carries every ``Attempt``
    ├── ConfigError               invalid configuration (also ValueError)
    └── StoreError                durable state unreadable or unwritable (names the path)

Every error carries ``provider``, ``retryable``, ``request_id``, ``http_status``,
``code`` and ``retry_after`` where known, and keeps the original exception as
``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from superapp_sdk._outcome import Attempt

__all__ = [
    "AlreadyExecuted",
    "BudgetExhausted",
    "BulkheadFull",
    "CircuitOpen",
    "ConfigError",
    "Declined",
    "IdempotencyConflict",
    "InvalidRequest",
    "NoAnswer",
    "NotApplicable",
    "OfflineCapExceeded",
    "OperationTimeout",
    "OutcomeUnknown",
    "ProviderConnectError",
    "ProviderError",
    "ProviderRefused",
    "RateLimited",
    "Rejected",
    "StoreError",
    "SuperAppError",
    "Unauthorized",
    "Unavailable",
    "Undeliverable",
]


class SuperAppError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        provider: the provider that produced the error, when one did.
        operation: the operation name (``"payment.charge"``), when known.
        retryable: whether trying again (here or elsewhere) may succeed.
        request_id: the provider's request id, for support tickets.
        http_status: the HTTP status the provider answered with.
        code: the provider's error code, verbatim.
        retry_after: seconds the provider or the SDK asks to wait before trying again.
        request_sent: whether the request may have reached the provider. ``False`` proves
            it did not execute (connection refused, pool timeout); ``True`` or ``None``
            means it may have, so a payment must be checked before any failover.
    """

    #: Default for ``retryable`` when the constructor is not told.
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        operation: str | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_sent: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.operation = operation
        self.retryable = self.default_retryable if retryable is None else retryable
        self.request_id = request_id
        self.http_status = http_status
        self.code = code
        self.retry_after = retry_after
        self.request_sent = request_sent

    def __str__(self) -> str:
        parts = [self.message]
        where = ", ".join(
            f"{name}={value!r}"
            for name, value in (
                ("provider", self.provider),
                ("operation", self.operation),
                ("http_status", self.http_status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None
        )
        if where:
            parts.append(f"({where})")
        return " ".join(parts)


class NoAnswer(SuperAppError):
    """No usable answer came back; another try or another provider may do better."""

    default_retryable = True


class ProviderConnectError(NoAnswer):
    """The connection could not be made, or was reset before an answer."""


class OperationTimeout(NoAnswer, TimeoutError):
    """A try, or the overall deadline, ran out before an answer arrived."""


class ProviderError(NoAnswer):
    """The provider answered, but the answer is unusable.

    A 5xx status, an HTML error page, malformed or truncated JSON, a field of the wrong
    type, a body over the size cap. The message names what was wrong.
    """


class ProviderRefused(SuperAppError):
    """The provider understood the request and said no."""


class Declined(ProviderRefused):
    """A business refusal: a declined card, an unknown recipient, a bad code.

    Raised at once and never failed over: another provider would say no as well, or worse,
    say yes to something the first one refused.
    """


class AlreadyExecuted(Declined):
    """The provider says this request was already executed (KakaoPay -702 "already
    approved", LINE 409 for a repeated retry key): an earlier try whose answer was lost
    went through. The SDK settles it with a lookup at that provider, never by failing
    over."""


class Unauthorized(ProviderRefused):
    """The provider rejected our credentials or the user's token."""


class InvalidRequest(ProviderRefused):
    """The provider says the request itself is malformed."""


class RateLimited(ProviderRefused):
    """The provider asked us to slow down (HTTP 429); see ``retry_after``."""

    default_retryable = True


class Rejected(SuperAppError):
    """The SDK refused the call before contacting anyone."""


class CircuitOpen(Rejected):
    """The provider's circuit breaker, or its whole failure domain, is open."""

    default_retryable = True


class BudgetExhausted(Rejected):
    """The retry budget of the failure domain is spent; the retry was not sent."""


class BulkheadFull(Rejected):
    """Too many calls are already in flight through this bulkhead."""

    default_retryable = True


class IdempotencyConflict(Rejected):
    """An idempotency key was reused with a different payload; nothing was sent."""


class NotApplicable(Rejected):
    """This provider cannot serve this call: the user has no address, subject or billing
    key there, or the provider does not offer the operation. The router moves on."""


class Undeliverable(NotApplicable):
    """No configured provider could ever take this write: no provider of the capability
    is configured, or the user has no address (or billing key) at any of them.

    Raised at once and never queued: a queued write that no provider can serve would sit
    in the outbox and hold back every later write of its conversation or order. ``code``
    says which: ``"no_provider"``, ``"no_address"``, ``"no_billing_key"``.
    """


class OfflineCapExceeded(Rejected):
    """An offline allowance is spent: a voucher cap, a grace-session scope or age."""


class Unavailable(SuperAppError):
    """Nothing could serve the call, and it cannot be deferred.

    ``attempts`` lists every provider tried, the kind of error each gave and how long
    it took.
    """

    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[Attempt] = (),
        operation: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, operation=operation, retry_after=retry_after)
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        #: Providers a try may have reached before failing (an at-most-once write sent
        #: there must never be sent there again).
        self.maybe_executed: tuple[str, ...] = ()


class OutcomeUnknown(NoAnswer):
    """An at-most-once write (charge, approval, cancel, message, ride request, rental
    end) may or may not have executed at ``provider``, and its result could not be
    learned.

    The SDK never sends it again, to that provider or another, unless that provider
    deduplicates by the operation's idempotency key; it is settled only by the provider's
    own answer to a lookup. When no lookup can settle it (a KakaoPay subscription charge
    whose answer, and so its ``tid``, was lost), the order is held as *needs
    reconciliation*: ``needs_reconciliation`` is True, the same call answers this error
    again with the same ``ticket``, and an operator settles it
    (``app.payment.reconcile`` or ``superapp outbox reconcile TICKET``).

    Attributes:
        attempts: the tries made.
        ticket: names the held operation, for reconciliation.
        needs_reconciliation: no lookup can settle it; an operator must.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        operation: str | None = None,
        attempts: Sequence[Attempt] = (),
        ticket: str | None = None,
        needs_reconciliation: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            operation=operation,
            request_sent=True,
            retryable=not needs_reconciliation,
            code=code,
        )
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        self.ticket = ticket
        self.needs_reconciliation = needs_reconciliation


class ConfigError(SuperAppError, ValueError):
    """Invalid configuration; the message names the key or field and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StoreError(SuperAppError):
    """Durable state could not be read or written; the message names the path."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
