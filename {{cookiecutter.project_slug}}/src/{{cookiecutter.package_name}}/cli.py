"""``flask keys ...``: create, list, show, rotate, revoke and check API keys{% if cookiecutter.use_rate_limiting %}; owners' limits{% endif %}.

These commands work even where a server would refuse to start (a database with
no key yet, in production): they load the app without its start-up checks. A
new key is printed once, alone on stdout, so it can be piped; everything else
goes to stderr. Each change is logged as one audit line with who made it.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from . import registry
from .keys import fingerprint, hash_key, is_well_formed, parse_api_keys
from .logs import configure_logging


class _Checked(click.ParamType):
    """A click type backed by one of the registry's parsers (bad value: exit 2)."""

    def __init__(self, name: str, parse) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value, param, ctx):
        try:
            return self._parse(value)
        except registry.RegistryError as error:
            self.fail(str(error), param, ctx)


DURATION = _Checked("duration", registry.parse_duration)
DATE = _Checked("date", registry.parse_date)
NETWORK = _Checked("cidr", lambda value: registry.check_networks([value])[0])
NAME = _Checked("name", registry.check_name)
{%- if cookiecutter.use_rate_limiting %}
RATE_LIMIT = _Checked("limit", registry.check_rate_limit)
{%- endif %}


@click.group()
def keys() -> None:
    """Manage the API keys in the registry (the database at DATABASE_URL).

    The registry holds only hashes; a key is shown once, when it is created or
    rotated. Every running server picks up each change within about a second.
    """
    log_format = os.environ.get("LOG_FORMAT", "text").strip().lower()
    configure_logging(log_format if log_format in ("json", "text") else "text", "INFO")


