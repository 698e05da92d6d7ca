"""The SuperApp / AsyncSuperApp facade with in-process echo providers: how every call is
served (primary, alternate, cache, outbox, offline), the outbox's promises, payments that
never run twice, grace sessions, offline token verification, health and events.

Each capability has a primary in failure domain ``alpha`` and an alternate in ``beta``;
time is a FakeClock, so staleness, backoff and grace limits move only when a test says so.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from superapp_sdk import (
    AsyncSuperApp,
    ConfigError,
    DeadLettered,
    Declined,
    IdempotencyConflict,
    IdentityPolicy,
    InvalidRequest,
    OfflineCapExceeded,
    OfflinePolicy,
    ProviderConnectError,
    ServiceLevel,
    SuperApp,
    Unauthorized,
    Unavailable,
    Via,
)
from superapp_sdk.capabilities.mobility import Place
from superapp_sdk.capabilities.payment import PaymentStatus
from superapp_sdk.core.breaker import BreakerState, StateChange
from superapp_sdk.core.domains import DomainChange, DomainState
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay

USER = "user-minji"
GHOST = "user-ghost"  # has addresses, but no provider delivers to them
GANGNAM = Place(37.4979, 127.0276, "Gangnam Station")
CITY_HALL = Place(37.5663, 126.9779, "Seoul City Hall")
REDIRECT = "https://app.example/login/callback"
#: Longer than any outbox backoff (cap 300 s) and any breaker open time (<= 120 s).
PAST_BACKOFF = 400.0


class Rig:
    """A primary (domain ``alpha``) and an alternate (domain ``beta``) per capability."""

    def __init__(self, tmp: Path, app_class: type[Any] = SuperApp, **options: Any) -> None:
        clock = self.clock = FakeClock()
        self.chat_a = EchoChat(
            recipients=["minji@a"], name="chat.a", failure_domain="alpha", clock=clock
        )
        self.chat_b = EchoChat(
            recipients=["minji@b"], name="chat.b", failure_domain="beta", clock=clock
        )
        self.pay_a = EchoPay(name="pay.a", failure_domain="alpha", clock=clock)
        self.pay_b = EchoPay(name="pay.b", failure_domain="beta", clock=clock)
        self.login_a = EchoLogin(
            issuer="https://login.alpha.example",
            redirect_uri=REDIRECT,
            name="login.a",
            failure_domain="alpha",
            clock=clock,
            rng=random.Random(1),
        )
        self.login_b = EchoLogin(
            issuer="https://login.beta.example",
            redirect_uri=REDIRECT,
            name="login.b",
            failure_domain="beta",
            clock=clock,
            rng=random.Random(2),
        )
        self.login_a.add_user("sub-minji")
        self.mob_a = EchoMobility(name="mob.a", failure_domain="alpha", clock=clock)
        self.mob_b = EchoMobility(name="mob.b", failure_domain="beta", clock=clock)
        self.app = app_class(
            identity=[self.login_a, self.login_b],
            chat=[self.chat_a, self.chat_b],
            payment=[self.pay_a, self.pay_b],
            mobility=[self.mob_a, self.mob_b],
            state_dir=tmp / "state",
            timer=clock,
            rng=random.Random(7),
            **options,
        )
        directory = self.app.directory
        directory.put(USER, provider="chat.a", address="minji@a")
        directory.put(USER, provider="chat.b", address="minji@b")
        directory.put(GHOST, provider="chat.a", address="ghost@a")
        directory.put(GHOST, provider="chat.b", address="ghost@b")
        directory.put(USER, provider="pay.a", billing_key=self.pay_a.issue_billing_key(USER))
        directory.put(USER, provider="pay.b", billing_key=self.pay_b.issue_billing_key(USER))

    @staticmethod
    def down(*providers: EchoChat | EchoPay | EchoLogin | EchoMobility) -> None:
        """Refuse connections (so nothing can have executed) at every provider given."""
        for p in providers:
            p.fail = ProviderConnectError("down for the test", provider=p.name, request_sent=False)

    @staticmethod
    def up(*providers: EchoChat | EchoPay | EchoLogin | EchoMobility) -> None:
        """Heal every provider given."""
        for p in providers:
            p.fail = None

    def login(self) -> str:
        """Log the user in at login.a; the session id."""
        redirect = self.app.identity.login_url(state="st-1", nonce="n-1", provider="login.a")
        code = self.login_a.authorize(redirect.value)
        session = self.app.identity.complete_login(provider="login.a", code=code, nonce="n-1")
        return str(session.value.session_id)

    def id_token(self, login: EchoLogin, **overrides: Any) -> str:
        """A fresh ID token from ``login`` for the user, valid for an hour from now."""
        now = int(self.clock.time())
        claims = {
            "iss": login.issuer,
            "aud": login.client_id,
            "sub": "sub-minji",
            "iat": now,
            "exp": now + 3600,
            **overrides,
        }
        return login.sign(claims)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.app.close()


def _texts(chat: EchoChat, conversation: str | None = None) -> list[str]:
    return [m.text for m in chat.messages(conversation)]


def _successful(provider: EchoChat | EchoPay | EchoMobility, operation: str) -> int:
    return sum(1 for c in provider.calls if c.operation == operation and not c.failed)


# -- how a call was served -------------------------------------------------------------------


def test_primary_answer_says_primary_and_not_degraded(rig: Rig) -> None:
    """A healthy primary answers: Via.PRIMARY, its name, not degraded, one clean attempt."""
    out = rig.app.chat.send(to=USER, text="hello", conversation="c-1")
    assert (out.via, out.provider, out.degraded) == (Via.PRIMARY, "chat.a", False)
    assert [(a.provider, a.error, a.skipped) for a in out.attempts] == [("chat.a", None, False)]
    assert _texts(rig.chat_a, "c-1") == ["hello"]


def test_failover_answer_says_alternate_and_lists_both_attempts(rig: Rig) -> None:
    """A dead primary: Via.ALTERNATE from the alternate, degraded, both attempts listed."""
    rig.down(rig.chat_a)
    out = rig.app.chat.send(to=USER, text="hello", conversation="c-1")
    assert (out.via, out.provider, out.degraded) == (Via.ALTERNATE, "chat.b", True)
    assert [(a.provider, a.error) for a in out.attempts] == [
        ("chat.a", "ProviderConnectError"),
        ("chat.b", None),
    ]
    assert out.value.to == "minji@b"
    assert _texts(rig.chat_b, "c-1") == ["hello"]
    assert _texts(rig.chat_a) == []


def test_charge_fails_over_only_when_the_primary_provably_did_not_execute(rig: Rig) -> None:
    """A refused connection at pay.a sends the charge to pay.b: ALTERNATE, one charge."""
    rig.down(rig.pay_a)
    out = rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    assert (out.via, out.provider) == (Via.ALTERNATE, "pay.b")
    assert out.value.status is PaymentStatus.APPROVED
    assert (len(rig.pay_a.charges("o-1")), len(rig.pay_b.charges("o-1"))) == (0, 1)


# -- reads from the cache --------------------------------------------------------------------


def test_chat_history_is_served_from_the_cache_with_its_age(rig: Rig) -> None:
    """Every chat provider down after one good history read: Via.CACHE with stale_for."""
    rig.app.chat.send(to=USER, text="hello", conversation="c-1")
    fresh = rig.app.chat.history("c-1")
    assert fresh.via is Via.PRIMARY
    rig.clock.advance(30)
    rig.down(rig.chat_a, rig.chat_b)
    cached = rig.app.chat.history("c-1")
    assert (cached.via, cached.provider, cached.degraded) == (Via.CACHE, None, True)
    assert cached.value == fresh.value
    assert cached.stale_for is not None
    assert 30 <= cached.stale_for < 31


def test_estimate_is_served_from_the_cache_with_its_age(rig: Rig) -> None:
    """Every mobility provider down after one good estimate: Via.CACHE with stale_for."""
    fresh = rig.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    rig.clock.advance(45)
    rig.down(rig.mob_a, rig.mob_b)
    cached = rig.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    assert cached.via is Via.CACHE
    assert cached.value == fresh.value
    assert cached.stale_for is not None
    assert 45 <= cached.stale_for < 46


def test_payment_status_is_served_from_the_cache_with_its_age(rig: Rig) -> None:
    """The order's provider down after one good status: Via.CACHE with stale_for."""
    rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    fresh = rig.app.payment.status("o-1")
    rig.clock.advance(60)
    rig.down(rig.pay_a, rig.pay_b)
    cached = rig.app.payment.status("o-1")
    assert cached.via is Via.CACHE
    assert cached.value.status is PaymentStatus.APPROVED
    assert cached.value.provider_ref == fresh.value.provider_ref
    assert cached.stale_for is not None
    assert 60 <= cached.stale_for < 61


