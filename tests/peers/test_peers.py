"""The harness itself: each peer starts on loopback and behaves as the tests rely on."""

from __future__ import annotations

import httpx

from tests.peers.harness import PeerProcess, start_oidc_provider, start_protected_resource


def test_oidc_provider_issues_client_credentials_tokens_for_a_resource() -> None:
    resource = "https://api.example.test/"
    client = {
        "client_id": "machine",
        "client_secret": "machine-secret-of-at-least-32-characters",
        "grant_types": ["client_credentials"],
        "redirect_uris": [],
        "response_types": [],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    with (
        start_oidc_provider(clients=[client], resources={resource: {"scope": "api:read"}}) as peer,
        httpx.Client(timeout=10) as http,
    ):
        metadata = peer.metadata(http)
        assert metadata["issuer"] == peer.issuer
        assert metadata["registration_endpoint"].startswith(peer.issuer)
        assert metadata["authorization_response_iss_parameter_supported"] is True
        answer = http.post(
            metadata["token_endpoint"],
            auth=(client["client_id"], client["client_secret"]),
            data={"grant_type": "client_credentials", "resource": resource, "scope": "api:read"},
        )
        assert answer.status_code == 200, answer.text
        claims = peer.verified_claims(http, answer.json()["access_token"])
        assert claims["aud"] == resource


def test_path_issuer_and_protected_resource(oauth2_mock_peer: PeerProcess) -> None:
    with (
        start_oidc_provider(path="/tenant-a") as peer,
        start_protected_resource(peer.issuer, scopes=["mcp:read"]) as resource,
        httpx.Client(timeout=10) as http,
    ):
        assert peer.issuer.endswith("/tenant-a")
        assert peer.metadata(http)["issuer"] == peer.issuer
        refused = http.get(resource.url)
        assert refused.status_code == 401
        assert "resource_metadata=" in refused.headers["www-authenticate"]
        assert oauth2_mock_peer.metadata(http)["issuer"] == oauth2_mock_peer.issuer
