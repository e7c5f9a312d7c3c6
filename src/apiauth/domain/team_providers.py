"""Providers a team adds from one URL: an OAuth issuer, or a protected resource such as an
MCP server (`oauth.discovery`), saved as a catalog entry of the team's.

Adding one finds the server, picks the client apiauth will be there, and stores the entry:
- an OAuth app the owner gives (registered by hand) always wins;
- else a Client ID Metadata Document, when the server reads them and apiauth's document is
  reachable for it (`client_metadata_usable`);
- else dynamic client registration (RFC 7591), the credentials sealed for the team and the
  registration managed with RFC 7592 (read on re-checks, deleted with the provider);
- else the provider is saved without a client, and the message says to register one by hand
  with the redirect URI.
Either the whole provider is stored or nothing is: a registration made for a provider that
then cannot be stored is deleted again.

Stored providers are re-checked by `provider_rechecks`; a server found by URL becomes a
catalog entry in `provider_entries`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, require_owner
from apiauth.domain.oauth_apps import store_oauth_app
from apiauth.domain.provider_entries import (
    catalog_entry,
    display_name_of,
    host_of,
    offered_scopes,
    slug,
    with_defaults,
)
from apiauth.domain.team_catalog import (
    METADATA_DOCUMENT,
    NO_CLIENT,
    REGISTERED,
    ClientKind,
    open_registration,
    seal_registration,
)
from apiauth.errors import ApiAuthServerError, Conflict, DiscoveryFailed, InvalidInput, NotFound
from apiauth.oauth import discovery, registration
from apiauth.oauth.discovery import Discovered, ServerMetadata
from apiauth.oauth.registration import Registration
from apiauth.providers import CatalogError, Scope, parse_provider_entry
from apiauth.store.db import transaction
from apiauth.store.models import Connection, OAuthApp, Site, TeamProvider, new_id
from apiauth.url_policy import check_url

__all__ = [
    "METADATA_DOCUMENT",
    "NO_CLIENT",
    "REGISTERED",
    "AddedProvider",
    "FoundProvider",
    "RemovedProvider",
    "TeamProviderView",
    "add_found_provider",
    "add_provider",
    "client_metadata_usable",
    "find_provider",
    "find_row",
    "get_team_provider",
    "guarded_http",
    "list_team_providers",
    "opened_registration",
    "remove_provider",
    "url_check",
]

log = logging.getLogger(__name__)

# A name for the provider when none is given: its host, in catalog-name form.
_NAME_CHARS = re.compile(r"[^a-z0-9_-]+")
_NAME_RE = re.compile(r"\A[a-z][a-z0-9_-]{0,62}\Z")


@dataclass(frozen=True)
class FoundProvider:
    """What a URL led to, before anything is stored (what `providers add` shows)."""

    url: str
    name: str
    display_name: str
    discovered: Discovered
    scopes: tuple[Scope, ...]
    client_plan: ClientKind

    @property
    def issuer(self) -> str:
        return self.discovered.server.issuer

    @property
    def resource(self) -> str | None:
        return self.discovered.resource.resource if self.discovered.resource else None


@dataclass(frozen=True)
class TeamProviderView:
    name: str
    display_name: str
    source_url: str
    issuer: str
    resource: str | None
    client_kind: ClientKind
    client_id: str | None
    has_own_app: bool
    scopes: tuple[Scope, ...]
    checked_at: datetime
    check_error: str | None
    refused_change: str | None
    redirect_uri: str

    @property
    def needs_client(self) -> bool:
        return self.client_kind == NO_CLIENT and not self.has_own_app

    def client_description(self) -> str:
        if self.has_own_app:
            return "the team's own OAuth app"
        if self.client_kind == REGISTERED:
            return f"registered dynamically (RFC 7591), client id {self.client_id}"
        if self.client_kind == METADATA_DOCUMENT:
            return f"Client ID Metadata Document {self.client_id}"
        return "none yet: register one by hand"


@dataclass(frozen=True)
class AddedProvider:
    view: TeamProviderView
    message: str


@dataclass(frozen=True)
class RemovedProvider:
    name: str
    registration_deleted: bool


def url_check(broker: Broker) -> discovery.UrlCheck:
    """The URL policy of provider URLs, for URLs found in metadata (checked at input here,
    and again before each call by the guarded client)."""

    def check(url: str, what: str) -> None:
        check_url(url, broker.provider_url_policy, what)

    return check


def guarded_http(broker: Broker) -> Any:
    assert broker.guarded_http is not None, "open the broker with open_broker()"
    return broker.guarded_http


def client_metadata_usable(broker: Broker, server: ServerMetadata) -> bool:
    """Whether the server can read apiauth's Client ID Metadata Document: it says it reads
    them, and the document's URL is https, or both sides are this machine (a demo)."""
    if not server.client_id_metadata_document_supported:
        return False
    document = urlsplit(broker.settings.client_metadata_url)
    if document.scheme == "https":
        return True
    local = ("127.0.0.1", "localhost", "::1")
    return document.hostname in local and urlsplit(server.issuer).hostname in local


