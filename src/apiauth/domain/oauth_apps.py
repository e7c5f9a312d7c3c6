"""OAuth apps: the client id and secret a team registered with a provider.

A team's own app (stored, secret encrypted) wins over the server-wide one from
`APIAUTH_<PROVIDER>_CLIENT_ID/SECRET`, the providers file, or the demo emulator; for a
provider the team added by URL (`team_catalog`) it wins over the client apiauth registered
there itself. `TeamClients` answers both questions a call to a provider asks: which provider
(as the team sees it) and which client.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from apiauth.domain.team_catalog import TeamEntry, load_team_entries, with_own_client
from apiauth.errors import InvalidInput, NotFound, ProviderNotConfigured
from apiauth.oauth.protocol import ClientCredentials
from apiauth.providers import Provider
from apiauth.store.db import transaction
from apiauth.store.dialect import rows_matched
from apiauth.store.models import OAuthApp, new_id, utcnow
from apiauth.vault import record_aad

MAX_CREDENTIAL_LENGTH = 500
#: A PEM private key (`private_key_jwt`) is longer than any client secret.
MAX_PRIVATE_KEY_LENGTH = 16_000
#: A GitHub App's slug lands in its install URL's path, its id in the JWT's `iss`: GitHub's
#: slugs are lowercase letters, digits and hyphens; an id is digits (or the App's client id).
_APP_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")
_APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class OAuthAppView:
    provider: str
    client_id: str
    # "team", "server", or for a provider added by URL the client apiauth made itself:
    # "registered" (RFC 7591) or "metadata_document" (a Client ID Metadata Document)
    source: str
    app_slug: str | None = None


def _secret_aad(app_id: str) -> bytes:
    return record_aad("oauth_apps", app_id, "client_secret_enc")


def client_for(broker: Broker, team_id: str, provider: str) -> ClientCredentials:
    """The team's own OAuth app for the provider, else the server-wide one."""
    with broker.sessions() as db:
        clients = team_clients(broker, db, [team_id])
    return clients.get(team_id, provider)


def provider_for(broker: Broker, team_id: str, name: str) -> Provider:
    """The provider `name` as the team sees it (the catalog's, or the team's own added by
    URL), or NotFound naming the known ones. The team's own wins: a catalog entry of the
    same name that came later (a new built-in, an operator's custom entry) must not receive
    the tokens of connections made with the team's."""
    with broker.sessions() as db:
        clients = team_clients(broker, db, [team_id])
    provider = clients.provider(team_id, name)
    if provider is None:
        known = [*broker.catalog.names(), *clients.team_provider_names(team_id)]
        raise NotFound(f"no provider named {name!r}; known: {', '.join(known)}")
    return provider


