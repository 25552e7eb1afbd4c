"""A key's life, end to end: `flask keys` changes the registry, gunicorn follows.

The default project is installed (its ``flask keys`` command is a Flask plugin
found through the package's entry points) and run from a private copy without
``.env``, in production, with the registry file as the only source of keys.
Requests go over real sockets, each on a fresh connection so that the
workers of a multi-worker server share the traffic; ``X-Forwarded-Proto:
https`` with TRUSTED_PROXIES=1 plays the TLS-terminating proxy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
import requests

from bakery import (
    Server,
    free_port,
    gunicorn_command,
    installed_env,
    json_lines,
    load_keys_module,
    output,
    run,
    tool,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

# The product promises "within about a second"; this is the most a test waits.
RELOAD_DEADLINE = 2.0
# Rate limits are not what these tests are about: keep them out of the way.
NO_LIMITS = {"RATELIMIT_DEFAULT": "100000/minute", "AUTH_FAILURE_LIMIT": "100000/minute"}


@dataclass
class Lifecycle:
    """A private copy of the installed default project, its registry and its servers."""

    root: Path
    site: Path
    command: list[str]
    header: str
    keys_module: ModuleType
    start: Callable[..., Server]
    runtime_dir: Path
    printed: list[str] = field(default_factory=list)  # every key `flask keys` showed
    servers: list[Server] = field(default_factory=list)

    @property
    def registry(self) -> Path:
        return self.root / "instance" / "api_keys.toml"

    def env(self, **settings: str) -> dict[str, str]:
        """Production, no API_KEYS, no .env: the registry is the only source of keys."""
        return installed_env(self.site, self.runtime_dir, **settings)

    def keys(self, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
        """Run ``flask keys ARGUMENTS`` from the project root."""
        return run([*tool("flask"), "keys", *arguments], cwd=self.root, env=self.env(**settings))

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

    def entries(self) -> list[dict]:
        """The registry's [[keys]] tables, as written by `flask keys`."""
        return tomllib.loads(self.registry.read_text(encoding="utf-8"))["keys"]

    def check_no_secrets(self, server: Server) -> None:
        """Stop the server; no key the CLI printed may be in its output or the registry."""
        server.stop()
        logged = server.output()
        stored = self.registry.read_text(encoding="utf-8")
        assert self.printed
        for key in self.printed:
            assert key not in logged, "a raw key reached the server output"
            assert key not in stored, "a raw key is stored in the registry"


@pytest.fixture
def lifecycle(default_project, install, project_copy, start, tmp_path) -> Lifecycle:
    """The default project, installed, in a private copy without .env and with no key yet."""
    site = install(default_project)
    root = project_copy(default_project)
    (root / ".env").unlink()  # the key made at generation must play no part
    return Lifecycle(
        root=root,
        site=site,
        command=gunicorn_command(default_project),
        header=str(default_project.context["api_key_header"]),
        keys_module=load_keys_module(root),
        start=start,
        runtime_dir=tmp_path,
    )


def error_code(response: requests.Response) -> str | None:
    try:
        return response.json().get("error")
    except ValueError:
        return None


def wait_for_status(life: Lifecycle, base: str, key: str, status: int, since: float) -> float:
    """Poll until ``key`` answers ``status``; return how long after ``since`` that was.

    Until then a worker that has not reloaded yet may give the answer of before
    the change (401 for a new key, 200 for an old one), and nothing else.
    """
    before = 401 if status == 200 else 200
    while True:
        response = life.call(base, key)
        elapsed = time.monotonic() - since
        if response.status_code == status:
            return elapsed
        assert response.status_code == before, response.text
        if elapsed > RELOAD_DEADLINE:
            pytest.fail(
                f"still {response.status_code} {response.text!r} {elapsed:.2f}s after the "
                f"change, expected {status}"
            )
        time.sleep(0.05)


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def registry_logs(server: Server, level: str, phrase: str) -> list[dict]:
    """The server's JSON log records of the key registry at ``level`` that contain ``phrase``.

    Each worker process has its own key store and logs its own reload (INFO) or
    failed reload (ERROR) once per change of the file: counting these records
    tells how many workers have seen a change.
    """
    return [
        record
        for record in json_lines(server.output())
        if str(record.get("logger", "")).endswith(".registry")
        and record.get("level") == level
        and phrase in str(record.get("message", ""))
    ]


