"""Routing decisions (sans-IO): the error classification table, its overrides, and the
failback ramp."""

from __future__ import annotations

import math
import random

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from superapp_sdk._errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpen,
    Declined,
    IdempotencyConflict,
    InvalidRequest,
    NotApplicable,
    OperationTimeout,
    ProviderConnectError,
    ProviderError,
    RateLimited,
    Unauthorized,
)
from superapp_sdk.core.routing import Action, Classification, FailbackRamp, OperationKind, classify
from superapp_sdk.resilience import DomainOpen
from tests.strategies import time_steps

READ, WRITE, PAYMENT = OperationKind.READ, OperationKind.WRITE, OperationKind.PAYMENT
KINDS = (READ, WRITE, PAYMENT)
FAIL_NOW, FAIL_OVER, RESOLVE = Action.FAIL_NOW, Action.FAIL_OVER, Action.RESOLVE

_REQUEST = httpx.Request("POST", "https://pay.example/v1/charge")


def _every_kind(
    error: BaseException, action: Action
) -> list[tuple[BaseException, OperationKind, Action]]:
    return [(error, kind, action) for kind in KINDS]


# -- the default table -----------------------------------------------------------------

TABLE: list[tuple[BaseException, OperationKind, Action]] = [
    # Business refusals and malformed requests: another provider would refuse too.
    *_every_kind(Declined("card declined"), FAIL_NOW),
    *_every_kind(InvalidRequest("amount must be positive"), FAIL_NOW),
    # A key reused with another payload: any provider would see the same conflict.
    *_every_kind(IdempotencyConflict("key reused with another payload"), FAIL_NOW),
    # We refused before sending: nothing executed anywhere.
    *_every_kind(CircuitOpen("open", request_sent=False), FAIL_OVER),
    *_every_kind(DomainOpen("kakao is open"), FAIL_OVER),
    *_every_kind(BudgetExhausted("retry budget spent"), FAIL_OVER),
    *_every_kind(BulkheadFull("full"), FAIL_OVER),
    *_every_kind(NotApplicable("no billing key there"), FAIL_OVER),
    # Our standing at this provider, not the user's request, is the problem.
    *_every_kind(Unauthorized("bad client secret"), FAIL_OVER),
    *_every_kind(RateLimited("slow down", retry_after=2.0), FAIL_OVER),
    # No answer that provably never left: safe anywhere, payments included.
    *_every_kind(ProviderConnectError("refused", request_sent=False), FAIL_OVER),
    *_every_kind(OperationTimeout("pool timeout", request_sent=False), FAIL_OVER),
    # No answer after the request may have left: a payment must be resolved first.
    (OperationTimeout("read timeout", request_sent=True), READ, FAIL_OVER),
    (OperationTimeout("read timeout", request_sent=True), WRITE, FAIL_OVER),
    (OperationTimeout("read timeout", request_sent=True), PAYMENT, RESOLVE),
    (ProviderConnectError("reset", request_sent=None), READ, FAIL_OVER),
    (ProviderConnectError("reset", request_sent=None), WRITE, FAIL_OVER),
    (ProviderConnectError("reset", request_sent=None), PAYMENT, RESOLVE),
    (ProviderError("502 from the gateway", http_status=502), READ, FAIL_OVER),
    (ProviderError("502 from the gateway", http_status=502), WRITE, FAIL_OVER),
    (ProviderError("502 from the gateway", http_status=502), PAYMENT, RESOLVE),
    # Raw transport errors that escaped an adapter: nothing proves the request stayed home.
    (TimeoutError(), READ, FAIL_OVER),
    (TimeoutError(), PAYMENT, RESOLVE),
    (ConnectionResetError(), WRITE, FAIL_OVER),
    (ConnectionResetError(), PAYMENT, RESOLVE),
    (httpx.ReadTimeout("read", request=_REQUEST), READ, FAIL_OVER),
    (httpx.ReadTimeout("read", request=_REQUEST), PAYMENT, RESOLVE),
    (httpx.RemoteProtocolError("peer closed", request=_REQUEST), WRITE, FAIL_OVER),
    (httpx.RemoteProtocolError("peer closed", request=_REQUEST), PAYMENT, RESOLVE),
    # A bug is not an outage: do not spread it over every provider.
    *_every_kind(ValueError("bad state"), FAIL_NOW),
    *_every_kind(KeyError("field"), FAIL_NOW),
]


