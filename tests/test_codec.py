"""The JSON codec of the SDK's models: every capability model survives a round trip, and a
corrupted stored record is a StoreError naming the record, never a half-built value."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superapp_sdk import Money, ProviderConnectError, StoreError, SuperApp, Via
from superapp_sdk._codec import decode, dumps, encode, loads
from superapp_sdk._ops import PaymentRecord, SessionRecord
from superapp_sdk.capabilities.chat import Message, MessageReceipt
from superapp_sdk.capabilities.identity import Claims, LoginRedirect, Session, TokenSet, UserInfo
from superapp_sdk.capabilities.mobility import (
    DeepLink,
    Driver,
    Estimate,
    Place,
    RentalReceipt,
    Ride,
    RideStatus,
)
from superapp_sdk.capabilities.payment import Approval, Checkout, Payment, PaymentStatus
from superapp_sdk.offline.cache import ReadCache
from superapp_sdk.store import DiskStore
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.echo import EchoChat, EchoPay

# -- strategies --------------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=40)
optional_texts = st.none() | texts
times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
optional_times = st.none() | times
counts = st.integers(min_value=0, max_value=10**9)  # every currency allows 10**9 major units
currencies = st.sampled_from(["KRW", "USD", "JPY", "EUR"])
money = st.builds(Money, amount=counts, currency=currencies)
optional_money = st.none() | money
places = st.builds(
    Place,
    lat=st.floats(-90, 90, allow_nan=False),
    lng=st.floats(-180, 180, allow_nan=False),
    name=optional_texts,
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def payments(draw: st.DrawFn) -> Payment:
    amount = draw(money)
    canceled = draw(st.none() | st.integers(0, amount.amount))
    return Payment(
        order_id=draw(texts),
        provider=draw(texts),
        status=draw(st.sampled_from(PaymentStatus)),
        amount=amount,
        approved_at=draw(optional_times),
        provider_ref=draw(texts),
        approval_id=draw(optional_texts),
        billing_key=draw(optional_texts),
        canceled_amount=None if canceled is None else Money(canceled, amount.currency),
    )


MODELS: dict[type[Any], st.SearchStrategy[Any]] = {
    Money: money,
    MessageReceipt: st.builds(
        MessageReceipt,
        message_id=texts,
        provider=texts,
        to=texts,
        conversation=optional_texts,
        accepted_at=times,
    ),
    Message: st.builds(
        Message,
        message_id=texts,
        conversation=texts,
        sender=texts,
        text=st.text(max_size=200),
        sent_at=times,
    ),
    LoginRedirect: st.builds(LoginRedirect, url=texts, state=texts, nonce=texts, provider=texts),
    TokenSet: st.builds(
        TokenSet,
        access_token=texts,
        refresh_token=optional_texts,
        id_token=optional_texts,
        expires_in=counts,
        refresh_token_expires_in=st.none() | counts,
        scope=optional_texts,
    ),
    Claims: st.builds(
        Claims,
        subject=texts,
        issuer=texts,
        audience=texts,
        expires_at=times,
        issued_at=times,
        nonce=optional_texts,
        email=optional_texts,
        name=optional_texts,
        raw=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    ),
    Session: st.builds(
        Session,
        session_id=texts,
        user_id=texts,
        provider=texts,
        subject=texts,
        expires_at=times,
        scopes=st.frozensets(texts, max_size=4),
        grace=st.booleans(),
    ),
    UserInfo: st.builds(UserInfo, subject=texts, email=optional_texts, name=optional_texts),
    Checkout: st.builds(
        Checkout,
        order_id=texts,
        provider=texts,
        redirect_url=texts,
        mobile_url=optional_texts,
        app_url=optional_texts,
        provider_ref=texts,
        expires_at=optional_times,
    ),
    Approval: st.builds(
        Approval,
        provider_ref=texts,
        token=st.text(max_size=20),
        user_id=texts,
        amount=optional_money,
    ),
    Payment: payments(),
    Place: places,
    Estimate: st.builds(
        Estimate,
        origin=places,
        destination=places,
        distance_m=counts,
        duration_s=counts,
        fare=optional_money,
        provider=texts,
        live=st.booleans(),
        scheduled_departure=optional_times,
    ),
    Driver: st.builds(Driver, name=texts, vehicle=optional_texts, plate=optional_texts),
    Ride: st.builds(
        Ride,
        ride_id=texts,
        provider=texts,
        status=st.sampled_from(RideStatus),
        rider=texts,
        origin=places,
        destination=places,
        driver=st.none() | st.builds(Driver, name=texts),
        eta_s=st.none() | counts,
        fare=optional_money,
    ),
    RentalReceipt: st.builds(
        RentalReceipt,
        rental_id=texts,
        provider=texts,
        ended_at=times,
        location=places,
        fare=optional_money,
        receipt_id=texts,
        signature=optional_texts,
        reconciled=st.booleans(),
    ),
    DeepLink: st.builds(DeepLink, app=texts, url=texts, fallback_url=optional_texts),
}


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
@given(data=st.data())
def test_every_capability_model_survives_a_round_trip(
    model: type[Any], data: st.DataObject
) -> None:
    """dumps then loads gives back an equal model, for any valid value of every model."""
    value = data.draw(MODELS[model])
    assert loads(model, dumps(value), what="test value") == value


@given(messages=st.lists(MODELS[Message], max_size=5))
def test_a_list_of_messages_survives_a_round_trip(messages: list[Message]) -> None:
    """Chat history (list[Message]) goes through encode/decode unchanged."""
    assert decode(list[Message], json.loads(json.dumps(encode(messages)))) == messages


@given(payment=payments(), key=texts)
def test_payment_record_survives_a_round_trip(payment: Payment, key: str) -> None:
    """The local order record, with its nested Payment, round-trips."""
    record = PaymentRecord(
        payment.order_id,
        key,
        payment.amount,
        "user-1",
        provider=payment.provider,
        provider_ref=payment.provider_ref,
        status=payment.status,
        payment=payment,
        sealed_billing_key="00ff",
    )
    assert loads(PaymentRecord, dumps(record), what="record") == record


@given(session=MODELS[Session])
def test_session_record_survives_a_round_trip(session: Session) -> None:
    """A session record (session, sealed tokens, grace start) round-trips."""
    record = SessionRecord(session, "abcdef", grace_started=12.5)
    assert loads(SessionRecord, dumps(record), what="session") == record


def test_encoding_is_plain_json() -> None:
    """Enums become their values, frozensets sorted lists, nested models objects."""
    session = Session("s-1", "u-1", "p", "sub", 10.0, frozenset({"write", "read"}), False)
    assert json.loads(dumps(session)) == {
        "session_id": "s-1",
        "user_id": "u-1",
        "provider": "p",
        "subject": "sub",
        "expires_at": 10.0,
        "scopes": ["read", "write"],
        "grace": False,
    }
    payment = Payment("o", "p", PaymentStatus.APPROVED, Money(5), None, "ref")
    encoded = json.loads(dumps(payment))
    assert (encoded["status"], encoded["amount"]) == ("approved", {"amount": 5, "currency": "KRW"})


def test_integer_time_decodes_as_float() -> None:
    """A float field written as an integer (JSON has one number type) decodes as float."""
    raw = b'{"lat": 37, "lng": 127, "name": null}'
    place = loads(Place, raw, what="place")
    assert (place.lat, type(place.lat)) == (37.0, float)


# -- corrupted records -------------------------------------------------------------------------

PAYMENT = Payment("o-1", "pay.a", PaymentStatus.APPROVED, Money(4_500), 1.0, "ref-1")


def _corrupt(**changes: Any) -> bytes:
    data = json.loads(dumps(PAYMENT))
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (dumps(PAYMENT)[:-7], "JSONDecodeError"),
        (b"", "JSONDecodeError"),
        (b'{"order_id": "\xff"}', "UnicodeDecodeError"),
        (b"[1, 2, 3]", "expected an object"),
        (b"null", "expected an object"),
        (_corrupt(status="refunded-twice"), "refunded-twice"),
        (_corrupt(amount={"amount": "4500", "currency": "KRW"}), "Payment.amount.amount"),
        (_corrupt(amount={"amount": -1, "currency": "KRW"}), "Money.amount"),
        (_corrupt(approved_at="yesterday"), "Payment.approved_at"),
        (_corrupt(order_id=""), "order_id"),
        (b'{"order_id": "o-1"}', "TypeError"),
    ],
    ids=[
        "truncated",
        "empty",
        "not-utf8",
        "array",
        "null",
        "bad-enum",
        "wrong-type",
        "invalid-value",
        "bad-time",
        "empty-required",
        "missing-fields",
    ],
)
def test_corrupted_record_raises_store_error_naming_it(raw: bytes, detail: str) -> None:
    """A corrupted record raises StoreError naming the record and what was wrong."""
    with pytest.raises(StoreError) as caught:
        loads(Payment, raw, what="payment record of 'o-1'")
    message = str(caught.value)
    assert "payment record of 'o-1'" in message
    assert detail in message


def test_deeply_nested_garbage_raises_store_error() -> None:
    """Garbage nested past the JSON parser's recursion limit is a StoreError, not a crash."""
    with pytest.raises(StoreError):
        loads(Payment, b"[" * 200_000, what="payment record of 'o-1'")


