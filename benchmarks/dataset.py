"""Benchmark datasets: sites, site tokens and connections written through apiauth's own storage
layer (its models, its migrations, its vault's `seal_json`), in bulk.

A read dataset is generated once and cached under `.bench/<name>/` (SQLite file, master key
and `bench.json`) or, for PostgreSQL, as the database `apiauth_bench_<name>`: benchmarks only
read it. The first site has six connected providers (the one that is read); every other site
has one connection, so that "100,000 sites" is also "100,000 connections". No token is due for
a refresh: expiring ones expire in a year and scheduled checks are a year away.

The refresh dataset is consumed by the run that refreshes it, so it is made anew each time:
every token is due now and expires within a window of a few minutes.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, insert, select, text
from sqlalchemy.engine import make_url

from apiauth.config import Settings
from apiauth.domain.broker import open_broker
from apiauth.domain.token_format import TokenKind, generate_token, hash_token
from apiauth.oauth.token_set import TokenSet
from apiauth.store.db import transaction
from apiauth.store.models import Connection, Site, SiteToken, Team, new_id, utcnow
from apiauth.vault import record_aad

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful")
SAMPLE_TOKENS = 200
CHUNK = 5_000
FORMAT = 1  # bump when the rows written here change, so cached datasets are made again


@dataclass(frozen=True)
class Dataset:
    name: str
    data_dir: Path
    database_url: str
    site_token: str  # reads the first site, the one with six providers
    sample_tokens: list[str]  # site tokens of other sites (the refresh benchmark reads them)
    sites: int
    connections: int
    generated_seconds: float
    cached: bool

    def env(self) -> dict[str, str]:
        return {
            "APIAUTH_DATA_DIR": str(self.data_dir),
            "APIAUTH_DATABASE_URL": self.database_url,
        }


def _token_set(provider: str, now: datetime, expires_at: datetime | None) -> TokenSet:
    """What each provider's token endpoint gives, in the shapes the emulator issues."""
    access = secrets.token_urlsafe(48)
    if provider == "github":
        return TokenSet("gho_" + access[:36], None, "bearer", None, ("repo", "read:user"))
    if provider == "salesforce":
        extra = {"instance_url": "https://example.my.salesforce.com"}
        return TokenSet(
            access, secrets.token_urlsafe(60), "Bearer", None, ("api", "refresh_token"), extra
        )
    if provider == "stripe":
        extra = {"stripe_user_id": "acct_" + secrets.token_hex(8)}
        return TokenSet(access, "rt_" + access[:40], "bearer", None, ("read_write",), extra)
    if provider == "contentful":
        return TokenSet(access, None, "Bearer", None, ("content_management_manage",))
    scopes = ("user-read-email",) if provider == "spotify" else ("root_readwrite",)
    return TokenSet(access, secrets.token_urlsafe(64), "Bearer", expires_at, scopes)


