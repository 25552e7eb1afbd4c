"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, run as users run it.

Each pytest process (each xdist worker) that asks for one gets a server of its
own: ``initdb`` into a fresh temporary directory, then ``postgres`` listening on
127.0.0.1 on a free port, with its Unix socket in that directory and nothing
synced to disk. A server per process rather than one per session because the
tests stop and restart it (a database outage) and a server shared between
workers would go down under another worker's tests.

PostgreSQL refuses to run as root, so as root every server command runs as the
``postgres`` user that the package creates (``runuser``, else ``su``); anyone
else runs it as themselves. The test process itself only ever talks to the
server over TCP, with a password, the way an app does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bakery import free_port, output, run

# Debian and Ubuntu install each major version in a directory of its own, off PATH.
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_dump")
SERVICE_USER = "postgres"
START_TIMEOUT = 60
# A test database is thrown away: durability buys nothing and costs every commit.
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "'127.0.0.1'",
    # Tests leave the server on its own between runs: no background work meanwhile.
    "autovacuum": "off",
    "log_min_messages": "warning",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(reason: str) -> None:
    """Skip, loudly, on a developer's machine; fail in CI, where .ci/run installs PostgreSQL."""
    message = (
        f"NO POSTGRESQL TEST: {reason}, so nothing that needs PostgreSQL was tested; "
        "install the postgresql package (.ci/run does, with apt-get)"
    )
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def version_of(directory: Path) -> tuple[int, ...]:
    """The version in a Debian binaries directory's path (/usr/lib/postgresql/15/bin: 15)."""
    return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name))


def find_binaries() -> Path:
    """The directory of the newest PostgreSQL's server programs: Debian's, else PATH's."""
    root, _, pattern = DEBIAN_BINARIES.partition("/*/")
    candidates = sorted(Path(root).glob(f"*/{pattern}"), key=version_of, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all(os.access(directory / program, os.X_OK) for program in SERVER_PROGRAMS):
            return directory
    missing(f"no PostgreSQL server programs ({', '.join(SERVER_PROGRAMS)}) were found")
    raise AssertionError("unreachable")


def as_service_user(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", SERVICE_USER, "--", *command]
    return ["su", SERVICE_USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def service_user_ids() -> tuple[int, int] | None:
    """The ``postgres`` user's uid and gid when we are root; None when we run it ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        missing(f"running as root, and there is no {SERVICE_USER!r} user to run PostgreSQL as")
        raise AssertionError("unreachable") from None
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """One PostgreSQL server in a temporary directory; ``url`` is a database of its own.

    ``database()`` makes another database with a role of its own, for a test
    that wants a clean one; ``stop()`` and ``start()`` take the server down and
    bring it back on the same port with the same data.
    """

    def __init__(self, binaries: Path, directory: Path) -> None:
        self.binaries = binaries
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "server.log"
        self.port = 0
        self.superuser_password = secrets.token_urlsafe(16)
        self.url = ""
        self.started_in = 0.0  # seconds from initdb to a database ready for a test

    @classmethod
    def create(cls) -> PostgresServer:
        """initdb, start, and make a database and a role with a password: the server ready."""
        binaries = find_binaries()
        owner = service_user_ids()
        began = time.monotonic()
        # Not under pytest's basetemp: that is private to this user, and the server
        # runs as another one. mkdtemp makes it 0700; it then belongs to that user.
        directory = Path(tempfile.mkdtemp(prefix="pytest-postgresql-"))
        if owner is not None:
            os.chown(directory, *owner)
        server = cls(binaries, directory)
        try:
            server._initdb()
            server.start()
            server.url = server.database("app")
        except BaseException:
            server.destroy()
            raise
        server.started_in = time.monotonic() - began
        return server

    def _initdb(self) -> None:
        password_file = self.directory / "superuser-password"
        password_file.write_text(self.superuser_password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        owner = service_user_ids()
        if owner is not None:
            os.chown(password_file, *owner)
        result = self._as_server(
            "initdb",
            f"--pgdata={self.data}",
            f"--username={SERVICE_USER}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",  # a password for every connection, as in production
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        password_file.unlink()
        assert result.returncode == 0, f"initdb failed:\n{output(result)}"
        # Appended as the file's owner would: the settings live with the data.
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/postgres.py\n")
            conf.write(f"unix_socket_directories = '{self.directory}'\n")
            for name, value in SETTINGS.items():
                conf.write(f"{name} = {value}\n")

    def start(self) -> None:
        """Start the server (a free port the first time, the same one after a stop)."""
        for _attempt in range(3):
            port = self.port or free_port()
            result = self._as_server(
                "pg_ctl",
                "start",
                f"--pgdata={self.data}",
                f"--log={self.log}",
                "--wait",
                f"--timeout={START_TIMEOUT}",
                "--silent",
                f"--options=-p {port}",
            )
            if result.returncode == 0:
                self.port = port
                return
            if self.port:  # a restart must keep its port: the apps know only that one
                break
        pytest.fail(f"PostgreSQL did not start:\n{output(result)}\n--- log\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session at once, as an outage does."""
        result = self._as_server(
            "pg_ctl", "stop", f"--pgdata={self.data}", f"--mode={mode}", "--wait", "--silent"
        )
        assert result.returncode == 0, f"pg_ctl stop failed:\n{output(result)}"

    def running(self) -> bool:
        return self._as_server("pg_ctl", "status", f"--pgdata={self.data}").returncode == 0

    def ensure_running(self) -> None:
        """Start the server again if a test stopped it and failed before restarting it."""
        if not self.running():
            self.start()

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection over TCP, committing each statement."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SERVICE_USER,
            password=self.superuser_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )

    def database(self, prefix: str = "test") -> str:
        """A new database owned by a new role with a password: its SQLAlchemy URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        password = secrets.token_urlsafe(18)  # URL-safe: no quoting in the URL
        with self.connect() as connection:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(name)
                )
            )
        return f"postgresql+psycopg://{name}:{password}@127.0.0.1:{self.port}/{name}"

    def dump(self, url: str) -> str:
        """``pg_dump`` of the database at ``url`` (a URL from ``database()``), as SQL text."""
        database = url.rsplit("/", 1)[1]
        result = run(
            [
                str(self.binaries / "pg_dump"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--username",
                SERVICE_USER,
                "--no-password",
                database,
            ],
            env={**os.environ, "PGPASSWORD": self.superuser_password},
            timeout=120,
        )
        assert result.returncode == 0, f"pg_dump failed:\n{output(result)}"
        # Newer pg_dump (15.14 and later) fences the script with a random token per run.
        return "".join(
            line
            for line in result.stdout.splitlines(keepends=True)
            if not line.startswith(("\\restrict ", "\\unrestrict "))
        )

    def _as_server(self, program: str, *arguments: str):
        """Run one of the server programs as the user the server runs as, from its directory
        (the ``postgres`` user may not enter the current one)."""
        command = as_service_user([str(self.binaries / program), *arguments])
        return run(command, cwd=self.directory, timeout=START_TIMEOUT + 30)

    def server_log(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"

    def destroy(self, keep_log: Path | None = None) -> None:
        """Stop the server (if it runs) and delete its directory; keep its log if asked."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError):  # it may have died on its own
                self.stop("immediate")
        if keep_log is not None and self.log.exists():
            shutil.copyfile(self.log, keep_log)
        shutil.rmtree(self.directory, ignore_errors=True)
