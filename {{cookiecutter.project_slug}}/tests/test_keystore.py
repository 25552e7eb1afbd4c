"""The keys a running server accepts (keystore.py): the registry held in memory, refreshed
from the database by what changed, usage written in batches, and a database outage
ridden out on the last registry read.
"""

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dbcommands import upgrade
from sqlalchemy import event, select, update

from {{ cookiecutter.package_name }} import (
    ConfigError,
    create_app,
    keystore,
    registry,
)
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.keys import hashed_entry
from {{ cookiecutter.package_name }}.models import ApiKey

PACKAGE = "{{ cookiecutter.package_name }}"
HTTPS = "https://localhost"


def now():
    return datetime.now(UTC)


def whoami(app, api_key):
    return app.test_client().get("/v1/whoami", headers={API_KEY_HEADER: api_key})


def on_another_host(change, **environ):
    """Make a registry change as another host (or `flask keys`) would: through an app of
    its own on the same database. Returns what ``change`` returns."""
    with create_app({"APP_ENV": "testing", **environ}).app_context():
        return change()


class Statements:
    """The SQL statements an engine runs, as the database receives them."""

    def __init__(self, engine):
        self.engine = engine
        self.seen: list[tuple[str, object]] = []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        self.seen.append((" ".join(statement.split()), parameters))

    def on(self, table, verb="SELECT"):
        return [(sql, params) for sql, params in self.seen if sql.startswith(verb) and table in sql]


@pytest.fixture
def loaded_rows():
    """Count the registry rows read from the database into objects."""
    rows = []

    def count(target, context):
        rows.append(target.id)

    event.listen(ApiKey, "load", count)
    yield rows
    event.remove(ApiKey, "load", count)


# ---- following the registry --------------------------------------------------------------


def test_a_fresh_process_never_answers_from_a_stale_registry(make_app):
    """A worker that gunicorn forks long after start-up inherits the registry read then:
    its first request must not pass a key revoked since (credential revocation bypass)."""
    revoked, _ = on_another_host(lambda: registry.create("soon-revoked", now=now()))
    app = make_app()  # reads the registry at start-up, as the gunicorn master does
    on_another_host(lambda: registry.revoke("soon-revoked", now=now()))
    assert whoami(app, revoked).status_code == 401  # the first request of this process


def test_changes_after_start_are_honoured_at_the_next_refresh(make_app, key):
    app = make_app()
    store = app.extensions["api_keys"]
    new_key, _ = on_another_host(lambda: registry.create("ci", owner="acme", now=now()))
    store.refresh()
    assert whoami(app, new_key).json["owner"] == "acme"

    rotated, _, _ = on_another_host(
        lambda: registry.rotate("ci", grace=timedelta(days=1), now=now())
    )
    store.refresh()
    for api_key in (new_key, rotated):
        assert whoami(app, api_key).json["name"] == "ci"

    on_another_host(lambda: registry.revoke("ci", now=now()))
    store.refresh()
    for api_key in (new_key, rotated):  # the predecessor in its grace period too
        assert whoami(app, api_key).status_code == 401
    assert whoami(app, key).status_code == 200  # API_KEYS are not in the registry


def test_changes_are_honoured_within_a_second_without_any_call(make_app, wait_for):
    """No refresh called: requests themselves look at the registry, at most once a second."""
    app = make_app()

    def status(api_key):
        return whoami(app, api_key).status_code

    new_key, _ = on_another_host(lambda: registry.create("ci", now=now()))
    wait_for(lambda: status(new_key) == 200, seconds=2)

    rotated, _, _ = on_another_host(lambda: registry.rotate("ci", grace=timedelta(0), now=now()))
    wait_for(lambda: status(rotated) == 200 and status(new_key) == 401, seconds=2)

    on_another_host(lambda: registry.revoke("ci", now=now()))
    wait_for(lambda: status(rotated) == 401, seconds=2)


def test_a_refresh_reads_only_the_rows_that_changed(make_app, loaded_rows):
    on_another_host(lambda: [registry.create(f"bulk-{n}", now=now()) for n in range(100)])
    app = make_app()
    store = app.extensions["api_keys"]
    assert len(store) == 101  # and the key of API_KEYS
    with app.app_context():
        engine = db.engine

    loaded_rows.clear()
    with Statements(engine) as unchanged:
        store.refresh()
    # Nothing changed: one look at the version, no registry row read, whatever its size.
    assert unchanged.on("api_keys") == []
    assert len(unchanged.on("registry_version")) == 1
    assert loaded_rows == []

    on_another_host(lambda: registry.rotate("bulk-7", grace=timedelta(days=1), now=now()))
    loaded_rows.clear()
    with Statements(engine) as changed:
        store.refresh()
    [(sql, _)] = changed.on("api_keys")
    assert "api_keys.version >" in sql
    assert len(loaded_rows) == 2  # the new key and its predecessor, out of 102
    assert len(store) == 102