def find_provider(
    broker: Broker,
    member: MemberView,
    url: str,
    *,
    name: str | None = None,
    allow_without_pkce: bool = False,
) -> FoundProvider:
    """Follow `url` to its authorization server and say what adding it would make. Stores
    nothing; raises `DiscoveryFailed` or `UrlNotAllowed` with what to do."""
    check_url(url.strip(), broker.provider_url_policy, "provider URL")
    found = discovery.discover(
        guarded_http(broker), url, url_check(broker), allow_without_pkce=allow_without_pkce
    )
    chosen_name = _choose_name(broker, member.team_id, name, found)
    server = found.server
    public_clients = registration.PUBLIC_CLIENT in server.token_endpoint_auth_methods_supported
    if client_metadata_usable(broker, server) and public_clients:
        plan: ClientKind = METADATA_DOCUMENT
    elif server.registration_endpoint:
        plan = REGISTERED
    else:
        plan = NO_CLIENT
    return FoundProvider(
        url=found.url,
        name=chosen_name,
        display_name=display_name_of(found),
        discovered=found,
        scopes=offered_scopes(found),
        client_plan=plan,
    )


def add_provider(
    broker: Broker,
    member: MemberView,
    url: str,
    *,
    name: str | None = None,
    scopes: Sequence[str] | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    allow_without_pkce: bool = False,
) -> AddedProvider:
    """Find the server behind `url` and save it as a provider of the member's team (owners
    only). `scopes` become the ticked defaults (else the server's suggestions); `client_id`
    / `client_secret` are a client registered by hand, which wins over registering one."""
    require_owner(member, "add providers")
    found = find_provider(broker, member, url, name=name, allow_without_pkce=allow_without_pkce)
    return add_found_provider(
        broker,
        member,
        found,
        scopes=scopes,
        client_id=client_id,
        client_secret=client_secret,
        allow_without_pkce=allow_without_pkce,
    )


def add_found_provider(
    broker: Broker,
    member: MemberView,
    found: FoundProvider,
    *,
    scopes: Sequence[str] | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    allow_without_pkce: bool = False,
) -> AddedProvider:
    """`add_provider` for what `find_provider` found (the command line shows it first)."""
    require_owner(member, "add providers")
    offered = with_defaults(found.scopes, scopes)
    server = found.discovered.server
    own_client = client_id is not None and client_id.strip() != ""
    made: Registration | None = None
    if own_client:
        kind: ClientKind = NO_CLIENT
        fitting = [
            m
            for m in server.usable_auth_methods()
            if (m != registration.PUBLIC_CLIENT) == bool(client_secret)
        ]
        if not fitting:
            needs = "a client secret" if not client_secret else "no secret (a public client)"
            raise InvalidInput(f"{server.issuer} needs {needs} for the clients it accepts")
        auth_method = fitting[0]
    elif found.client_plan == METADATA_DOCUMENT:
        kind, auth_method = METADATA_DOCUMENT, registration.PUBLIC_CLIENT
        if auth_method not in server.token_endpoint_auth_methods_supported:
            raise DiscoveryFailed(
                f"{server.issuer} reads Client ID Metadata Documents but takes no public "
                "clients (token endpoint authentication 'none'); give a client id"
            )
    elif found.client_plan == REGISTERED:
        assert server.registration_endpoint is not None
        made = registration.register_client(
            guarded_http(broker),
            server.registration_endpoint,
            broker.settings.redirect_uri,
            server.usable_auth_methods(),
            url_check(broker),
            client_uri=broker.settings.public_url,
        )
        kind, auth_method = REGISTERED, made.token_endpoint_auth_method
    else:
        kind, auth_method = NO_CLIENT, server.usable_auth_methods()[0]
    try:
        view = _store(
            broker,
            member,
            found,
            offered,
            kind,
            auth_method,
            made,
            allow_without_pkce,
            (client_id.strip(), client_secret) if own_client and client_id else None,
        )
    except BaseException:
        if made is not None:
            _forget_registration(broker, made)
        raise
    return AddedProvider(view, _added_message(broker, view))


