"""The keys a server process accepts: API_KEYS plus the registry, held in memory.

The key check never waits on the database. Each process keeps every key's
record in a dict keyed by its SHA-256 (keys.KeyRing) and, once a second, asks
the database for the registry's version; only when it moved does it read
the rows changed since the version it last saw. A key created, rotated or
revoked on any host is honoured by every process within about a second, and a
refresh costs what changed, never the registry's size.{% if cookiecutter.use_rate_limiting %} Owners' limits are held
and followed the same way, beside the keys.{% endif %}

A thread of each process does the looking, so no request waits on the
database. When the database goes away, the process keeps checking keys against
the last registry it read, logs one ERROR (``/ready`` answers 503), and catches
up by itself when the database returns. Requests made with each key are counted
here and written to the registry by that thread every 30 seconds, and when the
process exits: never a write per request.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime

from flask import Flask
from sqlalchemy import bindparam, case, select, update
from sqlalchemy.exc import SQLAlchemyError

from . import registry
from .config import ConfigError
from .db import db
from .keys import HASH_SCHEME, KeyRecord, KeyRing
from .models import ApiKey, {% if cookiecutter.use_rate_limiting %}OwnerLimit, {% endif %}RegistryVersion, UTCDateTime

log = logging.getLogger(__name__)

REFRESH_EVERY = 1.0
USAGE_EVERY = 30.0


class KeyStore(KeyRing):
    """API_KEYS and the registry, refreshed from the database as it changes."""

    def __init__(self, app: Flask, static: Iterable[tuple[str, KeyRecord]]) -> None:
        super().__init__()
        self.app = app
        self.static = dict(static)
{%- if cookiecutter.use_rate_limiting %}
        self.owner_limits: dict[str, str] = {}  # an owner's own limit, by owner
{%- endif %}
        self.version = -1  # no registry read yet
        self.healthy = True  # the last look at the database succeeded
        self._refreshed = 0.0
        self._refreshing = threading.Lock()
        self._usage: dict[int, tuple[int, datetime]] = {}
        self._usage_lock = threading.Lock()
        self._flushed = time.monotonic()
        self._refresher_pid: int | None = None  # the process whose refresher thread runs

    def lookup(self, presented: str) -> KeyRecord | None:
        """The record of a presented key, from a registry at most about a second old.

        A background thread of each process keeps the registry fresh. A request reads
        the database only as the first of a new process (a worker gunicorn forks long
        after start-up must not answer from the registry of that start-up: a key
        revoked since would pass), or when that thread has fallen behind, and then
        it never waits for a refresh another thread is making.
        """
        if self._refresher_pid != os.getpid():
            self.refresh()
            self._start_refresher()
        if time.monotonic() - self._refreshed >= 2 * REFRESH_EVERY:
            self.refresh(wait=False)
        return super().lookup(presented)

    def load(self) -> None:
        """Read the whole registry (at start-up); a database error is a ConfigError."""
        try:
            self._read_changes()
        except SQLAlchemyError as error:
            raise ConfigError(
                f"DATABASE_URL: cannot read the key registry ({type(error).__name__})"
            ) from None

    def refresh(self, *, wait: bool = True) -> None:
        """Read what changed since the last look, and write the usage counts when due.

        One thread at a time; with ``wait=False`` (a request) it returns at once when
        another thread is refreshing, so no request waits for another's refresh.
        """
        if not self._refreshing.acquire(blocking=wait):
            return
        try:
            self._refreshed = time.monotonic()
            with self.app.app_context():
                self._read_changes()
                if self._refreshed - self._flushed >= USAGE_EVERY:
                    self._flush_usage()
        except (SQLAlchemyError, ConfigError) as error:
            if self.healthy:
                log.error(
                    "key registry unreachable, checking keys against the last one read: %s",
                    type(error).__name__,
                )
            self.healthy = False
        finally:
            self._refreshing.release()

    def _start_refresher(self) -> None:
        """Refresh every REFRESH_EVERY seconds in a thread of this process, for as long as
        the store lives; write the usage counts still pending when the process exits."""
        self._refresher_pid = os.getpid()
        store = weakref.ref(self)

        def refresh_forever() -> None:
            while (live := store()) is not None:
                live.refresh()
                del live  # hold no reference while asleep
                time.sleep(REFRESH_EVERY)

        threading.Thread(target=refresh_forever, name="key-registry", daemon=True).start()
        atexit.register(_flush_at_exit, store)

    def record_use(self, record: KeyRecord) -> None:
        """Count a request made with a registry key, for its last-used time and count."""
        if record.id is None:
            return  # a key of API_KEYS: not in the registry
        with self._usage_lock:
            count, _ = self._usage.get(record.id, (0, None))
            self._usage[record.id] = (count + 1, datetime.now(UTC))
{%- if cookiecutter.use_rate_limiting %}

    def owner_limit(self, owner: str) -> str | None:
        """The limit all of OWNER's keys share, if it has one (ratelimit.py counts it)."""
        return self.owner_limits.get(owner)
{%- endif %}

    def usable_count(self, now: datetime) -> int:
        """How many keys could authenticate now (not revoked, not expired)."""
        records = self._by_digest.values()
        return sum(not record.revoked and not record.is_expired(now) for record in records)

    def _read_changes(self) -> None:
        latest = db.session.scalar(select(RegistryVersion.version))
        if latest is None:
            raise ConfigError("the database has no key registry: run `flask db upgrade`")
        if latest != self.version:
            changed = db.session.scalars(select(ApiKey).where(ApiKey.version > self.version))
            for key in changed:
                digest = key.digest.removeprefix(HASH_SCHEME)
                try:
                    self.add(digest, registry.record(key))
                except ValueError as error:
                    # A row edited by hand past the registry's checks: that key is refused
                    # (fail closed), and every other key and later change still served.
                    self._by_digest.pop(digest, None)
                    log.error("key registry: key %r (id %d) refused: %s", key.name, key.id, error)
            for digest, record in self.static.items():  # API_KEYS wins over the registry
                self.add(digest, record)
{%- if cookiecutter.use_rate_limiting %}
            self._read_owner_limits()
{%- endif %}
            self.version = latest
            log.debug("key registry at version %d: %d keys", latest, len(self))
        if not self.healthy:
            log.warning("key registry reachable again")
            self.healthy = True
{%- if cookiecutter.use_rate_limiting %}

    def _read_owner_limits(self) -> None:
        """Owners' limits changed since the last look: set, changed or cleared."""
        changed = db.session.scalars(select(OwnerLimit).where(OwnerLimit.version > self.version))
        for row in changed:
            if row.rate_limit is None:  # cleared
                self.owner_limits.pop(row.owner, None)
                continue
            try:
                self.owner_limits[row.owner] = registry.check_rate_limit(row.rate_limit)
            except registry.RegistryError as error:
                # A row edited by hand past the registry's checks: the owner's keys keep
                # their own limits, and every other change is still served.
                self.owner_limits.pop(row.owner, None)
                log.error("key registry: the limit of owner %r ignored: %s", row.owner, error)
{%- endif %}

    def _flush_usage(self) -> None:
        """Add up this process's counts in the registry: one statement for all keys."""
        with self._usage_lock:
            usage, self._usage = self._usage, {}
        self._flushed = time.monotonic()
        if not usage:
            return
        used = bindparam("used", type_=UTCDateTime())
        statement = (
            update(ApiKey.__table__)
            .where(ApiKey.__table__.c.id == bindparam("key_id"))
            .values(
                request_count=ApiKey.__table__.c.request_count + bindparam("count"),
                last_used=case(
                    (ApiKey.__table__.c.last_used >= used, ApiKey.__table__.c.last_used),
                    else_=used,
                ),
            )
        )
        rows = [{"key_id": key, "count": n, "used": last} for key, (n, last) in usage.items()]
        try:
            db.session.execute(statement, rows)
            db.session.commit()
        except SQLAlchemyError:
            db.session.rollback()
            with self._usage_lock:  # keep the counts for the next try
                for key, (count, last) in usage.items():
                    previous, _ = self._usage.get(key, (0, None))
                    self._usage[key] = (previous + count, last)
            raise


def _flush_at_exit(store: weakref.ref[KeyStore]) -> None:
    """Write what a stopping process counted (gunicorn restarts workers)."""
    if (live := store()) is not None:
        with live.app.app_context(), contextlib.suppress(SQLAlchemyError):
            live._flush_usage()


def init_app(app: Flask) -> None:
    """Give the app its key store: API_KEYS now, the registry when it is loaded."""
    app.extensions["api_keys"] = KeyStore(app, app.config["API_KEYS"])


def load(app: Flask) -> None:
    """Load the registry before serving; in production, refuse to serve without a key.

    Fail closed: an API with no usable key, or with a placeholder such as
    ``changeme`` that can never match, is a misconfiguration, not an open API.
    """
    store: KeyStore = app.extensions["api_keys"]
    with app.app_context():
        store.load()
    store._refreshed = time.monotonic()
    if app.config["APP_ENV"] == "production" and not store.usable_count(datetime.now(UTC)):
        raise ConfigError(
            "API_KEYS: no API key is configured; set API_KEYS to a key made by "
            "scripts/generate_api_key.py (or its sha256: entry), or create one with "
            "`flask keys create NAME`"
        )
