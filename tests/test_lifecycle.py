"""A key's life, end to end: `flask keys` changes the registry, gunicorn follows.

The default project is installed (its ``flask keys`` command is a Flask plugin
found through the package's entry points) and run from a private copy without
``.env``, in production, with the registry in its database (the default
DATABASE_URL, a SQLite file in ``instance/``) as the only source of keys. The
database is made by the real `flask db upgrade`, as in production.

Requests go over real sockets, each on a fresh connection. Which worker of a
multi-worker server accepts a connection is up to the kernel, so to ask every
worker, a test pauses the others (SIGSTOP) while it sends: a paused process
accepts nothing. ``X-Forwarded-Proto: https`` with TRUSTED_PROXIES=1 plays the
TLS-terminating proxy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
import requests

from bakery import (
    DATABASE,
    Server,
    booted_workers,
    free_port,
    gunicorn_command,
    installed_env,
    json_lines,
    load_keys_module,
    only_worker,
    output,
    run,
    sqlite_dump,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

# The product promises "within about a second"; this is the most a test waits.
RELOAD_DEADLINE = 2.0
# Rate limits are not what these tests are about: keep them out of the way.
NO_LIMITS = {"RATELIMIT_DEFAULT": "100000/minute", "AUTH_FAILURE_LIMIT": "100000/minute"}
# The route that reads no database: the key check alone decides its answer.
WHOAMI = "/v1/whoami"
# SQLite's file header: a file without it is no database (SQLITE_NOTADB).
SQLITE_HEADER = 100


@dataclass
class Lifecycle:
    """A private copy of the installed default project, its database and its servers."""

    root: Path
    site: Path
    package: str
    command: list[str]
    header: str
    keys_module: ModuleType
    start: Callable[..., Server]
    runtime_dir: Path
    printed: list[str] = field(default_factory=list)  # every key `flask keys` showed
    servers: list[Server] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.root / DATABASE

    def env(self, **settings: str) -> dict[str, str]:
        """Production, no API_KEYS, no .env: the registry is the only source of keys."""
        return installed_env(self.site, self.runtime_dir, **settings)

    def flask(self, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
        """Run the installed project's ``flask ARGUMENTS`` from the project root."""
        env = self.env(FLASK_APP=self.package, **settings)
        return run([*tool("flask"), *arguments], cwd=self.root, env=env)

    def keys(self, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
        """Run ``flask keys ARGUMENTS`` from the project root."""
        return self.flask("keys", *arguments, **settings)

    def migrate(self) -> None:
        """`flask db upgrade`, the one way the schema is made, in production too."""
        result = self.flask("db", "upgrade")
        assert result.returncode == 0, output(result)

    def new_key(self, *arguments: str) -> str:
        """Run ``flask keys create|rotate ...`` and return the key it printed, alone, on stdout."""
        result = self.keys(*arguments)
        assert result.returncode == 0, output(result)
        lines = result.stdout.splitlines()
        assert len(lines) == 1, f"stdout must be the key alone:\n{output(result)}"
        key = lines[0]
        self.printed.append(key)
        assert self.keys_module.is_well_formed(key), output(result)
        assert key not in result.stderr, "the key was printed twice"
        assert self.keys_module.fingerprint(key) in result.stderr, output(result)
        return key

    def serve(self, workers: int = 2, **settings: str) -> tuple[Server, str]:
        """gunicorn as documented, from the project root, behind one trusted proxy hop."""
        port = free_port()
        env = self.env(
            GUNICORN_BIND=f"127.0.0.1:{port}",
            WEB_CONCURRENCY=str(workers),
            TRUSTED_PROXIES="1",
            **NO_LIMITS,
            **settings,
        )
        server = self.start(self.command, self.root, env)
        self.servers.append(server)
        return server, f"http://127.0.0.1:{port}"

    def call(
        self, base: str, key: str | None, method: str = "GET", path: str = "/v1/items", **kwargs
    ) -> requests.Response:
        """One request over 'HTTPS', on a connection of its own."""
        headers = {"X-Forwarded-Proto": "https", "Connection": "close"}
        if key is not None:
            headers[self.header] = key
        try:
            return requests.request(method, base + path, headers=headers, timeout=10, **kwargs)
        except requests.ConnectionError as error:
            logs = "\n".join(server.output() for server in self.servers)
            pytest.fail(f"{error}\n--- server output\n{logs}")

    def on_every_worker(
        self, base: str, key: str, workers: list[int], path: str = WHOAMI
    ) -> list[requests.Response]:
        """One request with ``key`` answered by each worker in turn."""
        answers = []
        for worker in range(len(workers)):
            with only_worker(workers, worker):
                answers.append(self.call(base, key, path=path))
        return answers

    def entries(self) -> list[dict]:
        """The registry as `flask keys list --json` shows it."""
        result = self.keys("list", "--json")
        assert result.returncode == 0, output(result)
        return json.loads(result.stdout)

    def check_no_secrets(self, server: Server) -> None:
        """Stop the server; no key the CLI printed may be in its output or the database."""
        server.stop()
        logged = server.output()
        stored = sqlite_dump(self.database)
        raw = self.database.read_bytes()
        assert self.printed
        for key in self.printed:
            assert self.keys_module.hashed_entry(key) in stored, "the dump misses a key's hash"
            assert key not in logged, "a raw key reached the server output"
            assert key not in stored and key.encode() not in raw, "a raw key is in the database"


@pytest.fixture
def lifecycle(default_project, install, project_copy, start, tmp_path) -> Lifecycle:
    """The default project, installed, in a private copy without .env and with no database."""
    site = install(default_project)
    root = project_copy(default_project)
    (root / ".env").unlink()  # the key made at generation must play no part
    return Lifecycle(
        root=root,
        site=site,
        package=default_project.package,
        command=gunicorn_command(default_project),
        header=str(default_project.context["api_key_header"]),
        keys_module=load_keys_module(root),
        start=start,
        runtime_dir=tmp_path,
    )


@pytest.fixture
def migrated(lifecycle: Lifecycle) -> Lifecycle:
    """The same, its database made by `flask db upgrade`, its registry still empty."""
    lifecycle.migrate()
    return lifecycle


def error_code(response: requests.Response) -> str | None:
    try:
        return response.json().get("error")
    except ValueError:
        return None


def wait_for_status(
    life: Lifecycle, base: str, key: str, status: int, since: float, workers: list[int]
) -> float:
    """Ask every worker until each answers ``key`` with ``status``; return how long after
    ``since`` that was.

    Until then a worker that has not refreshed its registry yet may give the answer of
    before the change (401 for a new key, 200 for an old one), and nothing else.
    """
    before = 401 if status == 200 else 200
    while True:
        answers = life.on_every_worker(base, key, workers)
        elapsed = time.monotonic() - since
        if all(answer.status_code == status for answer in answers):
            return elapsed
        for answer in answers:
            assert answer.status_code in (status, before), answer.text
        if elapsed > RELOAD_DEADLINE:
            pytest.fail(
                f"{[answer.status_code for answer in answers]} from the workers "
                f"{elapsed:.2f}s after the change, expected {status} from each"
            )
        time.sleep(0.05)


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def keystore_logs(server: Server, level: str) -> list[dict]:
    """The server's JSON log records of the key store at ``level``.

    Each worker process has its own key store, and logs once when it loses the
    database (ERROR) and once when it finds it again (WARNING): counting these
    records tells how many workers have noticed.
    """
    return [
        record
        for record in json_lines(server.output())
        if str(record.get("logger", "")).endswith(".keystore") and record.get("level") == level
    ]


def until_each_worker_logged(
    life: Lifecycle, base: str, key: str, workers: list[int], level: str, server: Server
) -> list[requests.Response]:
    """Ask every worker with ``key`` until each has logged the key store's ``level`` record."""
    answers: list[requests.Response] = []
    deadline = time.monotonic() + RELOAD_DEADLINE + 5
    while len(keystore_logs(server, level)) < len(workers):
        if time.monotonic() > deadline:
            pytest.fail(f"not every worker logged a {level}:\n{server.output()}")
        answers += life.on_every_worker(base, key, workers)
        time.sleep(0.1)
    return answers


def test_first_key_in_production(lifecycle: Lifecycle):
    """No database, then no key: gunicorn refuses to start, naming the step that is missing;
    `flask db upgrade` and `flask keys create` still work, and gunicorn then serves that key."""
    life = lifecycle
    assert not life.database.exists()
    unmigrated, _ = life.serve()
    assert unmigrated.wait_exit(20) not in (None, 0), unmigrated.output()
    assert "flask db upgrade" in unmigrated.output()

    life.migrate()
    keyless, _ = life.serve()
    assert keyless.wait_exit(20) not in (None, 0), keyless.output()
    assert "API_KEYS" in keyless.output()

    key = life.new_key("create", "first", "--scope", "items:read")

    (entry,) = life.entries()
    assert entry["name"] == "first"
    assert entry["owner"] == "first"  # by default, a key is its own owner
    assert entry["fingerprint"] == life.keys_module.fingerprint(key)
    assert entry["scopes"] == ["items:read"]
    assert entry["status"] == "active"

    server, base = life.serve()
    wait_until_healthy(server, base)
    read = life.call(base, key)
    assert read.status_code == 200, read.text
    write = life.call(base, key, method="POST", json={"name": "widget"})
    assert write.status_code == 403, write.text
    assert error_code(write) == "insufficient_scope"
    whoami = life.call(base, key, path=WHOAMI).json()
    assert (whoami["name"], whoami["owner"]) == ("first", "first")
    life.check_no_secrets(server)


# A password that must never be shown, in a URL where nothing listens ({port}: a free one).
UNREACHABLE = "postgresql+psycopg://app:pw-never-shown-93b1@127.0.0.1:{port}/app"

# (arguments, extra environment, exit status, what the error line must name)
BAD_COMMANDS = [
    (["create", "other", "--expires-in", "90x"], {}, 2, "90x"),
    (["create", "other", "--allow-ip", "10.0.0.0/33"], {}, 2, "10.0.0.0/33"),
    (["create", "other", "--owner", "no spaces"], {}, 2, "no spaces"),
    (["create", "existing"], {}, 1, "existing"),
    (["revoke", "nobody"], {}, 1, "nobody"),
    (["rotate", "nobody", "--grace", "1h"], {}, 1, "nobody"),
    (["create", "other"], {"DATABASE_URL": UNREACHABLE}, 1, "DATABASE_URL"),
]


def test_bad_arguments_change_nothing(migrated: Lifecycle):
    """A bad value or name, or no database: one clear `Error:` line, a telling exit status,
    registry untouched, and never the database password."""
    life = migrated
    life.new_key("create", "existing")
    before = sqlite_dump(life.database)
    files = sorted(path.name for path in life.database.parent.iterdir())

    for arguments, settings, status, mentions in BAD_COMMANDS:
        settings = {name: value.format(port=free_port()) for name, value in settings.items()}
        result = life.keys(*arguments, **settings)
        case = f"flask keys {' '.join(arguments)} {settings}\n{output(result)}"
        assert result.returncode == status, case
        assert result.stdout == "", case
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, case
        assert mentions in errors[0], case
        assert "Traceback" not in result.stderr, case
        assert "pw-never-shown" not in result.stderr, case
        assert sqlite_dump(life.database) == before, case
        assert sorted(path.name for path in life.database.parent.iterdir()) == files, case


def test_revocation_reaches_every_worker(migrated: Lifecycle):
    """Revoke a key while 3 workers serve it: within 2 s every worker answers 401
    invalid_api_key; a key created meanwhile works on every worker as soon."""
    life = migrated
    workers = 3
    key_a = life.new_key("create", "alpha", "--scope", "items:read")
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    pids = booted_workers(server, workers)
    for response in life.on_every_worker(base, key_a, pids, path="/v1/items"):
        assert response.status_code == 200, response.text
        assert "API-Key-Expires" not in response.headers  # a key without expiry

    # Created while serving, with an expiry: every worker knows it, and says when it ends.
    before = datetime.now(UTC)
    expiring = life.new_key("create", "expiring", "--expires-in", "2h")
    returned = time.monotonic()
    after = datetime.now(UTC)
    assert wait_for_status(life, base, expiring, 200, returned, pids) <= RELOAD_DEADLINE
    (stored,) = [entry["expires"] for entry in life.entries() if entry["name"] == "expiring"]
    for response in life.on_every_worker(base, expiring, pids):
        announced = datetime.fromisoformat(response.headers["API-Key-Expires"])
        # The list shows whole seconds.
        assert announced.replace(microsecond=0) == datetime.fromisoformat(stored)
    assert before + timedelta(hours=2) <= announced <= after + timedelta(hours=2)

    revoked = life.keys("revoke", "alpha")
    returned = time.monotonic()
    assert revoked.returncode == 0, output(revoked)
    assert revoked.stdout == ""

    assert wait_for_status(life, base, key_a, 401, returned, pids) <= RELOAD_DEADLINE
    sleep_until(returned + RELOAD_DEADLINE)
    answers = [answer for _ in range(20) for answer in life.on_every_worker(base, key_a, pids)]
    wrong = [(r.status_code, r.text) for r in answers if r.status_code != 401]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers after revocation: {wrong[:3]}"
    assert {error_code(r) for r in answers} == {"invalid_api_key"}
    assert all("WWW-Authenticate" in r.headers for r in answers)
    # The other keys are untouched: the server did not just stop accepting keys.
    for _ in range(5):
        assert [r.status_code for r in life.on_every_worker(base, expiring, pids)] == [200] * 3
    (alpha,) = [entry for entry in life.entries() if entry["name"] == "alpha"]
    assert alpha["status"] == "revoked"
    life.check_no_secrets(server)


def test_rotation_with_and_without_grace(migrated: Lifecycle):
    """During a grace both keys work, the old one still as NAME with its owner, then it
    expires; --grace 0s ends it at once. `flask keys list` shows both keys."""
    life = migrated
    old_b = life.new_key("create", "bravo", "--owner", "acme", "--scope", "items:read")
    old_c = life.new_key("create", "charlie", "--scope", "items:read")
    old_d = life.new_key("create", "delta", "--owner", "acme")
    new_d = life.new_key("rotate", "delta", "--grace", "1h")
    delta = {entry["fingerprint"]: entry for entry in life.entries() if entry["name"] == "delta"}
    retired = delta[life.keys_module.fingerprint(old_d)]
    current = delta[life.keys_module.fingerprint(new_d)]
    assert (retired["status"], current["status"]) == ("rotated", "active"), delta
    assert retired["owner"] == current["owner"] == "acme"
    assert retired["scopes"] == current["scopes"] == ["*"]

    workers = 2
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    pids = booted_workers(server, workers)
    assert [r.status_code for r in life.on_every_worker(base, old_b, pids)] == [200] * workers

    # Long enough for the command to return, for every worker to refresh (about 1 s),
    # and for the checks below, even on a busy machine.
    grace = 12
    before, started = datetime.now(UTC), time.monotonic()
    new_b = life.new_key("rotate", "bravo", "--grace", f"{grace}s")
    rotated = time.monotonic()
    after = datetime.now(UTC)
    assert wait_for_status(life, base, new_b, 200, rotated, pids) <= RELOAD_DEADLINE
    inside = [
        (old, new)
        for _ in range(5)
        for old, new in zip(
            life.on_every_worker(base, old_b, pids),
            life.on_every_worker(base, new_b, pids),
            strict=True,
        )
    ]
    assert time.monotonic() < started + grace - 1, "too slow: the grace ended during the checks"
    for old_answer, new_answer in inside:
        assert old_answer.status_code == 200, old_answer.text
        assert new_answer.status_code == 200, new_answer.text
        # The old key answers as NAME, with the same owner: what is keyed on them holds.
        assert (old_answer.json()["name"], old_answer.json()["owner"]) == ("bravo", "acme")
        assert old_answer.json()["fingerprint"] == life.keys_module.fingerprint(old_b)
        assert (new_answer.json()["name"], new_answer.json()["owner"]) == ("bravo", "acme")

    # While the grace runs out: --grace 0s revokes the old key at once.
    new_c = life.new_key("rotate", "charlie", "--grace", "0s")
    returned = time.monotonic()
    assert wait_for_status(life, base, old_c, 401, returned, pids) <= RELOAD_DEADLINE
    assert wait_for_status(life, base, new_c, 200, returned, pids) <= RELOAD_DEADLINE
    sleep_until(returned + RELOAD_DEADLINE)
    for _ in range(5):
        assert {error_code(r) for r in life.on_every_worker(base, old_c, pids)} == {
            "invalid_api_key"
        }
        assert {r.status_code for r in life.on_every_worker(base, new_c, pids)} == {200}

    # The old key ends with its grace: listed, expired, at the end the command set.
    bravo = {entry["fingerprint"]: entry for entry in life.entries() if entry["name"] == "bravo"}
    ends = datetime.fromisoformat(bravo[life.keys_module.fingerprint(old_b)]["expires"])
    assert bravo[life.keys_module.fingerprint(new_b)]["status"] == "active"
    # (The list shows whole seconds.)
    assert before + timedelta(seconds=grace - 1) <= ends <= after + timedelta(seconds=grace)
    sleep_until(rotated + (ends - after).total_seconds() + 1.0)
    for _ in range(5):
        for expired in life.on_every_worker(base, old_b, pids):
            assert expired.status_code == 401, expired.text
            assert error_code(expired) == "expired_api_key"
        assert {r.status_code for r in life.on_every_worker(base, new_b, pids)} == {200}
    life.check_no_secrets(server)


def break_database(life: Lifecycle) -> bytes:
    """Wipe the database's file header, in place; return what it held.

    In place, so that the connections the workers keep open see it too (a new file
    under the old name would not reach them): every query then fails as on a
    database that has gone away.
    """
    with life.database.open("r+b") as handle:
        good = handle.read(SQLITE_HEADER)
        handle.seek(0)
        handle.write(b"\0" * SQLITE_HEADER)
    return good


def repair_database(life: Lifecycle, header: bytes) -> None:
    with life.database.open("r+b") as handle:
        handle.write(header)


def test_a_registry_broken_while_serving_keeps_the_last_good_keys(migrated: Lifecycle):
    """Every worker keeps checking keys against the last registry it read, logs one ERROR
    (not one per request), and follows the registry again once the database is back."""
    life = migrated
    workers = 2
    key = life.new_key("create", "delta", "--scope", "items:read")
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    pids = booted_workers(server, workers)

    header = break_database(life)
    answers = until_each_worker_logged(life, base, key, pids, "ERROR", server)
    answers += [answer for _ in range(10) for answer in life.on_every_worker(base, key, pids)]
    assert [r.status_code for r in answers] == [200] * len(answers), answers[-1].text
    assert len(keystore_logs(server, "ERROR")) == workers, server.output()

    # Repaired, the registry is followed again.
    repair_database(life, header)
    revoked = life.keys("revoke", "delta")
    returned = time.monotonic()
    assert revoked.returncode == 0, output(revoked)
    assert wait_for_status(life, base, key, 401, returned, pids) <= RELOAD_DEADLINE
    assert len(keystore_logs(server, "WARNING")) == workers, server.output()
    assert len(keystore_logs(server, "ERROR")) == workers, server.output()
    assert "Traceback" not in server.output()
    life.check_no_secrets(server)


def test_a_worker_restarted_while_the_registry_is_broken_keeps_the_server_up(
    migrated: Lifecycle,
):
    """gunicorn replaces a worker that died (OOM kill, timeout); the server must stay up,
    and the new worker checks keys against the registry read at start-up."""
    life = migrated
    workers = 2
    key = life.new_key("create", "foxtrot", "--scope", "items:read")
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    pids = booted_workers(server, workers)
    header = break_database(life)
    until_each_worker_logged(life, base, key, pids, "ERROR", server)

    os.kill(pids[0], signal.SIGKILL)
    assert server.wait_exit(2) is None, f"gunicorn stopped:\n{server.output()}"
    deadline = time.monotonic() + 10
    while len(booted := re.findall(r"Booting worker with pid: (\d+)", server.output())) <= workers:
        assert time.monotonic() < deadline, f"no worker replaced the killed one:\n{server.output()}"
        time.sleep(0.05)
    pids = [pids[1], int(booted[-1])]
    answers = [answer for _ in range(10) for answer in life.on_every_worker(base, key, pids)]
    assert [r.status_code for r in answers] == [200] * len(answers), answers[-1].text
    assert server.process.poll() is None, server.output()
    repair_database(life, header)
    life.check_no_secrets(server)


def test_a_broken_registry_stops_gunicorn_at_startup(migrated: Lifecycle):
    """Fail closed at startup: non-zero exit, and one line naming DATABASE_URL and the file."""
    life = migrated
    life.new_key("create", "echo")
    break_database(life)

    server, _ = life.serve()
    status = server.wait_exit(20)
    assert status is not None, f"gunicorn kept running:\n{server.output()}"
    assert status != 0
    explained = [line for line in server.output().splitlines() if "DATABASE_URL" in line]
    assert len(explained) == 1, server.output()
    assert str(life.database) in explained[0], server.output()
    assert "Traceback" not in server.output()
    server.stop()
    assert not any(key in server.output() for key in life.printed)
