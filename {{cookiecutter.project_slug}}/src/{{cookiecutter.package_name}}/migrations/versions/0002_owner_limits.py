"""Owners' limits: one limit an owner's keys share, beside each key's own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owner_limits",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("rate_limit", sa.String(200), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("owner_limits")
