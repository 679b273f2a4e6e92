"""API keys get scopes and their own rate limit

``api_key.scopes`` lists what a key may do (``read,send``); keys made before scopes existed
become ``admin`` (the server default), so nothing that worked stops working.
``api_key.rate_limit`` is requests per minute (null: the server's default).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scopes", sa.String(length=200), nullable=False, server_default="admin")
        )
        batch_op.add_column(sa.Column("rate_limit", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_column("rate_limit")
        batch_op.drop_column("scopes")
