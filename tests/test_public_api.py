"""The public surface: ``tests/public_api.txt`` equals every public ``__all__``, and the
names and signatures that DESIGN.md section 5 promises exist.

After an intended API change, regenerate the file and review its diff::

    UPDATE_PUBLIC_API=1 pytest tests/test_public_api.py
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import importlib
import inspect
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import superapp_sdk
from superapp_sdk import AsyncSuperApp, Attempt, OfflinePolicy, Outcome, SuperApp, Via

API_FILE = Path(__file__).with_name("public_api.txt")
REGENERATE = "UPDATE_PUBLIC_API=1 pytest tests/test_public_api.py"

#: Every module whose ``__all__`` is public API, in the order the file lists them.
PUBLIC_MODULES = (
    "superapp_sdk",
    "superapp_sdk.resilience",
    "superapp_sdk.testing",
    "superapp_sdk.store",
    "superapp_sdk.offline",
    "superapp_sdk.tokens",
    "superapp_sdk.providers.kakao",
    "superapp_sdk.core.breaker",
    "superapp_sdk.core.budget",
    "superapp_sdk.core.domains",
    "superapp_sdk.core.routing",
    "superapp_sdk.core.windows",
    "superapp_sdk.core.clock",
    "superapp_sdk.core.latency",
)
#: Listed only when they import (the adapters may land after the core).
OPTIONAL_MODULES = frozenset({"superapp_sdk.providers.kakao"})


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        if name in OPTIONAL_MODULES:
            return None
        raise


def public_modules() -> list[ModuleType]:
    """The public modules that import here, in file order."""
    return [m for m in map(_import, PUBLIC_MODULES) if m is not None]


def public_api() -> list[str]:
    """The lines of ``public_api.txt``: ``module: name`` for every name in every ``__all__``."""
    return [f"{module.__name__}: {name}" for module in public_modules() for name in module.__all__]


def isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest,
    each in natural order (``a2`` before ``a10``)."""
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# -- the recorded surface ----------------------------------------------------------------------


def test_public_api_file_matches_the_code() -> None:
    """tests/public_api.txt lists exactly the names in the public ``__all__``s."""
    current = public_api()
    if os.environ.get("UPDATE_PUBLIC_API") == "1":
        API_FILE.write_text("\n".join(current) + "\n", encoding="utf-8")
    recorded = API_FILE.read_text(encoding="utf-8").splitlines() if API_FILE.exists() else []
    if recorded != current:
        diff = "\n".join(
            difflib.unified_diff(
                recorded,
                current,
                "tests/public_api.txt (recorded)",
                "__all__ (code)",
                lineterm="",
            )
        )
        pytest.fail(
            "the public API changed (- removed, + added):\n"
            f"{diff}\n\nIf the change is intended, regenerate the file with\n    {REGENERATE}\n"
            "and commit it with the change.",
            pytrace=False,
        )


def test_optional_modules_are_named_in_the_list() -> None:
    """Every optional module is one of the public modules (a typo would hide it)."""
    assert set(PUBLIC_MODULES) >= OPTIONAL_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted(name: str) -> None:
    """Each ``__all__`` is sorted (ruff's isort-style order) and has no duplicates."""
    module = _import(name)
    if module is None:
        pytest.skip(f"{name} does not import yet")
    names = list(module.__all__)
    assert len(set(names)) == len(names), f"{name}.__all__ has duplicates"
    assert names == sorted(names, key=isort_key), f"{name}.__all__ is not sorted"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    """Every name a module exports is defined in it."""
    module = _import(name)
    if module is None:
        pytest.skip(f"{name} does not import yet")
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names undefined {missing}"


def test_isort_key_orders_like_ruff() -> None:
    """Constants, then classes, then functions; numbers in natural order."""
    names = ["verify", "JwksCache", "MAX_B", "a10", "DEFAULT_A", "a2", "Clock"]
    assert sorted(names, key=isort_key) == [
        "DEFAULT_A",
        "MAX_B",
        "Clock",
        "JwksCache",
        "a2",
        "a10",
        "verify",
    ]


# -- DESIGN.md section 5 -----------------------------------------------------------------------


