"""The key registry: hashed keys and their metadata in a TOML file, kept by ``flask keys``.

The file holds no secret, only each key's ``sha256:`` hash, so reading it gives
no way to call the API. It is written atomically (temporary file, fsync,
rename), so a crash never leaves half a file, and :class:`KeyStore` lets every
server process notice a change within about a second, without a restart.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import re
import stat
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import tomli_w
from flask import Flask
{%- if cookiecutter.use_rate_limiting %}
from limits import parse_many
{%- endif %}

from .config import ConfigError
from .keys import (
    FINGERPRINT_LENGTH,
    HASH_SCHEME,
    WILDCARD_SCOPE,
    KeyRecord,
    KeyRing,
    generate_key,
    hashed_entry,
    parse_network,
    redact_keys,
)

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Short enough that a rotated key's name, NAME.rotated-<fingerprint>, still fits NAME.
MAX_NEW_NAME_LENGTH = 40
MAX_DURATION = timedelta(days=36525)
SCOPE = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
HASH = re.compile(r"sha256:[0-9a-f]{64}")
DURATION = re.compile(r"([0-9]+)([smhdw])")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FILE_HEADER = (
    "# API key registry, written by `flask keys`. It holds hashes and metadata only:\n"
    "# no key can be recovered from it. Edit it with `flask keys`, not by hand.\n"
)
RELOAD_INTERVAL = 1.0


class RegistryError(ValueError):
    """The registry file or a requested change is invalid; the message says where and why."""


class KeyStatus(StrEnum):
    """Where a key is in its life, as `flask keys list` shows it."""

    ACTIVE = "active"
    ROTATED = "rotated"  # replaced, still valid until its grace period ends
    EXPIRED = "expired"
    REVOKED = "revoked"

    @property
    def usable(self) -> bool:
        """True when a key in this state still authenticates."""
        return self in (KeyStatus.ACTIVE, KeyStatus.ROTATED)


@dataclass(frozen=True)
class Entry:
    """One key in the registry: its hash and what it may do, never the key itself."""

    name: str
    hash: str
    scopes: tuple[str, ...]
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None
    rotated: datetime | None = None
    allowed_ips: tuple[str, ...] = ()
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: str | None = None
{%- endif %}

    @property
    def digest(self) -> str:
        """The key's SHA-256 in hex, as the key ring indexes it."""
        return self.hash.removeprefix(HASH_SCHEME)

    @property
    def fingerprint(self) -> str:
        """The first 12 hex digits of the key's SHA-256, safe to show and log."""
        return self.digest[:FINGERPRINT_LENGTH]

    def status(self, now: datetime) -> KeyStatus:
        """The key's state at ``now``; a revoked key stays revoked whatever its expiry."""
        if self.revoked is not None:
            return KeyStatus.REVOKED
        if self.expires is not None and now >= self.expires:
            return KeyStatus.EXPIRED
        return KeyStatus.ROTATED if self.rotated is not None else KeyStatus.ACTIVE

    def record(self) -> KeyRecord:
        """The public record the server attaches to a request made with this key."""
        return KeyRecord(
            name=self.name,
            fingerprint=self.fingerprint,
            scopes=frozenset(self.scopes),
            expires=self.expires,
            allowed_ips=tuple(ipaddress.ip_network(ip, strict=False) for ip in self.allowed_ips),
            revoked=self.revoked is not None,
{%- if cookiecutter.use_rate_limiting %}
            rate_limit=self.rate_limit,
{%- endif %}
        )

    def to_toml(self) -> dict[str, object]:
        """The entry as a TOML table; optional fields are left out when unset."""
        table: dict[str, object] = {
            "name": self.name,
            "hash": self.hash,
            "fingerprint": self.fingerprint,
            "scopes": list(self.scopes),
            "created": self.created,
        }
        optional = {
            "expires": self.expires,
            "revoked": self.revoked,
            "rotated": self.rotated,
            "allowed_ips": list(self.allowed_ips),
{%- if cookiecutter.use_rate_limiting %}
            "rate_limit": self.rate_limit,
{%- endif %}
        }
        table.update({key: value for key, value in optional.items() if value})
        return table