@pytest.mark.parametrize(
    ("error", "kind", "expected"),
    TABLE,
    ids=[f"{type(e).__name__}-{getattr(e, 'request_sent', None)}-{k.value}" for e, k, _ in TABLE],
)
def test_default_classification(
    error: BaseException, kind: OperationKind, expected: Action
) -> None:
    """Each error class and operation kind maps to the action the module table names."""
    assert classify(kind, error) is expected


# -- overrides -------------------------------------------------------------------------


def test_an_override_replaces_the_default() -> None:
    """An override for (provider, operation, error) wins over the default table."""
    table = Classification({("toss", "payment.charge", "Unauthorized"): FAIL_NOW})
    err = Unauthorized("expired key")
    here = classify(PAYMENT, err, provider="toss", operation="payment.charge", overrides=table)
    there = classify(PAYMENT, err, provider="stripe", operation="payment.charge", overrides=table)
    assert (here, there) == (FAIL_NOW, FAIL_OVER)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({("p", "op", "Declined"): FAIL_OVER, ("p", "*", "Declined"): RESOLVE}, FAIL_OVER),
        ({("p", "*", "Declined"): FAIL_OVER, ("*", "op", "Declined"): RESOLVE}, FAIL_OVER),
        ({("*", "op", "Declined"): FAIL_OVER, ("*", "*", "Declined"): RESOLVE}, FAIL_OVER),
        ({("*", "*", "Declined"): FAIL_OVER}, FAIL_OVER),
        ({("q", "*", "Declined"): FAIL_OVER, ("*", "other", "Declined"): RESOLVE}, FAIL_NOW),
    ],
    ids=["exact-over-provider", "provider-over-operation", "operation-over-any", "any", "none"],
)
def test_the_most_specific_key_wins(
    keys: dict[tuple[str, str, str], Action], expected: Action
) -> None:
    """Among keys naming the same error class: exact, then provider, then operation, then
    both wildcards; keys for other providers or operations do not apply."""
    table = Classification(keys)
    got = classify(WRITE, Declined("no"), provider="p", operation="op", overrides=table)
    assert got is expected


def test_an_override_of_a_base_class_covers_its_subclasses() -> None:
    """An override keyed by ``ProviderRefused`` applies to a Declined."""
    table = Classification({("*", "*", "ProviderRefused"): FAIL_OVER})
    assert classify(WRITE, Declined("no"), overrides=table) is FAIL_OVER


def test_the_error_s_own_class_wins_over_a_more_specific_key_for_its_base() -> None:
    """A wildcard key for the error's own class beats an exact key for a base class."""
    table = Classification(
        {("*", "*", "Declined"): RESOLVE, ("p", "op", "ProviderRefused"): FAIL_OVER}
    )
    got = classify(WRITE, Declined("no"), provider="p", operation="op", overrides=table)
    assert got is RESOLVE


def test_lookup_without_a_match_is_none() -> None:
    """``lookup`` answers None when no key applies, leaving the default table in charge."""
    table = Classification({("p", "*", "Declined"): FAIL_OVER})
    assert table.lookup("q", "op", Declined("no")) is None
    assert classify(WRITE, Declined("no"), provider="q", overrides=table) is FAIL_NOW


# -- failback ramp ---------------------------------------------------------------------


def test_a_provider_not_ramping_gets_every_call() -> None:
    """A provider that never recovered has share 1 and is always admitted."""
    ramp = FailbackRamp(30.0, rng=random.Random(1))
    assert ramp.share("kakao.pay", 123.0) == 1.0
    assert all(ramp.admit("kakao.pay", 123.0) for _ in range(100))