def test_read_with_nothing_cached_raises_unavailable_with_attempts(rig: Rig) -> None:
    """Every provider down and no earlier answer: Unavailable listing both providers."""
    rig.down(rig.chat_a, rig.chat_b)
    with pytest.raises(Unavailable) as caught:
        rig.app.chat.history("never-read")
    assert {a.provider for a in caught.value.attempts} == {"chat.a", "chat.b"}


def test_cached_read_older_than_its_max_staleness_is_unavailable(rig: Rig) -> None:
    """A cached answer older than the read's max staleness (a day) is not served."""
    rig.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    rig.clock.advance(25 * 3600)
    rig.down(rig.mob_a, rig.mob_b)
    with pytest.raises(Unavailable):
        rig.app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)


# -- writes to the outbox --------------------------------------------------------------------


def test_send_is_queued_with_a_ticket_when_every_provider_fails(rig: Rig) -> None:
    """Every chat provider down: Via.QUEUED with a ticket, and the outbox holds it."""
    rig.down(rig.chat_a, rig.chat_b)
    out = rig.app.chat.send(to=USER, text="later", conversation="c-1")
    assert (out.via, out.provider, out.degraded) == (Via.QUEUED, None, True)
    assert out.ticket
    assert out.value.message_id == out.ticket
    assert rig.app.outbox.get(out.ticket) is not None
    assert rig.app.health().outbox_depth == 1


