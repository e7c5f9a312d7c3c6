"""Key-based connections end to end (SPEC §7): a real `apiauth serve --demo` process, the real
`apiauth connect … --api-key-stdin` and `--username … --password-stdin`, a separate Python
process reading the key and the basic credentials with the client library, proxy calls the
emulator accepts, a key revoked at the provider turning `needs_reauth` at the server's own
re-verification, a refused key stored nowhere, and disconnecting. SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import ServerProcess, run_cli, run_function
from tests.seeding import seed_site
from tests.servers import free_port

pytestmark = pytest.mark.e2e

SITE = "keys-e2e"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"
# The server re-verifies pasted credentials this often, so that a revoked key is noticed
# while the test watches.
VALIDATE_SECONDS = 2

FUNCTION = """
import json
from apiauth import get_secrets

print(json.dumps({
    name: {"auth_mode": s.auth_mode, "api_key": s.api_key, "username": s.username,
           "password": s.password, "bearer_token": s.bearer_token, "is_logged_in": s.is_logged_in}
    for name, s in get_secrets().items()
}))
"""


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path, database_url, free_port())
    process.env["APIAUTH_VALIDATE_INTERVAL_SECONDS"] = str(VALIDATE_SECONDS)
    # The keys are pasted by CLI processes: the server's refresher hears of their rows when it
    # looks again for work scheduled elsewhere (30 s by default).
    process.env["APIAUTH_REFRESHER_RECHECK_SECONDS"] = "1"
    process.start()
    try:
        yield process
    finally:
        process.stop()


def demo_key(provider: str) -> str:
    return f"emu-{provider}-{secrets.token_hex(12)}"


def read_in_a_function(server: ServerProcess, token: str) -> dict[str, Any]:
    found: dict[str, Any] = run_function(server.url, token, FUNCTION)
    return found


def test_an_api_key_and_basic_credentials_from_connect_to_revocation(
    server: ServerProcess,
) -> None:
    env = server.env
    seeded = seed_site(server, SITE, owner=OWNER, password=PASSWORD)
    pat, site_token = seeded.personal_token, seeded.site_token

    key, password = demo_key("openai"), demo_key("twilio")
    done = run_cli(["connect", SITE, "openai", "--api-key-stdin"], env, key + "\n")
    assert done.returncode == 0, done.stderr[-1000:]
    done = run_cli(
        ["connect", SITE, "twilio", "--username", "emu-twilio", "--password-stdin"],
        env,
        password + "\n",
    )
    assert done.returncode == 0, done.stderr[-1000:]
    refused = run_cli(["connect", SITE, "sendgrid", "--api-key-stdin"], env, "SG.bad-key-0000\n")
    assert refused.returncode != 0
    assert "SendGrid refused the credential" in refused.stderr
    assert "SG.bad-key-0000" not in refused.stdout + refused.stderr

    found = read_in_a_function(server, site_token)
    assert set(found) == {"openai", "twilio"}
    assert found["openai"]["auth_mode"] == "api_key"
    assert found["openai"]["api_key"] == key
    assert found["openai"]["bearer_token"] is None
    assert (found["twilio"]["username"], found["twilio"]["password"]) == ("emu-twilio", password)

    with httpx.Client(timeout=15, headers={"Authorization": f"Bearer {site_token}"}) as http:
        assert http.get(f"{server.url}/api/v1/proxy/openai/v1/models").status_code == 200
        twilio = http.get(f"{server.url}/api/v1/proxy/twilio/2010-04-01/Accounts.json")
        assert twilio.status_code == 200

        # Revoked at the provider: the server's refresher finds out by itself.
        revoked = http.post(
            f"{server.url}/_emulator/_admin/revoke-key", json={"provider": "openai", "key": key}
        )
        assert revoked.status_code == 200
        pat_headers = {"Authorization": f"Bearer {pat}"}
        connection: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            connection = http.get(
                f"{server.url}/api/v1/sites/{SITE}/connections/openai", headers=pat_headers
            ).json()
            if connection["status"] == "needs_reauth":
                break
            time.sleep(0.5)
        assert connection["status"] == "needs_reauth", connection
        assert read_in_a_function(server, site_token)["openai"]["is_logged_in"] is False
        assert read_in_a_function(server, site_token)["twilio"]["is_logged_in"] is True

        gone = http.delete(
            f"{server.url}/api/v1/sites/{SITE}/connections/twilio", headers=pat_headers
        )
        assert gone.status_code == 200
    assert set(read_in_a_function(server, site_token)) == {"openai"}
    log = server.log()
    for secret in (key, password, "SG.bad-key-0000"):
        assert secret not in log
