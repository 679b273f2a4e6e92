"""per-list consent: the purpose a list requires, and the purpose a message needs

``segment.consent_purpose`` names a consent purpose that marketing to the list requires, on top
of the global and regional rules. ``message.consent_purpose`` records, at dispatch, the purpose
the message needs, so the worker's check right before sending enforces it (a withdrawal after
queueing stops the send). Both are nullable: existing lists require nothing more, and adding a
nullable column without a default does not rewrite the message table on PostgreSQL.

Revision ID: 0010
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "consent_purpose", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True
            )
        )
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "consent_purpose", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("consent_purpose")
    with op.batch_alter_table("segment", schema=None) as batch_op:
        batch_op.drop_column("consent_purpose")
