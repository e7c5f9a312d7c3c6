"""A fresh database per test, SQLite or PostgreSQL, already migrated.

Migrating an empty database takes about a second; a test copies one migrated per test
process instead (a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL), and
`open_broker` then finds the schema current.

On PostgreSQL even the copy costs a second or two on a busy machine (and so does dropping
it): a database a test is done with is emptied instead (every connection to it ended, every
table emptied, sequences restarted - a few milliseconds) and handed to the next test of the
process, exactly as fresh as a copy. A test that changed the schema (a table or column more or less,
another revision) gets its database dropped, never reused."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from apiauth.store.db import create_db_engine, upgrade_database

POSTGRES_URL = os.environ.get(
    "APIAUTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def require_postgres() -> None:
    problem = _postgres_reachable()
    if problem is None:
        return
    message = (
        f"PostgreSQL is not reachable at {POSTGRES_URL} ({problem}); start it or point "
        "APIAUTH_TEST_POSTGRES_URL at a server where this user may create databases"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _migrate(url: str) -> None:
    engine = create_db_engine(url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()


class _Templates:
    """The migrated databases of this test process, made on first use; the PostgreSQL
    databases emptied for reuse, and what the template's schema looks like."""

    def __init__(self) -> None:
        self.sqlite: Path | None = None
        self.postgres: str | None = None
        self.postgres_schema: tuple[object, ...] | None = None
        self.free: list[str] = []
        self.made: set[str] = set()


_templates = _Templates()


def fresh_sqlite_database(directory: Path) -> str:
    """A migrated SQLite database in `directory` (a copy of this process's template)."""
    if _templates.sqlite is None:
        template = Path(tempfile.mkdtemp(prefix="apiauth-template-")) / "apiauth.db"
        _migrate(f"sqlite:///{template}")
        _templates.sqlite = template
    target = directory / "apiauth.db"
    shutil.copyfile(_templates.sqlite, target)
    return f"sqlite:///{target}"


def fresh_postgres_database(*, migrated: bool = True) -> Iterator[str]:
    """A PostgreSQL database for one test, as fresh as a new copy of the migrated template
    (emptied for the next test afterwards, or dropped); `migrated=False` for a test of the
    migrations themselves (a new, empty database, dropped afterwards)."""
    require_postgres()
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        if not migrated:
            name = _create(admin, None)
            try:
                yield _url_of(name)
            finally:
                _drop(admin, name)
            return
        name = (
            _templates.free.pop() if _templates.free else _create(admin, _postgres_template(admin))
        )
        reusable = False
        try:
            yield _url_of(name)
            reusable = _empty(admin, name)
        finally:
            if reusable:
                _templates.free.append(name)
            else:
                _drop(admin, name)
    finally:
        admin.dispose()


def _create(admin: Engine, template: str | None) -> str:
    name = f"apiauth_test_{secrets.token_hex(6)}"
    with admin.connect() as connection:
        clause = f' TEMPLATE "{template}"' if template else ""
        connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    _templates.made.add(name)
    return name


def _drop(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    _templates.made.discard(name)


def _schema(connection: Connection) -> tuple[object, ...]:
    """What a test could have changed beyond the rows: the tables, columns, indexes,
    sequences and schemas, and the migration revision."""
    queries = (
        "SELECT table_schema, table_name, column_name, data_type, is_nullable,"
        " column_default FROM information_schema.columns"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        "SELECT sequence_schema, sequence_name FROM information_schema.sequences",
        "SELECT nspname FROM pg_namespace",
        "SELECT version_num FROM alembic_version",
    )
    return tuple(tuple(sorted(map(tuple, connection.execute(text(q))))) for q in queries)


def _empty(admin: Engine, name: str) -> bool:
    """Empty the database `name` for the next test: whether it can be reused (its schema is
    the template's still)."""
    if _templates.postgres_schema is None:
        return False
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
    engine = create_engine(_url_of(name))
    try:
        with engine.begin() as connection:
            if _schema(connection) != _templates.postgres_schema:
                return False
            tables = connection.scalars(
                text(
                    "SELECT quote_ident(tablename) FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ).all()
            superuser = connection.scalar(
                text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            )
            if superuser:
                # DELETE takes 3 ms where TRUNCATE (new files for every table) takes 100;
                # foreign keys are not checked, as every table is emptied anyway.
                connection.execute(text("SET LOCAL session_replication_role = replica"))
                for table in tables:
                    connection.execute(text(f"DELETE FROM {table}"))
                for sequence in connection.scalars(
                    text(
                        "SELECT quote_ident(sequence_name) FROM information_schema.sequences"
                        " WHERE sequence_schema = 'public'"
                    )
                ).all():
                    connection.execute(text(f"ALTER SEQUENCE {sequence} RESTART"))
            else:
                connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    except DBAPIError:
        return False
    finally:
        engine.dispose()
    return True


def _url_of(name: str) -> str:
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def _postgres_template(admin: Engine) -> str:
    """This process's migrated template database (dropped at the end of the test process,
    or by the server's next cleanup of `apiauth_template_*`; each is a few hundred
    kilobytes)."""
    if _templates.postgres is None:
        name = f"apiauth_template_{secrets.token_hex(6)}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        _migrate(_url_of(name))
        engine = create_engine(_url_of(name))
        try:
            with engine.connect() as connection:
                _templates.postgres_schema = _schema(connection)
        finally:
            engine.dispose()
        _templates.postgres = name
    return _templates.postgres


def drop_templates() -> None:
    """At the end of the test process: the templates, and the PostgreSQL databases kept for
    reuse, go too."""
    if _templates.sqlite is not None:
        shutil.rmtree(_templates.sqlite.parent, ignore_errors=True)
        _templates.sqlite = None
    names = sorted(_templates.made) + ([_templates.postgres] if _templates.postgres else [])
    if not names or _postgres_reachable() is not None:
        return
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    _templates.postgres = None
    _templates.postgres_schema = None
    _templates.free.clear()
    _templates.made.clear()