def test_send_without_defer_raises_unavailable_and_queues_nothing(rig: Rig) -> None:
    """defer=False: every provider down raises Unavailable; the outbox stays empty."""
    rig.down(rig.chat_a, rig.chat_b)
    with pytest.raises(Unavailable):
        rig.app.chat.send(to=USER, text="now or never", defer=False)
    assert rig.app.outbox.depth() == 0


def test_queued_message_is_delivered_once_by_drain_when_providers_are_back(rig: Rig) -> None:
    """`with app:` starts the worker; drain delivers the queued message exactly once."""
    with rig.app as app:
        rig.down(rig.chat_a, rig.chat_b)
        out = app.chat.send(to=USER, text="later", conversation="c-1")
        assert out.via is Via.QUEUED
        rig.up(rig.chat_a, rig.chat_b)
        rig.clock.advance(PAST_BACKOFF)
        assert app.drain(timeout=10) is True
        assert app.outbox.depth() == 0
    delivered = _texts(rig.chat_a, "c-1") + _texts(rig.chat_b, "c-1")
    assert delivered == ["later"]


def test_new_message_waits_behind_queued_ones_of_its_conversation(rig: Rig) -> None:
    """A message to a conversation with queued messages is queued behind them, in order."""
    app = rig.app
    rig.down(rig.chat_a, rig.chat_b)
    first = app.chat.send(to=USER, text="first", conversation="c-1")
    rig.up(rig.chat_a, rig.chat_b)
    calls_before = len(rig.chat_a.calls) + len(rig.chat_b.calls)
    second = app.chat.send(to=USER, text="second", conversation="c-1")
    assert (first.via, second.via) == (Via.QUEUED, Via.QUEUED)
    assert len(rig.chat_a.calls) + len(rig.chat_b.calls) == calls_before
    assert app.drain(timeout=10) is True
    assert _texts(rig.chat_a, "c-1") + _texts(rig.chat_b, "c-1") == ["first", "second"]


