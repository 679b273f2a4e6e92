"""each installation gets a random identity, carried by its Message-IDs

Message-IDs were derived from campaign and contact ids alone, so two installations (or a rebuilt
database) gave different mail the same Message-ID, and mailbox providers drop duplicates. The
identity is made here, once per database.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(
        table, [{"id": 1, "uid": secrets.token_hex(8), "created_at": datetime.now(UTC)}]
    )


def downgrade() -> None:
    op.drop_table("installation")