def until_every_worker(
    life: Lifecycle,
    base: str,
    key: str,
    seen: Callable[[], int],
    workers: int,
    minimum: int = 0,
) -> list[requests.Response]:
    """Send requests with ``key`` until ``seen()`` counts every worker (and ``minimum`` sent).

    Each request has a connection of its own, so any idle worker may take it.
    """
    answers: list[requests.Response] = []
    deadline = time.monotonic() + 15
    while seen() < workers or len(answers) < minimum:
        if time.monotonic() > deadline:
            logs = "\n".join(server.output() for server in life.servers)
            pytest.fail(f"only {seen()} of {workers} workers answered:\n{logs}")
        answers.append(life.call(base, key))
    return answers


def reloads_since(server: Server) -> Callable[[], int]:
    """A counter of the reloads logged from now on."""
    before = len(registry_logs(server, "INFO", "reloaded"))
    return lambda: len(registry_logs(server, "INFO", "reloaded")) - before


def warm_up(life: Lifecycle, server: Server, base: str, workers: int, *options: str) -> str:
    """Add a key while serving; return it once every worker has reloaded and accepts it.

    Then every worker has booted. A worker that boots after a change reads the
    new file without logging a reload: then the file is replaced again, unchanged.
    """
    reloads = reloads_since(server)
    key = life.new_key("create", "warm-up", "--scope", "items:read", *options)
    for _round in range(5):
        deadline = time.monotonic() + RELOAD_DEADLINE
        while reloads() < workers and time.monotonic() < deadline:
            life.call(base, key)
        if reloads() >= workers:
            break
        reloads = reloads_since(server)
        replace_atomically(life.registry, life.registry.read_bytes())
    else:
        pytest.fail(f"not every worker reloaded the registry:\n{server.output()}")
    answers = [life.call(base, key) for _ in range(10)]
    assert [answer.status_code for answer in answers] == [200] * 10, answers[0].text
    return key


def test_first_key_in_production(lifecycle: Lifecycle):
    """No key anywhere: `flask keys create` still works, and gunicorn then serves that key."""
    life = lifecycle
    assert not life.registry.exists()
    refused, _ = life.serve()
    assert refused.wait_exit(20) not in (None, 0), refused.output()
    assert "API_KEYS" in refused.output()

    key = life.new_key("create", "first", "--scope", "items:read")

    (entry,) = life.entries()
    assert entry["name"] == "first"
    assert entry["hash"] == life.keys_module.hashed_entry(key)
    assert entry["scopes"] == ["items:read"]

    server, base = life.serve()
    wait_until_healthy(server, base)
    read = life.call(base, key)
    assert read.status_code == 200, read.text
    write = life.call(base, key, method="POST", json={"name": "widget"})
    assert write.status_code == 403, write.text
    assert error_code(write) == "insufficient_scope"
    life.check_no_secrets(server)


# (arguments, extra environment, exit status, what the error line must name)
BAD_COMMANDS = [
    (["create", "other", "--expires-in", "90x"], {}, 2, "90x"),
    (["create", "other", "--allow-ip", "10.0.0.0/33"], {}, 2, "10.0.0.0/33"),
    (["revoke", "nobody"], {}, 1, "nobody"),
    (["rotate", "nobody", "--grace", "1h"], {}, 1, "nobody"),
    (["create", "other"], {"API_KEYS_FILE": "missing/api_keys.toml"}, 1, "missing"),
]


