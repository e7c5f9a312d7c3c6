"""A GitHub App installation end to end (SPEC §7): a real `apiauth serve --demo` process, the
App stored with the real `apiauth apps set github-app --app-id … --slug … --private-key-file`
(a bad key file is a CLI error), a person's browser installing the App through apiauth's
Continue page and the emulated install page, a separate Python process reading the
installation token with `get_secrets()`, a proxy call the emulated API accepts, the server's
refresher minting a new token before the short emulated one expires, and disconnecting,
which revokes it. Neither the App's key nor a token reaches the server's log. SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from tests.consent import consent, provider_url_of
from tests.processes import ServerProcess, run_cli, run_function
from tests.seeding import seed_site
from tests.servers import free_port

pytestmark = pytest.mark.e2e

SITE = "app-e2e"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"
PROVIDER = "github-app"
APP_ID = "31337"
SLUG = "apiauth-e2e"
# Installation tokens live this long in the emulator, so that the test sees a renewal.
TOKEN_TTL = 6
SET_APP = ["apps", "set", PROVIDER, "--app-id", APP_ID, "--slug", SLUG, "--private-key-file"]

FUNCTION = """
import json
from apiauth import get_secrets

s = get_secrets()["github-app"]
print(json.dumps({"auth_mode": s.auth_mode, "bearer_token": s.bearer_token,
                  "extra": dict(s.extra), "expires_at": str(s.expires_at)}))
"""


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path, database_url, free_port())
    process.env["APIAUTH_EMULATOR_TOKEN_TTL"] = str(TOKEN_TTL)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def read_in_a_function(server: ServerProcess, token: str) -> dict[str, Any]:
    found: dict[str, Any] = run_function(server.url, token, FUNCTION)
    return found


def test_a_github_app_from_installation_to_disconnect(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = server.env
    seeded = seed_site(server, SITE, owner=OWNER, password=PASSWORD)
    pat, site_token = seeded.personal_token, seeded.site_token

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n", encoding="utf-8")
    refused = run_cli([*SET_APP, str(bad)], env)
    assert refused.returncode != 0
    assert "not an unencrypted PEM private key" in refused.stderr
    assert "Traceback" not in refused.stderr
    good = tmp_path / "apiauth-e2e.private-key.pem"
    good.write_text(pem, encoding="utf-8")
    saved = run_cli([*SET_APP, str(good)], env)
    assert saved.returncode == 0, saved.stderr[-1000:]
    assert "PRIVATE KEY" not in saved.stdout + saved.stderr

    with httpx.Client(timeout=15) as browser:
        registered = browser.post(
            f"{server.url}/_emulator/_admin/github-apps",
            json={
                "provider": PROVIDER,
                "app_id": APP_ID,
                "slug": SLUG,
                "jwk": RSAKey.import_key(pem).as_dict(private=False),
                "setup_url": f"{server.url}/oauth/callback",
            },
        )
        assert registered.status_code == 200, registered.text
        pat_headers = {"Authorization": f"Bearer {pat}"}
        started = browser.post(
            f"{server.url}/api/v1/sites/{SITE}/connections",
            json={"provider": PROVIDER},
            headers=pat_headers,
        )
        assert started.status_code == 200, started.text
        install_page = provider_url_of(browser, started.json()["authorize_url"])
        assert f"/github.com/apps/{SLUG}/installations/new?state=" in install_page
        setup = browser.get(install_page)
        assert setup.status_code == 302, setup.text
        done = browser.get(setup.headers["location"], headers={"Accept": "application/json"})
        assert done.status_code == 200, done.text
        assert done.json()["account"]["login"] == "octo-org"

        first = read_in_a_function(server, site_token)
        assert first["auth_mode"] == "github_app"
        assert first["bearer_token"].startswith("ghs_")
        assert first["extra"]["account_type"] == "Organization"
        assert first["extra"]["installation_id"].isdigit()

        site_headers = {"Authorization": f"Bearer {site_token}"}
        repos = browser.get(
            f"{server.url}/api/v1/proxy/{PROVIDER}/installation/repositories",
            headers=site_headers,
        )
        assert repos.status_code == 200, repos.text
        assert repos.json()["total_count"] >= 1

        # The server's refresher mints the next token before this one expires.
        renewed = first
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and renewed["bearer_token"] == first["bearer_token"]:
            time.sleep(1)
            renewed = read_in_a_function(server, site_token)
        assert renewed["bearer_token"] != first["bearer_token"]
        assert renewed["extra"]["installation_id"] == first["extra"]["installation_id"]
        stats = browser.get(f"{server.url}/_emulator/_admin/stats").json()[PROVIDER]
        assert stats["client_tokens"] >= 2

        gone = browser.delete(
            f"{server.url}/api/v1/sites/{SITE}/connections/{PROVIDER}", headers=pat_headers
        )
        assert gone.status_code == 200, gone.text
        stats = browser.get(f"{server.url}/_emulator/_admin/stats").json()[PROVIDER]
        assert stats["revocations"] >= 1
        listed = browser.get(f"{server.url}/api/v1/sites/{SITE}/connections", headers=pat_headers)
        assert listed.json() == []

    log = server.log()
    for secret in (first["bearer_token"], renewed["bearer_token"], *pem.splitlines()[1:-1]):
        assert secret not in log


EVERY_MODE = """
import json
from apiauth import get_secrets

