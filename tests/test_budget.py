"""The retry budget: retries stay a bounded fraction of requests.

The budget counts in ten buckets of ``ttl / 10`` seconds (``width``). A deposit or a
withdrawal therefore counts for at least ``ttl - width`` and less than ``ttl`` seconds.
What that guarantees, exactly, is the bound checked below at every granted retry ``t``:

    retries in [t - (ttl - width), t]  <=  reserve + ratio * requests in (t - ttl, t]

The budget grants a retry only while ``reserve + ratio * requests - retries >= 1`` over
its buckets, so right after granting, the retries it counts are at most
``reserve + ratio * requests`` it counts. The buckets hold every event of the last
``ttl - width`` seconds (so the left side is no more than what it counts) and nothing
older than ``ttl`` (so what it counts is no more than the right side). No "+1" is needed
for the threshold: a grant needs a whole token and leaves the balance >= 0.

Over a full ``ttl`` window the bucket granularity costs more than one retry: a withdrawal
stops counting up to one bucket early, so the reserve can be spent twice within
``ttl - width + epsilon`` (``test_reserve_can_be_spent_twice_within_one_ttl`` pins that
down). The bound above is the precise statement; a same-window bound with "+1" is not true.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from superapp_sdk.core.budget import BudgetOptions, RetryBudget
from tests.strategies import budget_options, dyadic_times

Op = tuple[str, int]

#: ("deposit", k): 1 + k % 4 requests; ("withdraw", k): 1 + k % 16 retries in a burst;
#: ("advance", k): k / 64 of a ttl (exact binary fractions with the exact options).
ops = st.lists(
    st.tuples(st.sampled_from(["deposit", "withdraw", "advance"]), st.integers(0, 128)),
    max_size=80,
)


def _check_grant(
    options: BudgetOptions, requests: list[float], granted: list[float], t: float
) -> None:
    """The bound of the module docstring for a retry granted at ``t``."""
    width = options.ttl_seconds / 10
    recent = sum(1 for r in granted if t - (options.ttl_seconds - width) <= r <= t)
    funding = sum(1 for q in requests if t - options.ttl_seconds < q <= t)
    assert recent <= options.reserve + options.ratio * funding


def _bounded_at_every_grant(
    options: BudgetOptions, requests: list[float], granted: list[float]
) -> None:
    for t in granted:
        _check_grant(options, requests, granted, t)


def _replay(budget: RetryBudget, schedule: list[Op]) -> tuple[float, list[float], list[float]]:
    ttl = budget.options.ttl_seconds
    now, requests, granted = 0.0, [], []
    for op, k in schedule:
        if op == "advance":
            now += ttl * k / 64
        elif op == "deposit":
            for _ in range(1 + k % 4):
                budget.deposit(now)
                requests.append(now)
        else:
            granted.extend(now for _ in range(1 + k % 16) if budget.try_withdraw(now))
    return now, requests, granted


@given(options=budget_options(exact=True), schedule=ops)
def test_retries_bounded_by_requests_and_reserve(
    options: BudgetOptions, schedule: list[Op]
) -> None:
    """At every granted retry, recent retries <= reserve + ratio * requests of the last ttl."""
    _, requests, granted = _replay(RetryBudget("kakao", options), schedule)
    _bounded_at_every_grant(options, requests, granted)


@given(options=budget_options(exact=True), schedule=ops)
def test_budget_recovers_after_ttl(options: BudgetOptions, schedule: list[Op]) -> None:
    """Whatever happened before, ``ttl`` quiet seconds restore exactly the reserve."""
    budget = RetryBudget("kakao", options)
    now, _, _ = _replay(budget, schedule)
    later = now + options.ttl_seconds
    assert budget.balance(later) == options.reserve
    assert budget.try_withdraw(later) is (options.reserve >= 1)


def test_fresh_budget_grants_the_reserve() -> None:
    """With no traffic, ``min_retries_per_second * ttl`` retries are granted, then none."""
    budget = RetryBudget(
        "kakao", BudgetOptions(ratio=0.2, min_retries_per_second=0.5, ttl_seconds=10)
    )
    granted = [budget.try_withdraw(1.0) for _ in range(7)]
    assert granted == [True] * 5 + [False] * 2
    assert budget.denied == 2


def test_requests_fund_retries_at_ratio() -> None:
    """Ten requests at ratio 0.2 fund two retries when there is no reserve."""
    budget = RetryBudget("kakao", BudgetOptions(ratio=0.2, min_retries_per_second=0.0))
    for _ in range(10):
        budget.deposit(0.0)
    assert budget.balance(0.0) == pytest.approx(2.0)
    assert [budget.try_withdraw(0.0) for _ in range(3)] == [True, True, False]


def test_a_denied_withdrawal_takes_nothing() -> None:
    """A refused retry leaves the balance as it was."""
    budget = RetryBudget("kakao", BudgetOptions(ratio=0.5, min_retries_per_second=0.0))
    budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)
    assert budget.balance(0.0) == 0.5


def test_old_requests_stop_funding_retries() -> None:
    """Requests older than ttl fund nothing, so old traffic cannot fund a storm now."""
    options = BudgetOptions(ratio=1.0, min_retries_per_second=0.0, ttl_seconds=10)
    budget = RetryBudget("kakao", options)
    for _ in range(50):
        budget.deposit(0.0)
    assert budget.try_withdraw(9.99)
    assert not budget.try_withdraw(10.0)


def test_reserve_can_be_spent_twice_within_one_ttl() -> None:
    """Withdrawals stop counting a bucket early: the granularity the bound allows for."""
    options = BudgetOptions(ratio=0.0, min_retries_per_second=1.0, ttl_seconds=10)
    budget = RetryBudget("kakao", options)
    first = sum(budget.try_withdraw(0.99) for _ in range(15))
    assert not budget.try_withdraw(9.99)
    second = sum(budget.try_withdraw(10.0) for _ in range(15))
    assert (first, second) == (10, 10)  # 20 retries within 9.01 s, reserve 10


def test_repr_shows_options() -> None:
    """The repr names the budget and its options."""
    budget = RetryBudget("kakao", BudgetOptions(ratio=0.1, min_retries_per_second=2, ttl_seconds=5))
    assert repr(budget) == (
        "RetryBudget(name='kakao', ratio=0.1, min_retries_per_second=2, ttl_seconds=5)"
    )


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("ratio", {"ratio": -0.1}),
        ("ratio", {"ratio": 1.1}),
        ("ratio", {"ratio": math.nan}),
        ("min_retries_per_second", {"min_retries_per_second": -1.0}),
        ("min_retries_per_second", {"min_retries_per_second": math.inf}),
        ("min_retries_per_second", {"min_retries_per_second": math.nan}),
        ("ttl_seconds", {"ttl_seconds": 0.5}),
        ("ttl_seconds", {"ttl_seconds": math.inf}),
        ("ttl_seconds", {"ttl_seconds": math.nan}),
    ],
)
def test_invalid_options_name_the_field(field: str, changes: dict[str, Any]) -> None:
    """Every invalid option raises ValueError naming the field."""
    with pytest.raises(ValueError, match=rf"^BudgetOptions\.{field} must be "):
        BudgetOptions(**changes)


class BudgetModel:
    """The budget as two lists of event times and a bucket-aligned window."""

    def __init__(self, options: BudgetOptions) -> None:
        self.o = options
        self.requests: list[float] = []
        self.retries: list[float] = []
        self.denied = 0

    def _counted(self, times: list[float], now: float) -> int:
        width = self.o.ttl_seconds / 10
        oldest = int(now // width) - 9
        return sum(1 for t in times if int(t // width) >= oldest)

    def balance(self, now: float) -> float:
        requests = self._counted(self.requests, now)
        retries = self._counted(self.retries, now)
        return self.o.reserve + self.o.ratio * requests - retries

    def withdraw(self, now: float) -> bool:
        if self.balance(now) >= 1:
            self.retries.append(now)
            return True
        self.denied += 1
        return False


class BudgetStateMachine(RuleBasedStateMachine):
    """A RetryBudget and its model, fed the same deposits, withdrawals and time."""

    budget: RetryBudget
    model: BudgetModel

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    @initialize(options=budget_options(exact=True))
    def create(self, options: BudgetOptions) -> None:
        self.budget = RetryBudget("kakao", options)
        self.model = BudgetModel(options)

    @rule(count=st.integers(1, 5))
    def deposit(self, count: int) -> None:
        for _ in range(count):
            self.budget.deposit(self.now)
            self.model.requests.append(self.now)

    @rule()
    def withdraw(self) -> None:
        granted = self.budget.try_withdraw(self.now)
        assert granted is self.model.withdraw(self.now)
        if granted:
            _check_grant(self.model.o, self.model.requests, self.model.retries, self.now)

    @rule(seconds=dyadic_times(max_units=1280))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def same_balance(self) -> None:
        assert self.budget.balance(self.now) == self.model.balance(self.now)
        assert self.budget.denied == self.model.denied


TestBudgetStateMachine = BudgetStateMachine.TestCase
