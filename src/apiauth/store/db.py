"""Engine factory (SQLite | PostgreSQL) and the migration runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import asbool

from apiauth.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration. Every command and server start brings the schema to it; a database
# already there is told by one query, without loading Alembic and its migration scripts (a
# third of a CLI command's start). tests/test_storage.py holds this to Alembic's own head.
HEAD_REVISION = "0013"


def create_db_engine(url: str, *, connect_timeout: int | None = None) -> Engine:
    """An engine tuned per backend: SQLite in WAL mode with foreign keys on.
    `connect_timeout` (seconds, PostgreSQL): give up connecting after it (`apiauth doctor`)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"APIAUTH_DATABASE_URL is not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        file = _sqlite_file(parsed)
        if file is not None:
            _create_private_file(file)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            # All kept open once made: an overflow connection is closed when it goes back, so
            # a busy read path (64 callers) would open and close connections all the time.
            pool_size=32,
            max_overflow=0,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        connect_args = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
        # As many as before (30), all kept open once made (see SQLite's above).
        return create_engine(
            parsed, pool_size=30, max_overflow=0, pool_pre_ping=True, connect_args=connect_args
        )
    raise ConfigurationError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://"
    )


def _sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL opens and may create: none for an in-memory database or a
    read-only one. With `?uri=true` the database is an SQLite URI (`file:/path?mode=ro`),
    whose path is not the text after `sqlite:///` (that was made as a directory `file:`)."""
    database = url.database or ""
    try:
        uri = asbool(url.query.get("uri", False))  # as the pysqlite dialect reads it
    except ValueError:
        raise ConfigurationError(
            "APIAUTH_DATABASE_URL: uri= must be true or false (an SQLite URI or not)"
        ) from None
    if not uri:
        return None if database in ("", ":memory:") else Path(database)
    if url.query.get("mode") in ("ro", "memory") or not database.startswith("file:"):
        return None
    path = unquote(urlsplit(database).path)
    return Path(path) if path and path != ":memory:" else None


def _create_private_file(path: Path) -> None:
    """The SQLite file, made readable by its owner only before SQLite opens it (SQLite gives
    its -wal and -shm files the same mode): it holds encrypted tokens and token hashes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with sessions() as session, session.begin():
        yield session


def database_unavailable(exc: BaseException) -> bool:
    """Whether a failed write failed because of the database (away, locked, failing over,
    its schema not what this code expects: a missing table is an OperationalError on
    SQLite, a ProgrammingError on PostgreSQL) rather than because of the rows it was given
    (an IntegrityError, a DataError, a value that does not bind): the former is retried
    later with everything, the latter sets the rows aside."""
    return isinstance(exc, OperationalError | InterfaceError | ProgrammingError) or bool(
        getattr(exc, "connection_invalidated", False)
    )


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("apiauth.store").joinpath("migrations"))
    )
    config.attributes["engine"] = engine
    return config


def upgrade_database(engine: Engine) -> None:
    """Bring the schema to the newest migration; safe to run at every start."""
    if schema_is_current(engine):
        return
    from alembic import command

    command.upgrade(_alembic_config(engine), "head")


def _stored_revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions the database says it is at (none before its first migration)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return ()
        return tuple(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def schema_revisions(engine: Engine) -> tuple[frozenset[str], frozenset[str]]:
    """(the database's migration revisions, this code's newest): equal when current; the
    first is empty for a database never migrated."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(engine))
    return frozenset(_stored_revisions(engine)), frozenset(script.get_heads())


def schema_is_current(engine: Engine) -> bool:
    """One query, no Alembic: what starts and `/readyz` ask."""
    return _stored_revisions(engine) == (HEAD_REVISION,)


def database_now(session: Session) -> datetime | None:
    """The database server's clock (PostgreSQL), or None where the database is a file read
    by this process with this machine's clock (SQLite)."""
    if session.get_bind().dialect.name == "sqlite":
        return None
    moment = session.scalar(text("SELECT CURRENT_TIMESTAMP"))
    return moment if isinstance(moment, datetime) else None
