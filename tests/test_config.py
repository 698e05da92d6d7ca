"""Configuration from TOML and dicts: secrets from the environment, and every mistake a
ConfigError that names the key (``chat[0].sender``, ``breaker``) or the file."""

from __future__ import annotations

import importlib
import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest

from superapp_sdk import AsyncSuperApp, ConfigError, SuperApp, Via
from superapp_sdk._config import PROVIDER_TYPES, load_config
from superapp_sdk._ops import IdentityPolicy
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.testing.echo import EchoChat, EchoLogin, EchoMobility, EchoPay

SENDER_VAR = "SUPERAPP_TEST_CHAT_SENDER"
CLIENT_VAR = "SUPERAPP_TEST_LOGIN_CLIENT_ID"
UNSET_VAR = "SUPERAPP_TEST_NEVER_SET"

FULL = """
state_dir = "{state_dir}"
durable = false

[breaker]
minimum_calls = 3
window_size = 10

[identity_policy]
grace_seconds = 120.0
grace_scopes = ["read"]

[[identity]]
type = "echo.login"
name = "login.a"
client_id = {{ env = "{client_var}" }}
redirect_uri = "https://app.example/login/callback"

[[chat]]
type = "echo.chat"
name = "chat.a"
failure_domain = "alpha"
sender = {{ env = "{sender_var}" }}

[[chat]]
type = "superapp_sdk.testing.echo:EchoChat"
name = "chat.b"
failure_domain = "beta"

[[payment]]
type = "echo.pay"
name = "pay.a"

[[mobility]]
type = "echo.mobility"
name = "mob.a"
"""


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SENDER_VAR, "minji-app")
    monkeypatch.setenv(CLIENT_VAR, "client-from-env")
    monkeypatch.delenv(UNSET_VAR, raising=False)


