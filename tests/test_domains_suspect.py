"""Suspect failure domains: one timeout in a closed domain sends every capability in it to
its alternates while a single probe finds out whether the domain is dark."""

from __future__ import annotations

import asyncio
import math
import random
import threading
from typing import Any

import pytest

from superapp_sdk.core.domains import DomainOptions, DomainState, FailureDomainDetector
from superapp_sdk.core.routing import OperationKind
from superapp_sdk.resilience import Router, SharedDetector
from superapp_sdk.testing import FakeClock
from tests.test_router import (
    WAIT,
    FakeProvider,
    Ledger,
    acall,
    brief,
    call,
    make_detector,
    make_router,
    pay,
    resolve,
)

D = DomainState
WRITE, PAYMENT = OperationKind.WRITE, OperationKind.PAYMENT


def make(**options: Any) -> FailureDomainDetector:
    """A detector without jitter, suspect for 10 s after a timeout unless told otherwise."""
    options.setdefault("jitter", 0.0)
    options.setdefault("suspect_seconds", 10.0)
    return FailureDomainDetector(DomainOptions(**options), rng=random.Random(5))


def timeout(det: FailureDomainDetector, now: float, capability: str = "chat") -> None:
    det.record_failure("kakao", capability, now, timeout=True)


# -- the detector ----------------------------------------------------------------------


def test_one_timeout_makes_a_closed_domain_suspect() -> None:
    """A single timeout makes the domain suspect: closed, but no user call is allowed in."""
    det = make()
    timeout(det, 1.0)
    assert det.is_suspect("kakao", 1.0)
    assert not det.allows("kakao", 1.0)
    assert det.state("kakao", 1.0) is D.CLOSED
    assert det.failing("kakao", 1.0) == ()
    assert det.allows("naver", 1.0)


@pytest.mark.parametrize("probe", [False, True])
def test_a_failure_that_is_not_a_timeout_leaves_the_domain_trusted(probe: bool) -> None:
    """A refused connection or a 5xx is a failure, not the silence of a dark data center."""
    det = make()
    det.record_failure("kakao", "chat", 1.0, probe=probe)
    assert not det.is_suspect("kakao", 1.0)
    assert det.allows("kakao", 1.0)


def test_suspicion_expires_after_suspect_seconds() -> None:
    """Without news, the domain is trusted again ``suspect_seconds`` after the timeout."""
    det = make(suspect_seconds=4.0)
    timeout(det, 10.0)
    assert not det.allows("kakao", 13.999)
    assert det.allows("kakao", 14.0)
    assert not det.is_suspect("kakao", 14.0)


def test_a_later_timeout_extends_the_suspicion() -> None:
    """Another timeout while suspect pushes the end of the suspicion out."""
    det = make(suspect_seconds=4.0)
    timeout(det, 10.0)
    timeout(det, 12.0, "payment")
    assert det.is_suspect("kakao", 15.0)
    assert det.allows("kakao", 16.0)


def test_a_suspect_domain_has_one_probe_slot() -> None:
    """Only one probe at a time; the slot can be handed back without a result."""
    det = make()
    timeout(det, 0.0)
    assert det.try_probe("kakao", 0.0)
    assert not det.try_probe("kakao", 0.0)
    det.release_probe("kakao")
    assert det.try_probe("kakao", 0.0)


def test_a_new_suspicion_has_its_own_probe_slot() -> None:
    """A probe of an earlier suspicion that never reported does not block the next one."""
    det = make(suspect_seconds=4.0)
    timeout(det, 0.0)
    assert det.try_probe("kakao", 0.0)  # lost: its caller went away
    timeout(det, 5.0)
    assert det.try_probe("kakao", 5.0)


def test_a_trusted_domain_has_no_probe_slot() -> None:
    """A closed domain that is not suspect needs no probe, and offers none."""
    det = make()
    assert not det.try_probe("kakao", 0.0)


def test_a_probe_success_clears_the_suspicion() -> None:
    """The probe's answer proves the domain is alive: every capability may go back."""
    det = make()
    timeout(det, 0.0)
    assert det.try_probe("kakao", 0.0)
    det.record_success("kakao", "payment", 0.5, probe=True)
    assert det.allows("kakao", 0.5)
    assert not det.try_probe("kakao", 0.5)


def test_any_success_in_the_domain_clears_the_suspicion() -> None:
    """An answer to any call of any capability in the domain clears it, and frees the slot."""
    det = make()
    timeout(det, 0.0)
    assert det.try_probe("kakao", 0.0)
    det.record_success("kakao", "identity", 0.5)
    assert det.allows("kakao", 0.5)
    timeout(det, 1.0)
    assert det.try_probe("kakao", 1.0)


def test_a_failed_probe_frees_the_slot_and_counts_as_a_failure() -> None:
    """A probe that fails gives the slot back and counts against its capability."""
    det = make()
    timeout(det, 0.0)
    assert det.try_probe("kakao", 0.0)
    det.record_failure("kakao", "payment", 0.5, probe=True)
    det.record_failure("kakao", "payment", 0.6)
    assert det.failing("kakao", 0.6) == ("payment",)
    assert det.try_probe("kakao", 0.6)


