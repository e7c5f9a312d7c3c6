"""Machine-to-machine connections (auth mode `oauth2_client_credentials`, SPEC §7): no person
consents; connecting mints a token with the team's OAuth app at once (201), the reader and the
refresher mint a new one before it expires with the same lease machinery, there is never a
refresh token, and a provider that refuses the client is a 422 naming its answer with nothing
stored. Against the emulator, and against a real third-party OAuth server
(oauth2-mock-server from npm, see tests/peers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from apiauth.domain import refresh, sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from apiauth.domain.token_store import open_token
from apiauth.providers import load_catalog
from apiauth.store.models import Connection
from tests.in_process import InProcessServer

SITE = "machines"
GRAPH = {"provider": "microsoft-graph-app", "params": {"tenant": "contoso.example"}}


class Site:
    def __init__(self, app: InProcessServer) -> None:
        self.app = app
        self.http = app.new_client(timeout=15)
        self.owner = create_member(app.broker, "owner@example.com", "correct horse battery")
        self.pat = {"Authorization": f"Bearer {create_personal_token(app.broker, self.owner, 'm')}"}
        sites.create_site(app.broker, self.owner, SITE)
        self.token = sites.enable_api_auth(app.broker, self.owner, SITE)

    def connect(self, **body: Any) -> httpx.Response:
        return self.http.post(
            f"{self.app.url}/api/v1/sites/{SITE}/connections", json=body, headers=self.pat
        )

    def secrets(self) -> dict[str, Any]:
        answer = self.http.get(
            f"{self.app.url}/api/v1/secrets", headers={"Authorization": f"Bearer {self.token}"}
        )
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def stats(self, provider: str) -> dict[str, int]:
        stats: dict[str, int] = self.http.get(f"{self.app.url}/_emulator/_admin/stats").json()[
            provider
        ]
        return stats


@pytest.fixture
def site(app: InProcessServer) -> Site:
    return Site(app)


@pytest.mark.fast
def test_connecting_mints_a_token_without_consent_and_without_a_refresh_token(
    site: Site, app: InProcessServer
) -> None:
    made = site.connect(**GRAPH)
    assert made.status_code == 201, made.text
    connection = made.json()
    assert connection["auth_mode"] == "oauth2_client_credentials"
    assert connection["status"] == "connected"
    assert connection["granted_scopes"] == ["https://graph.microsoft.com/.default"]
    assert connection["expires_at"] is not None
    graph = site.secrets()["microsoft-graph-app"]
    assert graph["auth_mode"] == "oauth2_client_credentials"
    assert graph["bearer_token"]
    assert graph["extra"]["tenant"] == "contoso.example"
    with app.broker.sessions() as db:
        (row,) = db.query(Connection).all()
        token = open_token(app.broker, row)
    assert token is not None
    assert token.refresh_token is None
    assert site.stats("microsoft-graph-app")["client_tokens"] == 1
    # The token works at the (emulated) API, through the proxy.
    answer = site.http.get(
        f"{app.url}/api/v1/proxy/microsoft-graph-app/v1.0/organization",
        headers={"Authorization": f"Bearer {site.token}"},
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.fast
def test_a_reader_gets_a_newly_minted_token_when_the_old_one_nears_expiry(
    site: Site, app: InProcessServer
) -> None:
    assert site.connect(**GRAPH).status_code == 201
    first = site.secrets()["microsoft-graph-app"]["bearer_token"]
    assert site.secrets()["microsoft-graph-app"]["bearer_token"] == first
    app.clock.advance(3599 - app.broker.settings.refresh_margin_seconds + 1)
    second = site.secrets()["microsoft-graph-app"]
    assert second["bearer_token"] != first
    assert second["is_logged_in"] is True
    assert site.stats("microsoft-graph-app")["client_tokens"] == 2
    assert site.stats("microsoft-graph-app")["refreshes"] == 0


@pytest.mark.fast
def test_the_refresher_mints_ahead_of_expiry(site: Site, app: InProcessServer) -> None:
    assert site.connect(provider="spotify-app").status_code == 201
    assert refresh.lease_due_connections(app.broker, 10).leased == []
    app.clock.advance(3600)
    batch = refresh.lease_due_connections(app.broker, 10)
    outcomes = [
        refresh.attempt_refresh(app.broker, leased, batch.clients) for leased in batch.leased
    ]
    assert [outcome.kind for outcome in outcomes] == [refresh.FRESH]
    refresh.store_outcomes(app.broker, outcomes, batch.sites)
    assert site.stats("spotify-app")["client_tokens"] == 2
    listed = site.http.get(
        f"{app.url}/api/v1/sites/{SITE}/connections/spotify-app", headers=site.pat
    ).json()
    assert listed["last_refreshed_at"] is not None
    assert listed["status"] == "connected"


@pytest.mark.fast
def test_a_refused_client_is_a_422_naming_the_providers_answer_and_nothing_is_stored(
    site: Site, app: InProcessServer
) -> None:
    set_oauth_app(app.broker, site.owner, "paypal-app", "demo-paypal-app-client", "not-the-secret")
    refused = site.connect(provider="paypal-app")
    assert refused.status_code == 422, refused.text
    assert "invalid_client" in refused.json()["error"]["message"]
    assert "not-the-secret" not in refused.text
    bad_scope = site.connect(provider="spotify-app", scopes=["no-such-scope"])
    assert bad_scope.status_code == 422
    assert "invalid_scope" in bad_scope.json()["error"]["message"]
    listed = site.http.get(f"{app.url}/api/v1/sites/{SITE}/connections", headers=site.pat)
    assert listed.json() == []


def test_the_catalog_has_client_credentials_entries_without_authorize_urls() -> None:
    machines = [p for p in load_catalog().values() if p.auth_mode == "oauth2_client_credentials"]
    assert {p.name for p in machines} >= {"spotify-app", "microsoft-graph-app", "paypal-app"}
    for provider in machines:
        assert provider.authorization_url == ""
        assert provider.token_url.startswith("https://")


def test_a_custom_client_credentials_entry_needs_no_authorization_url(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.acme-m2m]
display_name = "Acme machines"
auth_mode = "oauth2_client_credentials"
token_url = "https://auth.acme.example/oauth/token"
token_auth_method = "client_secret_basic"
token_params = { audience = "https://api.acme.example/" }
scopes = [{ name = "read:all", description = "Read", default = true }]
""",
        encoding="utf-8",
    )
    acme = load_catalog(path)["acme-m2m"]
    assert acme.token_params == {"audience": "https://api.acme.example/"}
    assert acme.default_scopes == ("read:all",)


@pytest.mark.fast
def test_a_private_key_jwt_client_must_be_given_an_rsa_private_key(tmp_path: Path) -> None:
    from apiauth.errors import InvalidInput
    from tests.in_process import in_process_server

    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.acme-jwt]
display_name = "Acme (private_key_jwt)"
auth_mode = "oauth2_client_credentials"
token_url = "https://auth.acme.example/oauth/token"
token_auth_method = "private_key_jwt"
""",
        encoding="utf-8",
    )
    with in_process_server(tmp_path, providers_file=path) as server:
        owner = create_member(server.broker, "owner@example.com", "correct horse battery")
        for refused in ("a-plain-client-secret", "-----BEGIN PRIVATE KEY-----\nnope\n"):
            with pytest.raises(InvalidInput, match="private key"):
                set_oauth_app(server.broker, owner, "acme-jwt", "acme-client", refused)