class TeamClients:
    """The OAuth apps and providers added by URL of some teams, read at once (the refresher
    reads its batch's teams together), resolved the way `client_for` and `provider_for`
    resolve one."""

    def __init__(
        self,
        broker: Broker,
        own: Mapping[tuple[str, str], ClientCredentials],
        team_entries: Mapping[tuple[str, str], TeamEntry] | None = None,
    ) -> None:
        self._catalog = broker.catalog
        self._redirect_uri = broker.settings.redirect_uri
        self._default = broker.default_apps
        self._own = own
        self._team = team_entries or {}

    def provider(self, team_id: str, name: str) -> Provider | None:
        entry = self._team.get((team_id, name))
        if entry is None:
            return self._catalog.get(name)
        own = self._own.get((team_id, name))
        return entry.provider if own is None else with_own_client(entry.provider, own)

    def team_provider_names(self, team_id: str) -> list[str]:
        return [name for team, name in self._team if team == team_id]

    def get(self, team_id: str, provider: str) -> ClientCredentials:
        entry = self._team.get((team_id, provider))
        client = self._own.get((team_id, provider)) or (
            entry.client if entry is not None else self._default.get(provider)
        )
        if client is None and entry is not None:
            issuer = entry.provider.issuer or entry.provider.display_name
            raise ProviderNotConfigured(
                f"{provider} needs a client registered by hand: {issuer} offers neither "
                "dynamic registration nor Client ID Metadata Documents. Register a client "
                f"there with the redirect URI {self._redirect_uri}, then run "
                f"`apiauth apps set {provider} --client-id ID --client-secret-stdin`"
            )
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
    Only the decryption of a secret is remembered, by its ciphertext (`_open_secret`)."""
    own: dict[tuple[str, str], ClientCredentials] = {}
    if team_ids:
        rows = db.execute(
            select(
                OAuthApp.id,
                OAuthApp.team_id,
                OAuthApp.provider,
                OAuthApp.client_id,
                OAuthApp.client_secret_enc,
                OAuthApp.app_slug,
            ).where(OAuthApp.team_id.in_(set(team_ids)))
        )
        for row in rows:
            secret = (
                _open_secret(broker, row.id, row.client_secret_enc)
                if row.client_secret_enc
                else None
            )
            own[(row.team_id, row.provider)] = ClientCredentials(
                row.client_id, secret, row.app_slug
            )
    return TeamClients(broker, own, load_team_entries(broker, db, team_ids))


def _open_secret(broker: Broker, app_id: str, blob: bytes) -> str:
    """A client secret, decrypted once per ciphertext (`Runtime.opened_secrets`): a secret
    set again has a new ciphertext and is opened anew; a ciphertext moved to another row
    misses and is refused by the vault as before."""
    opened = broker.runtime.opened_secrets
    secret = opened.get((app_id, blob), broker.clock())
    if secret is None:
        began = opened.begin()
        secret = broker.vault.open_text(blob, _secret_aad(app_id))
        opened.put((app_id, blob), secret, None, began)
    return secret


def list_oauth_apps(broker: Broker, member: MemberView) -> list[OAuthAppView]:
    """The configured clients of the team's providers: its own apps, the server's, and those
    apiauth registered itself at providers added by URL (`registered`, `metadata_document`)."""
    with broker.sessions() as db:
        own = {
            app.provider: OAuthAppView(app.provider, app.client_id, "team", app.app_slug)
            for app in db.scalars(select(OAuthApp).where(OAuthApp.team_id == member.team_id))
        }
        entries = load_team_entries(broker, db, [member.team_id])
    views = []
    for name in broker.catalog:
        if name in own:
            views.append(own[name])
        elif name in broker.default_apps:
            views.append(OAuthAppView(name, broker.default_apps[name].client_id, "server"))
    for (_team, name), entry in entries.items():
        if name in own:
            views.append(own[name])
        elif entry.client is not None:
            views.append(OAuthAppView(name, entry.client.client_id, entry.kind))
    return views


def set_oauth_app(
    broker: Broker,
    member: MemberView,
    provider: str,
    client_id: str,
    client_secret: str | None,
    app_slug: str | None = None,
) -> OAuthAppView:
    """`client_secret` is, for a provider whose `token_auth_method` is `private_key_jwt`,
    the client's private key (PEM), checked here and stored encrypted like a secret. A
    GitHub App (`github_app`) is its id (`client_id`), private key and `app_slug`."""
    found = provider_for(broker, member.team_id, provider)  # NotFound for an unknown one
    private_key = found.token_auth_method == "private_key_jwt"  # noqa: S105
    if private_key or found.auth_mode in ("jwt_bearer", "github_app"):
        _check_private_key(client_secret)
    if found.auth_mode == "github_app":
        client_id = client_id.strip()
        if not _APP_ID.fullmatch(client_id):
            raise InvalidInput("a GitHub App id is its number (or its client id)")
        if app_slug is None or not _APP_SLUG.fullmatch(app_slug):
            raise InvalidInput(
                "a GitHub App needs its slug (the name in https://github.com/apps/SLUG): "
                "lowercase letters, digits and hyphens"
            )
    elif app_slug is not None:
        raise InvalidInput(f"{found.display_name} is not a GitHub App: it takes no slug")
    with transaction(broker.sessions) as db:
        return store_oauth_app(
            broker, db, member.team_id, provider, client_id, client_secret, app_slug
        )


def store_oauth_app(
    broker: Broker,
    db: Session,
    team_id: str,
    provider: str,
    client_id: str,
    client_secret: str | None,
    app_slug: str | None = None,
) -> OAuthAppView:
    """Write a team's app in the caller's transaction (a provider added by URL with a client
    registered by hand stores both at once)."""
    client_id = client_id.strip()
    if not 1 <= len(client_id) <= MAX_CREDENTIAL_LENGTH:
        raise InvalidInput(f"a client id has 1 to {MAX_CREDENTIAL_LENGTH} characters")
    longest = (
        MAX_PRIVATE_KEY_LENGTH
        if client_secret is not None and client_secret.startswith("-----BEGIN")
        else MAX_CREDENTIAL_LENGTH
    )
    if client_secret is not None and not 1 <= len(client_secret) <= longest:
        raise InvalidInput(f"a client secret has 1 to {longest} characters")
    app = db.scalar(
        select(OAuthApp).where(OAuthApp.team_id == team_id, OAuthApp.provider == provider)
    )
    if app is None:
        app = OAuthApp(id=new_id("app"), team_id=team_id, provider=provider)
        db.add(app)
    app.client_id = client_id
    app.client_secret_enc = (
        broker.vault.seal_text(client_secret, _secret_aad(app.id)) if client_secret else None
    )
    app.app_slug = app_slug
    app.updated_at = utcnow()
    return OAuthAppView(provider, client_id, "team", app_slug)


def _check_private_key(pem: str | None) -> None:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not pem:
        raise InvalidInput(
            "this provider authenticates with a private key: give it (PEM, --private-key-file)"
        )
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidInput("the private key is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise InvalidInput("the private key must be an RSA key (RS256)")


def remove_oauth_app(broker: Broker, member: MemberView, provider: str) -> None:
    with transaction(broker.sessions) as db:
        gone = db.execute(
            delete(OAuthApp).where(
                OAuthApp.team_id == member.team_id, OAuthApp.provider == provider
            )
        )
        if rows_matched(gone) == 0:
            raise NotFound(f"the team has no OAuth app of its own for {provider}")
