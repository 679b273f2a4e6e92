"""the ledger remembers when the provider first deferred a message

``delivery_max_defer_hours`` ends a throttle that never lifts. Counting from when the message
was queued dead-lettered messages that had waited for reasons of postwise's own (a send
scheduled days ahead, a campaign drained slowly by its rate limit) on their first deferral;
``message.deferred_since`` is set by the first provider deferral and the limit counts from
there. Nullable without a default: PostgreSQL adds it without rewriting the table.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deferred_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("deferred_since")
