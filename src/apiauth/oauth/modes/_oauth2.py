"""`oauth2`: the authorization-code grant (SPEC §3). Renewal is the refresh-token grant."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from apiauth.errors import ProviderError, TokenRejected
from apiauth.oauth import protocol
from apiauth.oauth.modes._interface import Injection, Schedule, SecretFields
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode, Provider


class BearerTokenMode:
    """What every mode whose credential is an OAuth access token shares: it is verified at
    the who-am-I endpoint, revoked at the revocation endpoint, read as `bearer_token` and
    sent where the catalog says. (`oauth2` and, through it, the machine modes.)"""

    def verify(
        self, http: httpx.Client, provider: Provider, token: TokenSet
    ) -> tuple[str | None, str | None]:
        return protocol.fetch_account(http, provider, token)

    def revoke(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials | None,
        token: TokenSet,
    ) -> bool:
        assert client is not None
        return protocol.revoke(http, provider, client, token)

    def to_secret(self, token: TokenSet) -> SecretFields:
        return SecretFields(bearer_token=token.access_token)

    def injection(self, provider: Provider, token: TokenSet) -> Injection:
        """Where the catalog says (`proxy_auth_header`, `proxy_auth_scheme`; Bearer by
        default), with its fixed `proxy_headers`."""
        values = provider.url_values(token.extra)
        return Injection(
            headers=tuple(protocol.api_headers(provider, token.access_token, values).items())
        )


class AuthorizationCodeMode(BearerTokenMode):
    name: AuthMode = "oauth2"
    renewal_replaces_token = True
    needs_client = True

    def renewable(self, token: TokenSet) -> bool:
        return token.refresh_token is not None

    def next_renewal(self, token: TokenSet, now: datetime, schedule: Schedule) -> datetime | None:
        """A refreshable token without an expiry (Salesforce gives none) is checked at the
        who-am-I endpoint on a schedule, so that it never silently dies; a token without a
        refresh token has nothing to do."""
        if not token.refresh_token:
            return None
        return now + timedelta(seconds=schedule.validate_interval_seconds)

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
        if token.refresh_token is None:
            raise ProviderError("there is no refresh token: reconnect")
        assert client is not None
        if token.expires_at is None and check_first:
            # No expiry to go by (Salesforce): ask the provider whether the token still
            # works, and refresh only when it says no.
            try:
                protocol.fetch_account(http, provider, token)
            except TokenRejected:
                pass
            else:
                return None
        return protocol.refresh_token_set(http, provider, client, token, now=now)


class MintedTokenMode(BearerTokenMode):
    """The machine modes (`oauth2_client_credentials`, `jwt_bearer`, `github_app`): the team's
    own credential mints each access token, and mints another before it expires (on the
    refresh schedule, like any expiring token). Never a refresh token, nothing to re-check."""

    renewal_replaces_token = True
    needs_client = True

    def renewable(self, token: TokenSet) -> bool:
        return True  # the team's credential can always mint another

    def next_renewal(self, token: TokenSet, now: datetime, schedule: Schedule) -> datetime | None:
        """A token that does not expire is never renewed."""
        return None

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
        assert client is not None
        return self.mint_again(http, provider, client, token, now)

    def mint_again(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials,
        token: TokenSet,
        now: datetime,
    ) -> TokenSet:
        """A new token for what `token` was minted for."""
        raise NotImplementedError
