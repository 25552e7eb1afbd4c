"""The key registry in the database: create, rotate, revoke and list keys{% if cookiecutter.use_rate_limiting %}, and
set owners' limits{% endif %}.

One implementation behind ``flask keys`` (and any route you add to manage keys).
It stores each key's ``sha256:`` hash and metadata, never the key. Every change
bumps the registry's version in the same transaction, so that each server
process can ask the database what changed since it last looked (keystore.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum

{% if cookiecutter.use_rate_limiting -%}
from limits import parse_many
{% endif -%}
from sqlalchemy import {% if cookiecutter.use_rate_limiting %}func, {% endif %}or_, select, update
from sqlalchemy.exc import IntegrityError

from .db import db
from .keys import (
    WILDCARD_SCOPE,
    KeyRecord,
    fingerprint,
    generate_key,
    hashed_entry,
    parse_network,
    redact_keys,
)
from .logs import PACKAGE_LOGGER
from .models import ApiKey, {% if cookiecutter.use_rate_limiting %}OwnerLimit, {% endif %}RegistryVersion

audit_log = logging.getLogger(f"{PACKAGE_LOGGER}.audit")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCOPE = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
DURATION = re.compile(r"([0-9]+)([smhdw])")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_DURATION = timedelta(days=36525)


class RegistryError(ValueError):
    """A requested change is invalid; the message says why, and never holds a key."""


class KeyNotFound(RegistryError):
    """No key holds the name asked for."""


class Conflict(RegistryError):
    """The change clashes with the registry as it is: a name taken, a key not active."""


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


def status(key: ApiKey, now: datetime) -> KeyStatus:
    """The key's state at ``now``; a revoked key stays revoked whatever its expiry."""
    if key.revoked is not None:
        return KeyStatus.REVOKED
    if key.expires is not None and now >= key.expires:
        return KeyStatus.EXPIRED
    return KeyStatus.ROTATED if key.rotated is not None else KeyStatus.ACTIVE


def record(key: ApiKey) -> KeyRecord:
    """The public record a server attaches to a request made with this key."""
    return KeyRecord(
        name=key.name,
        fingerprint=key.fingerprint,
        owner=key.owner,
        scopes=frozenset(key.scopes),
        expires=key.expires,
        allowed_ips=tuple(parse_network(network) for network in key.allowed_ips),
        revoked=key.revoked is not None,
{%- if cookiecutter.use_rate_limiting %}
        rate_limit=key.rate_limit,
        counter=key.counter,
{%- endif %}
        id=key.id,
    )


def describe(key: ApiKey, now: datetime) -> dict[str, object]:
    """What `flask keys list` and ``GET /v1/keys`` show of a key: never the key or its hash."""
    return {
        "name": key.name,
        "owner": key.owner,
        "fingerprint": key.fingerprint,
        "scopes": list(key.scopes),
        "created": _when(key.created),
        "expires": _when(key.expires),
        "status": status(key, now).value,
        "allowed_ips": list(key.allowed_ips),
{%- if cookiecutter.use_rate_limiting %}
        "rate_limit": key.rate_limit,
{%- endif %}
        "last_used": _when(key.last_used),
        "requests": key.request_count,
    }


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def audit(action: str, key: ApiKey, *, by: str) -> None:
    """One line in the audit log for each change, naming who made it: a person for the
    CLI, the acting key for the API (repudiation)."""
    audit_log.info(
        "keys %s: name=%s owner=%s fingerprint=%s by=%s",
        action,
        key.name,
        key.owner,
        key.fingerprint,
        by,
        extra={"action": action, "key_name": key.name, "fingerprint": key.fingerprint},
    )


# ---- checking values -------------------------------------------------------------------


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


# ---- reading ---------------------------------------------------------------------------


def current(name: str) -> ApiKey:
    """The key that holds NAME now (not a rotated predecessor)."""
    key = db.session.scalars(_holding(check_name(name))).first()
    if key is None:
        raise KeyNotFound(f"no key named {name!r}; `flask keys list` shows the names")
    return key


def _holding(name: str):
    """The query for the key that holds NAME now: rotated predecessors share the name."""
    return select(ApiKey).where(ApiKey.name == name, ApiKey.rotated.is_(None))


def all_keys(*, unused_for: timedelta | None = None, now: datetime) -> list[ApiKey]:
    """Every key, by name then newest first; with ``unused_for``, those not used for that long."""
    query = select(ApiKey).order_by(ApiKey.name, ApiKey.id.desc())
    if unused_for is not None:
        since = now - unused_for
        query = query.where(
            or_(ApiKey.last_used.is_(None), ApiKey.last_used < since), ApiKey.created < since
        )
    return list(db.session.scalars(query))


def find_key(key: str) -> ApiKey | None:
    """The registry entry of a presented key, if any."""
    return db.session.scalars(select(ApiKey).where(ApiKey.digest == hashed_entry(key))).first()


# ---- changing --------------------------------------------------------------------------


@contextmanager
def changing() -> Iterator[int]:
    """One change of the registry, in one transaction, with its new version number.

    Writers take the version row's lock, so versions are committed in order and a
    server that has seen version N has seen every change up to N.
    """
    try:
        version = db.session.execute(
            update(RegistryVersion)
            .values(version=RegistryVersion.version + 1)
            .returning(RegistryVersion.version)
        ).scalar_one()
        yield version
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("the registry changed meanwhile; try again") from None
    except BaseException:
        db.session.rollback()
        raise


