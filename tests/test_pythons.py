"""The default generation's own test suite on every Python the project supports.

For each interpreter: a virtual environment of its own, the project installed in
it with its dev extra (``pip install -e '.[dev]'``, as ``make install`` does), and
the project's ``python -m pytest`` (``make test``), which must pass and report
passing tests.

The interpreter running this suite is left out, because the project's suite has
already run on it: tests/test_bake.py runs every generation's suite with it and
tests/test_tasks.py runs ``make test`` and ``make install``. In CI that is
python3, 3.11, so this file adds 3.12 and 3.13.

The others are found under pyenv (``pyenv root``) or on PATH as ``python3.X``.
One that is missing is a loud skip on a workstation and a failure under CI, whose
machines have them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import built_once

from bakery import output, run

pytestmark = pytest.mark.slow

# requires-python's floor to the newest in the generated CI matrix (tests/test_workflow.py).
PYTHONS = ("3.11", "3.12", "3.13")
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
VERSION_CHECK = "import sys; print('%d.%d' % sys.version_info[:2])"


def release(path: Path) -> tuple[int, ...]:
    """The numbers of a pyenv version directory's name (3.12.10 sorts after 3.12.9)."""
    return tuple(int(number) for number in re.findall(r"\d+", path.name))


def pyenv_root() -> Path | None:
    """Where pyenv keeps its interpreters, as ``pyenv root`` says; None without pyenv."""
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        answer = run([pyenv, "root"], timeout=30)
        if answer.returncode == 0 and answer.stdout.strip():
            return Path(answer.stdout.strip())
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    # pyenv's own default, for a shell (such as CI's) that has pyenv installed but not on PATH.
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` that runs: pyenv's newest, else ``python3.X`` on PATH.

    Each candidate is run, not trusted by name: a pyenv shim for a version that
    is installed but not selected exists on PATH yet only prints an error.
    """
    candidates: list[str] = []
    root = pyenv_root()
    if root is not None:
        versions = sorted((root / "versions").glob(f"{version}.*"), key=release, reverse=True)
        candidates += [str(path / "bin" / f"python{version}") for path in versions]
    on_path = shutil.which(f"python{version}")
    if on_path is not None:
        candidates.append(on_path)
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        try:
            answer = run([candidate, "-c", VERSION_CHECK], timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.returncode == 0 and answer.stdout.strip() == version:
            return candidate
    return None


def require_python(version: str) -> str:
    """The interpreter of ``version``. Missing: a loud skip, or a failure under CI."""
    found = find_python(version)
    if found is None:
        reason = (
            f"NO PYTHON {version} TEST: python{version} is neither under pyenv nor on PATH, "
            f"so the generated project was not tried on Python {version}"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.mark.parametrize("version", [version for version in PYTHONS if version != RUNNING])
def test_generated_suite_passes_on_each_supported_python(version, bake, shared_dir):
    """A fresh venv resolves the project's pins, and the project's tests pass, on this Python."""
    python = require_python(version)  # before baking: a skip should cost nothing
    default_project = bake()

    def install(directory: Path) -> None:
        shutil.copytree(default_project.root, directory / "project", symlinks=True)
        venv = run([python, "-m", "venv", str(directory / "venv")], timeout=300)
        assert venv.returncode == 0, output(venv)
        pip = [str(directory / "venv" / "bin" / "python"), "-m", "pip", "install"]
        pip += ["--no-input", "--disable-pip-version-check", "--quiet"]
        result = run([*pip, "-e", ".[dev]"], cwd=directory / "project", timeout=900)
        assert result.returncode == 0, output(result)

    directory = built_once(shared_dir / "pythons" / version, install)
    venv_python = str(directory / "venv" / "bin" / "python")
    result = run(
        [venv_python, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=directory / "project",
        timeout=900,
    )
    assert result.returncode == 0, output(result)
    assert re.search(rf"^platform .* -- Python {re.escape(version)}\.", result.stdout, re.M), (
        output(result)
    )
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"\b(\d+) passed\b", summary)
    assert passed and int(passed[1]) > 0, output(result)