print(json.dumps({
    name: {"auth_mode": s.auth_mode, "bearer_token": s.bearer_token, "api_key": s.api_key,
           "username": s.username, "password": s.password, "is_logged_in": s.is_logged_in}
    for name, s in get_secrets().items()
}))
"""


def test_one_site_holds_every_kind_of_credential_side_by_side(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Issue 15's "done": an OpenAI key, Twilio basic credentials, a Google service account,
    a GitHub App installation and an OAuth connection on one site, read by one
    `get_secrets()` in a function's process, each usable through the proxy."""
    env = server.env
    seeded = seed_site(server, SITE, owner=OWNER, password=PASSWORD)
    pat, site_token = {"Authorization": f"Bearer {seeded.personal_token}"}, seeded.site_token
    openai_key, twilio_token = f"emu-openai-{'k' * 24}", f"emu-twilio-{'t' * 24}"
    done = run_cli(["connect", SITE, "openai", "--api-key-stdin"], env, openai_key + "\n")
    assert done.returncode == 0, done.stderr[-1000:]
    basic = ["connect", SITE, "twilio", "--username", "emu-twilio", "--password-stdin"]
    done = run_cli(basic, env, twilio_token + "\n")
    assert done.returncode == 0, done.stderr[-1000:]

    app_pem, account_pem = (rsa_pem(), rsa_pem())
    app_key, account_file = tmp_path / "app.pem", tmp_path / "service-account.json"
    app_key.write_text(app_pem, encoding="utf-8")
    account = "builder@my-project.iam.gserviceaccount.com"
    account_file.write_text(
        json.dumps(
            {"type": "service_account", "client_email": account, "private_key": account_pem}
        ),
        encoding="utf-8",
    )
    for stored in (
        [*SET_APP, str(app_key)],
        ["apps", "set", "google-service-account", "--private-key-file", str(account_file)],
    ):
        saved = run_cli(stored, env)
        assert saved.returncode == 0, saved.stderr[-1000:]

    with httpx.Client(timeout=15) as browser:
        admin = f"{server.url}/_emulator/_admin"
        assert browser.post(
            f"{admin}/github-apps",
            json={
                "provider": PROVIDER,
                "app_id": APP_ID,
                "slug": SLUG,
                "jwk": RSAKey.import_key(app_pem).as_dict(private=False),
                "setup_url": f"{server.url}/oauth/callback",
            },
        ).is_success
        assert browser.post(
            f"{admin}/public-keys",
            json={
                "provider": "google-service-account",
                "issuer": account,
                "jwk": RSAKey.import_key(account_pem).as_dict(private=False),
            },
        ).is_success
        connections = f"{server.url}/api/v1/sites/{SITE}/connections"
        minted = browser.post(connections, json={"provider": "google-service-account"}, headers=pat)
        assert minted.status_code == 201, minted.text
        started = browser.post(connections, json={"provider": PROVIDER}, headers=pat)
        assert started.status_code == 200, started.text
        setup = browser.get(provider_url_of(browser, started.json()["authorize_url"]))
        assert setup.status_code == 302, setup.text
        installed = browser.get(setup.headers["location"], headers={"Accept": "application/json"})
        assert installed.status_code == 200, installed.text
        started = browser.post(connections, json={"provider": "github"}, headers=pat)
        assert started.status_code == 200, started.text
        assert consent(browser, started.json()["authorize_url"]).status_code == 200

        found: dict[str, Any] = run_function(server.url, site_token, EVERY_MODE)
        assert {name: s["auth_mode"] for name, s in found.items()} == {
            "openai": "api_key",
            "twilio": "basic",
            "google-service-account": "jwt_bearer",
            PROVIDER: "github_app",
            "github": "oauth2",
        }
        assert all(s["is_logged_in"] for s in found.values())
        assert found["openai"]["api_key"] == openai_key
        assert (found["twilio"]["username"], found["twilio"]["password"]) == (
            "emu-twilio",
            twilio_token,
        )
        for name in ("google-service-account", PROVIDER, "github"):
            assert found[name]["bearer_token"], name
        site = {"Authorization": f"Bearer {site_token}"}
        for path in (
            "openai/v1/models",
            "twilio/2010-04-01/Accounts.json",
            f"{PROVIDER}/installation/repositories",
            "github/user",
        ):
            through = browser.get(f"{server.url}/api/v1/proxy/{path}", headers=site)
            assert through.status_code == 200, f"{path}: {through.text[:300]}"


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
