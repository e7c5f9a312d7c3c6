"""connections.auth_mode (SPEC §7 "Auth modes")

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every connection made before the modes came from the authorization-code flow.
    with op.batch_alter_table("connections") as batch:
        batch.add_column(
            sa.Column("auth_mode", sa.String(length=32), nullable=False, server_default="oauth2")
        )


def downgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.drop_column("auth_mode")