def test_other_conversations_are_not_held_behind_a_queued_one(rig: Rig) -> None:
    """A queued message of one conversation does not queue another conversation's."""
    rig.down(rig.chat_a, rig.chat_b)
    rig.app.chat.send(to=USER, text="queued", conversation="c-1")
    rig.up(rig.chat_a, rig.chat_b)
    out = rig.app.chat.send(to=USER, text="direct", conversation="c-2")
    assert out.via is Via.PRIMARY


def test_queued_rental_end_is_ended_once_by_drain(rig: Rig) -> None:
    """end_rental with every mobility provider down is QUEUED, then ended exactly once."""
    for mob in (rig.mob_a, rig.mob_b):
        mob.start_rental("scooter-1", started_at=rig.clock.time() - 600)
    rig.down(rig.mob_a, rig.mob_b)
    at = rig.clock.time()
    out = rig.app.mobility.end_rental(rental_id="scooter-1", location=CITY_HALL, at=at)
    assert out.via is Via.QUEUED
    assert out.ticket == out.value.receipt_id
    assert (out.value.reconciled, out.value.ended_at) == (False, at)
    rig.up(rig.mob_a, rig.mob_b)
    rig.clock.advance(PAST_BACKOFF)
    assert rig.app.drain(timeout=10) is True
    ended = _successful(rig.mob_a, "mobility.end_rental") + _successful(
        rig.mob_b, "mobility.end_rental"
    )
    assert ended == 1


def test_queued_charge_is_charged_once_by_drain(rig: Rig) -> None:
    """charge(offline=QUEUE) with every payment provider down is QUEUED, then charged once."""
    rig.down(rig.pay_a, rig.pay_b)
    out = rig.app.payment.charge(
        order_id="o-1", amount=4_500, user_id=USER, offline=OfflinePolicy.QUEUE
    )
    assert out.via is Via.QUEUED
    assert out.ticket
    assert out.value.status is PaymentStatus.PENDING
    assert rig.pay_a.charges("o-1") + rig.pay_b.charges("o-1") == []
    rig.up(rig.pay_a, rig.pay_b)
    rig.clock.advance(PAST_BACKOFF)
    assert rig.app.drain(timeout=10) is True
    assert len(rig.pay_a.charges("o-1") + rig.pay_b.charges("o-1")) == 1
    again = rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    assert again.value.status is PaymentStatus.APPROVED
    assert len(rig.pay_a.charges("o-1") + rig.pay_b.charges("o-1")) == 1


def test_charge_with_deny_policy_raises_unavailable_and_queues_nothing(rig: Rig) -> None:
    """OfflinePolicy.DENY (the default): every provider down raises Unavailable."""
    rig.down(rig.pay_a, rig.pay_b)
    with pytest.raises(Unavailable) as caught:
        rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    assert {a.provider for a in caught.value.attempts} == {"pay.a", "pay.b"}
    assert rig.app.outbox.depth() == 0


def test_reused_key_with_other_text_is_refused_while_the_first_is_queued(rig: Rig) -> None:
    """One idempotency key, two texts, the first still queued: IdempotencyConflict."""
    rig.down(rig.chat_a, rig.chat_b)
    rig.app.chat.send(to=USER, text="first", conversation="c-1", idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict):
        rig.app.chat.send(to=USER, text="other", conversation="c-1", idempotency_key="k-1")
    assert rig.app.outbox.depth() == 1


def test_reused_key_with_other_text_is_refused_after_delivery(rig: Rig) -> None:
    """One idempotency key, two texts, the first delivered: refused, never sent elsewhere."""
    rig.app.chat.send(to=USER, text="first", conversation="c-1", idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict):
        rig.app.chat.send(to=USER, text="other", conversation="c-1", idempotency_key="k-1")
    assert _texts(rig.chat_a) + _texts(rig.chat_b) == ["first"]


