"""Nothing in plaintext at rest: with all six providers connected (one refreshed), an API key
and basic credentials pasted (and a refused key), a GitHub App installed (its private key a
team secret, its installation token renewed), a team's own OAuth app, a webhook secret and an
open flow holding a PKCE verifier, no access token, refresh token, client secret, private key,
PKCE verifier, webhook secret or apiauth token appears in the SQLite file (and its WAL), in
`pg_dump` of the PostgreSQL database, or in any file of the data dir.

The values searched for are the real ones: access tokens as `/api/v1/secrets` hands them out,
refresh tokens and verifiers opened through the vault. That a ciphertext copied to another row
does not open is checked by `tests/test_storage.py::
test_a_token_ciphertext_copied_to_another_row_does_not_open`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from sqlalchemy import select
from sqlalchemy.engine import make_url

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from apiauth.domain.token_format import hash_token
from apiauth.domain.token_store import open_token
from apiauth.store.models import AuthState, Connection
from apiauth.vault import record_aad
from tests.consent import consent, provider_url_of
from tests.leak_search import Secrets, leaks_in_files
from tests.servers import LiveServer

PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful")
SITE = "at-rest"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sealed_authorize_url(broker: Broker, continue_link: str) -> str:
    """The provider's URL of a flow nobody has continued yet, opened through the vault."""
    token = continue_link.rsplit("/", 1)[-1]
    with broker.sessions() as db:
        row = db.scalar(select(AuthState).where(AuthState.continue_hash == hash_token(token)))
    assert row is not None
    assert row.authorize_url_enc is not None
    return broker.vault.open_text(
        row.authorize_url_enc, record_aad("auth_states", row.id, "authorize_url_enc")
    )


def open_verifier(broker: Broker, authorize_url: str) -> str | None:
    """The PKCE verifier of the flow behind an authorize URL, opened through the vault."""
    state = parse_qs(urlsplit(authorize_url).query)["state"][0]
    with broker.sessions() as db:
        row = db.scalar(select(AuthState).where(AuthState.state_hash == hash_token(state)))
    assert row is not None
    if row.pkce_verifier_enc is None:
        return None
    return broker.vault.open_text(
        row.pkce_verifier_enc, record_aad("auth_states", row.id, "pkce_verifier_enc")
    )


def stored_token_sets(broker: Broker, secrets: Secrets, when: str) -> None:
    with broker.sessions() as db:
        for connection in db.scalars(select(Connection)):
            token = open_token(broker, connection)
            assert token is not None
            secrets.add(f"{connection.provider} access token ({when})", token.access_token)
            secrets.add(f"{connection.provider} refresh token ({when})", token.refresh_token)


