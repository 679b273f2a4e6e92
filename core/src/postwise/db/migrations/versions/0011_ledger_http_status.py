"""the ledger keeps an HTTP API's status apart from the SMTP reply code

``message.last_code`` is the last SMTP reply code, which providers speaking to an ESP's HTTP API
do not have; ``message.last_http_status`` is the HTTP status of their last answer (200, 429...).
Nullable without a default: existing rows keep NULL, and PostgreSQL adds the column without
rewriting the message table.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_http_status", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("last_http_status")
