"""`api_key` and `basic`: a credential a person pastes. Verified at the provider's
verification endpoint before it is stored and again on a schedule (a revoked key becomes
`needs_reauth`); nothing to refresh, nothing apiauth can revoke at the provider."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

import httpx

from apiauth.errors import InvalidGrant, TokenRejected
from apiauth.oauth import protocol
from apiauth.oauth.modes._interface import Injection, Schedule, SecretFields
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode, Provider


class _PastedCredential:
    renewal_replaces_token = False
    needs_client = False

    def renewable(self, token: TokenSet) -> bool:
        return True  # "renewing" a key is checking that it still works

    def next_renewal(self, token: TokenSet, now: datetime, schedule: Schedule) -> datetime | None:
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
        try:
            self.verify(http, provider, token)
        except TokenRejected as exc:
            # Revoked or rotated away at the provider: a person must paste a new one.
            raise InvalidGrant(exc.message) from None
        return None

    def verify(
        self, http: httpx.Client, provider: Provider, token: TokenSet
    ) -> tuple[str | None, str | None]:
        sent = self.injection(provider, token)
        return protocol.verify_credential(
            http, provider, token, headers=sent.headers, query=sent.query
        )

    def revoke(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials | None,
        token: TokenSet,
    ) -> bool:
        return False

    def injection(self, provider: Provider, token: TokenSet) -> Injection:
        raise NotImplementedError


class ApiKeyMode(_PastedCredential):
    name: AuthMode = "api_key"

    def to_secret(self, token: TokenSet) -> SecretFields:
        return SecretFields(api_key=token.access_token)

    def injection(self, provider: Provider, token: TokenSet) -> Injection:
        """Where the catalog says: `api_key_query_param`, else `api_key_header` with
        `api_key_prefix` (`Authorization: Bearer <key>` by default)."""
        if provider.api_key_query_param:
            return Injection(query=((provider.api_key_query_param, token.access_token),))
        value = provider.api_key_prefix + token.access_token
        return Injection(headers=((provider.api_key_header, value),))


class BasicMode(_PastedCredential):
    name: AuthMode = "basic"

    def verify(
        self, http: httpx.Client, provider: Provider, token: TokenSet
    ) -> tuple[str | None, str | None]:
        account_id, login = super().verify(http, provider, token)
        return account_id, login or token.username

    def to_secret(self, token: TokenSet) -> SecretFields:
        return SecretFields(username=token.username, password=token.access_token)

    def injection(self, provider: Provider, token: TokenSet) -> Injection:
        # RFC 7617: user-id ":" password, UTF-8, base64.
        pair = f"{token.username or ''}:{token.access_token}".encode()
        return Injection(headers=(("Authorization", "Basic " + base64.b64encode(pair).decode()),))
