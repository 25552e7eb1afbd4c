"""Helpers shared by the template tests: the option matrix, subprocesses, baked projects."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import requests

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
START_TIMEOUT = 30
# Seconds a worker may take to stop on SIGSTOP, or to boot.
WORKER_TIMEOUT = 10
# Where a generated project keeps its database by default (DATABASE_URL unset), relative
# to the working directory, which is the project root when run as documented.
DATABASE = Path("instance") / "app.db"

# One bake per supported combination; together they use every option value
# (tests/test_repository.py checks that they still do when an option is added).
MATRIX: dict[str, dict[str, object]] = {
    "default": {},
    "minimal": {
        # The longest slug allowed (50 characters): generated lines must still fit.
        "project_name": "Northwind Internal Billing API",
        "project_slug": "northwind-internal-billing-and-invoicing-api-v2-eu",
        "use_rate_limiting": False,
        "use_docker": False,
        "use_docs_page": False,
        "ci": "none",
        "license": "Apache-2.0",
    },
    "quoted": {
        "license": "BSD-3-Clause",
        "project_name": 'Zoë\'s "Quoted" \\ API',
        "description": 'Says "hello" to Zoë\'s users, ends with a backslash \\',
        "author_name": 'Zoë O\'Brien "ZQ" \\',
        "api_key_header": "Api-Token",
        "key_prefix": "zq9",
    },
    "proprietary": {
        "license": "Proprietary",
        "ci": "github",
        "use_docker": False,
        "use_secret_scanning": True,
    },
}

# Variables that change what a generated app or tool does: the environment the
# tests run in must not leak into the subprocesses they start.
_LEAKY_ENV = re.compile(
    r"PYTHONPATH|PYTHONHOME|APP_ENV|API_.*|REQUIRE_HTTPS|TRUSTED_PROXIES|RATELIMIT_.*"
    r"|AUTH_FAILURE_LIMIT|MAX_CONTENT_LENGTH|LOG_FORMAT|LOG_LEVEL|FLASK_.*|GUNICORN_.*"
    r"|WEB_CONCURRENCY|PYTEST_.*|COOKIECUTTER_.*|DATABASE_URL|SECRET_SCANNING_.*"
)

# A pinned requirement: name, optional extras, ==version.
REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;]+)")

# Run inside a baked project (PYTHONPATH=src): answer a few GETs through the
# test client and print what came back, as JSON on stdout.
PROBE = """
import importlib, json, sys
app = importlib.import_module(sys.argv[1]).create_app()
client = app.test_client()
answers = {}
for path in sys.argv[2:]:
    response = client.get(path)
    answers[path] = {"status": response.status_code, "json": response.get_json(silent=True)}
