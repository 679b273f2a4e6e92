"""event flags and metric indexes

Events get ``automated`` (a machine open or a link scanner's click, left out of rates) and
``recipient_domain`` (delivery health per mailbox provider). The indexes on ``event`` are
reshaped for the metric queries: type-leading, and covering on PostgreSQL so that counting
distinct messages per campaign, variant, provider or domain is an index-only scan; the contact
index covers the attribution probe (the last click of a contact before a conversion). The
per-campaign and per-variant indexes are partial: events without a campaign or experiment
(most product events) cost them nothing.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("automated", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "recipient_domain", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
            )
        )
        batch_op.drop_index("ix_event_type_occurred")
        batch_op.drop_index("ix_event_contact_type_occurred")
        batch_op.drop_index("ix_event_campaign_type")
        batch_op.drop_index("ix_event_experiment_variant_type")
        batch_op.create_index(
            "ix_event_type_time",
            ["type", "occurred_at"],
            unique=False,
            postgresql_include=[
                "provider", "recipient_domain", "message_id", "automated", "contact_id"
            ],
        )
        batch_op.create_index(
            "ix_event_contact_type_occurred",
            ["contact_id", "type", "occurred_at"],
            unique=False,
            postgresql_include=["automated", "campaign_id", "experiment_id", "variant", "id"],
        )
        batch_op.create_index(
            "ix_event_campaign_messages",
            ["type", "campaign_id", "message_id"],
            unique=False,
            postgresql_include=["automated", "contact_id"],
            postgresql_where=sa.text("campaign_id IS NOT NULL"),
            sqlite_where=sa.text("campaign_id IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_event_variant_messages",
            ["type", "experiment_id", "variant", "message_id"],
            unique=False,
            postgresql_include=["automated"],
            postgresql_where=sa.text("experiment_id IS NOT NULL"),
            sqlite_where=sa.text("experiment_id IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_variant_messages")
        batch_op.drop_index("ix_event_campaign_messages")
        batch_op.drop_index("ix_event_type_time")
        batch_op.drop_index("ix_event_contact_type_occurred")
        batch_op.create_index(
            "ix_event_contact_type_occurred", ["contact_id", "type", "occurred_at"], unique=False
        )
        batch_op.create_index(
            "ix_event_experiment_variant_type", ["experiment_id", "variant", "type"], unique=False
        )
        batch_op.create_index("ix_event_campaign_type", ["campaign_id", "type"], unique=False)
        batch_op.create_index("ix_event_type_occurred", ["type", "occurred_at"], unique=False)
        batch_op.drop_column("recipient_domain")
        batch_op.drop_column("automated")
