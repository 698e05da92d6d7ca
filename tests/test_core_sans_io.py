"""``superapp_sdk.core`` stays sans-IO: no I/O imports, no clock or randomness of its own.

Both checks read the source with :mod:`ast`, so they see every import wherever it sits
(module level, inside a function, under ``if TYPE_CHECKING``, in a ``try``) and every
call, without importing anything. The checkers themselves are tested on small snippets,
so a checker that silently stops finding things fails here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import superapp_sdk.core

CORE_DIR = Path(superapp_sdk.core.__file__).resolve().parent
SOURCE_ROOT = CORE_DIR.parent.parent

#: Top-level modules that do I/O, wait, or run things concurrently.
IO_MODULES = frozenset(
    {
        "aiofiles",
        "anyio",
        "asyncio",
        "concurrent",
        "diskcache",
        "fcntl",
        "fileinput",
        "ftplib",
        "glob",
        "h11",
        "http",
        "httpcore",
        "httpx",
        "io",
        "mmap",
        "multiprocessing",
        "os",
        "pathlib",
        "redis",
        "requests",
        "select",
        "selectors",
        "shelve",
        "shutil",
        "signal",
        "smtplib",
        "socket",
        "socketserver",
        "sqlite3",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "trio",
        "urllib",
        "urllib3",
    }
)

_DYNAMIC_IMPORTS = frozenset({"__import__", "import_module"})


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imported_modules(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module name ``source`` imports, relative imports resolved against ``module``.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule). Dynamic
    imports (``__import__``, ``importlib.import_module``) yield ``"<dynamic import>"``.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = _package_of(module, is_package).split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC_IMPORTS:
                yield "<dynamic import>"


def io_imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The I/O modules (top-level names) ``source`` imports; dynamic imports included."""
    found = set()
    for name in imported_modules(source, module, is_package=is_package):
        top = name.split(".")[0]
        if name == "<dynamic import>" or top in IO_MODULES:
            found.add(name if name == "<dynamic import>" else top)
    return sorted(found)


@dataclass(frozen=True, slots=True)
class _SourceModule:
    name: str
    path: Path
    is_package: bool


def _module_file(name: str) -> _SourceModule | None:
    rel = Path(*name.split("."))
    for path, is_package in ((rel.with_suffix(".py"), False), (rel / "__init__.py", True)):
        if (SOURCE_ROOT / path).is_file():
            return _SourceModule(name, SOURCE_ROOT / path, is_package)
    return None