@keys.command()
@click.argument("name", type=NAME)
@click.option("--owner", type=NAME, help="Who the key belongs to; by default, NAME itself.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="What the key may do, e.g. items:read. Repeat for several. "
    "Without --scope the key gets '*', every scope.",
)
@click.option("--expires-in", type=DURATION, help="Lifetime such as 90d, 12h, 2w (s m h d w).")
@click.option("--expires", type=DATE, help="Expiry date such as 2027-01-31 (UTC).")
@click.option(
    "--allow-ip",
    "allowed_ips",
    multiple=True,
    type=NETWORK,
    metavar="CIDR",
    help="Accept the key only from this network, e.g. 203.0.113.0/24. Repeat for several.",
)
{%- if cookiecutter.use_rate_limiting %}
@click.option(
    "--rate-limit",
    type=RATE_LIMIT,
    help="Limit for this key, e.g. 100/minute, instead of RATELIMIT_DEFAULT.",
)
{%- endif %}
@with_appcontext
def create(name, owner, scopes, expires_in, expires, allowed_ips, **limits) -> None:
    """Create key NAME and print it once on stdout."""
    if expires_in is not None and expires is not None:
        raise click.UsageError("give --expires-in or --expires, not both")
    now = _now()
    with _errors():
        key, entry = registry.create(
            name,
            owner=owner,
            scopes=scopes,
            expires=now + expires_in if expires_in is not None else expires,
            allowed_ips=allowed_ips,
            now=now,
            **limits,
        )
    registry.audit("create", entry, by=_who())
    click.echo(
        f"Created key {entry.name!r} for {entry.owner!r} (fingerprint {entry.fingerprint}, "
        f"scopes {' '.join(entry.scopes)}, expires {_when(entry.expires)}). "
        "It is shown once, below: store it now.",
        err=True,
    )
    click.echo(key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--unused", type=DURATION, metavar="DURATION", help="Only keys unused that long.")
@with_appcontext
def list_keys(as_json: bool, unused) -> None:
    """List the keys: name, owner, fingerprint, scopes, expiry, status and use; no secret."""
    now = _now()
    with _errors():
        entries = registry.all_keys(unused_for=unused, now=now)
        rows = [registry.describe(entry, now) for entry in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No keys." if unused is None else "No unused keys.", err=True)
        return
    columns = ["name", "owner", "fingerprint", "scopes", "expires", "status", "last_used"]
    columns.append("requests")
    table = [[c.upper().replace("_", " ") for c in columns]]
    table += [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


@keys.command()
@click.argument("name", type=NAME)
@with_appcontext
def show(name: str) -> None:
    """Show everything the registry knows about key NAME (never the key)."""
    with _errors():
        entry = registry.current(name)
    for field, value in registry.describe(entry, _now()).items():
        click.echo(f"{field + ':':13} {_cell(value)}")


@keys.command()
@click.argument("name", type=NAME)
@with_appcontext
def revoke(name: str) -> None:
    """Revoke key NAME at once; every server refuses it within about a second."""
    with _errors():
        entry = registry.revoke(name, now=_now())
    registry.audit("revoke", entry, by=_who())
    click.echo(f"Revoked key {name!r} (fingerprint {entry.fingerprint}).", err=True)


@keys.command()
@click.argument("name", type=NAME)
@click.option(
    "--grace",
    type=DURATION,
    default="7d",
    show_default=True,
    help="How long the old key keeps working, e.g. 7d or 12h; 0 revokes it at once.",
)
@with_appcontext
def rotate(name: str, grace) -> None:
    """Give NAME a new key (printed once) with the same rights; the old one expires after GRACE."""
    with _errors():
        key, entry, old = registry.rotate(name, grace=grace, now=_now())
    registry.audit("rotate", entry, by=_who())
    ends = "now (revoked)" if old.revoked else _when(old.expires)
    click.echo(
        f"Rotated key {name!r}: new fingerprint {entry.fingerprint}; the old key "
        f"({old.fingerprint}, listed as rotated) stops working {ends}. "
        "The new key is shown once, below: store it now.",
        err=True,
    )
    click.echo(key)


{% if cookiecutter.use_rate_limiting -%}
@keys.command("owner-limit")
@click.argument("owner", type=NAME, required=False)
@click.argument("limit", type=RATE_LIMIT, required=False)
@click.option("--clear", is_flag=True, help="Take OWNER's limit away; its keys keep their own.")
@with_appcontext
def owner_limit(owner: str | None, limit: str | None, clear: bool) -> None:
    """Give OWNER a LIMIT all its keys share, such as 10000/month; show it, or --clear it.

    Every request of every key of OWNER counts against LIMIT as well as against the
    key's own limit, and the one closer to running out refuses: more keys buy no more
    requests. Without OWNER, list the owners that have a limit. Every running server
    applies a change within about a second.
    """
    if owner is None:
        if clear:
            raise click.UsageError("--clear needs the OWNER whose limit to clear")
        _list_owner_limits()
        return
    if limit is not None and clear:
        raise click.UsageError("give LIMIT or --clear, not both")
    if limit is None and not clear:
        _show_owner_limit(owner)
        return
    with _errors():
        if clear:
            previous = registry.clear_owner_limit(owner)
        else:
            registry.set_owner_limit(owner, limit)
        held = registry.owner_key_count(owner)
    action = "owner-limit-clear" if clear else "owner-limit"
    registry.audit_owner_limit(action, owner, limit, by=_who())
    if clear:
        click.echo(
            f"Cleared the limit of owner {owner!r} (was {previous}); its {_keys(held)} keep "
            "their own limits.",
            err=True,
        )
        return
    click.echo(
        f"Owner {owner!r} now has {limit}, shared by its {_keys(held)} on top of each key's "
        "own limit; every server applies it within about a second.",
        err=True,
    )
    if not held:
        click.echo(f"Warning: no key belongs to {owner!r} yet; is the name right?", err=True)


def _show_owner_limit(owner: str) -> None:
    with _errors():
        limit = registry.owner_limit(owner)
        held = registry.owner_key_count(owner)
    click.echo(f"{owner}: {limit or 'no limit of its own'} ({_keys(held)})")


def _list_owner_limits() -> None:
    with _errors():
        limits = registry.owner_limits()
    if not limits:
        click.echo("No owner has a limit of its own.", err=True)
        return
    width = max(len(owner) for owner in limits)
    for owner, limit in limits.items():
        click.echo(f"{owner.ljust(width)}  {limit}")


def _keys(count: int) -> str:
    return f"{count} key" if count == 1 else f"{count} keys"


{% endif -%}
@keys.command()
@click.argument("key", required=False)
@with_appcontext
def check(key: str | None) -> None:
    """Tell whether KEY is a well-formed key of this project and which key it is.

    Reads the key from standard input when KEY is left out or is '-', so that it
    stays out of your shell history. Exits 0 only for a key that works now.
    """
    if key in (None, "-"):
        key = sys.stdin.readline()
    key = key.strip()
    if not is_well_formed(key):
        click.echo(f"Not a well-formed key of this project (fingerprint {fingerprint(key)}).")
        sys.exit(1)
    with _errors():
        entry = registry.find_key(key)
    if entry is not None:
        status = registry.status(entry, _now())
        click.echo(f"Well-formed; registry key {entry.name!r} of {entry.owner!r}, {status}.")
        sys.exit(0 if status.usable else 1)
    try:
        static = {digest for digest, _ in parse_api_keys(os.environ.get("API_KEYS", ""))}
    except ValueError:
        static = set()
    if hash_key(key) in static:
        click.echo("Well-formed; matches an entry of API_KEYS.")
        sys.exit(0)
    click.echo(f"Well-formed, but no configured key matches (fingerprint {fingerprint(key)}).")
    sys.exit(1)


def _now() -> datetime:
    return datetime.now(UTC)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "never"


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ",".join(value) or "-"
    return "-" if value is None else str(value)


def _who() -> str:
    """The person running the command, for the audit line."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn a registry problem into one clear line and exit status 1."""
    try:
        yield
    except registry.RegistryError as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"the registry at DATABASE_URL cannot be used ({type(error.orig or error).__name__}); "
            "is the database up, and has `flask db upgrade` run?"
        ) from None