def _write(tmp_path: Path, text: str, name: str = "superapp.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _full(tmp_path: Path) -> Path:
    text = FULL.format(state_dir=tmp_path / "state", sender_var=SENDER_VAR, client_var=CLIENT_VAR)
    return _write(tmp_path, text)


def _config_error(source: Path | dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(source)
    return caught.value


def _chat(**spec: object) -> dict[str, object]:
    return {"chat": [{"type": "echo.chat", **spec}]}


# -- a working app ---------------------------------------------------------------------------


def test_toml_builds_a_working_app_with_secrets_from_the_environment(
    tmp_path: Path, secrets: None
) -> None:
    """from_config: echo providers built, env secrets in place, a send goes to chat.a."""
    app = SuperApp.from_config(_full(tmp_path))
    try:
        app.directory.put("u-1", provider="chat.a", address="minji@a")
        sent = app.chat.send(to="u-1", text="hello", conversation="c-1")
        assert (sent.via, sent.provider) == (Via.PRIMARY, "chat.a")
        history = app.chat.history("c-1")
        assert [m.sender for m in history.value] == ["minji-app"]
        login = app.identity.login_url(state="st", nonce="n")
        assert "client_id=client-from-env" in login.value.url
    finally:
        app.close()


def test_toml_options_reach_the_breakers(tmp_path: Path, secrets: None) -> None:
    """The [breaker] table configures every provider's breaker."""
    app = SuperApp.from_config(_full(tmp_path))
    try:
        options = app.breaker("chat.b").options
        assert (options.minimum_calls, options.window_size) == (3, 10)
    finally:
        app.close()


def test_load_config_returns_the_keyword_arguments(tmp_path: Path, secrets: None) -> None:
    """load_config: providers in order with their types, options as their dataclasses."""
    kwargs = load_config(_full(tmp_path))
    assert [type(p) for p in kwargs["chat"]] == [EchoChat, EchoChat]
    assert [p.name for p in kwargs["chat"]] == ["chat.a", "chat.b"]
    assert [p.failure_domain for p in kwargs["chat"]] == ["alpha", "beta"]
    assert isinstance(kwargs["identity"][0], EchoLogin)
    assert isinstance(kwargs["payment"][0], EchoPay)
    assert isinstance(kwargs["mobility"][0], EchoMobility)
    assert kwargs["breaker"] == BreakerOptions(minimum_calls=3, window_size=10)
    assert kwargs["identity_policy"] == IdentityPolicy(
        grace_seconds=120.0, grace_scopes=frozenset({"read"})
    )
    assert (kwargs["state_dir"], kwargs["durable"]) == (str(tmp_path / "state"), False)


def test_secret_is_read_from_the_environment_at_load_time(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file holds only the variable's name; the value comes from the environment."""
    path = _full(tmp_path)
    assert "minji-app" not in path.read_text()
    monkeypatch.setenv(SENDER_VAR, "changed")
    assert load_config(path)["chat"][0].sender == "changed"


def test_dict_config_builds_the_same_app(tmp_path: Path) -> None:
    """from_config accepts a dict shaped like the TOML file."""
    app = SuperApp.from_config(
        {"state_dir": str(tmp_path / "state"), **_chat(name="chat.a", recipients=["a@x"])}
    )
    try:
        app.directory.put("u-1", provider="chat.a", address="a@x")
        assert app.chat.send(to="u-1", text="hi").provider == "chat.a"
    finally:
        app.close()


def test_keyword_overrides_win_over_the_file(tmp_path: Path, secrets: None) -> None:
    """from_config(path, state_dir=...) uses the override, not the file's value."""
    elsewhere = tmp_path / "elsewhere"
    app = SuperApp.from_config(_full(tmp_path), state_dir=elsewhere)
    try:
        assert (elsewhere / "keys" / "seal.key").exists()
        assert not (tmp_path / "state").exists()
    finally:
        app.close()


async def test_async_app_from_config(tmp_path: Path, secrets: None) -> None:
    """AsyncSuperApp.from_config builds the same providers."""
    async with AsyncSuperApp.from_config(_full(tmp_path)) as app:
        app.directory.put("u-1", provider="chat.a", address="minji@a")
        sent = await app.chat.send(to="u-1", text="hello")
    assert (sent.via, sent.provider) == (Via.PRIMARY, "chat.a")


_CAPABILITY_OF = {"login": "identity", "talk": "chat", "chat": "chat", "pay": "payment"}


@pytest.mark.parametrize("name", sorted(PROVIDER_TYPES))
def test_every_short_provider_type_names_a_provider_of_its_capability(name: str) -> None:
    """Each short type name imports a class serving the capability its name says."""
    module, _, attr = PROVIDER_TYPES[name].partition(":")
    cls: Any = getattr(importlib.import_module(module), attr)
    capability = cls.capability
    assert inspect.isclass(cls)
    suffix = name.split(".")[1]
    assert capability.value == _CAPABILITY_OF.get(suffix, suffix)


# -- errors that name the key ----------------------------------------------------------------


def test_missing_environment_variable_names_the_option(secrets: None) -> None:
    """A secret whose variable is unset: ConfigError with key chat[0].sender and the name."""
    error = _config_error(_chat(sender={"env": UNSET_VAR}))
    assert error.key == "chat[0].sender"
    assert UNSET_VAR in str(error)


def test_empty_environment_variable_name_is_refused() -> None:
    """{ env = "" } names no variable: ConfigError naming the option."""
    error = _config_error(_chat(sender={"env": ""}))
    assert error.key == "chat[0].sender"


def test_unknown_provider_type_names_the_type_key() -> None:
    """type = "echo.nope": ConfigError with key chat[0].type, listing the known types."""
    error = _config_error(_chat(type="echo.nope"))
    assert error.key == "chat[0].type"
    assert "echo.chat" in str(error)


def test_unimportable_provider_class_names_the_type_key() -> None:
    """type = "module:Class" that cannot be imported: ConfigError with key chat[0].type."""
    error = _config_error({"chat": [{"type": "superapp_sdk.testing.echo:NoSuchChat"}]})
    assert error.key == "chat[0].type"


def test_provider_without_a_type_names_the_type_key() -> None:
    """A provider table without type: ConfigError with key chat[0].type."""
    error = _config_error({"chat": [{"name": "x"}]})
    assert error.key == "chat[0].type"


def test_unknown_provider_option_names_it() -> None:
    """An option the provider does not take: ConfigError with key chat[1].colour."""
    error = _config_error(
        {"chat": [{"type": "echo.chat", "name": "a"}, {"type": "echo.chat", "colour": "red"}]}
    )
    assert error.key == "chat[1].colour"
    assert "EchoChat" in str(error)


def test_provider_refusing_its_options_names_the_provider() -> None:
    """A value the provider's constructor refuses: ConfigError naming mobility[0]."""
    error = _config_error({"mobility": [{"type": "echo.mobility", "speed_mps": -1.0}]})
    assert error.key == "mobility[0]"
    assert "speed_mps" in str(error)


def test_unknown_top_level_key_names_it() -> None:
    """A misspelt top-level key: ConfigError with that key, listing the known ones."""
    error = _config_error({"chats": []})
    assert error.key == "chats"
    assert "chat" in str(error)


def test_capability_that_is_not_an_array_names_it() -> None:
    """chat = "echo.chat" instead of [[chat]]: ConfigError with key chat."""
    error = _config_error({"chat": "echo.chat"})
    assert error.key == "chat"


def test_bad_breaker_value_names_the_breaker_table() -> None:
    """breaker.failure_rate = 2 (outside (0, 1]): ConfigError with key breaker."""
    error = _config_error({"breaker": {"failure_rate": 2}})
    assert error.key == "breaker"
    assert "failure_rate" in str(error)


def test_unknown_breaker_option_names_it() -> None:
    """A field BreakerOptions does not have: ConfigError with key breaker.<field>."""
    error = _config_error({"breaker": {"failure_ratio": 0.5}})
    assert error.key == "breaker.failure_ratio"


def test_options_section_that_is_not_a_table_names_it() -> None:
    """domains = 3: ConfigError with key domains."""
    error = _config_error({"domains": 3})
    assert error.key == "domains"


def test_scalar_of_the_wrong_type_names_it() -> None:
    """durable = "yes": ConfigError with key durable."""
    error = _config_error({"durable": "yes"})
    assert error.key == "durable"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML: ConfigError whose message names the file."""
    path = _write(tmp_path, "[[chat]\ntype = 'echo.chat'\n")
    error = _config_error(path)
    assert str(path) in str(error)
    assert "TOML" in str(error)


def test_config_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    """A file that is not UTF-8: ConfigError naming the file, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('state_dir = "caf\u00e9"\n'.encode("latin-1"))
    error = _config_error(path)
    assert str(path) in str(error)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    """A path that does not exist: ConfigError naming it."""
    path = tmp_path / "nope.toml"
    error = _config_error(path)
    assert str(path) in str(error)


def test_error_in_a_toml_file_names_the_key(tmp_path: Path) -> None:
    """The TOML path gives the same key-naming errors as a dict."""
    path = _write(
        tmp_path,
        """
        [[chat]]
        type = "echo.chat"

        [[chat]]
        type = "echo.chat"
        token = { env = "SOME_TOKEN" }
        """,
    )
    error = _config_error(path)
    assert error.key == "chat[1].token"


def test_config_error_is_a_value_error() -> None:
    """ConfigError can be caught as ValueError."""
    with pytest.raises(ValueError, match="unknown key"):
        load_config({"bogus": 1})


def test_provider_of_another_capability_in_config_names_the_capability(tmp_path: Path) -> None:
    """A payment provider under [[chat]]: SuperApp refuses it with key chat."""
    with pytest.raises(ConfigError) as caught:
        SuperApp.from_config({"state_dir": str(tmp_path / "s"), "chat": [{"type": "echo.pay"}]})
    assert caught.value.key == "chat"


def test_timeouts_and_outbox_policies_come_from_the_file(tmp_path: Path) -> None:
    """[timeouts] and [outbox_policies.<operation>] tables become their option objects."""
    path = _write(
        tmp_path,
        """
        [timeouts]
        read = 0.5
        floor = 0.01

        [outbox_policies."chat.send"]
        max_attempts = 3
        """,
    )
    kwargs = load_config(path)
    assert kwargs["timeouts"].read == 0.5
    assert kwargs["outbox_policies"]["chat.send"].max_attempts == 3
    bad = _config_error({"outbox_policies": {"chat.send": {"max_attempts": 0}}})
    assert bad.key == "outbox_policies.chat.send"


def test_relative_state_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    """state_dir = "state" in conf/superapp.toml means conf/state, wherever the app starts."""
    conf = tmp_path / "conf"
    conf.mkdir()
    path = _write(conf, 'state_dir = "state"\n')
    assert load_config(path)["state_dir"] == str(conf / "state")