def test_bad_arguments_change_nothing(lifecycle: Lifecycle):
    """A bad value or name: one clear `Error:` line, a telling exit status, registry untouched."""
    life = lifecycle
    life.new_key("create", "existing")
    before = life.registry.read_bytes()
    files = sorted(path.name for path in life.registry.parent.iterdir())

    for arguments, settings, status, mentions in BAD_COMMANDS:
        result = life.keys(*arguments, **settings)
        case = f"flask keys {' '.join(arguments)} {settings}\n{output(result)}"
        assert result.returncode == status, case
        assert result.stdout == "", case
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, case
        assert mentions in errors[0], case
        assert "Traceback" not in result.stderr, case
        assert life.registry.read_bytes() == before, case
        assert sorted(path.name for path in life.registry.parent.iterdir()) == files, case
        assert not (life.root / "missing").exists(), case


def test_revocation_reaches_every_worker(lifecycle: Lifecycle):
    """Revoke a key while 3 workers serve it: within 2 s every answer is 401 invalid_api_key."""
    life = lifecycle
    workers = 3
    key_a = life.new_key("create", "alpha", "--scope", "items:read")
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    for _ in range(10):
        response = life.call(base, key_a)
        assert response.status_code == 200, response.text
        assert "API-Key-Expires" not in response.headers  # a key without expiry
    # Every worker is up, and has a key with an expiry: its responses say when.
    created = datetime.now(UTC)
    expiring = warm_up(life, server, base, workers, "--expires-in", "2h")
    digest = life.keys_module.hashed_entry(expiring)
    (stored,) = [entry["expires"] for entry in life.entries() if entry["hash"] == digest]
    for _ in range(10):
        response = life.call(base, expiring)
        assert response.status_code == 200, response.text
        announced = datetime.fromisoformat(response.headers["API-Key-Expires"])
        assert announced == stored
    assert abs(announced - created - timedelta(hours=2)) < timedelta(seconds=5)

    reloads = reloads_since(server)
    revoked = life.keys("revoke", "alpha")
    returned = time.monotonic()
    assert revoked.returncode == 0, output(revoked)
    assert revoked.stdout == ""

    assert wait_for_status(life, base, key_a, 401, since=returned) <= RELOAD_DEADLINE
    sleep_until(returned + RELOAD_DEADLINE)
    answers = until_every_worker(life, base, key_a, reloads, workers, minimum=60)
    wrong = [(r.status_code, r.text) for r in answers if r.status_code != 401]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers after revocation: {wrong[:3]}"
    assert {error_code(r) for r in answers} == {"invalid_api_key"}
    assert all("WWW-Authenticate" in r.headers for r in answers)
    # The other keys are untouched: the server did not just stop accepting keys.
    assert all(life.call(base, expiring).status_code == 200 for _ in range(10))
    life.check_no_secrets(server)


def test_rotation_with_and_without_grace(lifecycle: Lifecycle):
    """During a grace both keys work, then the old one expires; --grace 0s ends it at once."""
    life = lifecycle
    old_b = life.new_key("create", "bravo", "--scope", "items:read")
    old_c = life.new_key("create", "charlie", "--scope", "items:read")
    workers = 2
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    warm_up(life, server, base, workers)
    assert life.call(base, old_b).status_code == 200

    # 4 s rather than less: the registry stores times to the second (up to 1 s of
    # the grace is lost), and every worker must have reloaded (about 1 s) before
    # both keys are required to work.
    grace = 4
    reloads = reloads_since(server)
    before = datetime.now(UTC)
    new_b = life.new_key("rotate", "bravo", "--grace", f"{grace}s")
    returned = time.monotonic()
    after = datetime.now(UTC)
    (retired,) = [entry for entry in life.entries() if entry["name"].startswith("bravo.rotated-")]
    ends = retired["expires"]
    assert before + timedelta(seconds=grace - 1) <= ends <= after + timedelta(seconds=grace)
    ends_monotonic = returned + (ends - after).total_seconds()

    until_every_worker(life, base, new_b, reloads, workers)
    assert time.monotonic() - returned <= RELOAD_DEADLINE
    inside = [(life.call(base, old_b), life.call(base, new_b)) for _ in range(20)]
    assert time.monotonic() < ends_monotonic, "too slow: the grace ended during the checks"
    for old_answer, new_answer in inside:
        assert old_answer.status_code == 200, old_answer.text
        assert new_answer.status_code == 200, new_answer.text

    # While the grace runs out: --grace 0s revokes the old key at once.
    new_c = life.new_key("rotate", "charlie", "--grace", "0s")
    returned = time.monotonic()
    assert wait_for_status(life, base, old_c, 401, since=returned) <= RELOAD_DEADLINE
    assert wait_for_status(life, base, new_c, 200, since=returned) <= RELOAD_DEADLINE
    sleep_until(returned + RELOAD_DEADLINE)
    for _ in range(10):
        assert error_code(life.call(base, old_c)) == "invalid_api_key"
        assert life.call(base, new_c).status_code == 200

    sleep_until(ends_monotonic + 1.0)
    for _ in range(10):
        expired = life.call(base, old_b)
        assert expired.status_code == 401, expired.text
        assert error_code(expired) == "expired_api_key"
        assert life.call(base, new_b).status_code == 200
    life.check_no_secrets(server)


