"""Where OAuth apps and providers come from: the environment, a custom providers file, a
team's own stored app, and a clear error when there is none. The fast tier (the app
in-process), SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from apiauth.config import Settings
from apiauth.domain import connect_flow, oauth_apps, sites
from apiauth.domain.members import create_member
from apiauth.errors import ProviderNotConfigured
from apiauth.store.models import OAuthApp
from tests.consent import consent
from tests.in_process import in_process_server
from tests.servers import open_test_broker

pytestmark = pytest.mark.fast

ACME = """
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_post"
pkce = true
scope_separator = " "
scopes = [
  { name = "read", description = "Read your data", default = true },
  { name = "write", description = "Change your data" },
]
userinfo_url = "https://api.acme.example/me"
revoke_url = "https://auth.acme.example/revoke"
client_id = "acme-client"
client_secret = "acme-secret-from-file"
"""
# The same provider, played by the emulator in demo mode (SPEC §4: custom providers opt in).
EMULATED_ACME = ACME + "emulate = true\n"


def test_a_custom_provider_from_the_file_connects_like_a_built_in_one(
    tmp_path: Path, database_url: str
) -> None:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(EMULATED_ACME)
    with in_process_server(tmp_path, database_url, providers_file=providers_file) as live:
        http = live.client
        owner = create_member(live.broker, "owner@example.com", "correct horse battery")
        sites.create_site(live.broker, owner, "my-site")
        token = sites.enable_api_auth(live.broker, owner, "my-site")
        start = connect_flow.start_connection(live.broker, owner, "my-site", "acme")
        assert parse_qs(urlsplit(start.provider_url).query)["client_id"] == ["acme-client"]
        done = consent(http, start.authorize_url)
        assert done.status_code == 200, done.text
        assert done.json()["granted_scopes"] == ["read"]
        secrets = http.get(
            f"{live.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert secrets["acme"]["is_logged_in"] is True
        assert secrets["acme"]["account"]["login"]


def test_demo_mode_calls_a_custom_provider_where_its_urls_point(
    tmp_path: Path, database_url: str
) -> None:
    """`serve --demo` emulates built-in providers only: a custom one without `emulate = true`
    (a local Keycloak, a company IdP) is sent to its own URLs, with its own client."""
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(ACME)
    with in_process_server(tmp_path, database_url, providers_file=providers_file) as live:
        owner = create_member(live.broker, "owner@example.com", "correct horse battery")
        sites.create_site(live.broker, owner, "my-site")
        start = connect_flow.start_connection(live.broker, owner, "my-site", "acme")
        url = urlsplit(start.provider_url)
        assert f"{url.scheme}://{url.netloc}{url.path}" == "https://auth.acme.example/authorize"
        assert parse_qs(url.query)["client_id"] == ["acme-client"]
        github = connect_flow.start_connection(live.broker, owner, "my-site", "github")
        assert github.provider_url.startswith(live.url + "/_emulator/github/")


def test_oauth_apps_from_the_environment_are_used(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIAUTH_GITHUB_CLIENT_ID", "Iv1.env-client")
    monkeypatch.setenv("APIAUTH_GITHUB_CLIENT_SECRET", "env-secret")
    broker = open_test_broker(Settings(data_dir=tmp_path / "d", database_url=database_url))
    owner = create_member(broker, "owner@example.com", "correct horse battery")
    sites.create_site(broker, owner, "my-site")
    start = connect_flow.start_connection(broker, owner, "my-site", "github")
    url = urlsplit(start.provider_url)
    assert url.netloc == "github.com"
    assert parse_qs(url.query)["client_id"] == ["Iv1.env-client"]
    with pytest.raises(ProviderNotConfigured, match="APIAUTH_SPOTIFY_CLIENT_ID"):
        connect_flow.start_connection(broker, owner, "my-site", "spotify")
    broker.close()


def test_a_teams_own_app_wins_and_its_secret_is_encrypted(
    tmp_path: Path, database_url: str
) -> None:
    broker = open_test_broker(Settings(data_dir=tmp_path / "d", database_url=database_url))
    owner = create_member(broker, "owner@example.com", "correct horse battery")
    oauth_apps.set_oauth_app(broker, owner, "spotify", "team-client", "team-secret-value")
    client = oauth_apps.client_for(broker, owner.team_id, "spotify")
    assert (client.client_id, client.client_secret) == ("team-client", "team-secret-value")
    assert "team-secret-value" not in repr(client)
    with broker.sessions() as db:
        stored = db.scalars(select(OAuthApp.client_secret_enc)).one()
    assert stored is not None
    assert b"team-secret-value" not in stored
    assert [(a.provider, a.source) for a in oauth_apps.list_oauth_apps(broker, owner)] == [
        ("spotify", "team")
    ]
    oauth_apps.remove_oauth_app(broker, owner, "spotify")
    with pytest.raises(ProviderNotConfigured):
        oauth_apps.client_for(broker, owner.team_id, "spotify")
    broker.close()