def _connection_row(
    vault: Any,
    site_id: str,
    provider: str,
    token: TokenSet,
    now: datetime,
    refresh_due_at: datetime | None,
) -> dict[str, Any]:
    connection_id = new_id("con")
    aad = record_aad("connections", connection_id, "token_enc")
    return {
        "id": connection_id,
        "site_id": site_id,
        "provider": provider,
        "status": "connected",
        "requested_scopes": list(token.granted_scopes),
        "granted_scopes": list(token.granted_scopes),
        "account_id": secrets.token_hex(4),
        "account_login": f"user-{site_id[-6:]}",
        "token_enc": vault.seal_json(token.to_json(), aad),
        "expires_at": token.expires_at,
        "refresh_due_at": refresh_due_at,
        "version": 1,
        "failure_count": 0,
        "created_at": now,
        "updated_at": now,
    }


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def _write(
    settings: Settings, sites: int, connection_rows: Any, providers_of: Any
) -> tuple[str, list[str], int, dict[str, list[str]]]:
    """Write a team, `sites` enabled sites with a site token each, and their connections:
    `providers_of(index)` names a site's providers, `connection_rows(vault, site_id, provider,
    index)` makes each connection's row and returns its refresh token."""
    broker = open_broker(settings, demo=False)
    now = utcnow()
    team_id = new_id("team")
    site_rows: list[dict[str, Any]] = []
    token_rows: list[dict[str, Any]] = []
    connections: list[dict[str, Any]] = []
    refresh_tokens: dict[str, list[str]] = {}
    tokens: list[str] = []
    for index in range(sites):
        site_id = new_id("site")
        site_rows.append(
            {
                "id": site_id,
                "team_id": team_id,
                "name": f"site-{index:06d}",
                "api_auth_enabled": True,
                "created_at": now,
            }
        )
        token = generate_token(TokenKind.SITE)
        if index <= SAMPLE_TOKENS:
            tokens.append(token)
        token_rows.append(
            {
                "id": new_id("stok"),
                "site_id": site_id,
                "kind": "site",
                "token_hash": hash_token(token),
                "created_at": now,
            }
        )
        for provider in providers_of(index):
            row, refresh_token = connection_rows(broker.vault, site_id, provider, index)
            connections.append(row)
            if refresh_token is not None:
                refresh_tokens.setdefault(provider, []).append(refresh_token)
    try:
        with transaction(broker.sessions) as db:
            db.execute(insert(Team), [{"id": team_id, "name": "bench", "created_at": now}])
            for table, rows in ((Site, site_rows), (SiteToken, token_rows)):
                for chunk in _chunks(rows):
                    db.execute(insert(table), chunk)
            for chunk in _chunks(connections):
                db.execute(insert(Connection), chunk)
        if broker.engine.dialect.name == "postgresql":
            with broker.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                    text("VACUUM ANALYZE")
                )
    finally:
        broker.close()
    return tokens[0], tokens[1:], len(connections), refresh_tokens


def _postgres_url(name: str) -> str:
    return (
        make_url(POSTGRES_ADMIN_URL)
        .set(database=f"apiauth_bench_{name}")
        .render_as_string(hide_password=False)
    )


def _recreate_postgres(name: str) -> str:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "apiauth_bench_{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "apiauth_bench_{name}"'))
    admin.dispose()
    return _postgres_url(name)


def _postgres_exists(name: str) -> bool:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            found = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": f"apiauth_bench_{name}"},
            ).first()
    finally:
        admin.dispose()
    return found is not None


def read_dataset(sites: int, *, database: str = "sqlite") -> Dataset:
    """The cached read dataset of `sites` sites, generated first if missing or stale."""
    name = f"{database}-{sites}"
    data_dir = BENCH_DIR / name
    meta_file = data_dir / "bench.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        fresh = meta.get("format") == FORMAT and datetime.fromisoformat(
            meta["valid_until"]
        ) > utcnow() + timedelta(days=1)
        if fresh and (database == "sqlite" or _postgres_exists(name)):
            return Dataset(
                name,
                data_dir,
                meta["database_url"],
                meta["site_token"],
                meta["sample_tokens"],
                sites,
                meta["connections"],
                meta["generated_seconds"],
                cached=True,
            )
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    if database == "sqlite":
        database_url = f"sqlite:///{data_dir / 'apiauth.db'}"
    else:
        database_url = _recreate_postgres(name)
    started = time.perf_counter()
    now = utcnow()
    far = now + timedelta(days=365)

    def row(vault: Any, site_id: str, provider: str, index: int) -> tuple[dict[str, Any], None]:
        token = _token_set(provider, now, far)
        due = far - timedelta(seconds=300) if token.refresh_token else None
        return _connection_row(vault, site_id, provider, token, now, due), None

    settings = Settings(data_dir=data_dir, database_url=database_url)

    def providers_of(index: int) -> Sequence[str]:
        return PROVIDERS if index == 0 else (PROVIDERS[index % len(PROVIDERS)],)

    site_token, samples, connections, _ = _write(settings, sites, row, providers_of)
    seconds = time.perf_counter() - started
    meta = {
        "format": FORMAT,
        "database_url": database_url,
        "site_token": site_token,
        "sample_tokens": samples,
        "connections": connections,
        "generated_seconds": round(seconds, 1),
        "generated_at": now.isoformat(),
        "valid_until": (far - timedelta(days=30)).isoformat(),
    }
    meta_file.write_text(json.dumps(meta))
    return Dataset(
        name, data_dir, database_url, site_token, samples, sites, connections, seconds, False
    )