def test_a_failed_probe_can_open_the_domain() -> None:
    """A probe failure of a second capability makes two failing: the domain opens."""
    det = make(failures_per_capability=1)
    timeout(det, 0.0)
    assert det.try_probe("kakao", 0.0)
    det.record_failure("kakao", "payment", 0.5, probe=True, timeout=True)
    assert det.state("kakao", 0.5) is D.OPEN
    assert [c.capabilities for c in det.changes] == [("chat", "payment")]


def test_a_probe_result_without_a_slot_is_ignored() -> None:
    """A probe failure reported for a slot nobody took changes nothing."""
    det = make(failures_per_capability=1)
    timeout(det, 0.0)
    det.record_failure("kakao", "payment", 0.5, probe=True)
    assert det.failing("kakao", 0.5) == ("chat",)
    assert det.state("kakao", 0.5) is D.CLOSED


def test_suspect_seconds_zero_turns_suspicion_off() -> None:
    """With ``suspect_seconds=0`` a timeout is only a failure."""
    det = make(suspect_seconds=0.0)
    timeout(det, 0.0)
    assert det.allows("kakao", 0.0)
    assert not det.is_suspect("kakao", 0.0)
    assert not det.try_probe("kakao", 0.0)


def test_open_supersedes_suspect() -> None:
    """An open domain is open, not suspect: it probes through its half-open slots, and is
    not suspect once it closes."""
    det = make(open_seconds=5.0, probe_successes=2)
    timeout(det, 0.0)
    det.force_open("kakao", 1.0)
    assert det.state("kakao", 1.0) is D.OPEN
    assert not det.is_suspect("kakao", 1.0)
    timeout(det, 2.0)  # a timeout while open does not queue a suspicion for later
    assert det.state("kakao", 6.0) is D.HALF_OPEN
    assert not det.is_suspect("kakao", 6.0)
    assert det.try_probe("kakao", 6.0)
    assert det.try_probe("kakao", 6.0)  # two half-open slots, not the suspect's one
    det.record_success("kakao", "chat", 6.5, probe=True)
    det.record_success("kakao", "chat", 6.5, probe=True)
    assert det.state("kakao", 6.5) is D.CLOSED
    assert det.allows("kakao", 6.5)


def test_reset_clears_the_suspicion() -> None:
    """An operator's reset trusts the domain again at once."""
    det = make()
    timeout(det, 0.0)
    det.reset("kakao", 0.0)
    assert det.allows("kakao", 0.0)


@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_suspect_seconds_is_validated(value: float) -> None:
    """A negative or non-finite ``suspect_seconds`` is refused, naming the field."""
    with pytest.raises(ValueError, match=r"DomainOptions\.suspect_seconds must be"):
        DomainOptions(suspect_seconds=value)


# -- through routers -------------------------------------------------------------------


class Apps:
    """A chat and a payment router sharing one detector; both capabilities have a primary
    in the ``kakao`` domain and an alternate in the ``alt`` domain."""

    def __init__(self, **domain_options: Any) -> None:
        self.clock = FakeClock()
        ledger = Ledger()
        self.detector: SharedDetector = make_detector(self.clock, **domain_options)
        self.talk = FakeProvider("kakao.talk", "kakao", ledger=ledger, clock=self.clock)
        self.line = FakeProvider("line", "alt", ledger=ledger, clock=self.clock)
        self.kpay = FakeProvider("kakao.pay", "kakao", ledger=ledger, clock=self.clock)
        self.toss = FakeProvider("toss", "alt", ledger=ledger, clock=self.clock)
        self.chat: Router[FakeProvider] = make_router(
            [self.talk, self.line], self.clock, detector=self.detector, capability="chat"
        )
        self.payment: Router[FakeProvider] = make_router(
            [self.kpay, self.toss], self.clock, detector=self.detector, capability="payment"
        )

    def chat_times_out(self) -> None:
        """One chat write times out at Kakao and is served by the alternate."""
        self.talk.behaviour = "hang"
        assert self.chat.call("x.write", WRITE, call).provider == "line"
        assert len(self.talk.sent) == 1
        assert self.detector.is_suspect("kakao")


def test_one_timeout_sends_another_capability_to_its_alternate_without_a_call() -> None:
    """While a probe is out, a write of another capability skips the suspect domain
    without calling it and is served from the other domain."""
    apps = Apps()
    apps.chat_times_out()
    assert apps.detector.try_probe("kakao")  # a probe is already out
    routed = apps.payment.call("x.write", WRITE, call)
    assert routed.provider == "toss"
    assert brief(routed.attempts) == [("kakao.pay", "DomainOpen", True), ("toss", None, False)]
    assert apps.kpay.sent == []