def test_share_grows_linearly_from_initial_share_to_one() -> None:
    """After recovery the share starts at ``initial_share`` and reaches 1 at ``ramp_seconds``."""
    ramp = FailbackRamp(10.0, initial_share=0.2)
    ramp.recovered("kakao.pay", 100.0)
    assert ramp.share("kakao.pay", 100.0) == pytest.approx(0.2)
    assert ramp.share("kakao.pay", 105.0) == pytest.approx(0.6)
    assert ramp.share("kakao.pay", 110.0) == 1.0
    assert ramp.share("kakao.pay", 100.0) == 1.0  # the finished ramp is forgotten


def test_admit_follows_the_share() -> None:
    """``admit`` lets through about ``share`` of the calls (seeded Random)."""
    ramp = FailbackRamp(100.0, initial_share=0.1, rng=random.Random(42))
    ramp.recovered("kakao.pay", 0.0)
    early = sum(ramp.admit("kakao.pay", 0.0) for _ in range(2000)) / 2000
    later = sum(ramp.admit("kakao.pay", 50.0) for _ in range(2000)) / 2000
    assert early == pytest.approx(0.1, abs=0.03)
    assert later == pytest.approx(0.55, abs=0.04)


def test_failing_again_ends_the_ramp() -> None:
    """``failed`` forgets the ramp: the next recovery starts over from ``initial_share``."""
    ramp = FailbackRamp(10.0, initial_share=0.1)
    ramp.recovered("kakao.pay", 0.0)
    ramp.failed("kakao.pay")
    assert ramp.share("kakao.pay", 1.0) == 1.0
    ramp.recovered("kakao.pay", 5.0)
    assert ramp.share("kakao.pay", 5.0) == pytest.approx(0.1)


def test_a_zero_ramp_returns_at_once() -> None:
    """With ``ramp_seconds=0`` a recovered provider takes all its calls back at once."""
    ramp = FailbackRamp(0.0)
    ramp.recovered("kakao.pay", 0.0)
    assert ramp.share("kakao.pay", 0.0) == 1.0


def test_ramps_are_per_provider() -> None:
    """One provider's recovery leaves the others' shares alone."""
    ramp = FailbackRamp(10.0, initial_share=0.1)
    ramp.recovered("kakao.pay", 0.0)
    assert ramp.share("kakao.talk", 0.0) == 1.0


def test_repr_names_the_options() -> None:
    """The repr shows both options."""
    assert repr(FailbackRamp(12.0, initial_share=0.25)) == (
        "FailbackRamp(ramp_seconds=12.0, initial_share=0.25)"
    )


@pytest.mark.parametrize("ramp_seconds", [-1.0, math.inf, math.nan])
def test_ramp_seconds_is_validated(ramp_seconds: float) -> None:
    """A negative or non-finite ``ramp_seconds`` is refused, naming the field."""
    with pytest.raises(ValueError, match=r"FailbackRamp\.ramp_seconds must be >= 0"):
        FailbackRamp(ramp_seconds)


@pytest.mark.parametrize("initial_share", [0.0, -0.1, 1.5, math.nan])
def test_initial_share_is_validated(initial_share: float) -> None:
    """An ``initial_share`` outside (0, 1] is refused, naming the field and range."""
    with pytest.raises(ValueError, match=r"FailbackRamp\.initial_share must be in \(0, 1\]"):
        FailbackRamp(10.0, initial_share=initial_share)


@given(
    ramp_seconds=st.one_of(st.just(0.0), st.floats(1e-3, 1e4)),
    initial_share=st.one_of(st.just(1.0), st.floats(1e-6, 1.0)),
    recovered_at=time_steps(100.0),
    steps=st.lists(time_steps(20.0), max_size=30),
)
def test_share_is_monotone_and_bounded(
    ramp_seconds: float, initial_share: float, recovered_at: float, steps: list[float]
) -> None:
    """As time passes the share never shrinks and stays within [initial_share, 1]."""
    ramp = FailbackRamp(ramp_seconds, initial_share=initial_share)
    ramp.recovered("p", recovered_at)
    now, last = 0.0, 0.0
    for step in steps:
        now += step
        share = ramp.share("p", now)
        assert initial_share <= share <= 1.0
        assert share >= last
        last = share