def test_a_key_of_api_keys_wins_over_a_registry_row_with_its_hash(make_app, key):
    """A row claiming the hash of a key of API_KEYS cannot narrow or take over that key."""

    def claim():
        registry.create("twin", owner="mallory", scopes=["items:read"], now=now())
        with registry.changing() as version:
            db.session.execute(
                update(ApiKey)
                .where(ApiKey.name == "twin")
                .values(digest=hashed_entry(key), version=version)
            )

    app = make_app()
    on_another_host(claim)
    app.extensions["api_keys"].refresh()
    static = whoami(app, key).json
    assert (static["name"], static["owner"], static["scopes"]) == (
        "api-keys-1",
        "api-keys-1",
        ["*"],
    )


# ---- usage -----------------------------------------------------------------------------


@pytest.fixture
def no_automatic_refresh(monkeypatch):
    """Requests never refresh by themselves: the test says when."""
    monkeypatch.setattr(keystore, "REFRESH_EVERY", 3600.0)


def test_usage_is_counted_per_key_and_written_in_one_batch(
    make_app, key, keys_cli, monkeypatch, no_automatic_refresh
):
    monkeypatch.setattr(keystore, "USAGE_EVERY", 3600.0)
    a_key, _ = on_another_host(lambda: registry.create("a", now=now()))
    b_key, _ = on_another_host(lambda: registry.create("b", now=now()))
    app = make_app()
    store = app.extensions["api_keys"]
    with app.app_context():
        engine = db.engine
    started = now()
    for api_key, times in ((a_key, 3), (b_key, 2), (key, 4)):
        for _ in range(times):
            assert whoami(app, api_key).status_code == 200

    with Statements(engine) as early:
        store.refresh()
    assert early.on("api_keys", "UPDATE") == []  # not yet: never a write per request

    monkeypatch.setattr(keystore, "USAGE_EVERY", 0.0)
    with Statements(engine) as flushed:
        store.refresh()
    [(_, rows)] = flushed.on("api_keys", "UPDATE")  # one statement for every key
    # One row of parameters per registry key used; a key of API_KEYS is never written.
    assert len(rows) == 2
    finished = now()

    listed = {row["name"]: row for row in json.loads(keys_cli("list", "--json").stdout)}
    assert set(listed) == {"a", "b"}
    assert (listed["a"]["requests"], listed["b"]["requests"]) == (3, 2)
    for row in listed.values():
        used = datetime.fromisoformat(row["last_used"])
        assert started - timedelta(seconds=1) <= used <= finished + timedelta(seconds=1)

    with Statements(engine) as idle:
        store.refresh()
    assert idle.on("api_keys", "UPDATE") == []  # nothing new to write

    whoami(app, a_key)
    store.refresh()
    listed = {row["name"]: row for row in json.loads(keys_cli("list", "--json").stdout)}
    assert (listed["a"]["requests"], listed["b"]["requests"]) == (4, 2)  # added, not replaced


def test_usage_reaches_the_registry_from_several_processes_added_up(make_app, monkeypatch):
    monkeypatch.setattr(keystore, "USAGE_EVERY", 0.0)
    a_key, _ = on_another_host(lambda: registry.create("a", now=now()))
    first, second = make_app(), make_app()  # two workers on one database
    for app, times in ((first, 2), (second, 3)):
        for _ in range(times):
            whoami(app, a_key)
        app.extensions["api_keys"].refresh()
    row = on_another_host(lambda: registry.current("a"))
    assert row.request_count == 5


def test_refused_requests_are_not_counted_as_use(make_app, monkeypatch):
    monkeypatch.setattr(keystore, "USAGE_EVERY", 0.0)
    reader, _ = on_another_host(lambda: registry.create("reader", scopes=["items:read"], now=now()))
    app = make_app()
    client = app.test_client()
    response = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: reader})
    assert response.status_code == 403
    app.extensions["api_keys"].refresh()
    row = on_another_host(lambda: registry.current("reader"))
    assert (row.request_count, row.last_used) == (0, None)


# ---- production start-up ------------------------------------------------------------------


# `flask keys` in production, with no API_KEYS: the command loads an app of its own.
PRODUCTION = {"APP_ENV": "production"}


def test_production_refuses_to_serve_without_a_key_and_flask_keys_create_still_works(keys_cli):
    with pytest.raises(ConfigError, match="API_KEYS") as raised:
        create_app({"APP_ENV": "production"})
    assert "flask keys create" in str(raised.value)

    result = keys_cli("create", "first", app_environ=PRODUCTION)
    assert result.exit_code == 0, result.output
    first_key = result.stdout.strip()
    app = create_app({"APP_ENV": "production"})
    assert app.extensions["api_keys"].usable_count(now()) == 1
    response = app.test_client().get(
        "/v1/whoami", headers={API_KEY_HEADER: first_key}, base_url=HTTPS
    )
    assert response.json["name"] == "first"


