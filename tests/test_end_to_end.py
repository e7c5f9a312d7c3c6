"""End to end, as a new user follows the quickstart: a real `apiauth serve --demo` process,
the real `apiauth` command, a person consenting at the emulated providers over real HTTP, and
a separate Python process reading its tokens with the client library.

One server runs per database (SQLite, PostgreSQL) for the whole module; the tests are user
stories that build on each other in file order (account and site, then connections, then
what builds and functions see, then disconnecting, rotating and failing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect

import apiauth
from apiauth.providers import load_catalog
from tests.databases import fresh_postgres_database
from tests.processes import (
    ConnectOutcome,
    ServerProcess,
    apiauth_env,
    client_env,
    connect_with_consent,
    run_cli,
)
from tests.servers import free_port

pytestmark = pytest.mark.e2e

PROVIDERS = ["github", "salesforce", "spotify", "stripe", "box", "contentful"]
SCOPES = {"github": ["repo", "read:user"]}
SITE = "my-site"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"

FUNCTION = """
import json
from apiauth import get_secrets

secrets = get_secrets()
print(json.dumps({
    name: {
        "bearer_token": secret.bearer_token,
        "extra": secret.extra,
        "granted_scopes": list(secret.granted_scopes),
        "login": secret.account.login if secret.account else None,
    }
    for name, secret in secrets.items()
}))
"""


# --------------------------------------------------------------------------- helpers
#
# Tokens must never show up in a failure report. pytest's assertion rewriting prints the
# operands of a failed `assert` (and the reprs of objects they came from), so every check that
# touches a token, or an object holding one, goes through `expect()`, which reports only its
# message.


def expect(condition: object, message: str) -> None:
    if not condition:
        pytest.fail(message, pytrace=False)


@dataclass(repr=False)
class World:
    """What the user has so far; tests later in the file read and update it."""

    server: ServerProcess
    http: httpx.Client
    pat: str = ""
    site_token: str = ""
    connects: dict[str, ConnectOutcome] = field(default_factory=dict)
    function_secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # every secret value met, for leak checks
    quickstart: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"World(server={self.server.url})"

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(args, self.env, input, cwd=self.server.workdir)

    def client_cli(self, *args: str, token: str) -> subprocess.CompletedProcess[str]:
        return run_cli(args, client_env(self.server.url, token), cwd=self.server.workdir)

    def redact(self, text: str) -> str:
        for secret in self.seen:
            text = text.replace(secret, "<redacted>")
        return text

    def ok(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        expect(
            result.returncode == 0,
            f"`apiauth {what}` exited {result.returncode}: {self.redact(result.stderr)[-1500:]}",
        )

    def secrets_status(self, token: str) -> int:
        return self.secrets_response(token).status_code

    def secrets_response(self, token: str) -> httpx.Response:
        return self.http.get(
            f"{self.server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"}
        )

    def whoami_url(self, provider: str, extra: dict[str, Any]) -> str:
        catalog = load_catalog(emulator_url=f"{self.server.url}/_emulator")
        url = catalog[provider].userinfo_url
        assert url is not None, f"{provider} has no who-am-I URL"
        if "{instance_url}" in url:
            url = url.replace("{instance_url}", str(extra["instance_url"]).rstrip("/"))
        return url

    def whoami(self, provider: str, token: str, extra: dict[str, Any]) -> int:
        """The status the provider's (emulated) who-am-I endpoint answers the token with."""
        response = self.http.get(
            self.whoami_url(provider, extra), headers={"Authorization": f"Bearer {token}"}
        )
        return response.status_code


def table_rows(text: str) -> dict[str, list[str]]:
    """The body rows of a rich table by their first cell (continuation lines skipped)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "│" not in line:
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells and cells[0]:
            rows[cells[0]] = cells
    return rows


def one_line(text: str) -> str:
    return " ".join(text.split())


def contains_any(text: str, secrets: Iterable[str]) -> bool:
    return any(secret and secret in text for secret in secrets)


def bearer_tokens(answer: dict[str, Any]) -> dict[str, str | None]:
    return {name: secret["bearer_token"] for name, secret in answer.items()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def e2e_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """conftest's `database_url`, once per module: one server per database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'apiauth.db'}"
    else:
        yield from fresh_postgres_database()