print(json.dumps(answers))
"""


@dataclass(frozen=True)
class Baked:
    """A generated project: where it is and the answers that made it."""

    root: Path
    context: dict[str, object] = field(default_factory=dict)

    @property
    def package(self) -> str:
        """The import name (given or derived from the slug)."""
        return str(self.context["package_name"])


def answers_for(extra_context: dict[str, object]) -> dict[str, object]:
    """The answers cookiecutter renders for ``extra_context`` (derived values included)."""
    from cookiecutter.generate import generate_context
    from cookiecutter.prompt import prompt_for_config

    context = generate_context(
        context_file=str(TEMPLATE_DIR / "cookiecutter.json"), extra_context=extra_context
    )
    return dict(prompt_for_config(context, no_input=True))


# Subprocesses


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without settings that would steer a generated app."""
    env = {name: value for name, value in os.environ.items() if not _LEAKY_ENV.fullmatch(name)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(overrides)
    return env


def tool(name: str) -> list[str]:
    """The command for a console script installed next to this interpreter."""
    script = BIN_DIR / name
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", name.replace("-", "_")]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its text output, never raise on a non-zero exit."""
    kwargs.setdefault("env", clean_env())
    kwargs.setdefault("stdin", subprocess.DEVNULL)  # as in CI: nobody answers prompts
    kwargs.setdefault("timeout", 300)
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def output(result: subprocess.CompletedProcess[str]) -> str:
    """Both streams of a finished command, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flask_env(package: str, pythonpath: str | Path = "src", **settings: str) -> dict[str, str]:
    """What the project's ``flask`` command needs: its app, importable; no .env or .flaskenv."""
    return clean_env(
        PYTHONPATH=str(pythonpath), FLASK_APP=package, FLASK_SKIP_DOTENV="1", **settings
    )


def upgrade_database(root: Path, env: dict[str, str]) -> None:
    """Run the project's real ``flask db upgrade`` in ``root``, as a user does before serving:
    a server never migrates by itself, and refuses a database behind its migrations."""
    result = run([*tool("flask"), "db", "upgrade"], cwd=root, env=env)
    assert result.returncode == 0, output(result)


def migrated_database(project: Path, package: str, directory: Path) -> str:
    """DATABASE_URL of a SQLite file in ``directory`` that the project's `flask db upgrade`
    made, for an app built outside a copy of the project (which stays untouched)."""
    url = f"sqlite:///{directory / 'app.db'}"
    upgrade_database(project, flask_env(package, DATABASE_URL=url))
    return url


def probe(project: Path, package: str, *paths: str) -> dict[str, dict]:
    """GET ``paths`` from the project's app in a subprocess, with APP_ENV=testing, on a
    database of its own (the app refuses to start on one behind its migrations)."""
    with tempfile.TemporaryDirectory(prefix="probe-") as directory:
        database = migrated_database(project, package, Path(directory))
        result = run(
            [sys.executable, "-c", PROBE, package, *paths],
            cwd=project,
            env=clean_env(PYTHONPATH="src", APP_ENV="testing", DATABASE_URL=database),
            timeout=60,
        )
    assert result.returncode == 0, output(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


# Servers


class Server:
    """A gunicorn (or flask) process with its output in a file, stopped on teardown."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_handle = log.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log_handle.closed:
            self._log_handle.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if it is still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait_exit(30) is None:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()
        return self.process.returncode


def installed_env(site: Path, runtime_dir: Path, **settings: str) -> dict[str, str]:
    """Production settings for a project installed in ``site``, with no .env read.

    ``runtime_dir`` keeps gunicorn's control socket apart, as in gunicorn_env().
    """
    return clean_env(
        PYTHONPATH=str(site),
        APP_ENV="production",
        FLASK_SKIP_DOTENV="1",
        XDG_RUNTIME_DIR=str(runtime_dir),
        **settings,
    )


def gunicorn_env(project: Baked, port: int, runtime_dir: Path, **settings: str) -> dict[str, str]:
    """Production settings for gunicorn; API_KEYS comes from the project's .env.

    gunicorn's control socket goes to ``runtime_dir``: servers running side by
    side must not take over each other's default $HOME/.gunicorn/gunicorn.ctl.
    """
    settings.setdefault("API_KEYS", read_env_file(project.root / ".env")["API_KEYS"])
    return clean_env(
        XDG_RUNTIME_DIR=str(runtime_dir),
        PYTHONPATH="src",
        APP_ENV="production",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        **settings,
    )


def gunicorn_command(project: Baked) -> list[str]:
    """The documented command line: ``gunicorn '<package>:create_app()'``."""
    return [*tool("gunicorn"), f"{project.package}:create_app()"]


def wait_until_healthy(server: Server, base: str) -> None:
    """Poll /health until it answers 200; fail early if the server died."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not healthy after {START_TIMEOUT}s:\n{server.output()}")


def booted_workers(server: Server, count: int) -> list[int]:
    """The process ids of the ``count`` workers gunicorn says it booted."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while True:
        pids = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.output())]
        if len(pids) >= count:
            assert len(pids) == count, "a worker was restarted:\n" + server.output()
            return pids
        if time.monotonic() > deadline:
            pytest.fail(f"{count} workers did not boot:\n{server.output()}")
        time.sleep(0.05)


def process_state(pid: int) -> str:
    """A process's state letter, as ps shows it: ``T`` once it is stopped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:  # no /proc (macOS)
        command = ["ps", "-o", "stat=", "-p", str(pid)]
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout[:1]


def wait_until_stopped(pid: int) -> None:
    """Return once ``pid`` has stopped: kill() may return while it still runs for a moment."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while process_state(pid) != "T":
        if time.monotonic() > deadline:
            pytest.fail(f"worker {pid} did not stop on SIGSTOP")
        time.sleep(0.001)


@contextmanager
def only_worker(workers: list[int], worker: int) -> Iterator[None]:
    """Let only ``workers[worker]`` take new connections meanwhile.

    Which worker accepts a connection is up to the kernel: the others are stopped
    (SIGSTOP), so they accept nothing, then go on (SIGCONT).
    """
    paused = [pid for index, pid in enumerate(workers) if index != worker]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in paused:
            wait_until_stopped(pid)
        yield
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)


def json_lines(text: str) -> list[dict]:
    """The log lines that are JSON objects."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# Reading a baked project


def load_keys_module(project: Path) -> ModuleType:
    """Import a baked project's keys.py by path, as scripts/generate_api_key.py does."""
    (keys_py,) = project.glob("src/*/keys.py")
    name = "_baked_keys_" + hashlib.sha256(str(keys_py).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, keys_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def read_env_file(path: Path) -> dict[str, str]:
    """The NAME=value lines of a .env file."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def sqlite_dump(path: Path) -> str:
    """A SQLite database as the SQL text that would make it again: every row of every table."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


def text_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Yield (path, text) for every UTF-8 text file of a tree."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if b"\0" in data:
                continue
            try:
                yield path, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


# The template repository


def normalize(name: str) -> str:
    """PEP 503 name normalization: Flask, flask and flask_ are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_dev() -> dict[str, str]:
    """requirements-dev.txt as {normalized name: pinned version}."""
    pins = {}
    for line in (TEMPLATE_DIR / "requirements-dev.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = REQUIREMENT.fullmatch(line)
        assert match, f"requirements-dev.txt: {line!r} is not pinned with =="
        pins[normalize(match["name"])] = match["version"]
    return pins
