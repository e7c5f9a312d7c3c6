"""`private_key_jwt` client authentication (RFC 7523 §2.2) against the emulator: a
client-credentials provider whose client signs a JWT with its RSA private key instead of
sending a secret. The emulated token endpoint checks the signature against the registered
public key, `iss` = `sub` = the client id, `aud` = the token endpoint, `exp`, and refuses a
`jti` it has seen (RFC 7523 §3). The key is stored write-only, encrypted, like a secret."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from apiauth.domain import sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from apiauth.providers import demo_client
from tests.in_process import InProcessServer, in_process_server

pytestmark = pytest.mark.fast

PROVIDER = "acme-jwt"
SITE = "pkjwt-site"
CLIENT_ID = demo_client(PROVIDER)[0]  # the client the emulator has registered
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[InProcessServer]:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[providers.{PROVIDER}]
display_name = "Acme (private_key_jwt)"
auth_mode = "oauth2_client_credentials"
token_url = "https://auth.acme.example/oauth/token"
token_auth_method = "private_key_jwt"
scopes = [{{ name = "read:all", description = "Read", default = true }}]
access_token_lifetime = 3600
api_base_url = "https://api.acme.example"
emulate = true
""",
        encoding="utf-8",
    )
    with in_process_server(tmp_path, database_url, providers_file=path) as found:
        yield found


def client_key() -> tuple[str, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, RSAKey.import_key(pem).as_dict(private=False)


def register(http: httpx.Client, server: InProcessServer, public: dict[str, Any]) -> None:
    answer = http.post(
        f"{server.url}/_emulator/_admin/public-keys",
        json={"provider": PROVIDER, "issuer": CLIENT_ID, "jwk": public},
    )
    assert answer.status_code == 200, answer.text


def connect(server: InProcessServer, http: httpx.Client, pem: str) -> httpx.Response:
    owner = create_member(server.broker, "owner@example.com", "correct horse battery")
    pat = create_personal_token(server.broker, owner, "s")
    sites.create_site(server.broker, owner, SITE)
    set_oauth_app(server.broker, owner, PROVIDER, CLIENT_ID, pem)
    return http.post(
        f"{server.url}/api/v1/sites/{SITE}/connections",
        json={"provider": PROVIDER},
        headers={"Authorization": f"Bearer {pat}"},
    )


def test_a_client_signing_with_its_private_key_gets_a_token(server: InProcessServer) -> None:
    http = server.new_client(timeout=15)
    pem, public = client_key()
    register(http, server, public)
    made = connect(server, http, pem)
    assert made.status_code == 201, made.text
    assert made.json()["auth_mode"] == "oauth2_client_credentials"
    stats = http.get(f"{server.url}/_emulator/_admin/stats").json()[PROVIDER]
    assert stats["client_tokens"] == 1
    assert pem.splitlines()[1] not in made.text


def test_a_client_signing_with_another_key_is_refused_with_422(server: InProcessServer) -> None:
    http = server.new_client(timeout=15)
    pem, _public = client_key()
    _other, other_public = client_key()
    register(http, server, other_public)
    refused = connect(server, http, pem)
    assert refused.status_code == 422, refused.text
    assert "invalid_client" in refused.text
    assert "signature is not valid" in refused.text


def test_the_emulator_refuses_a_replayed_or_misaddressed_client_assertion(
    server: InProcessServer,
) -> None:
    http = server.new_client(timeout=15)
    pem, public = client_key()
    register(http, server, public)
    token_url = server.broker.catalog[PROVIDER].token_url
    key = RSAKey.import_key(pem)

    def ask(**claims: Any) -> httpx.Response:
        now = int(time.time())
        body = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": token_url, "exp": now + 60}
        body |= {"jti": secrets.token_urlsafe(16), **claims}
        return http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": jwt.encode({"alg": "RS256"}, body, key),
            },
        )

    assert ask(jti="once-only-jti").status_code == 200
    replayed = ask(jti="once-only-jti")
    assert replayed.status_code == 401
    assert "used before" in replayed.json()["error_description"]
    misaddressed = ask(aud="https://elsewhere.example/token")
    assert misaddressed.status_code == 401
    assert ask(sub="someone-else").status_code == 401
    assert ask(exp=int(time.time()) - 5).status_code == 401