def install_github_app(
    live: LiveServer, broker: Broker, owner: MemberView, http: httpx.Client, pat: str
) -> list[str]:
    """Store a GitHub App for the team and install it for the site; the private key's
    base64 lines (what a leak of the PEM would show)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    registered = http.post(
        f"{live.url}/_emulator/_admin/github-apps",
        json={
            "provider": "github-app",
            "app_id": "880088",
            "slug": "at-rest-app",
            "jwk": RSAKey.import_key(pem).as_dict(private=False),
            "setup_url": f"{live.url}/oauth/callback",
        },
    )
    assert registered.status_code == 200, registered.text
    set_oauth_app(broker, owner, "github-app", "880088", pem, "at-rest-app")
    started = http.post(
        f"{live.url}/api/v1/sites/{SITE}/connections",
        json={"provider": "github-app"},
        headers=bearer(pat),
    )
    assert started.status_code == 200, started.text
    installed = http.get(provider_url_of(http, started.json()["authorize_url"]))
    assert installed.status_code == 302, installed.text
    done = http.get(installed.headers["location"], headers={"Accept": "application/json"})
    assert done.status_code == 200, done.text
    return pem.splitlines()[1:-1]


def pg_dump(database_url: str) -> bytes:
    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is missing: install postgresql-client (.ci/run does)")
    url = make_url(database_url).set(drivername="postgresql")
    dumped = subprocess.run(
        ["pg_dump", "--no-owner", url.render_as_string(hide_password=False)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert dumped.returncode == 0, dumped.stderr.decode(errors="replace")[-2000:]
    return dumped.stdout


def test_no_secret_is_stored_in_plaintext(
    live: LiveServer,
    broker: Broker,
    owner: MemberView,
    http: httpx.Client,
    database_url: str,
    tmp_path: Path,
) -> None:
    secrets = Secrets()
    api = live.url + "/api/v1"
    pat = create_personal_token(broker, owner, "at-rest")
    secrets.add("personal access token", pat)
    created = http.post(
        f"{api}/sites",
        json={"name": SITE, "webhook_url": "http://127.0.0.1:9/hook"},
        headers=bearer(pat),
    )
    assert created.status_code == 201, created.text
    secrets.add("webhook secret", created.json()["webhook_secret"])
    site_token = http.post(f"{api}/sites/{SITE}/api-auth", headers=bearer(pat)).json()["token"]
    secrets.add("site token", site_token)

    for provider in PROVIDERS:
        started = http.post(
            f"{api}/sites/{SITE}/connections", json={"provider": provider}, headers=bearer(pat)
        )
        assert started.status_code == 200, started.text
        url = provider_url_of(http, started.json()["authorize_url"])
        secrets.add(f"{provider} OAuth state", parse_qs(urlsplit(url).query)["state"][0])
        secrets.add(f"{provider} PKCE verifier", open_verifier(broker, url))
        assert consent(http, url).status_code == 200
    # Pasted credentials (SPEC §7): an API key, basic credentials, and a refused key that
    # must not be stored at all.
    pasted = {
        "openai": {"api_key": "emu-openai-" + "k3y-at-rest-openai-0001"},
        "twilio": {"username": "emu-twilio", "password": "emu-twilio-" + "pw-at-rest-twilio-0001"},
    }
    for provider, credentials in pasted.items():
        made = http.post(
            f"{api}/sites/{SITE}/connections",
            json={"provider": provider, "credentials": credentials},
            headers=bearer(pat),
        )
        assert made.status_code == 201, made.text
    secrets.add("OpenAI API key", pasted["openai"]["api_key"])
    secrets.add("Twilio password", pasted["twilio"]["password"])
    refused = http.post(
        f"{api}/sites/{SITE}/connections",
        json={"provider": "anthropic", "credentials": {"api_key": "sk-ant-refused-key-at-rest"}},
        headers=bearer(pat),
    )
    assert refused.status_code == 422
    secrets.add("refused Anthropic key", "sk-ant-refused-key-at-rest")
    # A GitHub App (SPEC §7): its private key is a team secret, its installation token a
    # connection's.
    for number, line in enumerate(install_github_app(live, broker, owner, http, pat)):
        secrets.add(f"GitHub App private key (line {number})", line)
    stored_token_sets(broker, secrets, "as connected")

    # Rotating refresh tokens (Box, Spotify) leave a spent one behind: it must be gone too.
    for provider in ("box", "spotify", "salesforce", "github-app"):
        refreshed = http.post(
            f"{api}/sites/{SITE}/connections/{provider}/refresh", headers=bearer(pat)
        )
        assert refreshed.status_code == 200, refreshed.text
    stored_token_sets(broker, secrets, "after a refresh")

    answer = http.get(f"{api}/secrets", headers=bearer(site_token))
    assert answer.status_code == 200
    served = answer.json()
    assert sorted(served) == sorted([*PROVIDERS, *pasted, "github-app"])
    for provider, secret in served.items():
        secrets.add(f"{provider} access token (served)", secret["bearer_token"])
    assert served["github-app"]["bearer_token"].startswith("ghs_")
    assert served["openai"]["api_key"] == pasted["openai"]["api_key"]
    minted = http.post(f"{api}/function-tokens", json={}, headers=bearer(site_token))
    secrets.add("function token", minted.json()["token"])

    set_oauth_app(broker, owner, "github", "team-github-client", "team-github-client-secret-x")
    secrets.add("team OAuth client secret", "team-github-client-secret-x")

    # A flow left open: its PKCE verifier waits, sealed, in auth_states.
    started = http.post(
        f"{api}/sites/{SITE}/connections", json={"provider": "spotify"}, headers=bearer(pat)
    )
    # Not continued yet: its Continue token is stored as a hash, and the provider's URL
    # (with the state) waits sealed.
    continue_link = started.json()["authorize_url"]
    secrets.add("Continue token of an open flow", continue_link.rsplit("/", 1)[-1])
    secrets.add(
        "OAuth state of a flow not continued yet",
        parse_qs(urlsplit(sealed_authorize_url(broker, continue_link)).query)["state"][0],
    )
    open_flow = provider_url_of(http, continue_link)
    verifier = open_verifier(broker, open_flow)
    assert verifier is not None, "spotify uses PKCE: the open flow should hold a verifier"
    secrets.add("PKCE verifier of an open flow", verifier)

    labels = secrets.labels()
    assert {f"{provider} access token (as connected)" for provider in PROVIDERS} <= labels
    assert {"OpenAI API key", "Twilio password", "refused Anthropic key"} <= labels
    assert {
        "github-app access token (after a refresh)",
        "GitHub App private key (line 1)",
    } <= labels
    assert {"box refresh token (as connected)", "box refresh token (after a refresh)"} <= labels
    assert len([label for label in labels if "PKCE" in label]) >= 3

    files = [tmp_path]  # the data dir, and the SQLite file with its -wal and -shm
    leaks = leaks_in_files(secrets, *files)
    assert not leaks, f"secrets in plaintext in files: {leaks}"

    if database_url.startswith("postgresql"):
        dump = pg_dump(database_url)
        assert SITE.encode() in dump, "the dump holds no data at all"
        assert b"octocat" in dump
        found = secrets.found_in(dump)
        assert not found, f"secrets in plaintext in pg_dump: {found}"
    else:
        database = tmp_path / "apiauth.db"
        assert SITE.encode() in database.read_bytes() + _wal(database), "no data in the file"


def _wal(database: Path) -> bytes:
    wal = database.with_name(database.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""
