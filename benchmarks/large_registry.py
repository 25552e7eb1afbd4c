"""A key registry of many keys in PostgreSQL, and the registry changes made while it serves.

``flask keys create`` makes one key per command (a Python start-up and a
transaction each): 100,000 of them would take more than a day. ``fill`` writes the rows
straight into the project's ``api_keys`` table instead, in the registry's own
format (a ``sha256:`` digest of a random key, its fingerprint, every scope), with
one ``COPY``, as one registry change: the version is bumped once, in the same
transaction, as registry.py's ``changing()`` does, so every server reads them
as it reads any change. The keys other than the named ones are digests of
random keys nobody holds.

``Changes`` revokes keys one after another while the servers serve, with the two
statements ``flask keys revoke`` makes (bump the version, mark the key's rows
revoked at it); a command per change would load the machine that serves the
requests being timed.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
from psycopg import sql


def conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy URL such as ``postgresql+psycopg://...``."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def bulk_name(number: int) -> str:
    return f"bulk-{number:06d}"


def row(name: str, key: str, version: int, now: datetime) -> dict[str, object]:
    """The registry's row of a new key NAME, as registry.create() writes it."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return {
        "name": name,
        "owner": name,
        "digest": f"sha256:{digest}",
        "fingerprint": digest[:12],
        "scopes": '["*"]',
        "allowed_ips": "[]",
        "counter": digest[:12],  # its rate-limit count, with rate limiting on
        "created": now.replace(tzinfo=None),  # the registry stores naive UTC
        "request_count": 0,
        "version": version,
    }


def fill(url: str, count: int, named: dict[str, str]) -> int:
    """Add ``count`` keys in one registry change: ``named`` ({name: key}) and the rest
    random; return the change's version. The table's statistics are brought up to
    date afterwards, as autovacuum would (the run's server has it off)."""
    now = datetime.now(UTC)
    with psycopg.connect(conninfo(url)) as connection:
        columns = {
            name: nullable == "NO" and default is None
            for name, nullable, default in connection.execute(
                "SELECT column_name, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_name = 'api_keys'"
            )
        }
        known = set(row("", "", 0, now))
        unknown = {name for name, required in columns.items() if required} - known
        if unknown:
            raise RuntimeError(
                f"api_keys has required columns this benchmark does not fill: "
                f"{', '.join(sorted(unknown))}; update large_registry.py"
            )
        filled = [name for name in columns if name in known]
        (version,) = connection.execute(
            "UPDATE registry_version SET version = version + 1 RETURNING version"
        ).fetchone()
        keys = [*named.items()]
        keys += [(bulk_name(n), secrets.token_urlsafe(32)) for n in range(count - len(named))]
        statement = sql.SQL("COPY api_keys ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, filled))
        )
        with connection.cursor() as cursor, cursor.copy(statement) as copy:
            for name, key in keys:
                values = row(name, key, version, now)
                copy.write_row([values[column] for column in filled])
        connection.commit()
        connection.execute("ANALYZE api_keys")
    return version


def revoked_at(url: str, name: str) -> float:
    """When key NAME was revoked, as the registry recorded it (seconds since the epoch)."""
    with psycopg.connect(conninfo(url)) as connection:
        (moment,) = connection.execute(
            "SELECT max(revoked) FROM api_keys WHERE name = %s", (name,)
        ).fetchone()
    if moment is None:
        raise RuntimeError(f"key {name!r} is not revoked")
    return moment.replace(tzinfo=UTC).timestamp()


class Changes:
    """While active, revoke one key every ``every`` seconds (the names in turn), in a thread.

    Each change is one transaction: the registry's version bumped, and the key's rows
    marked revoked at that version, as ``flask keys revoke`` does.
    """

    def __init__(self, url: str, names: Iterator[str], every: float) -> None:
        self.names = names
        self.every = every
        self.count = 0
        self._connection = psycopg.connect(conninfo(url))
        self._active = threading.Event()
        self._changing = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-changes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            if not self._active.wait(timeout=0.1):
                continue
            began = time.monotonic()
            with self._changing:
                if not self._active.is_set():  # ended meanwhile: no change after __exit__
                    continue
                with self._connection.transaction():
                    (version,) = self._connection.execute(
                        "UPDATE registry_version SET version = version + 1 RETURNING version"
                    ).fetchone()
                    self._connection.execute(
                        "UPDATE api_keys SET revoked = %s, version = %s "
                        "WHERE name = %s AND revoked IS NULL",
                        (datetime.now(UTC).replace(tzinfo=None), version, next(self.names)),
                    )
                self.count += 1
            self._done.wait(max(0.0, self.every - (time.monotonic() - began)))

    def __enter__(self) -> Changes:
        self._active.set()
        return self

    def __exit__(self, *exc_info) -> None:
        self._active.clear()
        with self._changing:  # a change under way ends before the caller goes on
            pass

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._connection.close()
