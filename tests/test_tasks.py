"""The generated Makefile: every task the README names works on a fresh generation.

Tasks run with ``PYTHON=`` this interpreter (which has the project's pinned
dependencies) and ``PYTHONPATH=src``, except ``make install``, which builds the
project's own .venv as a user's first command does.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest
import requests

from bakery import (
    MATRIX,
    TEMPLATE_DIR,
    Baked,
    clean_env,
    free_port,
    output,
    read_env_file,
    run,
    wait_until_healthy,
)

TASKS = ("install", "run", "serve", "test", "lint", "keys")


@pytest.fixture(scope="session")
def make_command() -> list[str]:
    """``make`` (a system package, which .ci/run installs): without it, the tests that
    need it are skipped loudly on a workstation and fail in CI."""
    path = shutil.which("make")
    if path is None:
        reason = "NO MAKEFILE TEST: make is not installed (apt-get install -y make)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    return [path, "--no-print-directory"]


@pytest.fixture
def make(make_command):
    """``make(project, *args, **env)``: run a task with this interpreter and PYTHONPATH=src."""

    def _make(project, *args: str, **env: str):
        return run(
            [*make_command, f"PYTHON={sys.executable}", *args],
            cwd=project,
            env=clean_env(PYTHONPATH="src", **env),
            timeout=600,
        )

    return _make


def test_make_alone_lists_the_tasks(default_project, make):
    result = make(default_project.root)
    assert result.returncode == 0, output(result)
    listed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("  make ")]
    assert set(TASKS) <= set(listed), output(result)


def test_readme_uses_the_tasks(baked: Baked):
    readme = (baked.root / "README.md").read_text(encoding="utf-8")
    for task in TASKS:
        assert f"make {task}" in readme, task


@pytest.mark.parametrize("name", ["default", "minimal"])
@pytest.mark.parametrize("task", ["test", "lint"])
def test_make_test_and_lint_pass_on_a_fresh_generation(bake, project_copy, make, name, task):
    project = project_copy(bake(**MATRIX[name]))
    result = make(project, task, PYTEST_ADDOPTS="-p no:cacheprovider -q")
    assert result.returncode == 0, output(result)


@pytest.mark.slow
def test_make_run_serves_the_development_app_with_the_env_file(
    default_project, start, make_command
):
    """`make run`: flask's development server, settings and key from .env, plain HTTP."""
    port = free_port()
    env = clean_env(PYTHONPATH="src", FLASK_RUN_PORT=str(port))
    server = start([*make_command, f"PYTHON={sys.executable}", "run"], default_project.root, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    key = read_env_file(default_project.root / ".env")["API_KEYS"]
    header = str(default_project.context["api_key_header"])
    answer = requests.get(f"{base}/v1/whoami", headers={header: key}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "Strict-Transport-Security" not in answer.headers


@pytest.mark.slow
def test_make_serve_runs_gunicorn_as_in_production(default_project, start, tmp_path, make_command):
    """`make serve`: gunicorn with gunicorn.conf.py, production settings, no .env."""
    port = free_port()
    key = read_env_file(default_project.root / ".env")["API_KEYS"]
    env = clean_env(
        PYTHONPATH="src",
        API_KEYS=key,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    server = start([*make_command, f"PYTHON={sys.executable}", "serve"], default_project.root, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    header = str(default_project.context["api_key_header"])
    plain = requests.get(f"{base}/v1/whoami", headers={header: key}, timeout=10)
    assert plain.status_code == 403, "production refuses plain HTTP"
    assert plain.json()["error"] == "https_required"
    assert "Strict-Transport-Security" in plain.headers


@pytest.mark.slow
def test_make_install_creates_the_venv_then_keys_helps(default_project, project_copy, make_command):
    """`make install` builds .venv with the project (editable) and its dev tools; `make keys`
    then shows the key commands, which come from the installed entry point."""
    project = project_copy(default_project)
    result = run([*make_command, "install"], cwd=project, timeout=900)
    assert result.returncode == 0, output(result)
    python = project / ".venv" / "bin" / "python"
    assert python.is_file()
    check = run(
        [str(python), "-c", f"import {default_project.package}, pytest, ruff, bandit"],
        cwd=project,
    )
    assert check.returncode == 0, output(check)
    keys = run([*make_command, "keys"], cwd=project)
    assert keys.returncode == 0, output(keys)
    for command in ("create", "list", "rotate", "revoke"):
        assert command in keys.stdout, output(keys)


def test_generation_summary_is_short_aligned_and_names_the_next_commands(
    tmp_path, cookiecutter_config
):
    """What the person who generated the project reads: aligned labels, where the key
    is (never the key), and the next commands in order, with a `cd` they can type."""
    command = [sys.executable, "-m", "cookiecutter", "--no-input"]
    command += ["--config-file", str(cookiecutter_config), str(TEMPLATE_DIR), "-o", "out"]
    result = run(command, cwd=tmp_path, env=clean_env(PWD=str(tmp_path)))
    assert result.returncode == 0, output(result)
    (project,) = (tmp_path / "out").iterdir()
    key = read_env_file(project / ".env")["API_KEYS"]
    assert key not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) <= 15, result.stdout
    labelled = [line for line in lines if re.match(r"  [A-Z][\w ]+?  +\S", line)]
    assert len(labelled) >= 3, result.stdout
    columns = {re.match(r"  [A-Z][\w ]+?  +", line).end() for line in labelled}
    assert len(columns) == 1, f"values not aligned:\n{result.stdout}"
    assert any(".env" in line for line in labelled)
    commands = [line.strip() for line in lines if line.startswith("    ")]
    assert commands[0] == f"cd out/{project.name}"
    assert commands[1].startswith("make install")
    assert commands[2].startswith("make run")
    assert commands[3].startswith("curl ") and "/v1/whoami" in commands[3]
