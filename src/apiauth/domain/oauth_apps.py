"""OAuth apps: the client id and secret a team registered with a provider.

A team's own app (stored, secret encrypted) wins over the server-wide one from
`APIAUTH_<PROVIDER>_CLIENT_ID/SECRET`, the providers file, or the demo emulator.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.errors import InvalidInput, NotFound, ProviderNotConfigured
from apiauth.oauth.protocol import ClientCredentials
from apiauth.store.db import transaction
from apiauth.store.models import OAuthApp, new_id, utcnow
from apiauth.vault import Vault, record_aad

MAX_CREDENTIAL_LENGTH = 500


@dataclass(frozen=True)
class OAuthAppView:
    provider: str
    client_id: str
    source: str  # "team" or "server"


def _secret_aad(app_id: str) -> bytes:
    return record_aad("oauth_apps", app_id, "client_secret_enc")


def client_for(broker: Broker, team_id: str, provider: str) -> ClientCredentials:
    """The team's own OAuth app for the provider, else the server-wide one."""
    with broker.sessions() as db:
        clients = team_clients(broker, db, [team_id])
    return clients.get(team_id, provider)


class TeamClients:
    """The OAuth apps of some teams, read in one query (the refresher reads its batch's
    teams at once), resolved the way `client_for` resolves one."""

    def __init__(self, broker: Broker, own: Mapping[tuple[str, str], ClientCredentials]) -> None:
        self._default = broker.default_apps
        self._own = own

    def get(self, team_id: str, provider: str) -> ClientCredentials:
        client = self._own.get((team_id, provider)) or self._default.get(provider)
        if client is None:
            stem = "APIAUTH_" + provider.upper().replace("-", "_")
            raise ProviderNotConfigured(
                f"no OAuth app is configured for {provider}: set {stem}_CLIENT_ID and "
                f"{stem}_CLIENT_SECRET, run `apiauth apps set {provider}`, or run "
                "`apiauth serve --demo` to use the emulator"
            )
        return client


def team_clients(broker: Broker, db: Session, team_ids: Collection[str]) -> TeamClients:
    """The teams' own apps, read now: a changed or removed app is used from the next read on.
    Only the decryption of a secret is remembered, by its ciphertext (`_OpenedSecrets`)."""
    own: dict[tuple[str, str], ClientCredentials] = {}
    if team_ids:
        rows = db.execute(
            select(
                OAuthApp.id,
                OAuthApp.team_id,
                OAuthApp.provider,
                OAuthApp.client_id,
                OAuthApp.client_secret_enc,
            ).where(OAuthApp.team_id.in_(set(team_ids)))
        )
        for row in rows:
            secret = (
                _opened_secrets.open(broker, row.id, row.client_secret_enc)
                if row.client_secret_enc
                else None
            )
            own[(row.team_id, row.provider)] = ClientCredentials(row.client_id, secret)
    return TeamClients(broker, own)


class _OpenedSecrets:
    """Client secrets already decrypted, per vault, keyed by app id and ciphertext: a secret
    set again has a new ciphertext and is opened anew; a ciphertext moved to another row or
    another vault's database misses and is refused by the vault as before. Bounded."""

    capacity = 1_000

    def __init__(self) -> None:
        self._by_vault: weakref.WeakKeyDictionary[Vault, dict[tuple[str, bytes], str]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def open(self, broker: Broker, app_id: str, blob: bytes) -> str:
        with self._lock:
            opened = self._by_vault.setdefault(broker.vault, {})
            secret = opened.get((app_id, blob))
        if secret is None:
            secret = broker.vault.open_text(blob, _secret_aad(app_id))
            with self._lock:
                if len(opened) >= self.capacity:
                    opened.clear()
                opened[(app_id, blob)] = secret
        return secret


_opened_secrets = _OpenedSecrets()


def list_oauth_apps(broker: Broker, member: MemberView) -> list[OAuthAppView]:
    with broker.sessions() as db:
        own = {
            app.provider: OAuthAppView(app.provider, app.client_id, "team")
            for app in db.scalars(select(OAuthApp).where(OAuthApp.team_id == member.team_id))
        }
    views = []
    for name in broker.catalog:
        if name in own:
            views.append(own[name])
        elif name in broker.default_apps:
            views.append(OAuthAppView(name, broker.default_apps[name].client_id, "server"))
    return views


def set_oauth_app(
    broker: Broker, member: MemberView, provider: str, client_id: str, client_secret: str | None
) -> OAuthAppView:
    if provider not in broker.catalog:
        raise NotFound(f"no provider named {provider!r}")
    client_id = client_id.strip()
    if not 1 <= len(client_id) <= MAX_CREDENTIAL_LENGTH:
        raise InvalidInput(f"a client id has 1 to {MAX_CREDENTIAL_LENGTH} characters")
    if client_secret is not None and not 1 <= len(client_secret) <= MAX_CREDENTIAL_LENGTH:
        raise InvalidInput(f"a client secret has 1 to {MAX_CREDENTIAL_LENGTH} characters")
    with transaction(broker.sessions) as db:
        app = db.scalar(
            select(OAuthApp).where(
                OAuthApp.team_id == member.team_id, OAuthApp.provider == provider
            )
        )
        if app is None:
            app = OAuthApp(id=new_id("app"), team_id=member.team_id, provider=provider)
            db.add(app)
        app.client_id = client_id
        app.client_secret_enc = (
            broker.vault.seal_text(client_secret, _secret_aad(app.id)) if client_secret else None
        )
        app.updated_at = utcnow()
    return OAuthAppView(provider, client_id, "team")


def remove_oauth_app(broker: Broker, member: MemberView, provider: str) -> None:
    with transaction(broker.sessions) as db:
        gone = db.execute(
            delete(OAuthApp).where(
                OAuthApp.team_id == member.team_id, OAuthApp.provider == provider
            )
        )
        if getattr(gone, "rowcount", 0) == 0:
            raise NotFound(f"the team has no OAuth app of its own for {provider}")
