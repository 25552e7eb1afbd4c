"""The generated Makefile: every task the README names works on a fresh generation.

Tasks run with ``PYTHON=`` this interpreter (which has the project's pinned
dependencies) and ``PYTHONPATH=src``, except ``make install``, which builds the
project's own .venv as a user's first command does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time

import pytest
import requests

from bakery import (
    DATABASE,
    MATRIX,
    TEMPLATE_DIR,
    Baked,
    clean_env,
    free_port,
    json_lines,
    output,
    read_env_file,
    run,
    wait_until_healthy,
)

TASKS = ("install", "migrate", "run", "serve", "test", "lint", "keys")
# How to get off port 5000 (on macOS, AirPlay Receiver's), as every hint words it.
OTHER_PORT = "FLASK_RUN_PORT=5001 make run"
LOCAL_TLS_HEADING = "### Try the production server locally"


def readme_commands(readme: str, heading: str) -> list[str]:
    """The commands of the first bash block after ``heading``, as bash reads them:
    comment lines dropped, backslash-continued lines kept together."""
    block = readme.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        pending += line + "\n"
        if not line.endswith("\\"):
            commands.append(pending)
            pending = ""
    return commands


def answers_over_tls(url: str, trusted: str) -> bool:
    """``url`` answers over TLS with ``trusted`` as the only certificate authority."""
    try:
        requests.get(url, timeout=2, verify=trusted)
    except requests.ConnectionError:
        return False
    return True


def port_is_closed(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


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


def test_every_hint_says_how_to_leave_port_5000(
    default_project, make, tmp_path, cookiecutter_config
):
    """`make` alone, the README and the generation summary all name FLASK_RUN_PORT."""
    listing = make(default_project.root)
    assert OTHER_PORT in listing.stdout, output(listing)
    readme = (default_project.root / "README.md").read_text(encoding="utf-8")
    assert OTHER_PORT in readme
    assert "flask run --port 5001" in readme
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "--config-file"]
    command += [str(cookiecutter_config), str(TEMPLATE_DIR), "-o", str(tmp_path)]
    generated = run(command, cwd=tmp_path)
    assert OTHER_PORT in generated.stdout, output(generated)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_make_run_serves_the_development_app_with_the_env_file(
    default_project, project_copy, start, make_command, where
):
    """`make run`: pending migrations applied first (a fresh project has no database yet),
    then flask's development server, settings and key from .env, plain HTTP, on the port
    FLASK_RUN_PORT names, from the environment (as the hints show) or from .env."""
    project = project_copy(default_project)
    assert not (project / DATABASE).exists()
    port = free_port()
    env = clean_env(PYTHONPATH="src")
    if where == "environment":
        env["FLASK_RUN_PORT"] = str(port)
    else:
        with (project / ".env").open("a", encoding="utf-8") as env_file:
            env_file.write(f"FLASK_RUN_PORT={port}\n")
    server = start([*make_command, f"PYTHON={sys.executable}", "run"], project, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    key = read_env_file(default_project.root / ".env")["API_KEYS"]
    header = str(default_project.context["api_key_header"])
    answer = requests.get(f"{base}/v1/whoami", headers={header: key}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "Strict-Transport-Security" not in answer.headers
    items = requests.get(f"{base}/v1/items", headers={header: key}, timeout=10)
    assert items.status_code == 200, items.text
    assert (project / DATABASE).is_file()


@pytest.mark.slow
def test_make_serve_runs_gunicorn_as_in_production(
    default_project, project_copy, start, tmp_path, make_command
):
    """`make serve`: gunicorn with gunicorn.conf.py, production settings, no .env, on the
    database `flask db upgrade` made (it never migrates by itself)."""
    project = project_copy(default_project, migrated=True)
    port = free_port()
    key = read_env_file(default_project.root / ".env")["API_KEYS"]
    env = clean_env(
        PYTHONPATH="src",
        API_KEYS=key,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    server = start([*make_command, f"PYTHON={sys.executable}", "serve"], project, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    header = str(default_project.context["api_key_header"])
    plain = requests.get(f"{base}/v1/whoami", headers={header: key}, timeout=10)
    assert plain.status_code == 403, "production refuses plain HTTP"
    assert plain.json()["error"] == "https_required"
    assert "Strict-Transport-Security" in plain.headers


@pytest.mark.slow
def test_make_serve_over_tls_as_the_readme_shows(
    default_project, project_copy, start, tmp_path, make_command
):
    """The README's local recipe, run as written on a migrated project: a self-signed
    certificate from openssl, `make serve` with it, then curl. The key answers 200 over
    HTTPS and nothing is logged as exposed. Only the port differs (GUNICORN_BIND), so that
    tests can run side by side."""
    project = project_copy(default_project)
    readme = (project / "README.md").read_text(encoding="utf-8")
    certificate, serve, curl = readme_commands(readme, LOCAL_TLS_HEADING)
    assert certificate.startswith("openssl ") and serve.rstrip().endswith("make serve")
    assert curl.startswith("curl ") and shutil.which("curl"), "curl is part of the recipe"
    port = free_port()
    env = clean_env(
        PYTHONPATH="src",
        PYTHON=sys.executable,  # the Makefile's `PYTHON ?=` takes it from the environment
        GUNICORN_BIND=f"127.0.0.1:{port}",
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    made = run(["bash", "-c", certificate], cwd=project, env=env)
    assert made.returncode == 0, output(made)
    # The database `make run` would have migrated: the recipe's server makes none.
    migrated = run([*make_command, "migrate"], cwd=project, env=env)
    assert migrated.returncode == 0, output(migrated)
    # bash runs a lone command in its own process: SIGTERM reaches make, which stops gunicorn.
    server = start(["bash", "-c", serve], project, env)
    base = f"https://127.0.0.1:{port}"
    trusted = str(project / "instance" / "tls.crt")
    deadline = time.monotonic() + 30
    while not answers_over_tls(f"{base}/health", trusted):
        assert server.process.poll() is None and time.monotonic() < deadline, server.output()
        time.sleep(0.2)

    key = read_env_file(project / ".env")["API_KEYS"]
    header = str(default_project.context["api_key_header"])
    answer = requests.get(f"{base}/v1/whoami", headers={header: key}, timeout=10, verify=trusted)
    assert answer.status_code == 200, answer.text
    assert "Strict-Transport-Security" in answer.headers
    fetched = run(["bash", "-c", curl.replace(":8000/", f":{port}/")], cwd=project, env=env)
    assert fetched.returncode == 0, output(fetched)
    assert json.loads(fetched.stdout)["name"] == answer.json()["name"], output(fetched)

    server.stop()
    deadline = time.monotonic() + 35  # gunicorn's graceful_timeout, and a little
    while not port_is_closed(port):
        assert time.monotonic() < deadline, "gunicorn outlived make serve"
        time.sleep(0.2)
    levels = [record.get("level") for record in json_lines(server.output())]
    assert "ERROR" not in levels, server.output()


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
