"""Request and response bodies of the REST API (and so of `/openapi.json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from apiauth.domain.audit import EventPage, EventView
from apiauth.domain.connections import ConnectionView
from apiauth.domain.function_tokens import DEFAULT_TTL_SECONDS, MAX_PROVIDERS, MAX_TTL_SECONDS
from apiauth.domain.sites import SITE_NAME_PATTERN, SiteView
from apiauth.domain.team_providers import TeamProviderView
from apiauth.domain.visitors import VisitorOverview


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class SiteCreate(Strict):
    # The pattern is documented, not enforced here: the domain refuses a bad name with a
    # message that says what a site name may hold.
    name: str = Field(
        min_length=1,
        max_length=63,
        examples=["my-site"],
        json_schema_extra={"pattern": SITE_NAME_PATTERN},
    )
    deploy_hook_url: str | None = Field(default=None, max_length=2048)
    webhook_url: str | None = Field(default=None, max_length=2048)


class SiteUpdate(Strict):
    deploy_hook_url: str | None = Field(default=None, max_length=2048)
    webhook_url: str | None = Field(default=None, max_length=2048)


class SiteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    api_auth_enabled: bool
    deploy_hook_url: str | None
    webhook_url: str | None
    created_at: datetime
    connection_count: int
    needs_attention: int

    @classmethod
    def of(cls, view: SiteView) -> Self:
        return cls.model_validate(view)


class SiteTokenOut(BaseModel):
    env_var: str = "APIAUTH_TOKEN"
    token: str


class FunctionTokenCreate(Strict):
    # Strict: JSON `true` is not a lifetime of one second. The range is documented here and
    # checked by the domain, whose message says what the default is.
    ttl_seconds: int = Field(
        default=DEFAULT_TTL_SECONDS,
        strict=True,
        description="Lifetime, 1 to 86400 seconds.",
        examples=[900],
        json_schema_extra={"minimum": 1, "maximum": MAX_TTL_SECONDS},
    )
    providers: list[str] | None = Field(
        default=None,
        max_length=MAX_PROVIDERS,
        description="Providers the token may read (default: every provider of the site).",
        examples=[["github"]],
    )
    visitor_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Bind the token to one visitor: it reads that visitor's connections only.",
        examples=["user-42"],
    )


class FunctionTokenOut(BaseModel):
    token: str
    expires_at: datetime


class ScopeOut(BaseModel):
    name: str
    description: str
    default: bool


class ParamOut(BaseModel):
    name: str
    description: str
    required: bool
    pattern: str | None
    choices: list[str]
    default: str | None
    format: str = Field(
        default="url_safe",
        description="`url_safe` (a value filled into the provider's URLs) or `email` (an "
        "address, such as a service account's delegated user).",
    )


class CredentialFieldOut(BaseModel):
    name: str
    label: str
    secret: bool


class ProviderOut(BaseModel):
    name: str
    display_name: str
    category: str = Field(
        default="Other", description="The catalog's grouping (`CRM`, `Developer tools`, …)."
    )
    auth_mode: str = Field(
        default="oauth2",
        description="How a connection is made: `oauth2`, `api_key`, `basic`, … (SPEC §7).",
    )
    credential_fields: list[CredentialFieldOut] = Field(
        default_factory=list,
        description="What a key-based connection's `credentials` hold, labelled.",
    )
    credentials_url: str | None = Field(
        default=None, description="Where the provider issues keys (key-based modes)."
    )
    scopes: list[ScopeOut]
    configured: bool
    pkce: bool
    builtin: bool
    params: list[ParamOut] = Field(
        default_factory=list,
        description="Connection parameters the provider needs (`params` of a new connection).",
    )
    added_by_url: bool = Field(
        default=False, description="A provider of the team's, added by URL (`POST /providers`)."
    )


class ConnectionCreate(Strict):
    provider: str = Field(min_length=1, max_length=63, examples=["github"])
    scopes: list[str] | None = Field(default=None, max_length=100)
    params: dict[str, str] | None = Field(
        default=None,
        max_length=10,
        description="The provider's connection parameters, such as Shopify's `shop`.",
        examples=[{"shop": "acme"}],
    )
    credentials: dict[str, str] | None = Field(
        default=None,
        max_length=4,
        description=(
            'For a provider whose `auth_mode` is `api_key` (`{"api_key": …}`) or `basic` '
            '(`{"username": …, "password": …}`): verified at the provider, then stored; '
            "the answer is the connection (201) instead of an `authorize_url`."
        ),
        examples=[{"api_key": "sk-…"}],
    )


class AuthorizeOut(BaseModel):
    authorize_url: str
    expires_at: datetime


class AccountOut(BaseModel):
    id: str | None
    login: str | None


class ConnectionOut(BaseModel):
    provider: str
    auth_mode: str = "oauth2"
    status: str
    requested_scopes: list[str]
    granted_scopes: list[str]
    account: AccountOut
    expires_at: datetime | None
    last_refreshed_at: datetime | None
    last_error: str | None
    degraded_since: datetime | None = Field(
        description="The first failed refresh of the current degradation (refreshes failing "
        "in a row, the token still served while valid), or null."
    )

    refresh_expires_at: datetime | None = Field(
        description="When the refresh token dies, refreshed or not (the provider's "
        "`refresh_token_expires_in`, a JWT refresh token's `exp`, or the catalog's "
        "`refresh_token_lifetime`): re-authorize before. Null: no known limit."
    )

    @classmethod
    def of(cls, view: ConnectionView) -> ConnectionOut:
        return cls(
            provider=view.provider,
            auth_mode=view.auth_mode,
            status=view.status,
            requested_scopes=list(view.requested_scopes),
            granted_scopes=list(view.granted_scopes),
            account=AccountOut(id=view.account_id, login=view.account_login),
            expires_at=view.expires_at,
            last_refreshed_at=view.last_refreshed_at,
            last_error=view.last_error,
            degraded_since=view.degraded_since,
            refresh_expires_at=view.refresh_expires_at,
        )


class DeletedConnectionOut(BaseModel):
    provider: str
    deleted: bool = True
    revoked_at_provider: bool


class ProviderSecretOut(BaseModel):
    provider: str
    auth_mode: str = "oauth2"
    bearer_token: str | None
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    token_type: str
    granted_scopes: list[str]
    is_logged_in: bool
    expires_at: str | None
    account: AccountOut
    extra: dict[str, Any]


class Health(BaseModel):
    status: str


class SiteWithSecretOut(SiteOut):
    """A site as created or changed: with the webhook signing secret when this call gave
    the site one (shown once; `null` otherwise)."""

    webhook_secret: str | None = Field(
        default=None,
        description="Signing secret of the site's webhooks (`Apiauth-Signature` header); "
        "only in the answer that issued it.",
    )


class EventOut(BaseModel):
    id: int
    kind: str
    actor: str
    detail: dict[str, Any]
    ip: str | None
    created_at: datetime

    @classmethod
    def of(cls, view: EventView) -> EventOut:
        return cls(
            id=view.id,
            kind=view.kind,
            actor=view.actor,
            detail=dict(view.detail),
            ip=view.ip,
            created_at=view.created_at,
        )


class EventPageOut(BaseModel):
    events: list[EventOut]
    next_before: int | None = Field(description="Pass as `before` for the next, older page.")

    @classmethod
    def of(cls, page: EventPage) -> EventPageOut:
        return cls(events=[EventOut.of(e) for e in page.events], next_before=page.next_before)


class ConnectSessionCreate(Strict):
    visitor_id: str = Field(
        min_length=1,
        max_length=255,
        description="The site's own id for the visitor (printable, no spaces).",
        examples=["user-42"],
    )
    providers: list[str] = Field(
        min_length=1, max_length=100, description="Providers the visitor may connect."
    )
    scopes: dict[str, list[str]] | None = Field(
        default=None,
        max_length=100,
        description="Scopes per provider (default: the provider's default scopes).",
        examples=[{"github": ["read:user"]}],
    )
    return_url: str = Field(
        min_length=1,
        max_length=2048,
        description="Where the visitor is sent back, with `apiauth_connected=<provider>` or "
        "`apiauth_error=<message>` added: https, or http on localhost.",
        examples=["https://my-site.example/account"],
    )


class ConnectSessionOut(BaseModel):
    url: str = Field(description="The single-use link to hand the visitor.")
    expires_at: datetime


class VisitorDeletedOut(BaseModel):
    visitor_id: str
    deleted_connections: int
    revoked_at_provider: int


class ProviderCountsOut(BaseModel):
    provider: str
    total: int
    by_status: dict[str, int]


class VisitorOut(BaseModel):
    visitor_id: str
    connections: list[ConnectionOut]


class VisitorOverviewOut(BaseModel):
    total_visitors: int
    providers: list[ProviderCountsOut]
    visitors: list[VisitorOut]
    more: bool = Field(description="More visitors match than `limit` listed.")

    @classmethod
    def of(cls, overview: VisitorOverview) -> VisitorOverviewOut:
        return cls(
            total_visitors=overview.total_visitors,
            providers=[
                ProviderCountsOut(provider=p.provider, total=p.total, by_status=dict(p.by_status))
                for p in overview.providers
            ],
            visitors=[
                VisitorOut(
                    visitor_id=v.visitor_id,
                    connections=[ConnectionOut.of(c) for c in v.connections],
                )
                for v in overview.visitors
            ],
            more=overview.more,
        )


class ProviderAdd(Strict):
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="An OAuth issuer, or a protected resource such as an MCP server.",
        examples=["https://auth.example.com", "https://mcp.example.com/mcp"],
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,62}$",
        description="The provider's name (default: from the URL's host).",
    )
    scopes: list[str] | None = Field(
        default=None,
        max_length=100,
        description="Scopes ticked by default when connecting (default: the server's "
        "suggestions: what a resource asks for, `openid`, `offline_access`).",
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="A client registered by hand at the server; it wins over registering one.",
    )
    client_secret: str | None = Field(default=None, min_length=1, max_length=500)
    allow_without_pkce: bool = Field(
        default=False,
        description="Accept a server that does not list PKCE S256 (apiauth still sends it).",
    )


class ProviderClientOut(BaseModel):
    kind: str = Field(
        description="`registered` (RFC 7591), `metadata_document` (Client ID Metadata "
        "Document), or `none` (register one by hand)"
    )
    client_id: str | None
    own_app: bool = Field(description="The team set an OAuth app of its own, which wins.")


class TeamProviderOut(BaseModel):
    name: str
    display_name: str
    source_url: str
    issuer: str
    resource: str | None
    client: ProviderClientOut
    scopes: list[ScopeOut]
    redirect_uri: str
    needs_client: bool
    checked_at: datetime
    check_error: str | None = Field(description="The last re-check could not fetch the metadata.")
    refused_change: str | None = Field(
        description="A metadata change the last re-check refused because it weakens security."
    )
    message: str | None = None

    @classmethod
    def of(cls, view: TeamProviderView, message: str | None = None) -> Self:
        return cls(
            name=view.name,
            display_name=view.display_name,
            source_url=view.source_url,
            issuer=view.issuer,
            resource=view.resource,
            client=ProviderClientOut(
                kind=view.client_kind, client_id=view.client_id, own_app=view.has_own_app
            ),
            scopes=[
                ScopeOut(name=s.name, description=s.description, default=s.default)
                for s in view.scopes
            ],
            redirect_uri=view.redirect_uri,
            needs_client=view.needs_client,
            checked_at=view.checked_at,
            check_error=view.check_error,
            refused_change=view.refused_change,
            message=message,
        )


class RemovedProviderOut(BaseModel):
    name: str
    registration_deleted: bool = Field(
        description="apiauth's dynamic client registration was deleted at the server (RFC 7592)."
    )
