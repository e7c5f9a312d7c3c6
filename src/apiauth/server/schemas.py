"""Request and response bodies of the REST API (and so of `/openapi.json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from apiauth.domain.audit import EventPage, EventView
from apiauth.domain.connections import ConnectionView
from apiauth.domain.function_tokens import DEFAULT_TTL_SECONDS, MAX_PROVIDERS, MAX_TTL_SECONDS
from apiauth.domain.sites import SITE_NAME_PATTERN, SiteView
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


class ProviderOut(BaseModel):
    name: str
    display_name: str
    scopes: list[ScopeOut]
    configured: bool
    pkce: bool
    builtin: bool
    params: list[ParamOut] = Field(
        default_factory=list,
        description="Connection parameters the provider needs (`params` of a new connection).",
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


class AuthorizeOut(BaseModel):
    authorize_url: str
    expires_at: datetime


class AccountOut(BaseModel):
    id: str | None
    login: str | None


class ConnectionOut(BaseModel):
    provider: str
    status: str
    requested_scopes: list[str]
    granted_scopes: list[str]
    account: AccountOut
    expires_at: datetime | None
    last_refreshed_at: datetime | None
    last_error: str | None

    @classmethod
    def of(cls, view: ConnectionView) -> ConnectionOut:
        return cls(
            provider=view.provider,
            status=view.status,
            requested_scopes=list(view.requested_scopes),
            granted_scopes=list(view.granted_scopes),
            account=AccountOut(id=view.account_id, login=view.account_login),
            expires_at=view.expires_at,
            last_refreshed_at=view.last_refreshed_at,
            last_error=view.last_error,
        )


class DeletedConnectionOut(BaseModel):
    provider: str
    deleted: bool = True
    revoked_at_provider: bool


class ProviderSecretOut(BaseModel):
    provider: str
    bearer_token: str | None
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
