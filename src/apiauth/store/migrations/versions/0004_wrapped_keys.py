"""wrapped keys: key-encryption keys wrapped by a KMS

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import apiauth.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wrapped_keys",
        sa.Column("id", sa.String(length=8), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("kms_key_id", sa.String(length=2048), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", apiauth.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wrapped_keys")),
    )


def downgrade() -> None:
    op.drop_table("wrapped_keys")
