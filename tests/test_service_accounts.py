"""Service accounts (auth mode `jwt_bearer`, SPEC §7, RFC 7523 §2.1): the team uploads the
account's JSON key file once (stored encrypted as its OAuth app), connecting mints a token
with an RS256 assertion at once, readers and the refresher mint a new one before expiry, and
an assertion the provider cannot verify is a 422 with nothing stored. The emulated Google
token endpoint checks the signature against the registered public key, `aud` and `exp`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from typer.testing import CliRunner

from apiauth.domain import sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from tests.in_process import InProcessServer
from tests.servers import LiveServer

PROVIDER = "google-service-account"
ACCOUNT = "builder@my-project.iam.gserviceaccount.com"
SITE = "sa-site"


def key_file() -> tuple[str, dict[str, Any]]:
    """A service account key (PEM) and its public JWK."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, RSAKey.import_key(pem).as_dict(private=False)


def register_public_key(http: httpx.Client, url: str, jwk: dict[str, Any]) -> None:
    answer = http.post(
        f"{url}/_emulator/_admin/public-keys",
        json={"provider": PROVIDER, "issuer": ACCOUNT, "jwk": jwk},
    )
    assert answer.status_code == 200, answer.text


class Site:
    def __init__(self, live: LiveServer | InProcessServer, http: httpx.Client) -> None:
        self.live, self.http = live, http
        self.owner = create_member(live.broker, "owner@example.com", "correct horse battery")
        self.pat = {
            "Authorization": f"Bearer {create_personal_token(live.broker, self.owner, 's')}"
        }
        sites.create_site(live.broker, self.owner, SITE)
        self.token = sites.enable_api_auth(live.broker, self.owner, SITE)

    def connect(self) -> httpx.Response:
        return self.http.post(
            f"{self.live.url}/api/v1/sites/{SITE}/connections",
            json={"provider": PROVIDER},
            headers=self.pat,
        )

    def secret(self) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get(
            f"{self.live.url}/api/v1/secrets", headers={"Authorization": f"Bearer {self.token}"}
        ).json()[PROVIDER]
        return found


@pytest.mark.fast
def test_a_service_account_mints_tokens_with_signed_assertions(
    app: InProcessServer, http: httpx.Client
) -> None:
    site = Site(app, http)
    pem, public = key_file()
    register_public_key(http, app.url, public)
    set_oauth_app(app.broker, site.owner, PROVIDER, ACCOUNT, pem)
    made = site.connect()
    assert made.status_code == 201, made.text
    assert made.json()["auth_mode"] == "jwt_bearer"
    assert made.json()["granted_scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    first = site.secret()
    assert first["auth_mode"] == "jwt_bearer"
    assert first["bearer_token"]
    assert first["expires_at"] is not None
    # Inside the margin, a reader gets a token minted with a new assertion.
    app.clock.advance(3600 - app.broker.settings.refresh_margin_seconds + 1)
    second = site.secret()
    assert second["bearer_token"] != first["bearer_token"]
    stats = http.get(f"{app.url}/_emulator/_admin/stats").json()[PROVIDER]
    assert stats["client_tokens"] == 2
    assert pem.splitlines()[1] not in made.text


@pytest.mark.fast
def test_an_assertion_signed_with_another_key_is_refused_with_422(
    app: InProcessServer, http: httpx.Client
) -> None:
    site = Site(app, http)
    pem, _public = key_file()
    _other_pem, other_public = key_file()
    register_public_key(http, app.url, other_public)
    set_oauth_app(app.broker, site.owner, PROVIDER, ACCOUNT, pem)
    refused = site.connect()
    assert refused.status_code == 422, refused.text
    assert "Invalid JWT Signature" in refused.json()["error"]["message"]
    listed = http.get(f"{app.url}/api/v1/sites/{SITE}/connections", headers=site.pat)
    assert listed.json() == []


def test_the_key_file_is_uploaded_with_apps_set(
    live: LiveServer, http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apiauth.cli.commands import app as cli

    site = Site(live, http)
    pem, public = key_file()
    register_public_key(http, live.url, public)
    path = tmp_path / "key.json"
    path.write_text(
        json.dumps({"type": "service_account", "client_email": ACCOUNT, "private_key": pem}),
        encoding="utf-8",
    )
    settings = live.broker.settings
    monkeypatch.setenv("APIAUTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APIAUTH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("APIAUTH_PUBLIC_URL", settings.public_url)
    done = CliRunner().invoke(
        cli,
        ["apps", "set", PROVIDER, "--private-key-file", str(path), "--member", site.owner.email],
    )
    assert done.exit_code == 0, done.output
    assert ACCOUNT in done.stdout
    assert "PRIVATE KEY" not in done.output
    made = site.connect()
    assert made.status_code == 201, made.text
    assert site.secret()["bearer_token"]


@pytest.mark.fast
def test_without_an_uploaded_key_file_connecting_says_how_to_upload_one(
    app: InProcessServer, http: httpx.Client
) -> None:
    site = Site(app, http)
    refused = site.connect()
    assert refused.status_code == 422, refused.text
    assert "apps set google-service-account --private-key-file" in refused.text
