"""Nothing in plaintext at rest: with all six providers connected (one refreshed), a team's own
OAuth app, a webhook secret and an open flow holding a PKCE verifier, no access token, refresh
token, client secret, PKCE verifier, webhook secret or apiauth token appears in the SQLite file
(and its WAL), in `pg_dump` of the PostgreSQL database, or in any file of the data dir.

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
from sqlalchemy import select
from sqlalchemy.engine import make_url

from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from apiauth.domain.token_format import hash_token
from apiauth.domain.token_store import open_token
from apiauth.store.models import AuthState, Connection
from apiauth.vault import record_aad
from conftest import LiveServer
from consent import consent
from leak_search import Secrets, leaks_in_files

PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful")
SITE = "at-rest"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
        url = started.json()["authorize_url"]
        secrets.add(f"{provider} OAuth state", parse_qs(urlsplit(url).query)["state"][0])
        secrets.add(f"{provider} PKCE verifier", open_verifier(broker, url))
        assert consent(http, url).status_code == 200
    stored_token_sets(broker, secrets, "as connected")

    # Rotating refresh tokens (Box, Spotify) leave a spent one behind: it must be gone too.
    for provider in ("box", "spotify", "salesforce"):
        refreshed = http.post(
            f"{api}/sites/{SITE}/connections/{provider}/refresh", headers=bearer(pat)
        )
        assert refreshed.status_code == 200, refreshed.text
    stored_token_sets(broker, secrets, "after a refresh")

    answer = http.get(f"{api}/secrets", headers=bearer(site_token))
    assert answer.status_code == 200
    served = answer.json()
    assert sorted(served) == sorted(PROVIDERS)
    for provider, secret in served.items():
        secrets.add(f"{provider} access token (served)", secret["bearer_token"])
    minted = http.post(f"{api}/function-tokens", json={}, headers=bearer(site_token))
    secrets.add("function token", minted.json()["token"])

    set_oauth_app(broker, owner, "github", "team-github-client", "team-github-client-secret-x")
    secrets.add("team OAuth client secret", "team-github-client-secret-x")

    # A flow left open: its PKCE verifier waits, sealed, in auth_states.
    started = http.post(
        f"{api}/sites/{SITE}/connections", json={"provider": "spotify"}, headers=bearer(pat)
    )
    open_flow = started.json()["authorize_url"]
    verifier = open_verifier(broker, open_flow)
    assert verifier is not None, "spotify uses PKCE: the open flow should hold a verifier"
    secrets.add("PKCE verifier of an open flow", verifier)

    labels = secrets.labels()
    assert {f"{provider} access token (as connected)" for provider in PROVIDERS} <= labels
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