def _store(
    broker: Broker,
    member: MemberView,
    found: FoundProvider,
    scopes: tuple[Scope, ...],
    kind: ClientKind,
    auth_method: str,
    made: Registration | None,
    allow_without_pkce: bool,
    own_app: tuple[str, str | None] | None,
) -> TeamProviderView:
    entry = catalog_entry(found.discovered, found.display_name, scopes, auth_method)
    try:
        parse_provider_entry(found.name, entry, "the discovered provider")
    except CatalogError as exc:
        raise DiscoveryFailed(f"the server's metadata makes no usable provider: {exc}") from None
    now = broker.clock()
    row_id = new_id("tpr")
    client_id = (
        made.client_id
        if made is not None
        else broker.settings.client_metadata_url
        if kind == METADATA_DOCUMENT
        else None
    )
    server = found.discovered.server
    try:
        with transaction(broker.sessions) as db:
            row = TeamProvider(
                id=row_id,
                team_id=member.team_id,
                name=found.name,
                source_url=found.url,
                issuer=server.issuer,
                resource=found.resource,
                resource_metadata_url=(
                    found.discovered.resource.metadata_url if found.discovered.resource else None
                ),
                entry=entry,
                server_metadata=server.snapshot(),
                client_kind=kind,
                client_id=client_id,
                registration_enc=(
                    seal_registration(broker, row_id, made) if made is not None else None
                ),
                allow_without_pkce=allow_without_pkce,
                checked_at=now,
                next_check_at=now + timedelta(seconds=broker.settings.provider_recheck_seconds),
                created_by=member.email,
            )
            db.add(row)
            db.flush()
            if own_app is not None:
                store_oauth_app(broker, db, member.team_id, found.name, *own_app)
            return _view(broker, row, has_own_app=own_app is not None)
    except IntegrityError:
        raise Conflict(f"the team already has a provider named {found.name!r}") from None


def list_team_providers(broker: Broker, member: MemberView) -> list[TeamProviderView]:
    with broker.sessions() as db:
        rows = list(
            db.scalars(
                select(TeamProvider)
                .where(TeamProvider.team_id == member.team_id)
                .order_by(TeamProvider.name)
            )
        )
        own = set(db.scalars(select(OAuthApp.provider).where(OAuthApp.team_id == member.team_id)))
        return [_view(broker, row, has_own_app=row.name in own) for row in rows]


def get_team_provider(broker: Broker, member: MemberView, name: str) -> TeamProviderView:
    with broker.sessions() as db:
        row = find_row(db, member.team_id, name)
        own = db.scalar(
            select(OAuthApp.id).where(OAuthApp.team_id == member.team_id, OAuthApp.provider == name)
        )
        return _view(broker, row, has_own_app=own is not None)


