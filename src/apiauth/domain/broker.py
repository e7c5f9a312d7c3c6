"""The running broker: the settings and the long-lived parts every service needs.

One `Broker` is opened per process (server or CLI command) and handed to the domain
functions; it holds no per-request state, so any number of replicas can share a database.
It holds the infrastructure (database, vault, catalog, HTTP client, settings, URL policy);
what the process coordinates in memory is its `runtime` (`runtime.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from argon2 import PasswordHasher
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from apiauth import __version__
from apiauth.config import Settings, oauth_app_from_env
from apiauth.domain.master_keys import open_keys
from apiauth.domain.read_caches import watch_writes
from apiauth.domain.runtime import Runtime
from apiauth.errors import UrlNotAllowed
from apiauth.metrics import Metrics
from apiauth.oauth.protocol import ClientCredentials
from apiauth.providers import (
    KEY_MODES,
    Catalog,
    CatalogError,
    Provider,
    demo_client,
    load_catalog,
)
from apiauth.store.db import create_db_engine, session_factory, upgrade_database
from apiauth.store.models import ServerState, utcnow
from apiauth.url_policy import GuardedTransport, UrlPolicy, check_url
from apiauth.vault import Vault

log = logging.getLogger(__name__)

USER_AGENT = f"apiauth/{__version__}"


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
    # Where deploy hooks and webhooks may point (SSRF policy)...
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    # ... and providers: the same, plus the operator's provider hosts (`url_policy`).
    provider_url_policy: UrlPolicy = field(default_factory=lambda: UrlPolicy(providers=True))
    # Calls to providers whose URLs came from outside the built-in catalog (custom providers,
    # providers added by URL, metadata they publish): each checked before it is sent.
    guarded_http: httpx.Client | None = None
    # Members' passwords: Argon2id with the library's recommended parameters (RFC 9106).
    password_hasher: PasswordHasher = field(default_factory=PasswordHasher)
    # In-flight refreshes, worker wake-ups, the read path's memories, the audit buffer.
    runtime: Runtime = field(default_factory=Runtime)

    def http_for(self, provider: Provider) -> httpx.Client:
        """The client for a provider's calls: built-in ones (URLs reviewed in the catalog)
        go straight out; others, and built-in ones whose URLs take a host the provider or
        the person chose (`Provider.urls_reviewed`, `Provider.calls_chosen_urls`: Salesforce's
        `instance_url`), through the URL policy, checked before each call."""
        if (provider.urls_reviewed and not provider.calls_chosen_urls) or self.guarded_http is None:
            return self.http
        return self.guarded_http

    def close(self) -> None:
        self.http.close()
        if self.guarded_http is not None:
            self.guarded_http.close()
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
    for providers sent to the emulator) the emulator's demo credentials."""
    apps: dict[str, ClientCredentials] = {}
    for name, provider in catalog.items():
        if provider.auth_mode in KEY_MODES:
            continue  # a pasted key needs no OAuth app
        env_id, env_secret = oauth_app_from_env(name)
        client_id = env_id or provider.client_id
        client_secret = env_secret or provider.client_secret
        if client_id is None and emulated and (provider.builtin or provider.emulate):
            client_id, client_secret = demo_client(name)
        if client_id is not None:
            apps[name] = ClientCredentials(client_id, client_secret)
    return apps


def open_broker(settings: Settings, *, demo: bool | None = None) -> Broker:
    """Open storage (migrating it), the vault and the catalog. `demo`: True or False for
    `serve`, None for other commands, which follow what the server recorded."""
    # Owner only: it holds the key file and (by default) the SQLite database.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    emulator_url = emulator_url_for(settings, engine, demo=demo)
    catalog = load_catalog(settings.providers_file, emulator_url=emulator_url)
    sessions = session_factory(engine)
    metrics = Metrics(enabled=settings.metrics_enabled, version=__version__)
    vault = Vault(open_keys(settings, sessions, metrics=metrics, clock=utcnow))
    # Demo mode's emulator and hook receivers live on this machine: loopback is the point.
    url_policy = UrlPolicy(
        allow_loopback=settings.allow_loopback_urls or emulator_url is not None,
        allow_private=settings.allow_private_urls,
    )
    # The operator's own providers may be on the private network (`APIAUTH_PROVIDER_HOSTS`).
    provider_url_policy = url_policy.for_providers(settings.provider_host_names)
    check_custom_provider_urls(catalog, settings, provider_url_policy)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    http = httpx.Client(
        timeout=settings.http_timeout_seconds,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        limits=limits,
    )
    guarded_http = httpx.Client(
        transport=GuardedTransport(provider_url_policy, limits=limits),
        timeout=settings.http_timeout_seconds,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
    broker = Broker(
        settings=settings,
        engine=engine,
        sessions=sessions,
        vault=vault,
        catalog=catalog,
        http=http,
        default_apps=default_oauth_apps(catalog, emulated=emulator_url is not None),
        url_policy=url_policy,
        provider_url_policy=provider_url_policy,
        guarded_http=guarded_http,
        runtime=Runtime.open(settings.read_cache_seconds, metrics),
    )
    # (Imported here: the gauges read through modules that themselves import this one.)
    from apiauth.domain.scraped_gauges import BrokerGauges

    metrics.register(BrokerGauges(broker))
    # Any change to a connection made by this process forgets the remembered answers.
    watch_writes(engine, frozenset({"connections"}), broker.runtime.answers.clear)
    return broker


def check_custom_provider_urls(catalog: Catalog, settings: Settings, policy: UrlPolicy) -> None:
    """The URLs the server calls for a custom provider follow the URL policy, checked at
    start. (The authorization URL is opened by a person's browser, not by the server.)"""
    for provider in catalog.values():
        if provider.builtin:
            continue
        for field_name in ("token_url", "userinfo_url", "revoke_url"):
            url = getattr(provider, field_name)
            if not url or url.startswith("{instance_url}"):
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
