"""Providers added by URL against real third-party servers: `apiauth providers add URL` then
`apiauth connect SITE NAME`, with no client configured by hand, against oidc-provider (an
issuer with dynamic registration) and an MCP-style protected resource (RFC 9728 from a 401,
RFC 8707 `resource` on every token request, the token's audience checked by the resource).
Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from apiauth.cli.commands import app
from apiauth.domain import connect_flow, connections, sites, team_providers
from apiauth.domain.members import MemberView, create_member
from apiauth.domain.team_providers import list_team_providers
from apiauth.server.app import create_app
from tests.consent import provider_url_of
from tests.peers.harness import (
    sign_in_and_consent,
    start_oauth2_mock_server,
    start_oidc_provider,
    start_protected_resource,
)
from tests.servers import LiveServer, free_port, make_settings, open_test_broker, running_server

SITE = "my-site"


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    with running_server(tmp_path, database_url, refresher=False) as server:
        yield server


@pytest.fixture
def owner(live: LiveServer) -> MemberView:
    member = create_member(live.broker, "owner@example.com", "correct horse battery")
    sites.create_site(live.broker, member, SITE)
    return member


@pytest.fixture
def site_token(live: LiveServer, owner: MemberView) -> str:
    return sites.enable_api_auth(live.broker, owner, SITE)


def read_secret(live: LiveServer, site_token: str, provider: str) -> str:
    """The bearer token a function of the site reads for `provider`."""
    answer = httpx.get(
        f"{live.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site_token}"}
    )
    assert answer.status_code == 200, answer.text
    secret = answer.json()[provider]
    assert secret["is_logged_in"] is True
    return str(secret["bearer_token"])


@pytest.fixture
def cli(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`apiauth …` as an operator beside the server runs it (same data dir and database)."""
    settings = live.broker.settings
    monkeypatch.setenv("APIAUTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APIAUTH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("APIAUTH_PUBLIC_URL", settings.public_url)
    monkeypatch.setenv("APIAUTH_ALLOW_LOOPBACK_URLS", "true")  # the peers listen on loopback
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, f"{args}: {result.output} {result.exception!r}"
        return result

    return run


def connect_with_cli(cli: Any, live: LiveServer, http: httpx.Client, name: str) -> httpx.Response:
    started = cli("connect", SITE, name, "--no-wait")
    authorize_url = started.stdout.strip().splitlines()[-1]
    return sign_in_and_consent(http, authorize_url, live.broker.settings.redirect_uri)


def test_an_openid_provider_is_added_and_connected_with_no_client_set_up_by_hand(
    live: LiveServer, owner: MemberView, site_token: str, cli: Any, http: httpx.Client
) -> None:
    with start_oidc_provider() as peer:
        added = cli("providers", "add", peer.issuer, "--name", "corp-sso", "--yes")
        assert "registered dynamically (RFC 7591)" in added.stdout
        assert "[x] openid" in added.stderr
        assert "[x] offline_access" in added.stderr

        done = connect_with_cli(cli, live, http, "corp-sso")
        assert done.status_code == 200, done.text
        assert done.json()["account"]["login"] == "alice" or done.json()["account"]["id"] == "alice"
        view = connections.get_connection(live.broker, owner, SITE, "corp-sso")
        assert view.status == "connected"
        assert {"openid", "offline_access"} <= set(view.granted_scopes)

        # The token works at the peer, and so does the refresh (a refresh token was issued
        # because offline_access was asked for with prompt=consent).
        token = read_secret(live, site_token, "corp-sso")
        userinfo = http.get(
            peer.metadata(http)["userinfo_endpoint"], headers={"Authorization": f"Bearer {token}"}
        )
        assert userinfo.status_code == 200, userinfo.text
        assert userinfo.json()["sub"] == "alice"
        refreshed = connections.refresh_site_connection(live.broker, owner, SITE, "corp-sso")
        assert refreshed.last_error is None
        assert read_secret(live, site_token, "corp-sso") != token

        listed = cli("providers", "list")
        assert "corp-sso" in listed.stdout
        assert "registered" in listed.stdout


def test_an_mcp_server_url_leads_to_its_authorization_server_and_tokens_for_it(
    live: LiveServer, owner: MemberView, site_token: str, cli: Any, http: httpx.Client
) -> None:
    port = free_port()
    resource_url = f"http://127.0.0.1:{port}/mcp"
    resources = {resource_url: {"scope": "mcp:read mcp:write"}}
    with (
        start_oidc_provider(resources=resources) as issuer,
        start_protected_resource(
            issuer.issuer, port=port, scopes=["mcp:read", "mcp:write"]
        ) as resource,
    ):
        assert resource.url == resource_url
        added = cli("providers", "add", resource_url, "--name", "tools", "--yes")
        assert f"resource {resource_url}" in added.stdout
        assert "[x] mcp:read" in added.stderr

        done = connect_with_cli(cli, live, http, "tools")
        assert done.status_code == 200, done.text
        # The access token is for the resource (RFC 8707), as the issuer signed it ...
        token = read_secret(live, site_token, "tools")
        claims = issuer.verified_claims(http, token)
        assert claims["aud"] == resource_url
        # ... and the resource takes it, reached through the proxy.
        through_proxy = http.get(
            f"{live.url}/api/v1/proxy/tools/mcp", headers={"Authorization": f"Bearer {site_token}"}
        )
        assert through_proxy.status_code == 200, through_proxy.text
        assert through_proxy.json()["aud"] == resource_url
        # A refresh names the resource again: the new token is for it too (oidc-provider
        # would otherwise issue one for its own userinfo endpoint).
        connections.refresh_site_connection(live.broker, owner, SITE, "tools")
        fresh = read_secret(live, site_token, "tools")
        assert fresh != token
        assert issuer.verified_claims(http, fresh)["aud"] == resource_url
        (view,) = list_team_providers(live.broker, owner)
        assert view.resource == resource_url
        assert view.issuer == issuer.issuer


def test_a_server_without_registration_works_with_a_client_given_by_hand(
    live: LiveServer, owner: MemberView, site_token: str, cli: Any, http: httpx.Client
) -> None:
    """oauth2-mock-server offers no registration: the client given by hand is used (and the
    mock consents at once, sending the browser straight back)."""
    with start_oauth2_mock_server() as peer:
        added = cli(
            "providers", "add", peer.issuer, "--name", "mock", "--client-id", "mine", "--yes"
        )
        assert "client: the team's own OAuth app" in added.stdout
        started = cli("connect", SITE, "mock", "--no-wait")
        # Continue on apiauth's page (binding the flow to this browser), then the provider.
        provider_url = provider_url_of(http, started.stdout.strip().splitlines()[-1])
        back = http.get(provider_url)
        assert back.is_redirect, back.text
        done = http.get(back.headers["location"], headers={"Accept": "application/json"})
        assert done.status_code == 200, done.text
        token = read_secret(live, site_token, "mock")
        assert peer.verified_claims(http, token)["iss"] == peer.issuer


def test_oidc_provider_reads_apiauths_client_id_metadata_document(
    tmp_path: Path, database_url: str
) -> None:
    """A Client ID Metadata Document needs an https client id: apiauth serves over TLS here
    (a certificate for 127.0.0.1 that the test makes and oidc-provider is told to trust), and
    oidc-provider fetches the document to learn the redirect URI. No registration is made."""
    cert, key = _self_signed_certificate(tmp_path)
    port = free_port()
    settings = make_settings(tmp_path, database_url, port, allow_loopback_urls=True).model_copy(
        update={"public_url": f"https://127.0.0.1:{port}"}
    )
    broker = open_test_broker(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(broker, refresher=False),
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        while not server.started:
            time.sleep(0.02)
        owner = create_member(broker, "owner@example.com", "correct horse battery")
        sites.create_site(broker, owner, SITE)
        with (
            start_oidc_provider(
                client_id_metadata_document=True,
                registration=False,
                fetch_loopback=True,
                env={"NODE_EXTRA_CA_CERTS": str(cert)},
            ) as peer,
            httpx.Client(verify=trusting, timeout=15) as http,
        ):
            added = team_providers.add_provider(broker, owner, peer.issuer, name="cimd")
            assert added.view.client_kind == "metadata_document"
            assert added.view.client_id == f"https://127.0.0.1:{port}/oauth/client-metadata.json"
            start = connect_flow.start_connection(broker, owner, SITE, "cimd")
            done = sign_in_and_consent(http, start.authorize_url, settings.redirect_uri)
            assert done.status_code == 200, done.text
            assert connections.get_connection(broker, owner, SITE, "cimd").status == "connected"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        broker.close()


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.pem", directory / "tls-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
