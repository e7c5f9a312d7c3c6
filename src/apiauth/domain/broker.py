"""The running broker: the settings and the long-lived parts every service needs.

One `Broker` is opened per process (server or CLI command) and handed to the domain
functions; it holds no per-request state, so any number of replicas can share a database.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from threading import Event, Lock
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from apiauth.config import Settings, oauth_app_from_env
from apiauth.domain.audit import AuditBuffer
from apiauth.domain.read_caches import Answers, AuthCache, OpenedTokens, watch_writes
from apiauth.emulator import demo_client
from apiauth.errors import UrlNotAllowed
from apiauth.oauth.protocol import ClientCredentials
from apiauth.providers import Catalog, CatalogError, load_catalog
from apiauth.store.db import create_db_engine, session_factory, upgrade_database
from apiauth.store.models import ServerState, utcnow
from apiauth.url_policy import UrlPolicy, check_url
from apiauth.vault import Vault, open_vault

if TYPE_CHECKING:
    from apiauth.domain.sites import SiteCaller
    from apiauth.oauth.token_set import TokenSet

log = logging.getLogger(__name__)


@dataclass
class Broker:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    vault: Vault
    catalog: Catalog
    http: httpx.Client
    default_apps: Mapping[str, ClientCredentials]
    clock: Callable[[], datetime] = utcnow
    # Where deploy hooks, webhooks and custom providers may point (SSRF policy).
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    # Who holds a refresh lease: unique per process, readable in the database.
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"
    )
    # Refreshes in flight in this process, by connection id: concurrent readers share one.
    inflight: dict[str, Future[Any]] = field(default_factory=dict)
    inflight_lock: Lock = field(default_factory=Lock)
    # Set when a connection's refresh time may have moved earlier: the refresher wakes.
    refresh_wakeup: Event = field(default_factory=Event)
    # Secrets reads waiting to be written to the audit log by the delivery worker.
    audit_buffer: AuditBuffer = field(default_factory=AuditBuffer)
    # The read path's memories: tokens found valid (for at most a second) and connection
    # token sets already decrypted (keyed by ciphertext), whole answers (for at most a
    # second). See `read_caches`.
    site_tokens: AuthCache[SiteCaller] = field(default_factory=AuthCache)
    opened_tokens: OpenedTokens[TokenSet] = field(default_factory=OpenedTokens)
    answers: Answers = field(default_factory=Answers)

    def close(self) -> None:
        self.http.close()
        self.engine.dispose()


EMULATOR_URL_KEY = "emulator_url"


def emulator_url_for(settings: Settings, engine: Engine, *, demo: bool | None) -> str | None:
    """Where providers are emulated, if anywhere.

    `serve --demo` sends every provider to the emulator it mounts at /_emulator and records
    that in the database, so that CLI commands run beside it (`apiauth connect`) build the
    same URLs; `serve` without `--demo` clears the record. `demo=None` (the CLI) reads it.
    """
    if settings.emulator_url:
        return settings.emulator_url.rstrip("/")
    with Session(engine) as db, db.begin():
        if demo is None:
            state = db.get(ServerState, EMULATOR_URL_KEY)
            return state.value if state else None
        db.execute(delete(ServerState).where(ServerState.key == EMULATOR_URL_KEY))
        if not demo:
            return None
        url = settings.public_url.rstrip("/") + "/_emulator"
        db.add(ServerState(key=EMULATOR_URL_KEY, value=url))
        return url


def default_oauth_apps(catalog: Catalog, *, emulated: bool) -> dict[str, ClientCredentials]:
    """OAuth apps not stored per team: environment first, then the providers file, then (only
    when the providers are emulated) the emulator's demo credentials."""
    apps: dict[str, ClientCredentials] = {}
    for name, provider in catalog.items():
        env_id, env_secret = oauth_app_from_env(name)
        client_id = env_id or provider.client_id
        client_secret = env_secret or provider.client_secret
        if client_id is None and emulated:
            client_id, client_secret = demo_client(name)
        if client_id is not None:
            apps[name] = ClientCredentials(client_id, client_secret)
    return apps


def open_broker(settings: Settings, *, demo: bool | None = None) -> Broker:
    """Open storage (migrating it), the vault and the catalog. `demo`: True or False for
    `serve`, None for other commands, which follow what the server recorded."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    emulator_url = emulator_url_for(settings, engine, demo=demo)
    catalog = load_catalog(settings.providers_file, emulator_url=emulator_url)
    vault = open_vault(settings.master_key, settings.key_file)
    # Demo mode's emulator and hook receivers live on this machine: loopback is the point.
    url_policy = UrlPolicy(
        allow_loopback=settings.allow_loopback_urls or emulator_url is not None,
        allow_private=settings.allow_private_urls,
    )
    if emulator_url is None:
        check_custom_provider_urls(catalog, settings, url_policy)
    http = httpx.Client(
        timeout=settings.http_timeout_seconds,
        follow_redirects=False,
        headers={"User-Agent": "apiauth/0.1"},
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
    )
    broker = Broker(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        vault=vault,
        catalog=catalog,
        http=http,
        default_apps=default_oauth_apps(catalog, emulated=emulator_url is not None),
        url_policy=url_policy,
        site_tokens=AuthCache(seconds=settings.read_cache_seconds),
        answers=Answers(seconds=settings.read_cache_seconds),
    )
    # Any change to a connection made by this process forgets the remembered answers.
    watch_writes(engine, frozenset({"connections"}), broker.answers.clear)
    return broker


def check_custom_provider_urls(catalog: Catalog, settings: Settings, policy: UrlPolicy) -> None:
    """The URLs the server calls for a custom provider follow the URL policy, checked at
    start. (The authorization URL is opened by a person's browser, not by the server.)"""
    for provider in catalog.values():
        if provider.builtin:
            continue
        for field_name in ("token_url", "userinfo_url", "revoke_url"):
            url = getattr(provider, field_name)
            if url is None or url.startswith("{instance_url}"):
                continue
            try:
                sample = url.replace("{client_id}", "client-id")
                for param in provider.params:  # `{shop}.example.com`: check a sample host
                    sample = sample.replace("{" + param.name + "}", "param")
                check_url(sample, policy, field_name)
            except UrlNotAllowed as exc:
                raise CatalogError(
                    f"{settings.providers_file}: provider {provider.name!r}: "
                    f"field {field_name!r}: {exc.message}"
                ) from None
