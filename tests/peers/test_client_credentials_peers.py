"""Client credentials (SPEC §7) against real OAuth servers nobody here wrote: oidc-provider
(a certified OpenID Provider) mints the site's token for a resource, and a renewal mints a
new one; oauth2-mock-server likewise. apiauth is a live server; the peers run in Node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiauth.domain import sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from tests.peers.harness import PeerProcess, start_oidc_provider
from tests.servers import LiveServer, running_server

RESOURCE = "https://api.example.test/"
CLIENT = {
    "client_id": "apiauth-machine",
    "client_secret": "machine-secret-of-at-least-32-characters",
    "grant_types": ["client_credentials"],
    "redirect_uris": [],
    "response_types": [],
    "token_endpoint_auth_method": "client_secret_basic",
}


def providers_file(
    tmp_path: Path, name: str, token_url: str, *, method: str = "client_secret_basic", **fields: str
) -> Path:
    extra = "".join(f'{key} = "{value}"\n' for key, value in fields.items())
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[providers.{name}]
display_name = "{name}"
auth_mode = "oauth2_client_credentials"
token_url = "{token_url}"
token_auth_method = "{method}"
scopes = [{{ name = "api:read", description = "Read", default = true }}]
client_id = "{CLIENT["client_id"]}"
client_secret = "{CLIENT["client_secret"]}"
{extra}""",
        encoding="utf-8",
    )
    return path


PRIVATE_KEY_CLIENT = "apiauth-machine-jwt"


def rsa_key_pair() -> tuple[str, dict[str, Any]]:
    """A private key (PEM) and its public JWK."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc.jwk import RSAKey

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = RSAKey.import_key(pem).as_dict(private=False)
    return pem, {**public, "use": "sig", "alg": "RS256"}


def test_private_key_jwt_client_authentication_is_accepted_by_oidc_provider(
    tmp_path: Path,
) -> None:
    """RFC 7523 §2.2: the client proves itself with a JWT signed by its private key; the
    certified server checks it against the client's registered public key."""
    pem, public = rsa_key_pair()
    client = {
        "client_id": PRIVATE_KEY_CLIENT,
        "grant_types": ["client_credentials"],
        "redirect_uris": [],
        "response_types": [],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [public]},
    }
    resources = {RESOURCE: {"scope": "api:read"}}
    with (
        start_oidc_provider(clients=[client], resources=resources) as peer,
        httpx.Client(timeout=10) as http,
    ):
        token_url = peer.metadata(http)["token_endpoint"]
        path = tmp_path / "providers.toml"
        path.write_text(
            f"""
[providers.peer-jwt]
display_name = "peer-jwt"
auth_mode = "oauth2_client_credentials"
token_url = "{token_url}"
token_auth_method = "private_key_jwt"
resource = "{RESOURCE}"
scopes = [{{ name = "api:read", description = "Read", default = true }}]
""",
            encoding="utf-8",
        )
        database = f"sqlite:///{tmp_path / 'apiauth.db'}"
        with running_server(tmp_path, database, providers_file=path) as server:
            first, second = connect_and_read(server, "peer-jwt", private_key=pem)
        for secret in (first, second):
            claims = peer.verified_claims(http, secret["bearer_token"])
            assert claims["client_id"] == PRIVATE_KEY_CLIENT
            assert claims["aud"] == RESOURCE
    assert first["bearer_token"] != second["bearer_token"]


@pytest.fixture
def oidc() -> Iterator[PeerProcess]:
    with start_oidc_provider(clients=[CLIENT], resources={RESOURCE: {"scope": "api:read"}}) as peer:
        yield peer


def connect_and_read(
    server: LiveServer, provider: str, private_key: str | None = None
) -> tuple[dict[str, Any], Any]:
    owner = create_member(server.broker, "owner@example.com", "correct horse battery")
    if private_key is not None:
        # The team's app: the client id and, instead of a secret, its private key.
        set_oauth_app(server.broker, owner, provider, PRIVATE_KEY_CLIENT, private_key)
    pat = {"Authorization": f"Bearer {create_personal_token(server.broker, owner, 'peer')}"}
    sites.create_site(server.broker, owner, "machines")
    site_token = sites.enable_api_auth(server.broker, owner, "machines")
    with httpx.Client(timeout=15) as http:
        made = http.post(
            f"{server.url}/api/v1/sites/machines/connections",
            json={"provider": provider},
            headers=pat,
        )
        assert made.status_code == 201, made.text
        assert made.json()["auth_mode"] == "oauth2_client_credentials"

        def secret() -> dict[str, Any]:
            found: dict[str, Any] = http.get(
                f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site_token}"}
            ).json()[provider]
            return found

        first = secret()
        renewed = http.post(
            f"{server.url}/api/v1/sites/machines/connections/{provider}/refresh", headers=pat
        )
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["last_error"] is None
        return first, secret()


def test_oidc_provider_mints_the_sites_token_for_its_resource_and_mints_again(
    tmp_path: Path, oidc: PeerProcess
) -> None:
    with httpx.Client(timeout=10) as http:
        token_url = oidc.metadata(http)["token_endpoint"]
    path = providers_file(tmp_path, "peer-machine", token_url, resource=RESOURCE)
    database = f"sqlite:///{tmp_path / 'apiauth.db'}"
    with running_server(tmp_path, database, providers_file=path) as server:
        first, second = connect_and_read(server, "peer-machine")
    with httpx.Client(timeout=10) as http:
        for secret in (first, second):
            assert secret["is_logged_in"] is True
            claims = oidc.verified_claims(http, secret["bearer_token"])
            assert claims["aud"] == RESOURCE
            assert claims["client_id"] == CLIENT["client_id"]
            assert "api:read" in claims["scope"].split()
    assert first["bearer_token"] != second["bearer_token"]
    assert first["expires_at"] is not None


def test_oauth2_mock_server_mints_the_sites_token(
    tmp_path: Path, oauth2_mock_peer: PeerProcess
) -> None:
    path = providers_file(tmp_path, "mock-machine", oauth2_mock_peer.issuer + "/token")
    database = f"sqlite:///{tmp_path / 'apiauth.db'}"
    with running_server(tmp_path, database, providers_file=path) as server:
        first, second = connect_and_read(server, "mock-machine")
    with httpx.Client(timeout=10) as http:
        claims = oauth2_mock_peer.verified_claims(http, second["bearer_token"])
    assert claims["iss"] == oauth2_mock_peer.issuer
    assert first["is_logged_in"] is True