@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_give_a_model_or_a_store_error(raw: bytes) -> None:
    """Whatever bytes a record holds, loads returns a valid Payment or raises StoreError."""
    try:
        value = loads(Payment, raw, what="record")
    except StoreError:
        return
    assert isinstance(value, Payment)


# -- corrupted state seen through the app ------------------------------------------------------


def _app(state_dir: Path, clock: FakeClock, pay: EchoPay, chat: EchoChat) -> SuperApp:
    return SuperApp(
        payment=[pay], chat=[chat], state_dir=state_dir, timer=clock, rng=random.Random(1)
    )


def test_corrupted_payment_record_in_the_store_raises_store_error(tmp_path: Path) -> None:
    """payment.status over a corrupted order record raises StoreError naming the order."""
    clock, state_dir = FakeClock(), tmp_path / "state"
    pay, chat = EchoPay(name="pay.a", clock=clock), EchoChat(name="chat.a", clock=clock)
    app = _app(state_dir, clock, pay, chat)
    try:
        app.directory.put("u-1", provider="pay.a", billing_key=pay.issue_billing_key("u-1"))
        app.payment.charge(order_id="o-1", amount=1_000, user_id="u-1")
    finally:
        app.close()
    with DiskStore(state_dir, clock=clock) as disk:
        disk.namespace("state").set("payment:o-1", b'{"order_id": "o-1", "amount": "lots"}')
    app = _app(state_dir, clock, pay, chat)
    try:
        with pytest.raises(StoreError) as caught:
            app.payment.status("o-1")
    finally:
        app.close()
    assert "'o-1'" in str(caught.value)


