"""The dependency arrow points one way: fallback_providers uses superapp_sdk, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import superapp_sdk

ROOT = Path(superapp_sdk.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def test_superapp_sdk_never_imports_fallback_providers() -> None:
    """No module of superapp_sdk imports fallback_providers, statically or by name."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path) if m.startswith("fallback"))
        for path in ROOT.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_an_import() -> None:
    """The import scan finds both import forms (so the test above can fail)."""
    sample = ROOT.parent / "tests" / "test_layering.py"
    assert "ast" in _imports(sample)
    assert "superapp_sdk" in _imports(sample)