@pytest.fixture(scope="module")
def world(e2e_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ServerProcess(tmp_path_factory.mktemp("e2e"), e2e_database_url, free_port())
    server.start()
    try:
        with httpx.Client(timeout=15) as http:
            yield World(server=server, http=http)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def quickstart(world: World) -> World:
    """README quickstart, step 1: owner, personal token, site, API Authentication on."""
    steps = world.quickstart
    steps["users create"] = world.cli(
        "users", "create", OWNER, "--password-stdin", input=PASSWORD + "\n"
    )
    world.ok(steps["users create"], "users create")
    steps["tokens create"] = world.cli("tokens", "create")
    world.ok(steps["tokens create"], "tokens create")
    world.pat = steps["tokens create"].stdout.strip()
    world.seen.add(world.pat)
    steps["sites create"] = world.cli("sites", "create", SITE)
    world.ok(steps["sites create"], "sites create")
    steps["sites enable"] = world.cli("sites", "enable", SITE)
    world.ok(steps["sites enable"], "sites enable")
    for line in steps["sites enable"].stdout.splitlines():
        if line.startswith("APIAUTH_TOKEN="):
            world.site_token = line.removeprefix("APIAUTH_TOKEN=").strip()
            world.seen.add(world.site_token)
    return world


@pytest.fixture(scope="module")
def connected(quickstart: World) -> World:
    """Step 2: every provider connected from the command line."""
    world = quickstart
    for provider in PROVIDERS:
        world.connects[provider] = connect_with_consent(
            world.http, world.env, SITE, provider, scopes=SCOPES.get(provider, ())
        )
    return world


@pytest.fixture(scope="module")
def function_secrets(connected: World) -> World:
    """Step 3: a separate Python process, a function, reads the site's tokens."""
    world = connected
    result = subprocess.run(
        [sys.executable, "-c", FUNCTION],
        env=client_env(world.server.url, world.site_token),
        cwd=world.server.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    expect(result.returncode == 0, f"the function failed: {world.redact(result.stderr)[-1500:]}")
    world.function_secrets = json.loads(result.stdout)
    world.seen.update(t for t in bearer_tokens(world.function_secrets).values() if t)
    return world


# --------------------------------------------------------------------------- the stories


def test_owner_creates_account_token_site_and_enables_api_auth(quickstart: World) -> None:
    world = quickstart
    steps = world.quickstart
    assert OWNER in steps["users create"].stdout
    assert "owner" in steps["users create"].stdout

    expect(world.pat.startswith("apiauth_pat_"), "`tokens create` printed no apiauth_pat_ token")
    expect(
        len(steps["tokens create"].stdout.strip().splitlines()) == 1,
        "`tokens create` should print only the token on stdout",
    )
    expect(world.pat not in steps["tokens create"].stderr, "the PAT leaked to stderr")

    assert SITE in steps["sites create"].stdout
    expect(world.site_token.startswith("apiauth_site_"), "`sites enable` printed no site token")
    expect(world.site_token not in steps["sites enable"].stderr, "the token leaked to stderr")

    # The commands wrote to the database the running server reads.
    sites = world.http.get(
        f"{world.server.url}/api/v1/sites", headers={"Authorization": f"Bearer {world.pat}"}
    )
    status = sites.status_code
    assert status == 200, "the server rejected the personal access token"
    assert SITE in [site["name"] for site in sites.json()]
    answer = world.secrets_response(world.site_token)
    status = answer.status_code
    assert status == 200, "the server rejected the site token"
    assert isinstance(answer.json(), dict)


def test_owner_connects_all_six_providers_from_the_command_line(connected: World) -> None:
    world = connected
    for provider in PROVIDERS:
        outcome = world.connects[provider]
        expect(
            outcome.returncode == 0,
            f"`apiauth connect {SITE} {provider}` exited {outcome.returncode}: "
            f"{world.redact(outcome.stderr)[-1000:]}",
        )
        status = outcome.callback.status_code
        assert status == 200, f"{provider}: the callback answered an error"
        login = outcome.callback.json()["account"]["login"]
        assert login, f"{provider}: the callback named no account"
        stdout = outcome.stdout
        assert f"{provider} connected as {login}" in stdout
        expect(outcome.authorize_url not in outcome.stderr, "the URL belongs on stdout only")
    github = world.connects["github"].callback.json()
    assert github["account"]["login"] == "octocat"
    assert github["granted_scopes"] == ["repo", "read:user"]


def test_a_function_process_gets_bearer_tokens_that_work_at_each_provider(
    function_secrets: World,
) -> None:
    world = function_secrets
    secrets = world.function_secrets
    assert sorted(secrets) == sorted(PROVIDERS)
    for provider in PROVIDERS:
        secret = secrets[provider]
        token = secret["bearer_token"]
        expect(token, f"{provider}: no bearer token")
        status = world.whoami(provider, token, secret["extra"])
        assert status == 200, f"{provider}: the emulator's who-am-I refused the bearer token"
        login = secret["login"]
        assert login == world.connects[provider].callback.json()["account"]["login"]
        # A made-up token is refused at the same place: the 200 above is not a given.
        status = world.whoami(provider, "not-a-real-token-" + provider, secret["extra"])
        assert status == 401, f"{provider}: the emulator's who-am-I accepted a made-up token"
    scopes = secrets["github"]["granted_scopes"]
    assert scopes == ["repo", "read:user"]
    instance_url = str(secrets["salesforce"]["extra"]["instance_url"])
    assert instance_url.startswith(world.server.url)
    expect(secrets["stripe"]["extra"].get("stripe_user_id"), "Stripe's stripe_user_id is missing")
    tokens = list(bearer_tokens(secrets).values())
    expect(len(set(tokens)) == len(tokens), "two providers got the same token")


def test_secrets_command_masks_tokens_unless_asked_for_json(function_secrets: World) -> None:
    world = function_secrets
    tokens = bearer_tokens(world.function_secrets)

    table = world.client_cli("secrets", token=world.site_token)
    world.ok(table, "secrets")
    printed = table.stdout + table.stderr
    expect(
        not contains_any(printed, [t for t in tokens.values() if t]),
        "`apiauth secrets` printed a full bearer token",
    )
    expect(world.site_token not in printed, "`apiauth secrets` printed the site token")
    rows = table_rows(table.stdout)
    assert sorted(rows) == sorted(PROVIDERS), "`apiauth secrets` does not list the six"
    logged_in = {name: row[1] for name, row in rows.items()}
    assert set(logged_in.values()) == {"yes"}, logged_in

    full = world.client_cli("secrets", "--json", token=world.site_token)
    world.ok(full, "secrets --json")
    answer = json.loads(full.stdout)
    assert sorted(answer) == sorted(PROVIDERS)
    for name, token in tokens.items():
        expect(answer[name]["bearer_token"] == token, f"{name}: --json shows another token")


def test_owner_lists_connections_and_disconnecting_revokes_at_the_provider(
    function_secrets: World,
) -> None:
    world = function_secrets
    listed = world.cli("connections", "list", SITE)
    world.ok(listed, "connections list")
    rows = table_rows(listed.stdout)
    for provider in PROVIDERS:
        assert provider in rows, f"{provider} is not listed"
        assert rows[provider][1] == "connected", f"{provider}: status {rows[provider][1]!r}"

    github = world.function_secrets["github"]
    status = world.whoami("github", github["bearer_token"], {})
    assert status == 200
    deleted = world.cli("connections", "delete", SITE, "github")
    world.ok(deleted, "connections delete")
    assert "revoked at the provider" in deleted.stdout

    status = world.whoami("github", github["bearer_token"], {})
    assert status == 401, "the disconnected GitHub token still works at GitHub"
    after = world.cli("connections", "list", SITE)
    world.ok(after, "connections list")
    assert "github" not in table_rows(after.stdout)
    answer = world.secrets_response(world.site_token)
    status = answer.status_code
    assert status == 200
    names = sorted(answer.json())
    assert names == sorted(set(PROVIDERS) - {"github"})


def test_denied_consent_fails_the_command_and_stores_nothing(connected: World) -> None:
    world = connected
    world.ok(world.cli("sites", "create", "denied-site"), "sites create")
    denied = connect_with_consent(world.http, world.env, "denied-site", "github", button="Deny")
    code, stdout, stderr = denied.returncode, denied.stdout, denied.stderr
    assert code != 0, "`apiauth connect` succeeded although consent was denied"
    assert "denied" in stderr.lower()
    assert "connected as" not in stdout
    assert "Traceback" not in stderr
    status = denied.callback.status_code
    assert 400 <= status < 500
    listed = world.cli("connections", "list", "denied-site")
    world.ok(listed, "connections list")
    assert "github" not in table_rows(listed.stdout)
    assert "no connections" in listed.stdout

    # Denying a re-consent for a connected provider keeps the connection and its token.
    before = world.secrets_response(world.site_token).json()["spotify"]
    again = connect_with_consent(world.http, world.env, SITE, "spotify", button="Deny")
    code, stderr = again.returncode, again.stderr
    assert code != 0
    assert "denied" in stderr.lower()
    after = world.secrets_response(world.site_token).json()["spotify"]
    expect(after["bearer_token"] == before["bearer_token"], "a denied re-consent changed the token")
    logged_in = after["is_logged_in"]
    assert logged_in is True
    status = world.whoami("spotify", after["bearer_token"], after["extra"])
    assert status == 200


def test_rotating_the_site_token_locks_out_the_old_one(connected: World) -> None:
    world = connected
    old = world.site_token
    rotated = world.cli("sites", "rotate-token", SITE, "--yes")
    world.ok(rotated, "sites rotate-token")
    lines = [ln for ln in rotated.stdout.splitlines() if ln.startswith("APIAUTH_TOKEN=")]
    expect(len(lines) == 1, "`sites rotate-token` printed no APIAUTH_TOKEN= line")
    new = lines[0].removeprefix("APIAUTH_TOKEN=").strip()
    world.seen.add(new)
    expect(new.startswith("apiauth_site_"), "the new token is not an apiauth_site_ token")
    expect(new != old, "rotate-token printed the old token")
    world.site_token = new

    # Another process (the CLI) rotated it: a server remembers a token it found valid for at
    # most 1 s (the read-path cache), so the old one stops working within that second.
    deadline = time.monotonic() + 1.5
    while (status := world.secrets_status(old)) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 401, "the old site token still works after 1.5 s"
    apiauth.clear_cache()
    message = ""
    try:
        apiauth.get_secrets(token=old, url=world.server.url)
    except apiauth.Unauthorized as exc:
        message = str(exc)
    expect(message, "the client did not raise apiauth.Unauthorized for the old token")
    expect(old not in message, "the client's error message repeats the token")

    refused = world.client_cli("secrets", token=old)
    code, stderr = refused.returncode, world.redact(refused.stderr)
    assert code == 1
    assert stderr.startswith("error:"), stderr
    assert "Traceback" not in stderr
    expect(old not in refused.stdout + refused.stderr, "`apiauth secrets` printed the token")

    status = world.secrets_status(new)
    assert status == 200, "the new site token does not work"
    secrets = apiauth.get_secrets(token=new, url=world.server.url)
    assert "spotify" in secrets
    apiauth.clear_cache()


def test_rotating_the_master_key_while_the_server_runs(connected: World) -> None:
    world = connected
    key_file = world.server.data_dir / "master.key"
    keys_before = key_file.read_text().split()
    before = world.secrets_response(world.site_token)
    status = before.status_code
    assert status == 200
    tokens_before = bearer_tokens(before.json())
    world.seen.update(t for t in tokens_before.values() if t)

    rotated = world.cli("keys", "rotate")
    world.ok(rotated, "keys rotate")
    keys_after = key_file.read_text().split()
    expect(len(keys_after) == 1, "the key file should hold only the new key")
    expect(keys_after != keys_before, "the master key did not change")
    expect(
        not contains_any(rotated.stdout + rotated.stderr, keys_before + keys_after),
        "`keys rotate` printed a master key",
    )

    # The running server was started with the old key ring and must keep serving.
    after = world.secrets_response(world.site_token)
    status = after.status_code
    assert status == 200, "after `keys rotate` the running server cannot read the secrets"
    secrets = after.json()
    expect(bearer_tokens(secrets) == tokens_before, "the tokens changed with the key")
    for name, secret in secrets.items():
        status = world.whoami(name, secret["bearer_token"], secret["extra"])
        assert status == 200, name

    # A new flow spans both: the CLI seals the PKCE verifier with the new key, the running
    # server opens it in the callback and seals the new token.
    github = connect_with_consent(world.http, world.env, SITE, "github", scopes=SCOPES["github"])
    expect(
        github.returncode == 0,
        f"connect after key rotation failed: {world.redact(github.stderr)[-1000:]}",
    )
    stdout = github.stdout
    assert "github connected as octocat" in stdout
    answer = world.secrets_response(world.site_token)
    status = answer.status_code
    assert status == 200
    token = answer.json()["github"]["bearer_token"]
    world.seen.add(token)
    status = world.whoami("github", token, {})
    assert status == 200


def test_everything_stays_readable_after_a_server_restart(connected: World) -> None:
    """What the server wrote after the key rotation is readable with the key file alone."""
    world = connected
    before = world.secrets_response(world.site_token)
    status = before.status_code
    assert status == 200
    world.server.restart()
    after = world.secrets_response(world.site_token)
    status = after.status_code
    assert status == 200, "after a restart the server cannot read the secrets"
    expect(
        bearer_tokens(after.json()) == bearer_tokens(before.json()),
        "the tokens changed with the restart",
    )
    listed = world.cli("connections", "list", SITE)
    world.ok(listed, "connections list")
    rows = table_rows(listed.stdout)
    assert sorted(rows) == sorted(PROVIDERS)
    statuses = {name: row[1] for name, row in rows.items()}
    assert set(statuses.values()) == {"connected"}, statuses


def test_cli_errors_are_one_readable_line(quickstart: World) -> None:
    world = quickstart
    missing = world.cli("sites", "enable", "no-such-site")
    code, stdout, stderr = missing.returncode, missing.stdout, missing.stderr
    assert code == 1
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {stderr!r}"
    assert lines[0].startswith("error:")
    assert "no-such-site" in lines[0]
    expect("APIAUTH_TOKEN=" not in stdout, "a token was printed for a missing site")

    unknown = world.cli("connect", SITE, "nosuchprovider")
    code, stdout, stderr = unknown.returncode, unknown.stdout, unknown.stderr
    assert code == 1
    assert "Traceback" not in stderr
    assert stderr.startswith("error:")
    message = one_line(stderr)
    assert "nosuchprovider" in message
    for provider in PROVIDERS:
        assert provider in message, f"the error does not name {provider}"
    assert "http" not in stdout, "a URL was printed for an unknown provider"

    for args in (["--help"], ["sites", "--help"]):
        shown = world.cli(*args)
        code, stdout = shown.returncode, shown.stdout
        assert code == 0, f"apiauth {' '.join(args)} failed"
        assert "Usage" in stdout


def test_a_long_cli_error_is_still_one_line(quickstart: World) -> None:
    unknown = quickstart.cli("connect", SITE, "nosuchprovider")
    code, stderr = unknown.returncode, unknown.stderr
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_no_token_reaches_the_server_log(connected: World) -> None:
    world = connected
    expect(world.seen, "no token was collected")
    expect(not contains_any(world.server.log(), world.seen), "a token appears in the server log")


def test_a_fresh_data_dir_without_server(database_url: str, tmp_path: Path) -> None:
    """`db upgrade` and `providers list` on a new machine, before any `serve`."""
    sqlite = database_url.startswith("sqlite")
    data_dir = tmp_path / "fresh"
    # SQLite: the default, a file in the data dir; PostgreSQL: an empty database.
    env = apiauth_env(data_dir, None if sqlite else database_url, free_port())
    upgraded = run_cli(["db", "upgrade"], env, cwd=tmp_path)
    assert upgraded.returncode == 0, f"`db upgrade` failed: {upgraded.stderr[-1500:]}"
    assert "up to date" in upgraded.stdout
    if sqlite:
        assert (data_dir / "apiauth.db").is_file()
        url = f"sqlite:///{data_dir / 'apiauth.db'}"
    else:
        url = database_url
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "sites", "connections"} <= tables, sorted(tables)

    again = run_cli(["db", "upgrade"], env, cwd=tmp_path)
    assert again.returncode == 0, f"a second `db upgrade` failed: {again.stderr[-1500:]}"

    listed = run_cli(["providers", "list"], env, cwd=tmp_path)
    assert listed.returncode == 0, f"`providers list` failed: {listed.stderr[-1500:]}"
    rows = table_rows(listed.stdout)
    for provider in PROVIDERS:
        assert provider in rows, f"{provider} is not listed"
    assert not (tmp_path / ".apiauth").exists(), "a data dir was created in the working dir"
