"""Storage on SQLite and PostgreSQL: migrations build exactly the models' schema, run again
harmlessly, and secrets are sealed to their rows."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import OperationalError

from apiauth.config import Settings
from apiauth.domain.members import create_member
from apiauth.domain.sites import create_site
from apiauth.store.db import (
    HEAD_REVISION,
    _alembic_config,
    create_db_engine,
    schema_is_current,
    transaction,
    upgrade_database,
)
from apiauth.store.models import Base, Connection, Site, new_id
from apiauth.vault import DecryptionError, record_aad
from tests.servers import open_test_broker


def test_migrations_build_exactly_the_models_schema(empty_database_url: str) -> None:
    engine = create_db_engine(empty_database_url)
    assert not schema_is_current(engine)
    upgrade_database(engine)
    assert schema_is_current(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    assert differences == []
    assert {"teams", "members", "sites", "site_tokens", "connections", "auth_states"} <= tables
    engine.dispose()


def test_the_head_revision_that_skips_alembic_is_alembics_head(empty_database_url: str) -> None:
    """A new migration must move HEAD_REVISION with it, or databases at the old head would
    never be upgraded (starts skip Alembic when the database is at HEAD_REVISION)."""
    engine = create_db_engine(empty_database_url)
    assert ScriptDirectory.from_config(_alembic_config(engine)).get_heads() == [HEAD_REVISION]
    engine.dispose()


def test_a_database_one_migration_behind_is_upgraded_at_start(empty_database_url: str) -> None:
    from alembic import command

    engine = create_db_engine(empty_database_url)
    command.upgrade(_alembic_config(engine), "head")
    command.downgrade(_alembic_config(engine), "-1")
    assert not schema_is_current(engine)
    upgrade_database(engine)
    assert schema_is_current(engine)
    engine.dispose()


def test_upgrading_twice_changes_nothing_and_keeps_data(database_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    broker = open_test_broker(settings)
    member = create_member(broker, "owner@example.com", "correct horse battery")
    create_site(broker, member, "kept")
    broker.close()
    again = open_test_broker(settings)
    with again.sessions() as db:
        assert db.scalars(select(Site.name)).all() == ["kept"]
    again.close()


def test_times_come_back_in_utc(database_url: str, tmp_path: Path) -> None:
    broker = open_test_broker(Settings(data_dir=tmp_path / "data", database_url=database_url))
    member = create_member(broker, "owner@example.com", "correct horse battery")
    create_site(broker, member, "timed")
    with broker.sessions() as db:
        created = db.scalars(select(Site.created_at)).one()
    assert created.tzinfo is UTC
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    broker.close()


def test_a_token_ciphertext_copied_to_another_row_does_not_open(
    database_url: str, tmp_path: Path
) -> None:
    broker = open_test_broker(Settings(data_dir=tmp_path / "data", database_url=database_url))
    member = create_member(broker, "owner@example.com", "correct horse battery")
    site = create_site(broker, member, "sealed")
    blob = broker.vault.seal_json(
        {"access_token": "x"}, record_aad("connections", "con_a", "token_enc")
    )
    with transaction(broker.sessions) as db:
        for row_id in ("con_a", "con_b"):
            db.add(
                Connection(
                    id=row_id,
                    site_id=site.id,
                    provider="github" if row_id == "con_a" else "box",
                    status="connected",
                    requested_scopes=[],
                    granted_scopes=[],
                    token_enc=blob,
                )
            )
    with broker.sessions() as db:
        stored = {c.id: c.token_enc for c in db.scalars(select(Connection))}
    assert broker.vault.open_json(stored["con_a"], record_aad("connections", "con_a", "token_enc"))
    with pytest.raises(DecryptionError):
        broker.vault.open_json(stored["con_b"], record_aad("connections", "con_b", "token_enc"))
    broker.close()


def test_new_ids_are_unique_and_prefixed() -> None:
    ids = {new_id("con") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("con_") and len(i) <= 32 for i in ids)


def test_a_bad_database_url_is_a_clear_error() -> None:
    from apiauth.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="not a database URL"):
        create_db_engine("not a url")
    with pytest.raises(ConfigurationError, match="unsupported database"):
        create_db_engine("mysql://x@localhost/db")
    with pytest.raises(ConfigurationError, match="uri= must be true or false"):
        create_db_engine("sqlite:///file:/nowhere/apiauth.db?uri=maybe")


@pytest.mark.fast
def test_a_new_sqlite_database_and_its_wal_are_readable_by_their_owner_only(
    tmp_path: Path,
) -> None:
    """SECURITY.md class 10: the database holds sealed tokens and token hashes; whatever the
    umask, the file and SQLite's -wal and -shm files beside it are created 0600 (in a 0700
    directory when apiauth makes it)."""
    directory = tmp_path / "data"
    path = directory / "apiauth.db"
    previous = os.umask(0o022)  # a typical umask, which would give 0644 files
    try:
        engine = create_db_engine(f"sqlite:///{path}")
        try:
            with engine.begin() as db:
                db.execute(text("CREATE TABLE t (x TEXT)"))
                db.execute(text("INSERT INTO t VALUES ('x')"))
            # While a connection is open the -wal and -shm files exist.
            with engine.connect() as db:
                db.execute(text("SELECT x FROM t")).all()
                files = [path, path.with_name("apiauth.db-wal"), path.with_name("apiauth.db-shm")]
                modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files if f.exists()}
        finally:
            engine.dispose()
    finally:
        os.umask(previous)
    assert "apiauth.db-wal" in modes, modes
    assert set(modes.values()) == {0o600}, {name: oct(mode) for name, mode in modes.items()}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.fast
def test_an_sqlite_uri_opens_its_own_file_and_makes_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:///file:/path?uri=true` names the file `/path`: a read-write URI makes it
    private, as a plain path; a read-only one (`mode=ro`) creates nothing. Neither leaves a
    directory called `file:` where the command ran (as the text after `sqlite:///` was once
    taken for a path)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data" / "apiauth.db"
    engine = create_db_engine(f"sqlite:///file:{path}?uri=true")
    try:
        with engine.begin() as db:
            db.execute(text("CREATE TABLE t (x TEXT)"))
    finally:
        engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    missing = tmp_path / "elsewhere" / "apiauth.db"
    read_only = create_db_engine(f"sqlite:///file:{missing}?mode=ro&uri=true")
    with pytest.raises(OperationalError):
        read_only.connect()
    read_only.dispose()
    assert not missing.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