def test_design_top_level_names_import() -> None:
    """``from superapp_sdk import SuperApp, AsyncSuperApp, Outcome, Via, OfflinePolicy``."""
    names = ("SuperApp", "AsyncSuperApp", "Outcome", "Via", "OfflinePolicy")
    for name in names:
        assert name in superapp_sdk.__all__, name
    assert issubclass(Via, enum.Enum)
    assert issubclass(OfflinePolicy, enum.Enum)
    assert OfflinePolicy.DENY in OfflinePolicy
    assert OfflinePolicy.ALLOW in OfflinePolicy


def test_design_kakao_adapters_import() -> None:
    """The four Kakao adapters import by the names DESIGN.md gives them."""
    if _import("superapp_sdk.providers.kakao") is None:
        pytest.skip("superapp_sdk.providers.kakao is not there yet")
    from superapp_sdk.providers.kakao import KakaoLogin, KakaoMobility, KakaoPay, KakaoTalk

    for cls in (KakaoLogin, KakaoTalk, KakaoPay, KakaoMobility):
        assert isinstance(cls, type), cls


#: DESIGN.md section 7: each Kakao adapter's base-URL keywords.
KAKAO_BASE_URLS = {
    "KakaoLogin": ("auth_base_url", "api_base_url"),
    "KakaoTalk": ("api_base_url",),
    "KakaoPay": ("pay_base_url",),
    "KakaoMobility": ("mobility_base_url",),
}


@pytest.mark.parametrize("name", sorted(KAKAO_BASE_URLS))
def test_kakao_adapter_keywords(name: str) -> None:
    """Each Kakao adapter takes its base URLs and ``failure_domain="kakao"`` as keywords."""
    kakao = _import("superapp_sdk.providers.kakao")
    if kakao is None:
        pytest.skip("superapp_sdk.providers.kakao is not there yet")
    params = inspect.signature(getattr(kakao, name)).parameters
    for keyword in (*KAKAO_BASE_URLS[name], "failure_domain"):
        assert keyword in params, f"{name} takes no {keyword}"
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}.{keyword}"
        assert params[keyword].default is not inspect.Parameter.empty, f"{name}.{keyword}"
    assert params["failure_domain"].default == "kakao"


def test_outcome_fields() -> None:
    """Outcome has value, via, provider, degraded, stale_for, ticket and attempts."""
    names = [f.name for f in dataclasses.fields(Outcome)]
    for field in ("value", "via", "provider", "degraded", "stale_for", "ticket", "attempts"):
        assert field in names, field