def test_corrupted_cached_answer_raises_store_error_naming_it(tmp_path: Path) -> None:
    """A cached history of the wrong shape, served while chat is down: StoreError naming it,
    not a ValueError from the decoder."""
    clock, state_dir = FakeClock(), tmp_path / "state"
    pay, chat = EchoPay(name="pay.a", clock=clock), EchoChat(name="chat.a", clock=clock)
    app = _app(state_dir, clock, pay, chat)
    try:
        app.chat.history("c-1")  # caches the (empty) history
        with DiskStore(state_dir / "cache", durable=False, clock=clock) as disk:
            cache = ReadCache(disk.namespace("cache"), clock=clock)
            cache.put("chat.history:c-1:50", {"not": "a list"}, operation="chat.history")
        chat.fail = ProviderConnectError("chat.a down", request_sent=False)
        with pytest.raises(StoreError) as caught:
            app.chat.history("c-1")
    finally:
        app.close()
    assert "chat.history:c-1" in str(caught.value)


def test_intact_cached_answer_is_served_after_a_restart(tmp_path: Path) -> None:
    """The cache is on disk: a new app over the same state_dir serves it while chat is down."""
    clock, state_dir = FakeClock(), tmp_path / "state"
    pay, chat = EchoPay(name="pay.a", clock=clock), EchoChat(name="chat.a", clock=clock)
    app = _app(state_dir, clock, pay, chat)
    try:
        app.directory.put("u-1", provider="chat.a", address="a@x")
        app.chat.send(to="u-1", text="hello", conversation="c-1")
        fresh = app.chat.history("c-1")
    finally:
        app.close()
    chat.fail = ProviderConnectError("chat.a down", request_sent=False)
    app = _app(state_dir, clock, pay, chat)
    try:
        cached = app.chat.history("c-1")
    finally:
        app.close()
    assert (cached.via, cached.value) == (Via.CACHE, fresh.value)
