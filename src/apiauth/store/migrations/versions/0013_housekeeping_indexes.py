"""Housekeeping's indexes: each batch finds what has expired by an index, not a table scan

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# (index, table, columns): what `domain.housekeeping._prunable` selects by.
INDEXES = [
    ("ix_site_tokens_kind_expires_at", "site_tokens", ["kind", "expires_at"]),
    ("ix_auth_states_expires_at", "auth_states", ["expires_at"]),
    ("ix_auth_states_used_at", "auth_states", ["used_at"]),
    ("ix_connect_sessions_expires_at", "connect_sessions", ["expires_at"]),
    ("ix_sessions_expires_at", "sessions", ["expires_at"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
