"""The providers one team can connect: the server's catalog (built-in and custom entries) and
the team's own providers added by URL (`team_providers`), each read as a catalog entry.

A team provider is stored as its catalog table and parsed with the catalog's own rules, so it
is a provider like any other everywhere else (connect, refresh, proxy, revoke); it is never
emulated, and its calls go through the URL policy (`Broker.http_for`). Its client is the one
apiauth registered there (RFC 7591) or its Client ID Metadata Document URL, unless the team
set an OAuth app of its own for it, which always wins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.errors import NotFound
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.registration import Registration
from apiauth.providers import (
    Catalog,
    CatalogError,
    Provider,
    TokenAuthMethod,
    parse_provider_entry,
)
from apiauth.store.models import Site, TeamProvider
from apiauth.vault import record_aad

__all__ = [
    "METADATA_DOCUMENT",
    "NO_CLIENT",
    "REGISTERED",
    "ClientKind",
    "TeamEntry",
    "load_team_entries",
    "open_registration",
    "providers_of_team",
    "registration_aad",
    "seal_registration",
    "team_of_site",
    "with_own_client",
]

log = logging.getLogger(__name__)

ClientKind = Literal["registered", "metadata_document", "none"]
REGISTERED: ClientKind = "registered"  # RFC 7591 dynamic client registration
METADATA_DOCUMENT: ClientKind = "metadata_document"  # a Client ID Metadata Document
NO_CLIENT: ClientKind = "none"  # the team must register a client by hand


CONFIDENTIAL_METHODS = frozenset({"client_secret_basic", "client_secret_post"})


@dataclass(frozen=True)
class TeamEntry:
    """A team's provider added by URL, ready to use, and the client apiauth has there."""

    provider: Provider
    kind: ClientKind
    client: ClientCredentials | None


def registration_aad(row_id: str) -> bytes:
    return record_aad("team_providers", row_id, "registration_enc")


def open_registration(broker: Broker, row_id: str, blob: bytes) -> Registration:
    """The dynamic registration sealed on a team provider's row."""
    return Registration.from_json(
        json.loads(broker.vault.open_text(blob, registration_aad(row_id)))
    )


def seal_registration(broker: Broker, row_id: str, registration: Registration) -> bytes:
    return broker.vault.seal_text(json.dumps(registration.to_json()), registration_aad(row_id))


def load_team_entries(
    broker: Broker, db: Session, team_ids: Collection[str]
) -> dict[tuple[str, str], TeamEntry]:
    """The teams' providers added by URL, by (team id, name). An entry that no longer parses
    (a newer apiauth refused a field) is left out and logged, never half-used."""
    entries: dict[tuple[str, str], TeamEntry] = {}
    if not team_ids:
        return entries
    rows = db.execute(
        select(
            TeamProvider.id,
            TeamProvider.team_id,
            TeamProvider.name,
            TeamProvider.entry,
            TeamProvider.client_kind,
            TeamProvider.client_id,
            TeamProvider.registration_enc,
        ).where(TeamProvider.team_id.in_(set(team_ids)))
    )
    for row in rows:
        try:
            provider = parse_provider_entry(row.name, row.entry, "team provider")
        except CatalogError as exc:
            log.warning("team provider %s is unusable: %s", row.name, exc)
            continue
        client: ClientCredentials | None = None
        if row.client_kind == REGISTERED and row.registration_enc is not None:
            registration = open_registration(broker, row.id, row.registration_enc)
            client = ClientCredentials(registration.client_id, registration.client_secret)
        elif row.client_kind == METADATA_DOCUMENT and row.client_id:
            client = ClientCredentials(row.client_id, None)
        entries[(row.team_id, row.name)] = TeamEntry(provider, row.client_kind, client)
    return entries


def with_own_client(provider: Provider, own: ClientCredentials) -> Provider:
    """A team provider used with an OAuth app the team registered by hand: the entry's
    client authentication was chosen for apiauth's own registration, so it follows the
    hand-made client instead (with a secret: HTTP Basic, which RFC 6749 §2.3.1 makes every
    server accept; without one: a public client)."""
    method: TokenAuthMethod = "client_secret_basic" if own.client_secret else "none"
    if provider.token_auth_method == method:
        return provider
    if own.client_secret and provider.token_auth_method in CONFIDENTIAL_METHODS:
        return provider  # Basic or post: either carries the secret
    return replace(provider, token_auth_method=method)


def providers_of_team(broker: Broker, team_id: str) -> Catalog:
    """Every provider the team can connect: the server's catalog, then its own."""
    with broker.sessions() as db:
        entries = load_team_entries(broker, db, [team_id])
    return Catalog([*broker.catalog.values(), *(e.provider for e in entries.values())])


def team_of_site(broker: Broker, site_id: str) -> str:
    with broker.sessions() as db:
        team_id = db.scalar(select(Site.team_id).where(Site.id == site_id))
    if team_id is None:
        raise NotFound("the site was deleted")
    return team_id