def create(
    name: str,
    *,
    owner: str | None = None,
    scopes: Iterable[str] = (),
    expires: datetime | None = None,
    allowed_ips: Iterable[str] = (),
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: str | None = None,
{%- endif %}
    now: datetime,
) -> tuple[str, ApiKey]:
    """Add a new key; returns the key (to show once) and its entry (as stored)."""
    check_name(name)
    owner = check_name(owner) if owner else name
    if expires is not None and expires <= now:
        raise RegistryError("the expiry must be in the future")
    key = generate_key()
    entry = ApiKey(
        name=name,
        owner=owner,
        digest=hashed_entry(key),
        fingerprint=fingerprint(key),
        scopes=list(check_scopes(scopes)),
        allowed_ips=list(check_networks(allowed_ips)),
{%- if cookiecutter.use_rate_limiting %}
        rate_limit=check_rate_limit(rate_limit),
        counter=fingerprint(key),
{%- endif %}
        created=now,
        expires=expires,
    )
    with changing() as version:
        if db.session.scalars(_holding(name)).first():
            raise Conflict(f"a key named {name!r} already exists; choose another name")
        entry.version = version
        db.session.add(entry)
    return key, entry


def revoke(name: str, *, now: datetime) -> ApiKey:
    """Revoke NAME's key, and its predecessors still in their grace period, at once."""
    key = current(name)
    with changing() as version:
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.name == name, ApiKey.revoked.is_(None))
            .where(or_(ApiKey.rotated.is_(None), ApiKey.expires > now))
            .values(revoked=now, version=version)
        )
    db.session.refresh(key)
    return key


def rotate(name: str, *, grace: timedelta, now: datetime) -> tuple[str, ApiKey, ApiKey]:
    """Give NAME a new key with the same owner and rights; the old one lives on for ``grace``.

    The new key gets the old one's scopes, allowlist and limit, and its lifetime
    too (a 90-day key is followed by a 90-day key). The old key keeps its name and
    answers as NAME until the grace period ends (at once, revoked, when it is zero).
    Returns the new key, the new entry and the old one.
    """
    old = current(name)
    if (state := status(old, now)) != KeyStatus.ACTIVE:
        raise Conflict(f"key {name!r} is {state}; only an active key can be rotated")
    key = generate_key()
    lifetime = old.expires - old.created if old.expires else None
    with changing() as version:
        end = now + grace
        old.rotated = now
        old.expires = min(end, old.expires) if old.expires else end
        old.revoked = None if grace else now
        old.version = version
        db.session.flush()  # the name is free before the new key takes it
        new = ApiKey(
            name=old.name,
            owner=old.owner,
            digest=hashed_entry(key),
            fingerprint=fingerprint(key),
            scopes=old.scopes,
            allowed_ips=old.allowed_ips,
{%- if cookiecutter.use_rate_limiting %}
            rate_limit=old.rate_limit,
            counter=old.counter,
{%- endif %}
            created=now,
            expires=now + lifetime if lifetime else None,
            rotated_from=old.id,
            version=version,
        )
        db.session.add(new)
    return key, new, old
{%- if cookiecutter.use_rate_limiting %}


# ---- owners' limits --------------------------------------------------------------------


def owner_limit(owner: str) -> str | None:
    """OWNER's own limit, shared by all its keys, or None when it has none."""
    row = db.session.get(OwnerLimit, check_name(owner))
    return row.rate_limit if row is not None else None


def owner_limits() -> dict[str, str]:
    """Every owner that has a limit of its own, by name."""
    rows = db.session.scalars(
        select(OwnerLimit).where(OwnerLimit.rate_limit.is_not(None)).order_by(OwnerLimit.owner)
    )
    return {row.owner: row.rate_limit for row in rows}


def owner_key_count(owner: str) -> int:
    """How many keys OWNER holds now (not revoked, not rotated away)."""
    query = select(func.count()).where(
        ApiKey.owner == owner, ApiKey.revoked.is_(None), ApiKey.rotated.is_(None)
    )
    return db.session.scalar(query.select_from(ApiKey))


def set_owner_limit(owner: str, limit: str) -> str:
    """Give OWNER a limit that every request of every one of its keys counts against,
    as well as the key's own; every server applies it within about a second."""
    check_name(owner)
    if not limit:
        raise RegistryError("give a rate limit such as 10000/month")
    check_rate_limit(limit)
    with changing() as version:
        row = db.session.get(OwnerLimit, owner)
        if row is None:
            db.session.add(OwnerLimit(owner=owner, rate_limit=limit, version=version))
        else:
            row.rate_limit, row.version = limit, version
    return limit


def clear_owner_limit(owner: str) -> str:
    """Take OWNER's own limit away (its keys keep theirs); returns the limit it had."""
    check_name(owner)
    with changing() as version:
        row = db.session.get(OwnerLimit, owner)
        if row is None or row.rate_limit is None:
            raise RegistryError(f"owner {owner!r} has no limit of its own")
        # The row stays, with no limit and a new version: servers read only changed rows.
        cleared, row.rate_limit, row.version = row.rate_limit, None, version
    return cleared


def audit_owner_limit(action: str, owner: str, limit: str | None, *, by: str) -> None:
    """The audit line of a change to an owner's limit, naming who made it (repudiation)."""
    audit_log.info(
        "keys %s: owner=%s limit=%s by=%s",
        action,
        owner,
        limit or "-",
        by,
        extra={"action": action, "owner": owner, "rate_limit": limit},
    )
{%- endif %}
