"""`github_app`: a GitHub App installation. The team's App (id, slug, private key) is the
credential; the person's part is installing the App (the connect flow's install page), and
the connection's token is an installation access token, minted with the App's JWT and
minted again before it expires (an hour). Never a refresh token."""

from __future__ import annotations

from datetime import datetime

import httpx

from apiauth.oauth import github_app
from apiauth.oauth.modes._interface import Schedule
from apiauth.oauth.modes._oauth2 import BearerTokenMode
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode, Provider


class GitHubAppMode(BearerTokenMode):
    name: AuthMode = "github_app"
    renewal_replaces_token = True
    needs_client = True

    def renewable(self, token: TokenSet) -> bool:
        return True  # the App can always mint another for its installation

    def next_renewal(self, token: TokenSet, now: datetime, schedule: Schedule) -> datetime | None:
        """Installation tokens always expire: they follow the refresh schedule."""
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
        return github_app.mint_installation_token(http, provider, client, token, now=now)

    def verify(
        self, http: httpx.Client, provider: Provider, token: TokenSet
    ) -> tuple[str | None, str | None]:
        """The account the App is installed on, as the installation lookup named it when the
        connection was made (an installation token cannot read `/user`)."""
        return token.extra.get("account_id") or None, token.extra.get("account_login") or None

    def revoke(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials | None,
        token: TokenSet,
    ) -> bool:
        """Revokes the installation token; the installation stays (uninstalling the App is
        the account owner's decision, on GitHub)."""
        return github_app.revoke_installation_token(http, provider, token)
