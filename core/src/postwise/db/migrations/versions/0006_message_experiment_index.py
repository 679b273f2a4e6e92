"""ledger index for experiment reports

An experiment report counts, per variant, the contacts with an accepted message (exposures)
and checks each converted contact against them. Both read the ledger by experiment, status,
variant and contact; this index answers both (an index-only scan on PostgreSQL, where it also
carries ``created_at`` for closed experiments). It is partial: messages outside experiments,
most of the ledger, cost it nothing.

Revision ID: 0006
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.create_index(
            "ix_message_experiment",
            ["experiment_id", "status", "variant", "contact_id"],
            unique=False,
            postgresql_include=["created_at"],
            postgresql_where=sa.text("experiment_id IS NOT NULL"),
            sqlite_where=sa.text("experiment_id IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_index("ix_message_experiment")
