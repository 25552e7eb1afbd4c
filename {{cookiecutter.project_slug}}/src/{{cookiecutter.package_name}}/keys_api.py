"""Keys over HTTP: ``/v1/keys`` for keys with the ``keys:admin`` scope.

What a provider builds a sign-up page or a dashboard on. The routes call the
same registry functions as ``flask keys`` (registry.py), so both follow one set
of rules and give the same errors, and every change reaches every server on the
database within about a second. A new key is shown once, in the 201 answer that
creates it; nothing else ever shows a key or its hash. Each change is an audit
line naming the key that made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

from flask import Blueprint, Flask, g
from pydantic import Field, field_validator
from sqlalchemy import select

from . import registry
from .auth import require_api_key
from .errors import APIError, InvalidBody, ResourceNotFound
from .models import ApiKey
from .schemas import Answer, Body, PageQuery, body, paginate, query, response

# The scope that manages keys. A key with it can make a key with any scope, `*`
# included: give it only to the service that issues your customers' keys.
ADMIN_SCOPE = "keys:admin"
MISSING = "No such key."

keys_api = Blueprint("keys_api", __name__, url_prefix="/v1/keys")

# The registry's own rules, written into the document; registry.py checks the values,
# so that the API and `flask keys` give the same errors.
KeyName = Annotated[str, Field(json_schema_extra={"pattern": f"^{registry.NAME.pattern}$"})]
Scope = Annotated[str, Field(json_schema_extra={"pattern": f"^(?:{registry.SCOPE.pattern})$"})]
Duration = Annotated[
    str, Field(json_schema_extra={"pattern": f"^(?:0|{registry.DURATION.pattern})$"})
]


class Conflict(APIError):
    status, code, title = 409, "conflict", "Conflict"
    message = "The request clashes with the key registry as it is."


class NewKey(Body):
    """``flask keys create``'s options, checked by the same functions, with the same errors."""

    name: KeyName
    owner: KeyName | None = None
    scopes: list[Scope] = Field(default_factory=list, max_length=64)
    expires_in: Duration | None = Field(None, description="A lifetime such as 90d, 12h or 2w")
    allow_ips: list[str] = Field(default_factory=list, max_length=64)
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: str | None = Field(
        None, max_length=200, description="Such as 100/minute; else RATELIMIT_DEFAULT"
    )
{%- endif %}

    @field_validator("name", "owner")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return None if name is None else registry.check_name(name)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        return list(registry.check_scopes(scopes))

    @field_validator("allow_ips")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        return list(registry.check_networks(networks))

    @field_validator("expires_in")
    @classmethod
    def _lifetime(cls, expires_in: str | None) -> str | None:
        if expires_in is not None:
            registry.parse_duration(expires_in)
        return expires_in
{%- if cookiecutter.use_rate_limiting %}

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, limit: str | None) -> str | None:
        return registry.check_rate_limit(limit)
{%- endif %}


class Rotation(Body):
    grace: Duration = Field("7d", description="How long the old key keeps working; 0 ends it now")

    @field_validator("grace")
    @classmethod
    def _grace(cls, grace: str) -> str:
        registry.parse_duration(grace)
        return grace


class KeyOut(Answer):
    """A key's public record, as `flask keys list --json` shows it: never a key or a hash."""

    name: str
    owner: str
    fingerprint: str
    scopes: list[str]
    created: str
    expires: str | None
    status: str
    allowed_ips: list[str]
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: str | None
{%- endif %}
    last_used: str | None
    requests: int


class IssuedKey(KeyOut):
    key: str = Field(description="The new key: shown here once, never again")


class KeyPage(Answer):
    keys: list[KeyOut]
    next_cursor: str | None


def init_app(app: Flask) -> None:
    app.register_blueprint(keys_api)


@keys_api.post("")
@require_api_key(ADMIN_SCOPE)
@body(NewKey)
@response(IssuedKey, 201, errors=(409,))
def create_key(body: NewKey):
    """Create a key; the answer holds the key, once."""
    now = datetime.now(UTC)
    lifetime = registry.parse_duration(body.expires_in) if body.expires_in else None
    with _registry_errors():
        key, entry = registry.create(
            body.name,
            owner=body.owner,
            scopes=body.scopes,
            expires=now + lifetime if lifetime is not None else None,
            allowed_ips=body.allow_ips,
{%- if cookiecutter.use_rate_limiting %}
            rate_limit=body.rate_limit,
{%- endif %}
            now=now,
        )
    registry.audit("create", entry, by=_acting_key())
    return {**registry.describe(entry, now), "key": key}


@keys_api.get("")
@require_api_key(ADMIN_SCOPE)
@query(PageQuery)
@response(KeyPage)
def list_keys(query: PageQuery):
    """Every key, newest first, rotated ones included, a page at a time."""
    entries, next_cursor = paginate(select(ApiKey), ApiKey, "key", query)
    now = datetime.now(UTC)
    return {
        "keys": [registry.describe(entry, now) for entry in entries],
        "next_cursor": next_cursor,
    }


@keys_api.get("/<name>")
@require_api_key(ADMIN_SCOPE)
@response(KeyOut)
def show_key(name: str):
    """The key that holds NAME now."""
    with _registry_errors():
        entry = registry.current(_existing(name))
    return registry.describe(entry, datetime.now(UTC))


@keys_api.post("/<name>/rotate")
@require_api_key(ADMIN_SCOPE)
@body(Rotation)
@response(IssuedKey, 201, errors=(409,))
def rotate_key(name: str, body: Rotation):
    """Give NAME a new key with the same rights; the old one works for the grace period."""
    now = datetime.now(UTC)
    with _registry_errors():
        grace = registry.parse_duration(body.grace)
        key, entry, _ = registry.rotate(_existing(name), grace=grace, now=now)
    registry.audit("rotate", entry, by=_acting_key())
    return {**registry.describe(entry, now), "key": key}


@keys_api.delete("/<name>")
@require_api_key(ADMIN_SCOPE)
@response(None, 204)
def revoke_key(name: str):
    """Revoke NAME's key at once, and its predecessors still in their grace period."""
    with _registry_errors():
        entry = registry.revoke(_existing(name), now=datetime.now(UTC))
    registry.audit("revoke", entry, by=_acting_key())


def _existing(name: str) -> str:
    """NAME from a URL, when it can name a key at all: else 404, the same answer as for
    a name no key holds, and never echoed (it may be a key pasted into the URL)."""
    try:
        return registry.check_name(name)
    except registry.RegistryError:
        raise ResourceNotFound(MISSING) from None


def _acting_key() -> str:
    """The audit line's "by": the key that asked, never the key itself."""
    return f"key:{g.api_key.name}({g.api_key.fingerprint})"


@contextmanager
def _registry_errors() -> Iterator[None]:
    """The registry's refusals as the API's errors: 404, 409, else 422."""
    try:
        yield
    except registry.KeyNotFound:
        raise ResourceNotFound(MISSING) from None
    except registry.Conflict as error:
        raise Conflict(str(error)) from None
    except registry.RegistryError as error:
        raise InvalidBody(str(error)) from None
