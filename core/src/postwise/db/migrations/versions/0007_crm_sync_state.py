"""CRM link: field hashes for conflict resolution, and engagement push state

``field_hashes`` holds, per synced field, a short hash of the value the CRM had at the last
sync, so a later sync can tell which side changed a field (never the value itself: erasure
and export need not know about it). ``pushed_*`` record what engagement was last written back
to the CRM record, so a push sends only what changed. All of it lives on the link, so erasing
a contact (which deletes its links) clears it.

Revision ID: 0007
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crm_link", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("field_hashes", sa.JSON(), server_default=sa.text("'{}'"), nullable=False)
        )
        batch_op.add_column(sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("pushed_engagement_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("pushed_score", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("pushed_unsubscribed", sa.Boolean(), nullable=True))
        batch_op.add_column(
            sa.Column("pushed_hash", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("crm_link", schema=None) as batch_op:
        batch_op.drop_column("pushed_hash")
        batch_op.drop_column("pushed_unsubscribed")
        batch_op.drop_column("pushed_score")
        batch_op.drop_column("pushed_engagement_at")
        batch_op.drop_column("pushed_at")
        batch_op.drop_column("field_hashes")
