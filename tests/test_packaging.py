"""The distribution: ``python -m build`` makes an sdist and a wheel that pass ``twine check``;
the wheel installs into a clean virtual environment and imports with only the runtime
dependencies.

Installing fetches the runtime dependencies from the package index. When the index cannot
be reached (told apart by pip's connection errors), those tests are skipped with the
reason, never failed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_ONLY = ("hypothesis", "pytest", "pybreaker")
BUILD_TIMEOUT = 180
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 60
# pip prints these when it cannot talk to the index (urllib3 and socket errors); a
# requirement that no reachable index has prints none of them.
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Connection refused"
    r"|Temporary failure in name resolution|Name or service not known|Network is unreachable"
    r"|No route to host|ConnectTimeoutError|ReadTimeoutError|Read timed out|ProxyError"
    r"|Max retries exceeded|connection broken by",
)


def index_unreachable(pip_output: str) -> str | None:
    """The line of ``pip_output`` showing that the package index could not be reached."""
    for line in pip_output.splitlines():
        if _NETWORK_ERRORS.search(line):
            return line.strip()
    return None


def clean_env() -> dict[str, str]:
    """The environment for the fresh venv: nothing that would let it see this checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(
    argv: list[str | Path], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True, slots=True)
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """An sdist and a wheel built from this checkout (the wheel from the sdist)."""
    pytest.importorskip("build", reason="the 'build' package (dev extra) is not installed")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (hatchling) is already in this environment, so the
    # build needs no package index; the install below is what proves the runtime deps.
    proc = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO],
        cwd=out,
        timeout=BUILD_TIMEOUT,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sdists = list(out.glob("*.tar.gz"))
    wheels = list(out.glob("*.whl"))
    assert len(sdists) == 1, sdists
    assert len(wheels) == 1, wheels
    return Dist(sdists[0], wheels[0])


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (no system site packages) with the wheel installed."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    proc = run([sys.executable, "-m", "venv", env_dir], cwd=root, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    python = env_dir / "bin" / "python"
    proc = run(
        [python, "-m", "pip", "install", "--timeout", "15", "--retries", "1", dist.wheel],
        cwd=root,
        timeout=INSTALL_TIMEOUT,
    )
    if proc.returncode != 0:
        reason = index_unreachable(proc.stdout + proc.stderr)
        if reason is not None:
            pytest.skip(f"the package index cannot be reached: {reason}")
        pytest.fail(f"pip install of the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    return env_dir


# -- the artifacts -----------------------------------------------------------------------------


def test_build_names_the_artifacts(dist: Dist) -> None:
    """The sdist and the wheel are superapp_sdk-<version>, pure Python."""
    assert re.fullmatch(r"superapp_sdk-\d+\.\d+\.\d+.*\.tar\.gz", dist.sdist.name)
    assert re.fullmatch(r"superapp_sdk-\d+\.\d+\.\d+.*-py3-none-any\.whl", dist.wheel.name)


def test_twine_check_passes(dist: Dist, tmp_path: Path) -> None:
    """`twine check` accepts both artifacts (metadata and README render)."""
    pytest.importorskip("twine", reason="the 'twine' package (dev extra) is not installed")
    proc = run(
        [sys.executable, "-m", "twine", "check", "--strict", dist.sdist, dist.wheel],
        cwd=tmp_path,
        timeout=RUN_TIMEOUT,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_holds_both_packages_and_py_typed(dist: Dist) -> None:
    """The wheel ships superapp_sdk (typed) and fallback_providers, not tests or bench."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = wheel.namelist()
    assert "superapp_sdk/py.typed" in names
    assert "superapp_sdk/cli.py" in names
    assert "fallback_providers/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_wheel_declares_the_console_script(dist: Dist) -> None:
    """The wheel's entry points declare `superapp = superapp_sdk.cli:main`."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = wheel.read(entry_points).decode()
    assert re.search(r"^superapp\s*=\s*superapp_sdk\.cli:main$", text, re.MULTILINE), text


def test_dev_packages_are_only_extras(dist: Dist) -> None:
    """Test-only packages are required only with an extra, never by the runtime."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(wheel.read(metadata).decode())
    requires = headers.get_all("Requires-Dist") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime, "no runtime dependencies declared"
    for package in DEV_ONLY:
        assert not [r for r in runtime if re.match(rf"{package}\b", r)], runtime


def test_sdist_builds_from_its_own_files(dist: Dist) -> None:
    """The sdist carries pyproject.toml, the README and both packages."""
    with tarfile.open(dist.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "README.md",
        "superapp_sdk/__init__.py",
        "fallback_providers/__init__.py",
    ):
        assert needed in names, needed


# -- the clean install -------------------------------------------------------------------------


def test_wheel_imports_in_a_fresh_venv(venv: Path) -> None:
    """The installed wheel imports its core and facade with only runtime dependencies."""
    code = (
        "import superapp_sdk, superapp_sdk.resilience, superapp_sdk.core.breaker; "
        "from superapp_sdk import SuperApp; print(superapp_sdk.__file__)"
    )
    proc = run([venv / "bin" / "python", "-c", code], cwd=venv, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    # Imported from the venv, not from this checkout.
    assert Path(proc.stdout.strip()).is_relative_to(venv), proc.stdout


def test_dev_packages_are_not_installed(venv: Path) -> None:
    """hypothesis, pytest and pybreaker are not importable in the fresh venv."""
    code = (
        "import importlib.util; "
        f"print(','.join(m for m in {DEV_ONLY!r} if importlib.util.find_spec(m)))"
    )
    proc = run([venv / "bin" / "python", "-c", code], cwd=venv, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_console_script_runs_in_a_fresh_venv(venv: Path) -> None:
    """`superapp --help` runs from the installed wheel (no rich, no dev extra)."""
    proc = run([venv / "bin" / "superapp", "--help"], cwd=venv, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "outbox" in proc.stdout


# -- telling an unreachable index apart -----------------------------------------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_index_is_recognised(tmp_path: Path) -> None:
    """pip's output against an index nobody listens on (loopback) reads as unreachable."""
    proc = run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--isolated",
            "--no-deps",
            "--index-url",
            f"http://127.0.0.1:{_closed_port()}/simple",
            "--retries",
            "1",
            "--timeout",
            "5",
            "--dest",
            tmp_path,
            "httpx",
        ],
        cwd=tmp_path,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode != 0
    assert index_unreachable(proc.stdout + proc.stderr) is not None, proc.stderr


def test_a_missing_package_is_not_mistaken_for_no_network() -> None:
    """A requirement no index has is a packaging failure, not a reason to skip."""
    output = (
        "ERROR: Could not find a version that satisfies the requirement httpxx>=0.27 "
        "(from versions: none)\nERROR: No matching distribution found for httpxx>=0.27\n"
    )
    assert index_unreachable(output) is None
