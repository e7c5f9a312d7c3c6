"""`oauth2_client_credentials`: machine-to-machine (RFC 6749 §4.4). The team's OAuth app is the
credential; apiauth mints access tokens at the token URL and mints a new one before each
expires. No person consents and there is never a refresh token."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import httpx

from apiauth.oauth import protocol
from apiauth.oauth.modes._oauth2 import MintedTokenMode
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode, Provider


class ClientCredentialsMode(MintedTokenMode):
    """Also the base of `jwt_bearer`, which differs only in how a token is minted."""

    name: AuthMode = "oauth2_client_credentials"

    def mint_again(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials,
        token: TokenSet,
        now: datetime,
    ) -> TokenSet:
        return self.mint(http, provider, client, token.granted_scopes, now, token.extra)

    def mint(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials,
        scopes: tuple[str, ...],
        now: datetime,
        params: Mapping[str, str],
    ) -> TokenSet:
        return protocol.client_credentials_token(
            http, provider, client, scopes=scopes, now=now, params=params
        )


class JwtBearerMode(ClientCredentialsMode):
    """`jwt_bearer`: a service account (Google's JSON key) signs an assertion for each token
    (RFC 7523 §2.1); renewed like client credentials, never a refresh token."""

    name: AuthMode = "jwt_bearer"

    def mint(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials,
        scopes: tuple[str, ...],
        now: datetime,
        params: Mapping[str, str],
    ) -> TokenSet:
        return protocol.jwt_bearer_token(
            http, provider, client, scopes=scopes, now=now, params=params
        )