def test_reused_key_with_the_same_text_delivers_once(rig: Rig) -> None:
    """The same idempotency key and text sent twice is delivered once."""
    one = rig.app.chat.send(to=USER, text="hi", conversation="c-1", idempotency_key="k-1")
    two = rig.app.chat.send(to=USER, text="hi", conversation="c-1", idempotency_key="k-1")
    assert one.value.message_id == two.value.message_id
    assert _texts(rig.chat_a, "c-1") == ["hi"]


def test_reused_ride_key_with_another_destination_is_refused(rig: Rig) -> None:
    """A ride key reused for another trip is refused, and no provider books it."""
    first = rig.app.mobility.request_ride(
        rider=USER, origin=GANGNAM, destination=CITY_HALL, idempotency_key="ride-1"
    )
    assert first.via is Via.PRIMARY
    elsewhere = Place(35.1796, 129.0756, "Busan")
    with pytest.raises(IdempotencyConflict):
        rig.app.mobility.request_ride(
            rider=USER, origin=GANGNAM, destination=elsewhere, idempotency_key="ride-1"
        )
    booked = _successful(rig.mob_a, "mobility.request_ride") + _successful(
        rig.mob_b, "mobility.request_ride"
    )
    assert booked == 1


def test_declined_replay_moves_the_item_to_dead_letters_with_an_event(rig: Rig) -> None:
    """A queued message whose replay is declined goes to the dead-letter store, with an
    event to app.on(DeadLettered, ...)."""
    events: list[DeadLettered] = []
    rig.app.on(DeadLettered, events.append)
    rig.down(rig.chat_a, rig.chat_b)
    out = rig.app.chat.send(to=GHOST, text="boo", conversation="c-9")
    assert out.via is Via.QUEUED
    rig.up(rig.chat_a, rig.chat_b)
    rig.clock.advance(PAST_BACKOFF)
    assert rig.app.drain(timeout=10) is True
    assert [e.item.ticket for e in events] == [out.ticket]
    assert "Declined" in (events[0].item.last_error or "")
    assert rig.app.health().dead_letters == 1
    assert [d.ticket for d in rig.app.outbox.dead_letters()] == [out.ticket]


# -- payments never run twice ----------------------------------------------------------------


def test_charge_twice_with_one_order_id_charges_once(rig: Rig) -> None:
    """A second charge of one order returns the first Payment and charges nothing more."""
    first = rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    second = rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    assert second.value == first.value
    assert len(rig.pay_a.charges("o-1")) == 1
    assert _successful(rig.pay_a, "payment.charge") == 1


def test_charge_of_an_order_with_another_amount_is_refused(rig: Rig) -> None:
    """An order id is one payment: charging it again with another amount is refused as an
    idempotency conflict, as a chat key reused for another message is."""
    rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    with pytest.raises(IdempotencyConflict):
        rig.app.payment.charge(order_id="o-1", amount=9_000, user_id=USER)
    assert [p.amount.amount for p in rig.pay_a.charges("o-1")] == [4_500]


def test_declined_card_is_raised_and_never_failed_over(rig: Rig) -> None:
    """A card declined at the primary raises Declined; the alternate is never asked."""
    rig.pay_a.decline(user_id=USER, reason="insufficient funds")
    with pytest.raises(Declined):
        rig.app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    assert rig.pay_b.calls == []


# -- identity: grace sessions and offline verification ----------------------------------------


def test_refresh_while_the_provider_is_down_gives_a_read_only_grace_session(rig: Rig) -> None:
    """identity.refresh with the session's provider down: Via.OFFLINE, grace, read only."""
    session_id = rig.login()
    rig.down(rig.login_a)
    out = rig.app.identity.refresh(session_id)
    policy = IdentityPolicy()
    assert (out.via, out.value.grace) == (Via.OFFLINE, True)
    assert out.value.scopes == frozenset({"read"})
    assert out.value.session_id == session_id
    assert out.value.expires_at <= rig.clock.time() + policy.grace_seconds


