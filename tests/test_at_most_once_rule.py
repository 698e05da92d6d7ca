"""The at-most-once rule, in its one home (``core/routing``), as a table."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from superapp_sdk._errors import (
    AlreadyExecuted,
    BulkheadFull,
    CircuitOpen,
    Declined,
    OperationTimeout,
    ProviderConnectError,
    ProviderError,
    RateLimited,
    Unauthorized,
)
from superapp_sdk.core.routing import (
    Action,
    OperationKind,
    classify,
    may_have_executed,
    may_resend,
)
from superapp_sdk.resilience import Pipeline
from superapp_sdk.resilience._base import CallContext

_REQ = httpx.Request("POST", "https://kapi.example/send")

#: (error, may it have executed at the provider?)
TABLE: list[tuple[BaseException, bool]] = [
    (httpx.ConnectError("refused", request=_REQ), False),
    (httpx.ConnectTimeout("connect", request=_REQ), False),
    (httpx.PoolTimeout("pool", request=_REQ), False),
    (ConnectionRefusedError(), False),
    (ProviderConnectError("refused", request_sent=False), False),
    (OperationTimeout("connect", request_sent=False), False),
    (CircuitOpen("open"), False),
    (BulkheadFull("full"), False),
    (Declined("card declined"), False),
    (Unauthorized("bad key"), False),
    (RateLimited("429"), False),
    (httpx.ReadTimeout("read", request=_REQ), True),
    (httpx.ReadError("reset", request=_REQ), True),
    (httpx.RemoteProtocolError("closed", request=_REQ), True),
    (httpx.WriteError("broken pipe", request=_REQ), True),
    (ProviderConnectError("reset after write", request_sent=True), True),
    (OperationTimeout("read", request_sent=True), True),
    (ProviderError("500", request_sent=True), True),
    (ProviderError("malformed answer"), True),
    (TimeoutError(), True),
    (AlreadyExecuted("already approved"), True),
]


@pytest.mark.parametrize(("exc", "executed"), TABLE, ids=lambda v: repr(v)[:40])
def test_may_have_executed(exc: BaseException, executed: bool) -> None:
    """Only proof that nothing ran (not sent, refused, rejected) says False."""
    assert may_have_executed(exc) is executed


@pytest.mark.parametrize(("exc", "executed"), TABLE, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize("kind", list(OperationKind))
def test_an_at_most_once_write_that_may_have_executed_is_resolved(
    exc: BaseException, executed: bool, kind: OperationKind
) -> None:
    """once=True: every error that may have executed resolves (never fails over);
    business refusals fail now; the rest fail over."""
    action = classify(kind, exc, once=True)
    if executed:
        assert action is Action.RESOLVE
    elif isinstance(exc, Declined):
        assert action is Action.FAIL_NOW
    else:
        assert action is Action.FAIL_OVER


@pytest.mark.parametrize(("exc", "executed"), TABLE, ids=lambda v: repr(v)[:40])
def test_a_read_is_never_resolved(exc: BaseException, executed: bool) -> None:
    """Reads and idempotent writes fail over on every error but a business refusal."""
    action = classify(OperationKind.READ, exc, once=False)
    assert action is not Action.RESOLVE


@pytest.mark.parametrize(("exc", "executed"), TABLE, ids=lambda v: repr(v)[:40])
def test_may_resend(exc: BaseException, executed: bool) -> None:
    """A maybe-executed at-most-once write is sent again only where deduplicated."""
    assert may_resend(exc, once=False, deduplicated=False)
    assert may_resend(exc, once=True, deduplicated=True)
    assert may_resend(exc, once=True, deduplicated=False) is not executed


def test_a_write_the_provider_cannot_deduplicate_is_never_retried() -> None:
    """The write pipeline retries a reset after the write only with resend=True."""
    pipeline = Pipeline.for_write("p", timeout=1.0, deadline=5.0)
    for resend, expected in ((True, 2), (False, 1)):
        calls = 0

        def fn(ctx: CallContext) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ProviderConnectError("reset after write", request_sent=True)
            return "ok"

        with contextlib.suppress(ProviderConnectError):
            pipeline.call(fn, "chat.send", resend=resend)
        assert calls == expected
