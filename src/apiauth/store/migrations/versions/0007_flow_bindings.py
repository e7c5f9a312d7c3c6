"""OAuth flows bound to the browser that finishes them

Revision ID: 0007
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("binding_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("continue_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("authorize_url_enc", sa.LargeBinary(), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_auth_states_continue_hash"), ["continue_hash"]
        )


def downgrade() -> None:
    with op.batch_alter_table("auth_states", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_auth_states_continue_hash"), type_="unique")
        batch_op.drop_column("authorize_url_enc")
        batch_op.drop_column("continue_hash")
        batch_op.drop_column("binding_hash")