def test_grace_sessions_end_at_max_grace_seconds(tmp_path: Path) -> None:
    """Grace extensions never outlive max_grace_seconds; past it, OfflineCapExceeded."""
    r = Rig(tmp_path, identity_policy=IdentityPolicy(grace_seconds=600, max_grace_seconds=1500))
    try:
        session_id = r.login()
        r.down(r.login_a)
        started = r.clock.time()
        first = r.app.identity.refresh(session_id)
        r.clock.advance(1000)
        second = r.app.identity.refresh(session_id)
        assert (first.via, second.via) == (Via.OFFLINE, Via.OFFLINE)
        assert second.value.expires_at <= started + 1500 + 1  # capped, not now + 600
        r.clock.advance(600)
        with pytest.raises(OfflineCapExceeded):
            r.app.identity.refresh(session_id)
    finally:
        r.app.close()


def test_refresh_after_the_provider_is_back_restores_the_full_session(rig: Rig) -> None:
    """Once the provider answers again, refresh renews the session with every scope."""
    session_id = rig.login()
    rig.down(rig.login_a)
    rig.app.identity.refresh(session_id)
    rig.up(rig.login_a)
    rig.clock.advance(PAST_BACKOFF)
    out = rig.app.identity.refresh(session_id)
    assert (out.via, out.value.grace) == (Via.PRIMARY, False)
    assert {"read", "write", "payment"} <= out.value.scopes


def test_verify_accepts_an_id_token_online(rig: Rig) -> None:
    """A token signed by login.a verifies with its fresh key set: Via.PRIMARY."""
    out = rig.app.identity.verify(rig.id_token(rig.login_a))
    assert (out.via, out.provider) == (Via.PRIMARY, "login.a")
    assert (out.value.subject, out.value.issuer) == ("sub-minji", rig.login_a.issuer)


def test_verify_uses_the_cached_key_set_while_the_provider_is_down(rig: Rig) -> None:
    """With login.a down and its key set due for refresh, the cached one verifies: CACHE."""
    rig.app.identity.verify(rig.id_token(rig.login_a))  # fetches and caches the key set
    rig.clock.advance(2 * 3600)
    rig.down(rig.login_a)
    out = rig.app.identity.verify(rig.id_token(rig.login_a))
    assert (out.via, out.provider) == (Via.CACHE, "login.a")
    assert out.stale_for is not None
    assert out.stale_for >= 2 * 3600
    assert out.value.subject == "sub-minji"


def test_forged_id_token_is_refused(rig: Rig) -> None:
    """A token claiming login.a's issuer and key id, signed with another key: Unauthorized."""
    forged = rig.login_b.sign(
        {
            "iss": rig.login_a.issuer,
            "aud": rig.login_a.client_id,
            "sub": "sub-minji",
            "iat": int(rig.clock.time()),
            "exp": int(rig.clock.time()) + 3600,
        },
        header={"kid": rig.login_a.kid},
    )
    with pytest.raises(Unauthorized):
        rig.app.identity.verify(forged)


def test_expired_id_token_is_refused_even_from_the_cache(rig: Rig) -> None:
    """An expired token is refused while the provider is down, cached key set or not."""
    token = rig.id_token(rig.login_a)
    rig.app.identity.verify(token)
    rig.clock.advance(2 * 3600)
    rig.down(rig.login_a)
    with pytest.raises(Unauthorized):
        rig.app.identity.verify(token)


# -- health ----------------------------------------------------------------------------------


def test_health_is_full_while_every_primary_is_available(rig: Rig) -> None:
    """No breaker open: every capability FULL, every domain closed."""
    health = rig.app.health()
    assert health.level is ServiceLevel.FULL
    assert {c.level for c in health.capabilities.values()} == {ServiceLevel.FULL}
    assert set(health.domains.values()) == {DomainState.CLOSED}


