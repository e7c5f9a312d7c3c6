"""Alembic environment: the engine comes from `apiauth.store.db`, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from apiauth.store.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through apiauth.store.db.upgrade_database")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
