"""`apiauth backup FILE` / `apiauth restore FILE`: a round trip into a fresh database (SQLite
to PostgreSQL and back) serves the same secrets, the file holds no token in plaintext, and a
restore refuses a database that is not empty or a server without the master key."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiauth.domain import backup, connect_flow, sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.vault import MasterKey
from tests.consent import consent
from tests.databases import fresh_postgres_database
from tests.processes import apiauth_env, run_cli
from tests.servers import make_settings, open_test_broker, running_server


@pytest.fixture
def other_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The restore target: PostgreSQL for a SQLite source, SQLite for a PostgreSQL one."""
    source = request.getfixturevalue("database_url")
    if source.startswith("sqlite"):
        yield from fresh_postgres_database()
    else:
        yield f"sqlite:///{tmp_path / 'restored' / 'apiauth.db'}"


def _cli_env(data_dir: Path, database_url: str, key: str) -> dict[str, str]:
    env = apiauth_env(data_dir, database_url, 8000)
    env["APIAUTH_MASTER_KEY"] = key
    return env


def _secrets(http: httpx.Client, url: str, token: str) -> dict[str, Any]:
    answer = http.get(f"{url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_a_backup_restores_into_a_fresh_database_and_serves_the_same_secrets(
    tmp_path: Path, database_url: str, other_database: str, http: httpx.Client
) -> None:
    key = MasterKey.generate().to_text()
    source_dir, target_dir = tmp_path / "source", tmp_path / "target"
    with running_server(source_dir, database_url, master_key=key) as live:
        owner = create_member(live.broker, "owner@example.com", "correct horse battery")
        pat = create_personal_token(live.broker, owner, "tests")
        sites.create_site(live.broker, owner, "my-site")
        site_token = sites.enable_api_auth(live.broker, owner, "my-site")
        for provider in ("github", "box", "salesforce"):
            start = connect_flow.start_connection(live.broker, owner, "my-site", provider)
            assert consent(http, start.authorize_url).status_code == 200
        before = _secrets(http, live.url, site_token)
        events_before = http.get(
            f"{live.url}/api/v1/sites/my-site/events", headers={"Authorization": f"Bearer {pat}"}
        ).json()["events"]

    file = tmp_path / "apiauth.backup"
    made = run_cli(["backup", str(file)], _cli_env(source_dir / "data", database_url, key))
    assert made.returncode == 0, made.stderr
    assert "rows" in made.stdout
    assert file.stat().st_mode & 0o777 == 0o600

    # No token in plaintext, in the file or in what it decrypts to (ciphertexts stay sealed).
    raw = file.read_bytes()
    header = json.loads(raw.split(b"\n", 1)[0])
    assert header["format"] == "apiauth-backup"
    assert header["version"] == 1
    tokens = [site_token, pat] + [s["bearer_token"] for s in before.values()]
    for token in tokens:
        assert token.encode() not in raw
    broker = open_test_broker(make_settings(source_dir, database_url, 8000, master_key=key))
    try:
        dump = zlib.decompress(broker.vault.open(raw.split(b"\n", 1)[1], backup.AAD))
    finally:
        broker.close()
    assert b'"table":"connections"' in dump
    for token in tokens:
        assert token.encode() not in dump

    target_env = _cli_env(target_dir / "data", other_database, key)
    restored = run_cli(["restore", str(file)], target_env)
    assert restored.returncode == 0, restored.stderr
    again = run_cli(["restore", str(file)], target_env)
    assert again.returncode == 1
    assert "not empty" in again.stderr
    assert "restore only into a fresh database" in again.stderr

    with running_server(target_dir, other_database, master_key=key) as restored_live:
        assert _secrets(http, restored_live.url, site_token) == before
        events = http.get(
            f"{restored_live.url}/api/v1/sites/my-site/events",
            headers={"Authorization": f"Bearer {pat}"},
        ).json()["events"]
        assert {e["id"] for e in events_before} <= {e["id"] for e in events}
        # New rows after a restore get new ids (PostgreSQL's sequences moved past the old).
        sites.create_site(restored_live.broker, owner, "after-restore")
        newest = http.get(
            f"{restored_live.url}/api/v1/sites/after-restore/events",
            headers={"Authorization": f"Bearer {pat}"},
        ).json()["events"]
        assert newest[0]["id"] > max(e["id"] for e in events_before)


def test_a_restore_without_the_master_key_says_which_key_it_needs(tmp_path: Path) -> None:
    key = MasterKey.generate().to_text()
    source = f"sqlite:///{tmp_path / 'source.db'}"
    made = run_cli(["backup", str(tmp_path / "b")], _cli_env(tmp_path / "source", source, key))
    assert made.returncode == 0, made.stderr
    target = apiauth_env(tmp_path / "target", f"sqlite:///{tmp_path / 'target.db'}", 8000)
    refused = run_cli(["restore", str(tmp_path / "b")], target)
    assert refused.returncode == 1
    assert "was encrypted with master key" in refused.stderr
    assert "APIAUTH_MASTER_KEY" in refused.stderr
    (tmp_path / "junk").write_bytes(b"hello\n")
    broker = open_test_broker(make_settings(tmp_path / "target", source, 8000, master_key=key))
    try:
        with pytest.raises(backup.BackupError, match="is not an apiauth backup"):
            backup.open_backup(broker, tmp_path / "junk")
    finally:
        broker.close()