@dataclass(frozen=True)
class RefreshDataset:
    dataset: Dataset
    refresh_tokens: dict[str, list[str]]  # by provider, for the emulator's `/_admin/grants`
    expire_from: datetime
    expire_until: datetime


def refresh_dataset(
    connections: int, *, expire_after: float, window: float, database: str = "sqlite"
) -> RefreshDataset:
    """`connections` Spotify and Box connections (one per site), every one due for a refresh
    now, their access tokens expiring between `expire_after` and `expire_after + window`
    seconds from now; on SQLite or PostgreSQL."""
    name = f"{database}-refresh"
    data_dir = BENCH_DIR / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    if database == "sqlite":
        database_url = f"sqlite:///{data_dir / 'apiauth.db'}"
    else:
        database_url = _recreate_postgres(name)
    started = time.perf_counter()
    now = utcnow()
    rng = random.Random(6)  # noqa: S311 (spreads times, guards nothing)
    expire_from = now + timedelta(seconds=expire_after)

    def row(vault: Any, site_id: str, provider: str, index: int) -> tuple[dict[str, Any], str]:
        expires_at = expire_from + timedelta(seconds=rng.uniform(0, window))
        token = _token_set(provider, now, expires_at)
        assert token.refresh_token is not None
        due = now - timedelta(seconds=rng.uniform(0, 60))
        return _connection_row(vault, site_id, provider, token, now, due), token.refresh_token

    def providers_of(index: int) -> Sequence[str]:
        # One connection per site: Spotify (may rotate its refresh token) and Box (rotates it
        # on every use), alternately.
        return ("spotify",) if index % 2 == 0 else ("box",)

    settings = Settings(data_dir=data_dir, database_url=database_url)
    site_token, samples, count, refresh_tokens = _write(settings, connections, row, providers_of)
    seconds = time.perf_counter() - started
    dataset = Dataset(
        name, data_dir, database_url, site_token, samples, connections, count, seconds, False
    )
    return RefreshDataset(
        dataset, refresh_tokens, expire_from, expire_from + timedelta(seconds=window)
    )


def function_tokens(
    dataset: Dataset, count: int, *, ttl: timedelta = timedelta(hours=2)
) -> list[str]:
    """`count` new function tokens of the dataset's first site (minted from its site token,
    reading every provider), written in bulk: each benchmark run uses fresh ones, once each."""
    engine = create_engine(dataset.database_url)
    now = utcnow()
    try:
        with engine.begin() as db:
            parent = db.execute(
                select(SiteToken.id, SiteToken.site_id).where(
                    SiteToken.token_hash == hash_token(dataset.site_token)
                )
            ).one()
            # Tokens of earlier runs that have expired are of no use to anyone.
            db.execute(
                delete(SiteToken).where(SiteToken.kind == "function", SiteToken.expires_at < now)
            )
            tokens = [generate_token(TokenKind.FUNCTION) for _ in range(count)]
            rows = [
                {
                    "id": new_id("ftok"),
                    "site_id": parent.site_id,
                    "kind": "function",
                    "parent_id": parent.id,
                    "token_hash": hash_token(token),
                    "created_at": now,
                    "expires_at": now + ttl,
                }
                for token in tokens
            ]
            for chunk in _chunks(rows):
                db.execute(insert(SiteToken), chunk)
    finally:
        engine.dispose()
    return tokens
