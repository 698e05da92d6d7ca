"""SuperApp configuration from a TOML file or a dict, secrets from the environment.

::

    state_dir = ".superapp"

    [breaker]                      # BreakerOptions fields (optional)
    minimum_calls = 5

    [[chat]]                       # providers in priority order
    type = "kakao.talk"
    access_token = { env = "KAKAO_TALK_TOKEN" }

    [[chat]]
    type = "fallback_providers.chat:LineMessaging"   # any "module:Class"
    channel_token = { env = "LINE_CHANNEL_TOKEN" }

A secret is written ``{ env = "NAME" }`` and read from the environment when the file is
loaded, so it never sits in the file. Every error is a :class:`~superapp_sdk.ConfigError`
naming the key (``chat[1].channel_token``) and what was wrong.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from superapp_sdk._app import Timeouts
from superapp_sdk._errors import ConfigError
from superapp_sdk._ops import IdentityPolicy
from superapp_sdk.core.breaker import BreakerOptions
from superapp_sdk.core.budget import BudgetOptions
from superapp_sdk.core.domains import DomainOptions
from superapp_sdk.offline.outbox import OutboxPolicy

__all__ = ["PROVIDER_TYPES", "load_config"]

#: Short names for the built-in providers; anything else is given as "module:Class".
PROVIDER_TYPES: dict[str, str] = {
    "kakao.login": "superapp_sdk.providers.kakao:KakaoLogin",
    "kakao.talk": "superapp_sdk.providers.kakao:KakaoTalk",
    "kakao.pay": "superapp_sdk.providers.kakao:KakaoPay",
    "kakao.mobility": "superapp_sdk.providers.kakao:KakaoMobility",
    "echo.login": "superapp_sdk.testing.echo:EchoLogin",
    "echo.chat": "superapp_sdk.testing.echo:EchoChat",
    "echo.pay": "superapp_sdk.testing.echo:EchoPay",
    "echo.mobility": "superapp_sdk.testing.echo:EchoMobility",
}

_CAPABILITIES = ("identity", "chat", "payment", "mobility")
_OPTIONS: dict[str, type[Any]] = {
    "breaker": BreakerOptions,
    "domains": DomainOptions,
    "budget": BudgetOptions,
    "identity_policy": IdentityPolicy,
    "timeouts": Timeouts,
}
_SCALARS = {"state_dir": (str,), "durable": (bool,), "store": (str,)}


def _secret(value: Any, key: str) -> Any:
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}: env must name a variable", key=key)
        if name not in os.environ:
            raise ConfigError(f"{key}: environment variable {name} is not set", key=key)
        return os.environ[name]
    return value


def _import(type_name: str, key: str) -> type[Any]:
    target = PROVIDER_TYPES.get(type_name, type_name)
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ConfigError(
            f"{key}: unknown provider type {type_name!r}; use one of "
            f"{sorted(PROVIDER_TYPES)} or 'module:Class'",
            key=key,
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import {target!r}: {exc}", key=key) from exc
    if not isinstance(cls, type):
        raise ConfigError(f"{key}: {target!r} is not a class", key=key)
    return cls


def _provider(spec: Any, key: str) -> Any:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key}: a provider must be a table", key=key)
    if "type" not in spec:
        raise ConfigError(f"{key}: missing 'type'", key=f"{key}.type")
    cls = _import(str(spec["type"]), f"{key}.type")
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for name, value in spec.items():
        if name == "type":
            continue
        if name not in params and not accepts_any:
            raise ConfigError(
                f"{key}.{name}: {cls.__name__} takes no option {name!r} "
                f"(it takes {sorted(params)})",
                key=f"{key}.{name}",
            )
        kwargs[name] = _secret(value, f"{key}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {cls.__name__}: {exc}", key=key) from exc


def _options(cls: type[Any], table: Any, key: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{key} must be a table", key=key)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in table:
        if name not in names:
            raise ConfigError(
                f"{key}.{name}: unknown option (known: {sorted(names)})", key=f"{key}.{name}"
            )
    try:
        return cls(**{k: (frozenset(v) if isinstance(v, list) else v) for k, v in table.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}", key=key) from exc


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``SuperApp(...)`` from a TOML file path or a dict."""
    base: Path | None = None
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        path = Path(source)
        base = path.parent
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _CAPABILITIES:
            if not isinstance(value, list):
                raise ConfigError(f"{key} must be an array of tables ([[{key}]])", key=key)
            kwargs[key] = [_provider(spec, f"{key}[{i}]") for i, spec in enumerate(value)]
        elif key in _OPTIONS:
            kwargs[key] = _options(_OPTIONS[key], value, key)
        elif key == "outbox_policies":
            if not isinstance(value, Mapping):
                raise ConfigError("outbox_policies must be a table of tables", key=key)
            kwargs[key] = {
                op: _options(OutboxPolicy, table, f"{key}.{op}") for op, table in value.items()
            }
        elif key in _SCALARS:
            if not isinstance(value, _SCALARS[key]):
                raise ConfigError(f"{key} must be a {_SCALARS[key][0].__name__}", key=key)
            kwargs[key] = value
            if key == "state_dir" and base is not None and not Path(str(value)).is_absolute():
                # Relative to the file that names it, not to wherever the app was started.
                kwargs[key] = str(base / str(value))
        else:
            raise ConfigError(
                f"unknown key {key!r} (known: "
                f"{sorted((*_CAPABILITIES, *_OPTIONS, *_SCALARS, 'outbox_policies'))})",
                key=key,
            )
    return kwargs
