"""drop the event index on message_id alone

``ix_event_message`` (from 0001) answered no query: every metric reads message ids through the
type-leading covering indexes of 0003, and erasure and export go by contact. It cost every
stored event one more index insertion, about a tenth of the batch writer's time in the
database.

Revision ID: 0009
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_message")


def downgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_message", ["message_id"], unique=False)
