"""OAuth apps: the client id and secret a team registered with a provider.

A team's own app (stored, secret encrypted) wins over the server-wide one from
`APIAUTH_<PROVIDER>_CLIENT_ID/SECRET`, the providers file, or the demo emulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.errors import InvalidInput, NotFound, ProviderNotConfigured
from apiauth.oauth.protocol import ClientCredentials
from apiauth.store.db import transaction
from apiauth.store.models import OAuthApp, new_id, utcnow
from apiauth.vault import record_aad

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
        app = db.scalar(
            select(OAuthApp).where(OAuthApp.team_id == team_id, OAuthApp.provider == provider)
        )
    if app is not None:
        secret = (
            broker.vault.open_text(app.client_secret_enc, _secret_aad(app.id))
            if app.client_secret_enc
            else None
        )
        return ClientCredentials(app.client_id, secret)
    default = broker.default_apps.get(provider)
    if default is None:
        stem = "APIAUTH_" + provider.upper().replace("-", "_")
        raise ProviderNotConfigured(
            f"no OAuth app is configured for {provider}: set {stem}_CLIENT_ID and "
            f"{stem}_CLIENT_SECRET, run `apiauth apps set {provider}`, or run "
            "`apiauth serve --demo` to use the emulator"
        )
    return default


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
