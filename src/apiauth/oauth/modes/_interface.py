"""The interface every auth mode implements, and the plain values it trades in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import httpx

from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode, Provider


@dataclass(frozen=True)
class Schedule:
    """The settings the renewal of a token without an expiry is timed by
    (`APIAUTH_VALIDATE_INTERVAL_SECONDS`)."""

    validate_interval_seconds: float


@dataclass(frozen=True, repr=False)
class SecretFields:
    """How a credential reads in `GET /api/v1/secrets` (SPEC §7): bearer-like ones in
    `bearer_token`, API keys in `api_key`, basic credentials in `username`/`password`."""

    bearer_token: str | None = None
    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return "SecretFields(***)"


@dataclass(frozen=True, repr=False)
class Injection:
    """Where a credential goes on a call to the provider's API: headers and query values."""

    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = field(default=())

    def __repr__(self) -> str:
        names = [name for name, _ in (*self.headers, *self.query)]
        return f"Injection(names={names!r})"


class Mode(Protocol):
    """What the domain asks of a credential. Every call takes plain values; none touches the
    database. A refused credential raises `InvalidGrant` (renew) or `TokenRejected`
    (verify); anything transient a `ProviderError` with `transient=True`."""

    name: AuthMode
    #: Whether renew/revoke need the team's OAuth app (a pasted key needs none).
    needs_client: bool
    #: Whether a renewal gives a new credential, so that a call the provider refused (401)
    #: is worth sending again after one (a re-verified key is the same key).
    renewal_replaces_token: bool

    def renewable(self, token: TokenSet) -> bool:
        """Whether `renew` has anything to do for this token (a refresh token, a key to
        re-verify); a person's "refresh now" is refused otherwise."""
        ...

    def next_renewal(self, token: TokenSet, now: datetime, schedule: Schedule) -> datetime | None:
        """When the refresher should next renew or re-check a token WITHOUT an expiry; None:
        never. (An expiring token of any mode follows `token_store.refresh_due_at`'s schedule,
        the one rule against refresh storms; this is not asked for it.)"""
        ...

    def renew(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials | None,
        token: TokenSet,
        *,
        now: datetime,
        check_first: bool,
    ) -> TokenSet | None:
        """A new token set, or None when the credential was found still good (a check)."""
        ...

    def verify(
        self, http: httpx.Client, provider: Provider, token: TokenSet
    ) -> tuple[str | None, str | None]:
        """(account id, login) from the provider's who-am-I or verification endpoint."""
        ...

    def revoke(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials | None,
        token: TokenSet,
    ) -> bool:
        """Revoke at the provider where it can; False when it cannot."""
        ...

    def to_secret(self, token: TokenSet) -> SecretFields: ...

    def injection(self, provider: Provider, token: TokenSet) -> Injection: ...
