"""Secrets at rest: the sealing key's permissions, billing keys and session tokens never in
plain text under ``state_dir``, the directory's ``Contact``, and sealed values bound to
their purpose."""

from __future__ import annotations

import logging
import random
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from superapp_sdk import Contact, OfflinePolicy, ProviderConnectError, StoreError, SuperApp, Via
from superapp_sdk._directory import Directory
from superapp_sdk.store import DiskStore
from superapp_sdk.testing import FakeClock
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoPay
from superapp_sdk.tokens._seal import Sealer

USER = "user-minji"
REDIRECT = "https://app.example/login/callback"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _holding(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``secret`` (as UTF-8)."""
    needle = secret.encode()
    return [str(p.relative_to(root)) for p in _files(root) if needle in p.read_bytes()]


class Rig:
    """An app with echo providers (primary pay.a / alternate pay.b) on a FakeClock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.clock = FakeClock()
        self.login = EchoLogin(
            redirect_uri=REDIRECT, name="login.a", clock=self.clock, rng=random.Random(3)
        )
        self.login.add_user("sub-minji")
        self.chat = EchoChat(name="chat.a", clock=self.clock)
        self.pay_a = EchoPay(name="pay.a", failure_domain="alpha", clock=self.clock)
        self.pay_b = EchoPay(name="pay.b", failure_domain="beta", clock=self.clock)
        self.app = SuperApp(
            identity=[self.login],
            chat=[self.chat],
            payment=[self.pay_a, self.pay_b],
            state_dir=state_dir,
            timer=self.clock,
            rng=random.Random(5),
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "state")
    try:
        yield r
    finally:
        r.app.close()


def test_sealing_key_is_0600_in_a_0700_directory(rig: Rig) -> None:
    """The AES key that seals secrets is readable by its owner only, in a private dir."""
    key = rig.state_dir / "keys" / "seal.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert len(key.read_bytes()) == 32


def test_every_state_file_is_private(rig: Rig) -> None:
    """Nothing under state_dir is readable by group or others once the app has worked."""
    rig.app.directory.put(USER, provider="pay.a", billing_key=rig.pay_a.issue_billing_key(USER))
    rig.app.payment.charge(order_id="o-1", amount=1_000, user_id=USER)
    for path in _files(rig.state_dir):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_billing_keys_never_appear_in_plain_text_under_state_dir(rig: Rig) -> None:
    """After put, charge, status, a repeat charge and a queued charge, no state file holds
    any billing key's bytes."""
    app = rig.app
    keys = [rig.pay_a.issue_billing_key(USER), rig.pay_b.issue_billing_key(USER)]
    app.directory.put(USER, provider="pay.a", billing_key=keys[0])
    app.directory.put(USER, provider="pay.b", billing_key=keys[1])
    app.payment.charge(order_id="o-1", amount=1_000, user_id=USER)
    app.payment.charge(order_id="o-1", amount=1_000, user_id=USER)
    app.payment.status("o-1")
    for p in (rig.pay_a, rig.pay_b):
        p.fail = ProviderConnectError("down", provider=p.name, request_sent=False)
    queued = app.payment.charge(
        order_id="o-2", amount=2_000, user_id=USER, offline=OfflinePolicy.QUEUE
    )
    assert queued.via is Via.QUEUED
    for key in keys:
        assert _holding(rig.state_dir, key) == [], key


def test_billing_key_issued_with_a_payment_is_sealed_at_rest(rig: Rig) -> None:
    """A billing key that comes back on a Payment (KakaoPay sid) is not stored in plain text,
    and a repeat charge still returns the same Payment, key included."""
    key = rig.pay_a.issue_billing_key(USER)
    rig.app.directory.put(USER, provider="pay.a", billing_key=key)
    first = rig.app.payment.charge(order_id="o-1", amount=1_000, user_id=USER)
    assert first.value.billing_key == key
    repeat = rig.app.payment.charge(order_id="o-1", amount=1_000, user_id=USER)
    assert repeat.value == first.value
    assert _holding(rig.state_dir, key) == []


def test_session_tokens_never_appear_in_plain_text_under_state_dir(rig: Rig) -> None:
    """Access, refresh and ID tokens of a session, also after a refresh and a grace
    extension, are sealed: no state file holds one."""
    app = rig.app
    redirect = app.identity.login_url(state="st", nonce="n-1")
    code = rig.login.authorize(redirect.value)
    session = app.identity.complete_login(provider="login.a", code=code, nonce="n-1")
    app.identity.refresh(session.value.session_id)
    rig.login.fail = ProviderConnectError("down", provider="login.a", request_sent=False)
    assert app.identity.refresh(session.value.session_id).via is Via.OFFLINE
    # EchoLogin's tokens: "at-" / "rt-" and 32 hex digits; ID tokens are JWS ("eyJ...").
    pattern = re.compile(rb"[ar]t-[0-9a-f]{32}|eyJ[A-Za-z0-9_-]{8,}")
    holding = [str(p) for p in _files(rig.state_dir) if pattern.search(p.read_bytes())]
    assert holding == []


def test_contact_repr_shows_no_billing_key(rig: Rig) -> None:
    """Contact names the providers holding a billing key, never the key."""
    key = rig.pay_a.issue_billing_key(USER)
    rig.app.directory.put(USER, provider="pay.a", address="minji@a", billing_key=key)
    contact = rig.app.directory.get(USER)
    assert isinstance(contact, Contact)
    assert contact.billing_providers == frozenset({"pay.a"})
    assert key not in repr(contact)
    assert key not in str(contact)
    assert "pay.a" in repr(contact)


def test_directory_opens_a_billing_key_for_its_user_and_provider_only(tmp_path: Path) -> None:
    """The directory unseals a billing key for the provider and user it was put for."""
    with DiskStore(tmp_path / "state") as disk:
        directory = Directory(
            disk.namespace("directory"), Sealer(tmp_path / "state" / "keys" / "seal.key")
        )
        directory.put(USER, provider="pay.a", billing_key="sid-123")
        assert directory.billing_key(USER, "pay.a") == "sid-123"
        assert directory.billing_key(USER, "pay.b") is None
        assert directory.billing_key("user-other", "pay.a") is None


def test_sealed_value_opened_for_another_purpose_raises_store_error(tmp_path: Path) -> None:
    """A ciphertext copied to another record (another purpose) does not open."""
    sealer = Sealer(tmp_path / "keys" / "seal.key")
    sealed = sealer.seal(b"sid-123", purpose="billing:user-1:kakao.pay")
    assert sealer.open(sealed, purpose="billing:user-1:kakao.pay") == b"sid-123"
    with pytest.raises(StoreError):
        sealer.open(sealed, purpose="billing:user-2:kakao.pay")


@pytest.mark.parametrize("where", [0, 5, 20, -1])
def test_tampered_sealed_value_raises_store_error(tmp_path: Path, where: int) -> None:
    """Flipping any byte of a sealed value (version, nonce, ciphertext, tag) is caught."""
    sealer = Sealer(tmp_path / "keys" / "seal.key")
    sealed = bytearray(sealer.seal(b"secret token", purpose="session:s-1"))
    sealed[where] ^= 0x01
    with pytest.raises(StoreError):
        sealer.open(bytes(sealed), purpose="session:s-1")


def test_truncated_sealed_value_raises_store_error(tmp_path: Path) -> None:
    """A sealed value cut short is refused before decryption."""
    sealer = Sealer(tmp_path / "keys" / "seal.key")
    sealed = sealer.seal(b"secret", purpose="p")
    with pytest.raises(StoreError):
        sealer.open(sealed[:20], purpose="p")


def test_sealed_value_from_another_key_raises_store_error(tmp_path: Path) -> None:
    """A value sealed under another state_dir's key does not open here."""
    mine = Sealer(tmp_path / "a" / "seal.key")
    theirs = Sealer(tmp_path / "b" / "seal.key")
    with pytest.raises(StoreError):
        mine.open(theirs.seal(b"x", purpose="p"), purpose="p")


def test_sealing_key_survives_a_restart(tmp_path: Path) -> None:
    """A second Sealer on the same key file opens what the first sealed."""
    path = tmp_path / "keys" / "seal.key"
    sealed = Sealer(path).seal(b"kept", purpose="p")
    assert Sealer(path).open(sealed, purpose="p") == b"kept"


def test_corrupted_sealing_key_raises_store_error_naming_the_path(tmp_path: Path) -> None:
    """A key file of the wrong length is refused at start-up, with its path."""
    path = tmp_path / "keys" / "seal.key"
    Sealer(path)
    path.write_bytes(b"short")
    with pytest.raises(StoreError) as caught:
        Sealer(path)
    assert str(path) in str(caught.value)


def test_corrupted_directory_entry_raises_store_error_naming_the_user(tmp_path: Path) -> None:
    """An unreadable directory record raises StoreError naming the user, not a crash."""
    with DiskStore(tmp_path / "state") as disk:
        store = disk.namespace("directory")
        directory = Directory(store, Sealer(tmp_path / "state" / "keys" / "seal.key"))
        directory.put(USER, provider="chat.a", address="minji@a")
        store.set(f"user:{USER}", b"{not json")
        with pytest.raises(StoreError) as caught:
            directory.get(USER)
    assert USER in str(caught.value)


def test_a_key_directory_and_key_others_can_reach_are_fixed_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """keys/ at 0777 and seal.key at 0644 are set to 0700 and 0600 when the key is
    opened, with a warning that names the file and never the key."""
    Sealer(tmp_path / "keys" / "seal.key")
    (tmp_path / "keys").chmod(0o777)
    (tmp_path / "keys" / "seal.key").chmod(0o644)
    key = (tmp_path / "keys" / "seal.key").read_bytes()
    with caplog.at_level(logging.WARNING, logger="superapp_sdk.tokens"):
        Sealer(tmp_path / "keys" / "seal.key")
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys" / "seal.key").stat().st_mode) == 0o600
    text = caplog.text
    assert "seal.key was mode 644" in text
    assert "keys was mode 777" in text
    assert key.hex() not in text
