"""`github_app`: a GitHub App installation. The team's App (id, slug, private key) is the
credential; the person's part is installing the App (the connect flow's install page), and
the connection's token is an installation access token, minted with the App's JWT and
minted again before it expires (an hour). Never a refresh token."""

from __future__ import annotations

from datetime import datetime

import httpx

from apiauth.oauth import github_app
from apiauth.oauth.modes._oauth2 import MintedTokenMode
from apiauth.oauth.protocol import ClientCredentials
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode, Provider


class GitHubAppMode(MintedTokenMode):
    name: AuthMode = "github_app"

    def mint_again(
        self,
        http: httpx.Client,
        provider: Provider,
        client: ClientCredentials,
        token: TokenSet,
        now: datetime,
    ) -> TokenSet:
        """Installation tokens always expire (an hour): another for the same installation."""
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