def break_registry(life: Lifecycle) -> bytes:
    """Make the registry invalid TOML, atomically; return what it held."""
    good = life.registry.read_bytes()
    replace_atomically(life.registry, good + b"this is not toml\n")
    return good


def test_a_registry_broken_while_serving_keeps_the_last_good_keys(lifecycle: Lifecycle):
    """Every worker keeps serving its last good keys and logs an ERROR naming the file."""
    life = lifecycle
    workers = 2
    key = life.new_key("create", "delta", "--scope", "items:read")
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    warm_up(life, server, base, workers)

    good = break_registry(life)
    answers = until_every_worker(
        life,
        base,
        key,
        lambda: len(registry_logs(server, "ERROR", str(life.registry))),
        workers,
        minimum=20,
    )
    assert [r.status_code for r in answers] == [200] * len(answers), answers[-1].text

    # Repaired, the registry is followed again.
    replace_atomically(life.registry, good)
    revoked = life.keys("revoke", "delta")
    returned = time.monotonic()
    assert revoked.returncode == 0, output(revoked)
    assert wait_for_status(life, base, key, 401, since=returned) <= RELOAD_DEADLINE
    life.check_no_secrets(server)


def test_a_worker_restarted_while_the_registry_is_broken_keeps_the_server_up(
    lifecycle: Lifecycle,
):
    """gunicorn replaces a worker that died (OOM kill, timeout); the server must stay up."""
    life = lifecycle
    workers = 2
    key = life.new_key("create", "foxtrot", "--scope", "items:read")
    server, base = life.serve(workers=workers)
    wait_until_healthy(server, base)
    warm_up(life, server, base, workers)
    break_registry(life)
    until_every_worker(
        life, base, key, lambda: len(registry_logs(server, "ERROR", str(life.registry))), workers
    )

    pid = int(re.findall(r"Booting worker with pid: (\d+)", server.output())[0])
    os.kill(pid, signal.SIGKILL)
    assert server.wait_exit(2) is None, f"gunicorn stopped:\n{server.output()}"
    answers = [life.call(base, key) for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    life.check_no_secrets(server)


def test_a_broken_registry_stops_gunicorn_at_startup(lifecycle: Lifecycle):
    """Fail closed at startup: non-zero exit, and the output names the file and the line."""
    life = lifecycle
    life.new_key("create", "echo")
    good = life.registry.read_text(encoding="utf-8")
    broken_line = len(good.splitlines()) + 1
    break_registry(life)

    server, _ = life.serve()
    status = server.wait_exit(20)
    assert status is not None, f"gunicorn kept running:\n{server.output()}"
    assert status != 0
    logged = server.output()
    assert str(life.registry) in logged
    assert re.search(rf"\bline {broken_line}\b", logged), logged
    life.check_no_secrets(server)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over: no reader sees half a file."""
    temporary = path.with_name(f".{path.name}.test")
    temporary.write_bytes(data)
    os.replace(temporary, path)