def test_health_is_degraded_when_the_primary_breaker_is_forced_open(rig: Rig) -> None:
    """The primary's breaker forced open: that capability DEGRADED, the others FULL."""
    rig.app.breaker("chat.a").force_open()
    health = rig.app.health()
    chat = health.capabilities["chat"]
    assert chat.level is ServiceLevel.DEGRADED
    assert [(p.name, p.breaker, p.available) for p in chat.providers] == [
        ("chat.a", BreakerState.OPEN, False),
        ("chat.b", BreakerState.CLOSED, True),
    ]
    assert health.capabilities["payment"].level is ServiceLevel.FULL
    assert health.level is ServiceLevel.DEGRADED


def test_health_is_offline_when_every_provider_is_isolated(rig: Rig) -> None:
    """Both chat breakers isolated: chat OFFLINE, and so is the app's overall level."""
    rig.app.breaker("chat.a").isolate()
    rig.app.breaker("chat.b").isolate()
    health = rig.app.health()
    assert health.capabilities["chat"].level is ServiceLevel.OFFLINE
    assert health.level is ServiceLevel.OFFLINE


def test_open_breaker_sends_calls_to_the_alternate_without_calling_the_primary(
    rig: Rig,
) -> None:
    """With chat.a forced open, a send skips it (no call) and the alternate serves."""
    rig.app.breaker("chat.a").force_open()
    out = rig.app.chat.send(to=USER, text="hi")
    assert (out.via, out.provider) == (Via.ALTERNATE, "chat.b")
    assert rig.chat_a.calls == []
    assert out.attempts[0].skipped


def test_open_failure_domain_makes_every_capability_in_it_degraded(rig: Rig) -> None:
    """Forcing domain alpha open degrades every capability whose primary lives there."""
    rig.app.domains.force_open("alpha")
    health = rig.app.health()
    assert health.domains["alpha"] is not DomainState.CLOSED
    assert {c.level for c in health.capabilities.values()} == {ServiceLevel.DEGRADED}


def test_breaker_of_an_unknown_provider_is_refused(rig: Rig) -> None:
    """app.breaker() with a name nobody has raises InvalidRequest."""
    with pytest.raises(InvalidRequest):
        rig.app.breaker("nobody")


# -- events ----------------------------------------------------------------------------------


def test_star_listener_receives_breaker_and_domain_events(rig: Rig) -> None:
    """app.on("*", cb) hears a breaker opening and a failure domain opening."""
    events: list[object] = []
    rig.app.on("*", events.append)
    rig.app.breaker("chat.a").force_open()
    rig.app.domains.force_open("beta")
    breaker_events = [e for e in events if isinstance(e, StateChange)]
    domain_events = [e for e in events if isinstance(e, DomainChange)]
    assert [(e.name, e.new) for e in breaker_events] == [("chat.a", BreakerState.OPEN)]
    assert [e.domain for e in domain_events] == ["beta"]


def test_typed_listener_receives_only_its_type(rig: Rig) -> None:
    """app.on(DomainChange, cb) does not hear breaker events."""
    events: list[object] = []
    rig.app.on(DomainChange, events.append)
    rig.app.breaker("chat.a").force_open()
    assert events == []
    rig.app.domains.force_open("alpha")
    assert [type(e) for e in events] == [DomainChange]


def test_raising_listener_does_not_break_calls(rig: Rig) -> None:
    """A listener that raises while calls open a breaker never breaks those calls."""

    def explode(event: object) -> None:
        raise RuntimeError(f"listener bug on {event!r}")

    rig.app.on("*", explode)
    rig.app.on(StateChange, explode)
    rig.down(rig.chat_a)
    outcomes = [rig.app.chat.send(to=USER, text=f"m{n}") for n in range(8)]
    assert {o.via for o in outcomes} == {Via.ALTERNATE}
    assert rig.app.breaker("chat.a").state is BreakerState.OPEN
    assert rig.app.listener_errors >= 2


# -- configuration errors --------------------------------------------------------------------


def test_redis_store_raises_config_error_naming_store(tmp_path: Path) -> None:
    """store="redis://..." is not available in this release: ConfigError with key store."""
    with pytest.raises(ConfigError) as caught:
        SuperApp(store="redis://127.0.0.1:6379/0", state_dir=tmp_path / "state")
    assert caught.value.key == "store"
    assert "redis" in str(caught.value)


