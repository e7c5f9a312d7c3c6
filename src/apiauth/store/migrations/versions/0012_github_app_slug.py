"""GitHub Apps: the slug of a team's App (its install page is /apps/{slug}/installations/new)

Revision ID: 0012
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("app_slug", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_apps", schema=None) as batch_op:
        batch_op.drop_column("app_slug")