def remove_provider(
    broker: Broker, member: MemberView, name: str, *, keep_registration: bool = False
) -> RemovedProvider:
    """Remove a team provider (owners only), deleting apiauth's registration at the server
    (RFC 7592) unless told to keep it. Refused while a site of the team is connected to it."""
    require_owner(member, "remove providers")
    with broker.sessions() as db:
        row = find_row(db, member.team_id, name)
        connected = sorted(
            db.scalars(
                select(Site.name)
                .join(Connection, Connection.site_id == Site.id)
                .where(Site.team_id == member.team_id, Connection.provider == name)
                .distinct()
            )
        )
        made = opened_registration(broker, row)
    if connected:
        raise Conflict(
            f"{name} is connected on {', '.join(connected)}: disconnect those first "
            f"(`apiauth connections delete SITE {name}`)"
        )
    deleted = False
    if made is not None and made.manageable and not keep_registration:
        try:
            deleted = registration.delete_registration(guarded_http(broker), made)
        except ApiAuthServerError as exc:
            raise Conflict(
                f"could not delete apiauth's client registration at {row.issuer}: "
                f"{exc.message}; try again, or remove the provider keeping the registration"
            ) from None
    with transaction(broker.sessions) as db:
        db.execute(delete(TeamProvider).where(TeamProvider.id == row.id))
        db.execute(
            delete(OAuthApp).where(OAuthApp.team_id == member.team_id, OAuthApp.provider == name)
        )
    return RemovedProvider(name, deleted)


# --- pieces ------------------------------------------------------------------------------------


def find_row(db: Any, team_id: str, name: str) -> TeamProvider:
    row = db.scalar(
        select(TeamProvider).where(TeamProvider.team_id == team_id, TeamProvider.name == name)
    )
    if row is None:
        raise NotFound(f"the team has no provider added by URL named {name!r}")
    assert isinstance(row, TeamProvider)
    return row


def opened_registration(broker: Broker, row: TeamProvider) -> Registration | None:
    if row.registration_enc is None:
        return None
    return open_registration(broker, row.id, row.registration_enc)


def _forget_registration(broker: Broker, made: Registration) -> None:
    """A registration whose provider could not be stored: delete it where the server lets us."""
    try:
        registration.delete_registration(guarded_http(broker), made)
    except ApiAuthServerError as exc:
        log.warning("could not delete an unused client registration: %s", exc.message)


def _view(broker: Broker, row: TeamProvider, *, has_own_app: bool) -> TeamProviderView:
    try:
        scopes = parse_provider_entry(row.name, row.entry, "team provider").scopes
    except CatalogError:
        scopes = ()
    kind: ClientKind = (
        REGISTERED
        if row.client_kind == REGISTERED
        else METADATA_DOCUMENT
        if row.client_kind == METADATA_DOCUMENT
        else NO_CLIENT
    )
    return TeamProviderView(
        name=row.name,
        display_name=str(row.entry.get("display_name", row.name)),
        source_url=row.source_url,
        issuer=row.issuer,
        resource=row.resource,
        client_kind=kind,
        client_id=row.client_id,
        has_own_app=has_own_app,
        scopes=scopes,
        checked_at=row.checked_at,
        check_error=row.check_error,
        refused_change=row.refused_change,
        redirect_uri=broker.settings.redirect_uri,
    )


def _added_message(broker: Broker, view: TeamProviderView) -> str:
    what = f"{view.name} ({view.display_name}) added: issuer {view.issuer}"
    if view.resource:
        what += f", resource {view.resource}"
    if view.needs_client:
        return (
            f"{what}. The server offers neither dynamic client registration nor Client ID "
            f"Metadata Documents: register a client there with the redirect URI "
            f"{view.redirect_uri}, then run `apiauth apps set {view.name} --client-id ID "
            "--client-secret-stdin`"
        )
    return f"{what}; client: {view.client_description()}"


def _choose_name(broker: Broker, team_id: str, name: str | None, found: Discovered) -> str:
    if name is not None:
        chosen = name.strip()
        if not _NAME_RE.match(chosen):
            raise InvalidInput(
                "a provider name starts with a lowercase letter and holds only a-z, 0-9, "
                "'_' and '-' (at most 63 characters)"
            )
    elif found.resource is not None and found.resource.resource_name:
        chosen = slug(found.resource.resource_name)
    else:
        chosen = slug(host_of(found.resource.resource if found.resource else found.server.issuer))
    if chosen in broker.catalog:
        raise Conflict(f"{chosen!r} is the name of a catalog provider: choose another (--name)")
    with broker.sessions() as db:
        taken = db.scalar(
            select(TeamProvider.id).where(
                TeamProvider.team_id == team_id, TeamProvider.name == chosen
            )
        )
    if taken is not None:
        raise Conflict(f"the team already has a provider named {chosen!r}: choose another (--name)")
    return chosen
