"""The key registry, its version counter, and the items of the example API.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("digest", sa.String(71), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(12), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("allowed_ips", sa.JSON(), nullable=False),
{%- if cookiecutter.use_rate_limiting %}
        sa.Column("rate_limit", sa.String(200), nullable=True),
        sa.Column("counter", sa.String(12), nullable=False),
{%- endif %}
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=True),
        sa.Column("revoked", sa.DateTime(), nullable=True),
        sa.Column("rotated", sa.DateTime(), nullable=True),
        sa.Column("rotated_from", sa.Integer(), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("last_used", sa.DateTime(), nullable=True),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, index=True),
    )
    op.create_index(
        "uq_api_keys_current_name",
        "api_keys",
        ["name"],
        unique=True,
        sqlite_where=sa.text("rotated IS NULL"),
        postgresql_where=sa.text("rotated IS NULL"),
    )
    version = op.create_table(
        "registry_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_items_owner_id", "items", ["owner", "id"])


def downgrade() -> None:
    op.drop_table("items")
    op.drop_table("registry_version")
    op.drop_table("api_keys")