def test_outcome_is_frozen() -> None:
    """An Outcome cannot be changed after it is made."""
    outcome = Outcome(value=1, via=Via.PRIMARY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.value = 2  # type: ignore[misc]


def test_attempt_fields() -> None:
    """An Attempt names the provider, the error kind and the seconds it took."""
    names = [f.name for f in dataclasses.fields(Attempt)]
    for field in ("provider", "error", "seconds"):
        assert field in names, field


def test_via_members() -> None:
    """Via has PRIMARY, ALTERNATE, CACHE, QUEUED and OFFLINE."""
    for member in ("PRIMARY", "ALTERNATE", "CACHE", "QUEUED", "OFFLINE"):
        assert isinstance(getattr(Via, member), Via), member


#: DESIGN.md section 5, as written there: attribute path -> parameters.
FACADE = {
    "identity.login_url": "*, state, nonce, redirect_uri=None, provider=None",
    "identity.complete_login": "*, provider, code, nonce=None, redirect_uri=None",
    "identity.verify": "token",
    "identity.refresh": "session_id",
    "identity.logout": "session_id",
    "identity.link": "user_id, *, provider, subject",
    "chat.send": "*, to, text, conversation=None, idempotency_key=None, defer=True",
    "chat.history": "conversation, *, limit=50",
    "payment.start": "*, order_id, amount, currency='KRW', item_name, user_id, return_url",
    "payment.confirm": "*, order_id, approval",
    "payment.charge": "*, order_id, amount, currency='KRW', user_id, offline=OfflinePolicy.DENY",
    "payment.cancel": "*, order_id, amount=None, reason",
    "payment.status": "order_id",
    "mobility.estimate": "*, origin, destination",
    "mobility.request_ride": "*, rider, origin, destination, idempotency_key=None",
    "mobility.ride": "ride_id",
    "mobility.cancel_ride": "ride_id",
    "mobility.end_rental": "*, rental_id, location, at",
    "mobility.handoff": "*, origin, destination",
    "directory.put": "user_id, *, provider, address=None, billing_key=None",
    "directory.get": "user_id",
    "health": "",
    "on": "event_type, callback",
    "drain": "timeout=None",
}
#: The operations an AsyncSuperApp awaits ("same API, every operation awaitable").
AWAITED = frozenset(
    key for key in FACADE if key.split(".")[0] in {"identity", "chat", "payment", "mobility"}
) | {"drain"}
_NAMED_DEFAULTS: dict[str, object] = {"OfflinePolicy.DENY": OfflinePolicy.DENY}
_NO_DEFAULT = inspect.Parameter.empty


def expected_parameters(spec: str) -> list[tuple[str, inspect._ParameterKind, object]]:
    """``"a, *, b=None"`` as (name, kind, default) triples."""
    params: list[tuple[str, inspect._ParameterKind, object]] = []
    kind: inspect._ParameterKind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        name, eq, text = part.partition("=")
        default: object = _NO_DEFAULT
        if eq:
            default = _NAMED_DEFAULTS[text] if text in _NAMED_DEFAULTS else ast.literal_eval(text)
        params.append((name, kind, default))
    return params


def check_signature(app: Any, path: str) -> None:
    target = app
    for attribute in path.split("."):
        target = getattr(target, attribute)
    actual = inspect.signature(target).parameters
    expected = expected_parameters(FACADE[path])
    positional = [n for n, p in actual.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    want_positional = [n for n, k, _ in expected if k is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional[: len(want_positional)] == want_positional, f"{path}: positional order"
    for name, kind, default in expected:
        assert name in actual, f"{path} has no parameter {name!r}"
        assert actual[name].kind is kind, f"{path}({name}) is {actual[name].kind.description}"
        assert actual[name].default == default, f"{path}({name}) default"
    for name, param in actual.items():
        # DESIGN.md lets the API grow, but a call written as the contract shows must work.
        if name not in {n for n, _, _ in expected}:
            assert param.default is not _NO_DEFAULT or param.kind in (
                param.VAR_POSITIONAL,
                param.VAR_KEYWORD,
            ), f"{path}: extra parameter {name!r} has no default"


def test_expected_parameters_parses_the_design_notation() -> None:
    """The design notation is read into names, kinds and defaults."""
    assert expected_parameters("a, *, b=None, c='KRW', d=OfflinePolicy.DENY") == [
        ("a", inspect.Parameter.POSITIONAL_OR_KEYWORD, _NO_DEFAULT),
        ("b", inspect.Parameter.KEYWORD_ONLY, None),
        ("c", inspect.Parameter.KEYWORD_ONLY, "KRW"),
        ("d", inspect.Parameter.KEYWORD_ONLY, OfflinePolicy.DENY),
    ]


def test_check_signature_catches_a_renamed_keyword() -> None:
    """A facade whose keyword differs from the design fails the check."""

    class Chat:
        def send(self, *, recipient: str, text: str) -> None: ...

    class App:
        chat = Chat()

    with pytest.raises(AssertionError, match="no parameter 'to'"):
        check_signature(App(), "chat.send")


@pytest.mark.parametrize("path", sorted(FACADE))
def test_superapp_facade_signature(path: str, tmp_path: Path) -> None:
    """SuperApp's facade methods take the parameters DESIGN.md section 5 names."""
    app = SuperApp(state_dir=tmp_path, durable=False)
    try:
        check_signature(app, path)
    finally:
        app.close()


async def test_async_superapp_facade_signatures(tmp_path: Path) -> None:
    """AsyncSuperApp has the same facade, its operations awaitable."""
    app = AsyncSuperApp(state_dir=tmp_path, durable=False)
    try:
        for path in FACADE:
            check_signature(app, path)
            target: Any = app
            for attribute in path.split("."):
                target = getattr(target, attribute)
            if path in AWAITED:
                assert inspect.iscoroutinefunction(target), f"{path} is not awaitable"
    finally:
        await app.aclose()


@pytest.mark.parametrize("cls_name", ["SuperApp", "AsyncSuperApp"])
def test_from_config_exists(cls_name: str) -> None:
    """``SuperApp.from_config("superapp.toml")`` is a classmethod taking the source first."""
    cls = getattr(superapp_sdk, cls_name)
    assert isinstance(inspect.getattr_static(cls, "from_config"), classmethod)
    first = next(iter(inspect.signature(cls.from_config).parameters.values()))
    assert first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
