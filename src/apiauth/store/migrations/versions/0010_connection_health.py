"""connections.degraded_since, refresh_expires_at, expiry_warned_at (issue 17)

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-01 13:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import apiauth.store.models

revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("degraded_since", apiauth.store.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("refresh_expires_at", apiauth.store.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("expiry_warned_at", apiauth.store.models.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.drop_column("expiry_warned_at")
        batch_op.drop_column("refresh_expires_at")
        batch_op.drop_column("degraded_since")