def core_modules() -> list[_SourceModule]:
    """Every module file under ``superapp_sdk/core``."""
    found = []
    for path in sorted(CORE_DIR.rglob("*.py")):
        rel = path.relative_to(SOURCE_ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        parts = rel.parent.parts if is_package else rel.parts
        found.append(_SourceModule(".".join(parts), path, is_package))
    return found


def core_closure() -> list[_SourceModule]:
    """Core modules plus every ``superapp_sdk`` module they import, transitively.

    Package ``__init__`` files outside ``core`` are not followed: ``superapp_sdk/__init__``
    is the curated public surface (it imports the shells), not code the decisions use.
    """
    seen: dict[str, _SourceModule] = {}
    todo = core_modules()
    while todo:
        mod = todo.pop()
        if mod.name in seen:
            continue
        seen[mod.name] = mod
        source = mod.path.read_text(encoding="utf-8")
        for name in imported_modules(source, mod.name, is_package=mod.is_package):
            if not name.startswith("superapp_sdk."):
                continue
            found = _module_file(name)
            if found is not None and (not found.is_package or name.startswith("superapp_sdk.core")):
                todo.append(found)
    return sorted(seen.values(), key=lambda m: m.name)


_CLOCK_MODULES = frozenset({"time", "random", "datetime"})
_DATETIME_READS = frozenset({"now", "utcnow", "today", "fromtimestamp"})
#: Constructing a generator is how randomness gets injected (``rng or random.Random()``).
_RANDOM_ALLOWED = frozenset({"Random"})


class _ClockReads(ast.NodeVisitor):
    def __init__(self, allowed_class: str | None) -> None:
        self.allowed_class = allowed_class
        self.modules: dict[str, str] = {}  # local name -> time / random / datetime
        self.functions: dict[str, str] = {}  # local name -> "time.monotonic" ...
        self.classes: list[str] = []
        self.found: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top in _CLOCK_MODULES:
                self.modules[alias.asname or top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module in _CLOCK_MODULES:
            for alias in node.names:
                self.functions[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def _call_name(self, func: ast.expr) -> str | None:
        if isinstance(func, ast.Name) and func.id in self.functions:
            return self.functions[func.id]
        if isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in self.modules:
                return f"{self.modules[owner.id]}.{func.attr}"
            if func.attr in _DATETIME_READS:
                # datetime.datetime.now(), or `from datetime import datetime; datetime.now()`
                if (
                    isinstance(owner, ast.Attribute)
                    and isinstance(owner.value, ast.Name)
                    and self.modules.get(owner.value.id) == "datetime"
                ):
                    return f"datetime.{owner.attr}.{func.attr}"
                if isinstance(owner, ast.Name) and owner.id in self.functions:
                    return f"{self.functions[owner.id]}.{func.attr}"
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self._call_name(node.func)
        if name is not None and not self._allowed(name):
            self.found.append(f"{name}() at line {node.lineno}")
        self.generic_visit(node)

    def _allowed(self, name: str) -> bool:
        module, _, attr = name.partition(".")
        if module == "random" and attr in _RANDOM_ALLOWED:
            return True
        if module == "datetime" and attr.rpartition(".")[2] not in _DATETIME_READS:
            return True  # building a datetime from given values reads no clock
        return self.allowed_class is not None and self.allowed_class in self.classes


def clock_reads(source: str, *, allowed_class: str | None = None) -> list[str]:
    """Calls in ``source`` that read the clock or the global random generator.

    Calls inside the class named ``allowed_class`` are allowed.
    """
    visitor = _ClockReads(allowed_class)
    visitor.visit(ast.parse(source))
    return visitor.found


# -- the checks ------------------------------------------------------------------------


def test_core_has_modules() -> None:
    """The scan finds the core modules (an empty scan would pass vacuously)."""
    names = {m.name for m in core_modules()}
    assert {
        "superapp_sdk.core",
        "superapp_sdk.core.breaker",
        "superapp_sdk.core.budget",
        "superapp_sdk.core.clock",
        "superapp_sdk.core.domains",
        "superapp_sdk.core.windows",
    } <= names


@pytest.mark.parametrize("module", core_closure(), ids=lambda m: m.name)
def test_core_imports_no_io_module(module: _SourceModule) -> None:
    """No module the core decisions depend on imports an I/O module."""
    source = module.path.read_text(encoding="utf-8")
    assert io_imports(source, module.name, is_package=module.is_package) == []


@pytest.mark.parametrize("module", core_modules(), ids=lambda m: m.name)
def test_core_reads_no_clock_or_global_random(module: _SourceModule) -> None:
    """Only ``clock.SystemClock`` reads the real clock; nothing uses the global random."""
    allowed = "SystemClock" if module.name == "superapp_sdk.core.clock" else None
    source = module.path.read_text(encoding="utf-8")
    assert clock_reads(source, allowed_class=allowed) == []


def test_system_clock_is_what_the_check_allows() -> None:
    """Without the SystemClock exemption the check flags clock.py's two clock reads."""
    source = (CORE_DIR / "clock.py").read_text(encoding="utf-8")
    found = clock_reads(source)
    assert [f.split("(")[0] for f in found] == ["time.monotonic", "time.time"]


# -- the checkers themselves -----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import httpx", ["httpx"]),
        ("import os.path", ["os"]),
        ("import asyncio as aio", ["asyncio"]),
        ("from socket import create_connection", ["socket"]),
        ("from concurrent.futures import ThreadPoolExecutor", ["concurrent"]),
        ("def f():\n    import threading\n", ["threading"]),
        ("class A:\n    def f(self):\n        from sqlite3 import connect\n", ["sqlite3"]),
        ("try:\n    import diskcache\nexcept ImportError:\n    pass\n", ["diskcache"]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import httpcore\n",
            ["httpcore"],
        ),
        ("import importlib\nimportlib.import_module('subprocess')", ["<dynamic import>"]),
        ("__import__('socket')", ["<dynamic import>"]),
        ("import math, enum\nfrom dataclasses import dataclass\n", []),
        ("from superapp_sdk.core.windows import CountWindow", []),
    ],
)
def test_io_import_checker(source: str, expected: list[str]) -> None:
    """The import checker finds I/O imports wherever they are written, and only those."""
    assert io_imports(source, "superapp_sdk.core.example") == expected


def test_relative_imports_resolve_against_the_package() -> None:
    """``from . import x`` in a core module names ``superapp_sdk.core.x``."""
    names = set(imported_modules("from . import windows", "superapp_sdk.core.breaker"))
    assert "superapp_sdk.core.windows" in names
    init = set(imported_modules("from .clock import Clock", "superapp_sdk.core", is_package=True))
    assert "superapp_sdk.core.clock" in init
    up = set(imported_modules("from ..resilience import x", "superapp_sdk.core.breaker"))
    assert "superapp_sdk.resilience.x" in up


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\ndef f():\n    return time.monotonic()\n", ["time.monotonic"]),
        ("import time as t\nt.time()", ["time.time"]),
        ("from time import monotonic as m\nm()", ["time.monotonic"]),
        ("from time import sleep\nsleep(1)", ["time.sleep"]),
        ("import random\nrandom.uniform(0, 1)", ["random.uniform"]),
        ("from random import choice\nchoice([1])", ["random.choice"]),
        ("import datetime\ndatetime.datetime.now()", ["datetime.datetime.now"]),
        ("from datetime import date\ndate.today()", ["datetime.date.today"]),
        ("import random\nrng = random.Random(4)\nrng.uniform(0, 1)", []),
        ("import random\ndef f(rng: random.Random) -> float:\n    return rng.random()\n", []),
        ("import datetime\ndatetime.timedelta(seconds=1)", []),
        ("def f(clock):\n    return clock.monotonic()\n", []),
    ],
)
def test_clock_read_checker(source: str, expected: list[str]) -> None:
    """The clock checker flags direct clock and global-random calls, not injected ones."""
    assert [f.split("(")[0] for f in clock_reads(source)] == expected


def test_clock_read_checker_scopes_the_exemption_to_one_class() -> None:
    """The exemption covers the named class only, not the rest of the module."""
    source = (
        "import time\n"
        "class SystemClock:\n"
        "    def monotonic(self):\n"
        "        return time.monotonic()\n"
        "def elsewhere():\n"
        "    return time.monotonic()\n"
    )
    assert [f.split("(")[0] for f in clock_reads(source, allowed_class="SystemClock")] == [
        "time.monotonic"
    ]