def test_provider_under_the_wrong_capability_raises_config_error(tmp_path: Path) -> None:
    """A payment provider given as chat: ConfigError naming chat."""
    with pytest.raises(ConfigError) as caught:
        SuperApp(chat=[EchoPay(name="pay.a")], state_dir=tmp_path / "state")
    assert caught.value.key == "chat"
    assert "pay.a" in str(caught.value)


def test_two_providers_with_one_name_raise_config_error(tmp_path: Path) -> None:
    """Provider names identify breakers and records: a duplicate is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        SuperApp(chat=[EchoChat(name="x"), EchoChat(name="x")], state_dir=tmp_path / "state")
    assert caught.value.key == "chat"


# -- async -----------------------------------------------------------------------------------


class AsyncRig(Rig):
    """The same providers behind an AsyncSuperApp."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, AsyncSuperApp)


async def test_async_send_fails_over_to_the_alternate(tmp_path: Path) -> None:
    """AsyncSuperApp: chat.send with the primary down is served by the alternate."""
    r = AsyncRig(tmp_path)
    async with r.app as app:
        assert (await app.chat.send(to=USER, text="a")).via is Via.PRIMARY
        r.down(r.chat_a)
        out = await app.chat.send(to=USER, text="b")
    assert (out.via, out.provider) == (Via.ALTERNATE, "chat.b")
    assert _texts(r.chat_b) == ["b"]


async def test_async_estimate_is_served_from_the_cache(tmp_path: Path) -> None:
    """AsyncSuperApp: an estimate with every provider down comes from the cache."""
    r = AsyncRig(tmp_path)
    async with r.app as app:
        fresh = await app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
        r.clock.advance(20)
        r.down(r.mob_a, r.mob_b)
        cached = await app.mobility.estimate(origin=GANGNAM, destination=CITY_HALL)
    assert fresh.via is Via.PRIMARY
    assert (cached.via, cached.value) == (Via.CACHE, fresh.value)
    assert cached.stale_for is not None
    assert cached.stale_for >= 20


async def test_async_charge_twice_charges_once(tmp_path: Path) -> None:
    """AsyncSuperApp: two charges of one order make one payment."""
    r = AsyncRig(tmp_path)
    async with r.app as app:
        first = await app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
        second = await app.payment.charge(order_id="o-1", amount=4_500, user_id=USER)
    assert (first.via, first.provider) == (Via.PRIMARY, "pay.a")
    assert second.value == first.value
    assert len(r.pay_a.charges("o-1")) == 1


async def test_async_queued_send_is_delivered_by_drain(tmp_path: Path) -> None:
    """AsyncSuperApp: a queued message is delivered once by drain after recovery."""
    r = AsyncRig(tmp_path)
    async with r.app as app:
        r.down(r.chat_a, r.chat_b)
        out = await app.chat.send(to=USER, text="later", conversation="c-1")
        assert out.via is Via.QUEUED
        assert out.ticket
        r.up(r.chat_a, r.chat_b)
        r.clock.advance(PAST_BACKOFF)
        assert await app.drain(timeout=10) is True
    assert _texts(r.chat_a, "c-1") + _texts(r.chat_b, "c-1") == ["later"]


async def test_async_queued_charge_is_charged_once_by_drain(tmp_path: Path) -> None:
    """AsyncSuperApp: charge(offline=QUEUE) is QUEUED, then charged once by drain."""
    r = AsyncRig(tmp_path)
    async with r.app as app:
        r.down(r.pay_a, r.pay_b)
        out = await app.payment.charge(
            order_id="o-1", amount=4_500, user_id=USER, offline=OfflinePolicy.QUEUE
        )
        assert out.via is Via.QUEUED
        r.up(r.pay_a, r.pay_b)
        r.clock.advance(PAST_BACKOFF)
        assert await app.drain(timeout=10) is True
    assert len(r.pay_a.charges("o-1") + r.pay_b.charges("o-1")) == 1
