"""The tables: the key registry, its change counter, and the example resource, items.

Only hashes and metadata of keys are stored, never a key: reading the database
gives no way to call the API.{% if cookiecutter.use_rate_limiting %} Owners' limits are changes of the registry
too, counted by the same change counter.{% endif %}
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, String, TypeDecorator, text
from sqlalchemy.orm import Mapped, mapped_column

from .db import db

ITEM_NAME_LENGTH = 200


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime in every database (SQLite keeps no time zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class ApiKey(db.Model):
    """One key: its hash and what it may do. A rotated key keeps its row and its name."""

    __tablename__ = "api_keys"
    __table_args__ = (
        # One current key per name; rotated predecessors share it during their grace.
        Index(
            "uq_api_keys_current_name",
            "name",
            unique=True,
            sqlite_where=text("rotated IS NULL"),
            postgresql_where=text("rotated IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    # "sha256:<64 hex>": unique, so no two entries can claim one key.
    digest: Mapped[str] = mapped_column(String(71), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(12))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    allowed_ips: Mapped[list[str]] = mapped_column(JSON)
{%- if cookiecutter.use_rate_limiting %}
    rate_limit: Mapped[str | None] = mapped_column(String(200))
    # The fingerprint its rate-limit count is kept under: its first predecessor's, so a
    # key and the key it replaced share one count.
    counter: Mapped[str] = mapped_column(String(12))
{%- endif %}
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    expires: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rotated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rotated_from: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request_count: Mapped[int] = mapped_column(default=0)
    # The registry change that last touched this row: servers read only rows newer than
    # the change they last saw, so a refresh costs what changed, not the registry's size.
    version: Mapped[int] = mapped_column(index=True)


{% if cookiecutter.use_rate_limiting -%}
class OwnerLimit(db.Model):
    """An owner's own limit, shared by all its keys (``flask keys owner-limit``).

    Clearing a limit keeps the row with no limit and a new version, so that every
    server, reading only the rows changed since it last looked, sees it go.
    """

    __tablename__ = "owner_limits"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    rate_limit: Mapped[str | None] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(index=True)


{% endif -%}
class RegistryVersion(db.Model):
    """One row: the number of the latest change to the key registry."""

    __tablename__ = "registry_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(default=0)


class Item(db.Model):
    """The example resource: every item belongs to the owner of the key that made it."""

    __tablename__ = "items"
    # Listing an owner's items newest first is one index range scan.
    __table_args__ = (Index("ix_items_owner_id", "owner", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(ITEM_NAME_LENGTH))
    created_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime)