def test_production_refuses_a_registry_of_only_unusable_keys(keys_cli):
    for name in ("gone", "moved"):
        assert keys_cli("create", name, app_environ=PRODUCTION).exit_code == 0
    assert keys_cli("revoke", "gone", app_environ=PRODUCTION).exit_code == 0
    assert keys_cli("rotate", "moved", "--grace", "0", app_environ=PRODUCTION).exit_code == 0
    create_app({"APP_ENV": "production"})  # the rotated key's successor serves
    assert keys_cli("revoke", "moved", app_environ=PRODUCTION).exit_code == 0
    with pytest.raises(ConfigError, match="API_KEYS"):
        create_app({"APP_ENV": "production"})


def test_load_alone_refuses_an_empty_registry_in_production():
    app = create_app({"APP_ENV": "testing"})
    app.config["APP_ENV"] = "production"
    with pytest.raises(ConfigError, match="no API key is configured"):
        keystore.load(app)
    on_another_host(lambda: registry.create("first", now=now()))
    keystore.load(app)
    assert app.extensions["api_keys"].usable_count(now()) == 1


# ---- the database goes away ----------------------------------------------------------------


def postgresql_binaries():
    """The directory of initdb and pg_ctl: on the PATH, or where Debian and Ubuntu put them."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PostgreSQL:
    """A PostgreSQL server of the test's own, on a free loopback port, stopped and started
    as the test says. PostgreSQL refuses to run as root, so root runs it as `postgres`."""

    def __init__(self, binaries: Path, user: str | None) -> None:
        self.binaries = binaries
        self.prefix = ["runuser", "-u", user, "--"] if user else []
        self.home = Path(tempfile.mkdtemp(prefix="keystore-pg-"))
        if user:
            entry = pwd.getpwnam(user)
            os.chown(self.home, entry.pw_uid, entry.pw_gid)
        self.data = self.home / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool, *args):
        subprocess.run(
            [*self.prefix, str(self.binaries / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def init(self):
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self):
        options = f"-p {self.port} -h 127.0.0.1 -k {self.home} -c fsync=off"
        log = str(self.home / "server.log")
        self.run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", log, "-o", options)

    def stop(self, mode="fast"):
        self.run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data))

    def remove(self):
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def postgresql(tmp_path):
    """A migrated PostgreSQL database (`flask db upgrade`), on a server the test controls."""
    binaries = postgresql_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (no initdb): the outage test needs a real one")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL")
    server = PostgreSQL(binaries, user)
    try:
        server.init()
        server.start()
        upgrade(server.url, cwd=tmp_path)
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop("immediate")
        server.remove()


def test_database_outage_keys_keep_working_and_the_server_recovers_by_itself(
    make_app, postgresql, logs, monkeypatch, wait_for
):
    monkeypatch.setattr(keystore, "USAGE_EVERY", 0.0)
    app = make_app(DATABASE_URL=postgresql.url)
    store = app.extensions["api_keys"]
    client = app.test_client()
    with app.app_context():
        old_key, _ = registry.create("ci", owner="acme", now=now())
    store.refresh()
    assert client.get("/ready").json == {"status": "ready"}
    used = 0

    def works(api_key):
        nonlocal used
        response = whoami(app, api_key)
        used += api_key == old_key and response.status_code == 200
        return response.status_code == 200

    assert works(old_key)

    postgresql.stop()
    for _ in range(3):
        store.refresh()  # each look at the database fails
    assert store.healthy is False
    # Keys are checked against the last registry read: no request waits for the database.
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # long enough for a refresh of its own
        assert works(old_key)
        time.sleep(0.1)
    not_ready = client.get("/ready")
    assert not_ready.status_code == 503
    assert not_ready.json["error"] == "not_ready"
    assert "database" in not_ready.json["message"]
    assert str(postgresql.port) not in not_ready.get_data(as_text=True)
    errors = [line for line in logs.lines if " ERROR " in line]
    assert len(errors) == 1, errors  # one line for the outage, not one per request
    assert "key registry unreachable" in errors[0]
    assert "Traceback" not in logs.text

    postgresql.start()
    # Back by itself: readiness, new keys and the usage counted meanwhile.
    wait_for(lambda: client.get("/ready").status_code == 200, seconds=10)
    with app.app_context():
        new_key, _ = registry.create("web", now=now())
    wait_for(lambda: works(new_key), seconds=3)
    assert any("reachable again" in line for line in logs.lines)
    store.refresh()
    with app.app_context():
        assert db.session.scalar(select(ApiKey.request_count).where(ApiKey.name == "ci")) == used
    assert len([line for line in logs.lines if " ERROR " in line]) == 1