# ---- parsing and checking values -------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or ``0``) -> timedelta; else an error."""
    if text.strip() == "0":
        return timedelta(0)
    match = DURATION.fullmatch(text.strip())
    if not match:
        raise RegistryError(f"{text!r} is not a duration like 90d, 12h, 30m, 45s or 2w")
    amount, unit = match.groups()
    seconds = int(amount) * timedelta(**{DURATION_UNITS[unit]: 1}).total_seconds()
    if seconds > MAX_DURATION.total_seconds():
        raise RegistryError(f"{text!r} is too long; at most 100 years")
    return timedelta(seconds=seconds)


def parse_date(text: str) -> datetime:
    """``2027-01-31`` or ``2027-01-31T12:00:00+02:00`` -> an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RegistryError(f"{text!r} is not a date like 2027-01-31") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past the last date Python knows
        raise RegistryError(f"{text!r} is out of range") from None


def check_name(name: str) -> str:
    """A key's name, as given to create, show, rotate or revoke it."""
    if redact_keys(name) != name:
        # A key pasted where its name belongs must not be echoed (credential leak).
        raise RegistryError(
            "that is an API key, not a key name (not shown here); `flask keys list` shows "
            "the names, and `flask keys check` tells which key it is"
        )
    if not NAME.fullmatch(name):
        raise RegistryError(
            f"{name!r} is not a valid key name: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(scopes))
    for scope in scopes:
        if not SCOPE.fullmatch(scope):
            raise RegistryError(f"{scope!r} is not a valid scope such as items:read or *")
    return scopes or (WILDCARD_SCOPE,)


def check_networks(networks: Iterable[str]) -> tuple[str, ...]:
    checked = []
    for network in networks:
        try:
            checked.append(str(parse_network(network)))
        except ValueError as error:
            raise RegistryError(str(error)) from None
    return tuple(checked)
{%- if cookiecutter.use_rate_limiting %}


def check_rate_limit(limit: str | None) -> str | None:
    """A key's own limit, in the `limits` notation the server counts it by."""
    try:
        limit is None or parse_many(limit)
    except ValueError:
        raise RegistryError(f"{limit!r} is not a rate limit such as 100/minute") from None
    return limit
{%- endif %}


# ---- reading and writing the file --------------------------------------------------


def read_entries(path: Path) -> tuple[Entry, ...]:
    """Read the registry; a missing file is an empty registry.

    A syntax error names the file and line; a bad entry names the file and the key.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ()
    except OSError as error:  # unreadable: permissions, a directory, ...
        raise RegistryError(f"{path}: cannot read it: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RegistryError(f"{path}: {error}") from None
    entries = []
    for position, table in enumerate(data.get("keys", []), start=1):
        try:
            entries.append(_entry_from_toml(table))
        except (KeyError, TypeError, ValueError) as error:
            raise RegistryError(f"{path}: key #{position} is invalid: {error}") from None
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RegistryError(f"{path}: duplicate key name {duplicates[0]!r}")
    return tuple(entries)


def _entry_from_toml(table: dict[str, object]) -> Entry:
    missing = [key for key in ("name", "hash", "created") if key not in table]
    if missing:
        raise ValueError(f"{missing[0]} is missing")
    digest = str(table["hash"])
    if not HASH.fullmatch(digest):
        raise ValueError("hash must be 'sha256:' and 64 lower-case hex digits")
    dates = {key: table.get(key) for key in ("created", "expires", "revoked", "rotated")}
    for key, value in dates.items():
        if value is not None and not (isinstance(value, datetime) and value.tzinfo):
            raise ValueError(f"{key} must be a date-time with a time zone")
    for key in ("scopes", "allowed_ips"):
        if not isinstance(table.get(key, []), list):
            raise ValueError(f"{key} must be a list")
    entry = Entry(
        name=check_name(str(table["name"])),
        hash=digest,
        scopes=check_scopes(str(scope) for scope in table.get("scopes", [])),  # type: ignore[attr-defined]
        created=dates["created"],  # type: ignore[arg-type]
        expires=dates["expires"],  # type: ignore[arg-type]
        revoked=dates["revoked"],  # type: ignore[arg-type]
        rotated=dates["rotated"],  # type: ignore[arg-type]
        allowed_ips=check_networks(str(ip) for ip in table.get("allowed_ips", [])),  # type: ignore[attr-defined]
{%- if cookiecutter.use_rate_limiting %}
        rate_limit=check_rate_limit(table.get("rate_limit")),  # type: ignore[arg-type]
{%- endif %}
    )
    if "fingerprint" in table and table["fingerprint"] != entry.fingerprint:
        raise ValueError("fingerprint does not match hash")
    return entry


def write_entries(path: Path, entries: Sequence[Entry]) -> None:
    """Replace the registry atomically: a reader sees the old file or the new one, never half."""
    document = FILE_HEADER + tomli_w.dumps({"keys": [entry.to_toml() for entry in entries]})
    # Owner-only for a new file; an existing file keeps the mode its operator gave it.
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o600
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, removed on failure
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    )
    try:
        with handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, mode)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself survive a crash
    finally:
        os.close(directory)


@contextmanager
def editing(path: Path) -> Iterator[list[Entry]]:
    """Read, change and write the registry under a lock, so two commands never race.

    The caller changes the list it is given; nothing is written if it raises.
    """
    if not path.parent.is_dir():
        raise RegistryError(
            f"directory {path.parent} does not exist; create it or set API_KEYS_FILE"
        )
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = list(read_entries(path))
        yield entries
        write_entries(path, entries)


# ---- changes made by `flask keys` ----------------------------------------------------


def find(entries: Sequence[Entry], name: str) -> int:
    check_name(name)
    for index, entry in enumerate(entries):
        if entry.name == name:
            return index
    raise RegistryError(f"no key named {name!r}; `flask keys list` shows the names")


def create(
    entries: list[Entry],
    name: str,
    *,
    scopes: Iterable[str] = (),
    expires: datetime | None = None,
    allowed_ips: Iterable[str] = (),
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: str | None = None,
{%- endif %}
    now: datetime,
) -> tuple[str, Entry]:
    """Add a new key; returns the key (to show once) and its entry (to store)."""
    check_name(name)
    if len(name) > MAX_NEW_NAME_LENGTH:
        raise RegistryError(f"a key name must be at most {MAX_NEW_NAME_LENGTH} characters")
    if any(entry.name == name for entry in entries):
        raise RegistryError(f"a key named {name!r} already exists; choose another name")
    if expires is not None and expires <= now:
        raise RegistryError("the expiry must be in the future")
    key = generate_key()
    entry = Entry(
        name=name,
        hash=hashed_entry(key),
        scopes=check_scopes(scopes),
        created=now,
        expires=expires,
        allowed_ips=check_networks(allowed_ips),
{%- if cookiecutter.use_rate_limiting %}
        rate_limit=check_rate_limit(rate_limit),
{%- endif %}
    )
    entries.append(entry)
    return key, entry


def revoke(entries: list[Entry], name: str, *, now: datetime) -> Entry:
    """Mark a key revoked: from the next reload on, it is refused."""
    index = find(entries, name)
    entries[index] = replace(entries[index], revoked=entries[index].revoked or now)
    return entries[index]


def rotate(
    entries: list[Entry], name: str, *, grace: timedelta, now: datetime
) -> tuple[str, Entry, Entry]:
    """Give NAME a new key with the same rights; the old key lives on for ``grace``.

    The new key gets the old one's scopes, allowlist and limit, and its lifetime
    too (a 90-day key is followed by a 90-day key). The old entry is renamed
    ``NAME.rotated-<fingerprint>``, marked rotated and expires when the grace
    period ends (at once, revoked, when grace is zero).
    Returns the new key, the new entry and the old one.
    """
    index = find(entries, name)
    old = entries[index]
    if old.status(now) != KeyStatus.ACTIVE:
        raise RegistryError(f"key {name!r} is {old.status(now)}; only an active key can be rotated")
    end = now + grace
    retired = replace(
        old,
        name=f"{old.name}.rotated-{old.fingerprint}",
        rotated=now,
        expires=min(end, old.expires) if old.expires else end,
        revoked=now if not grace else None,
    )
    key = generate_key()
    lifetime = old.expires - old.created if old.expires else None
    successor = replace(
        old,
        hash=hashed_entry(key),
        created=now,
        expires=now + lifetime if lifetime else None,
        rotated=None,
        revoked=None,
    )
    entries[index] = successor
    entries.append(retired)
    return key, successor, retired


# ---- the live key ring ----------------------------------------------------------------


class KeyStore:
    """The keys a server accepts: API_KEYS plus the registry, reloaded when the file changes.

    Each lookup costs at most one ``stat`` of the file per second (not a read per
    request). A file that breaks while the server runs is logged at ERROR and the
    last good ring stays in force; at startup it is a RegistryError.
    """

    def __init__(
        self,
        static: Iterable[tuple[str, KeyRecord]],
        path: Path,
        interval: float = RELOAD_INTERVAL,
    ) -> None:
        self._static = tuple(static)
        self._path = path
        self._interval = interval
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._ring, self._entries = self._build(read_entries(path))
        self._checked = time.monotonic()

    @property
    def ring(self) -> KeyRing:
        """The current ring, refreshed first if the file changed since the last check."""
        if time.monotonic() - self._checked >= self._interval:
            self._refresh()
        return self._ring

    def lookup(self, presented: str) -> KeyRecord | None:
        """The record of a presented key, as :meth:`KeyRing.lookup` of the current ring."""
        return self.ring.lookup(presented)

    def usable_count(self, now: datetime) -> int:
        """How many keys could authenticate now (not revoked, not expired)."""
        from_file = sum(entry.status(now).usable for entry in self._entries)
        return len(self._static) + from_file

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _build(self, entries: tuple[Entry, ...]) -> tuple[KeyRing, tuple[Entry, ...]]:
        from_file = ((entry.digest, entry.record()) for entry in entries)
        return KeyRing([*self._static, *from_file]), entries

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._checked < self._interval:
                return  # another thread just did it
            self._checked = time.monotonic()
            signature = self._stat()
            if signature == self._signature:
                return
            self._signature = signature
            try:
                self._ring, self._entries = self._build(read_entries(self._path))
            except RegistryError as error:
                log.error("key registry not reloaded, keeping the last good one: %s", error)
                return
            log.info("key registry reloaded: %d keys", len(self._ring))


def init_app(app: Flask) -> None:
    """Give the app its keys: API_KEYS plus the registry file.

    In production it refuses to start without a usable key (fail closed): an API
    with no key, or only a placeholder such as ``changeme`` that can never match,
    is a misconfiguration, not an open API.
    """
    try:
        store = KeyStore(app.config["API_KEYS"], app.config["API_KEYS_FILE"])
    except RegistryError as error:
        raise ConfigError(str(error)) from None
    if app.config["APP_ENV"] == "production" and not store.usable_count(datetime.now(UTC)):
        raise ConfigError(
            "API_KEYS: no API key is configured; set API_KEYS to a key made by "
            "scripts/generate_api_key.py (or its sha256: entry), or create one with "
            "`flask keys create NAME`"
        )
    app.extensions["api_keys"] = store