def test_the_single_probe_slot_is_taken_once_by_concurrent_writes() -> None:
    """Of writes made while one inline probe is out, only that probe reaches the domain;
    the rest go to the alternate at once. The probe is cut short by the probe timeout."""
    apps = Apps()
    apps.chat_times_out()
    apps.kpay.gate = threading.Event()
    results: list[str] = []
    prober = threading.Thread(
        target=lambda: results.append(apps.payment.call("x.write", WRITE, call).provider)
    )
    prober.start()
    try:
        assert apps.kpay.entered.wait(WAIT)
        others = [apps.payment.call("x.write", WRITE, call).provider for _ in range(3)]
    finally:
        apps.kpay.gate.set()
        prober.join(WAIT)
    assert not prober.is_alive()
    assert others == ["toss"] * 3
    assert results == ["kakao.pay"]
    assert [(s.probe, s.capped) for s in apps.kpay.sent] == [(True, apps.payment.probe_timeout)]
    assert apps.detector.allows("kakao")  # the probe's answer cleared the suspicion


def test_a_failed_inline_probe_fails_over_after_one_short_try() -> None:
    """An inline probe into a dark domain costs one try at the probe timeout, then the
    alternate serves."""
    apps = Apps()
    apps.chat_times_out()
    apps.kpay.behaviour = "hang"
    start = apps.clock.monotonic()
    routed = apps.payment.call("x.write", WRITE, call)
    assert routed.provider == "toss"
    assert len(apps.kpay.sent) == 1
    assert apps.clock.monotonic() - start == pytest.approx(apps.payment.probe_timeout)


def test_a_failed_inline_probe_of_a_second_capability_opens_the_domain() -> None:
    """The probe's failure counts for its own capability, so two are failing."""
    apps = Apps(failures_per_capability=1)
    apps.talk.behaviour = "hang"
    apps.chat.call("x.write", WRITE, call)
    apps.kpay.behaviour = "hang"
    apps.payment.call("x.write", WRITE, call)
    assert apps.detector.state("kakao") is D.OPEN


def test_a_payment_never_becomes_an_inline_probe() -> None:
    """A payment skips a suspect domain: a probe cut short would leave a charge of
    unknown outcome. The probe slot stays free for something else."""
    apps = Apps()
    apps.chat_times_out()
    routed = apps.payment.call("x.pay", PAYMENT, pay("o1"), resolve=resolve("o1"))
    assert routed.provider == "toss"
    assert routed.attempts[0].error == "DomainOpen"
    assert apps.kpay.sent == []
    assert apps.detector.try_probe("kakao")


def test_a_successful_inline_probe_brings_the_domain_back() -> None:
    """A write whose inline probe answers is served by the primary and clears suspicion."""
    apps = Apps()
    apps.chat_times_out()
    routed = apps.payment.call("x.write", WRITE, call)
    assert (routed.provider, routed.primary) == ("kakao.pay", True)
    assert apps.detector.allows("kakao")
    assert apps.chat.call("x.write", WRITE, call).provider == "line"  # talk still hangs


def test_writes_return_to_the_domain_when_the_suspicion_expires() -> None:
    """Without a probe, the domain is tried again once ``suspect_seconds`` have passed."""
    apps = Apps(suspect_seconds=3.0)
    apps.chat_times_out()
    apps.detector.try_probe("kakao")  # a probe that never reports
    assert apps.payment.call("x.write", WRITE, call).provider == "toss"
    apps.clock.advance(3.0)
    assert apps.payment.call("x.write", WRITE, call).provider == "kakao.pay"


def test_a_probe_slot_planned_for_a_later_route_is_given_back() -> None:
    """A write answered before it reaches a suspect alternate does not keep that
    domain's probe slot."""
    apps = Apps()
    apps.detector.record("alt", "other", ok=False, timeout=True)
    assert apps.chat.call("x.write", WRITE, call).provider == "kakao.talk"
    assert apps.line.sent == []
    assert apps.detector.try_probe("alt")


def test_a_half_open_alternate_keeps_its_probe_slots_when_not_reached() -> None:
    """Writes answered by the primary leave a half-open alternate domain its probe slots,
    so it can still be probed and close."""
    apps = Apps(probe_successes=1)
    apps.detector.force_open("alt")
    apps.clock.advance(16.0)
    for _ in range(3):
        assert apps.chat.call("x.write", WRITE, call).provider == "kakao.talk"
    apps.talk.behaviour = "refused"
    assert apps.chat.call("x.write", WRITE, call).provider == "line"
    assert apps.detector.allows("alt")


async def test_a_cancelled_inline_probe_hands_its_slot_back() -> None:
    """An async write cancelled while it probes the suspect domain frees the probe slot."""
    apps = Apps()
    apps.chat_times_out()
    apps.kpay.agate = asyncio.Event()
    task = asyncio.create_task(apps.payment.acall("x.write", WRITE, acall))
    for _ in range(100):
        if apps.kpay.entered.is_set():
            break
        await asyncio.sleep(0)
    assert apps.kpay.entered.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert apps.detector.try_probe("kakao")
