"""Function tokens: a site token mints a short-lived token for one build or function, that
reads only the providers it names, expires, and dies with its site token; and `apiauth run`
hands one to a command. The API in the fast tier (in-process, time moved by the test); the
client library over real HTTP against a live server, and `apiauth run` against a real server
process; SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

import apiauth
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_personal_token
from apiauth.domain.token_format import TokenKind, token_kind
from apiauth.store.db import transaction
from apiauth.store.models import AuditEvent, SiteToken
from tests.consent import consent
from tests.databases import fresh_postgres_database
from tests.in_process import InProcessServer
from tests.processes import ServerProcess, client_env, run_cli
from tests.seeding import seed_site
from tests.servers import LiveServer, free_port


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["message"]
    if code:
        assert body["code"] == code
    message: str = body["message"]
    return message


@pytest.fixture(autouse=True)
def _fresh_client_cache() -> Iterator[None]:
    apiauth.clear_cache()
    yield
    apiauth.clear_cache()


@pytest.fixture
def api(live: LiveServer) -> str:
    return live.url + "/api/v1"


@pytest.fixture
def pat(broker: Broker, owner: MemberView) -> dict[str, str]:
    return bearer(create_personal_token(broker, owner, "tests"))


@pytest.fixture
def site_token(http: httpx.Client, api: str, pat: dict[str, str]) -> str:
    """my-site with API Authentication on, GitHub and Spotify connected."""
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    enabled = http.post(f"{api}/sites/my-site/api-auth", headers=pat)
    assert enabled.status_code == 200
    for provider in ("github", "spotify"):
        started = http.post(
            f"{api}/sites/my-site/connections", json={"provider": provider}, headers=pat
        )
        assert started.status_code == 200, started.text
        assert consent(http, started.json()["authorize_url"]).status_code == 200
    token: str = enabled.json()["token"]
    return token


def mint(http: httpx.Client, api: str, token: str, **body: Any) -> httpx.Response:
    return http.post(f"{api}/function-tokens", json=body, headers=bearer(token))


def minted_token(http: httpx.Client, api: str, token: str, **body: Any) -> str:
    response = mint(http, api, token, **body)
    assert response.status_code == 201, response.text
    value: str = response.json()["token"]
    return value


def secrets_of(http: httpx.Client, api: str, token: str) -> httpx.Response:
    return http.get(f"{api}/secrets", headers=bearer(token))


# --------------------------------------------------------------------------- minting and reading


@pytest.mark.fast
def test_a_site_token_mints_a_function_token_that_reads_the_sites_secrets(
    http: httpx.Client, api: str, site_token: str
) -> None:
    before = datetime.now(UTC)
    response = mint(http, api, site_token)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert token_kind(body["token"]) is TokenKind.FUNCTION
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=895) < expires_at - before < timedelta(seconds=905)

    read = secrets_of(http, api, body["token"])
    assert read.status_code == 200
    assert set(read.json()) == {"github", "spotify"}
    assert read.json()["github"]["bearer_token"]


@pytest.mark.fast
def test_a_function_token_reads_only_the_providers_it_names(
    http: httpx.Client, api: str, site_token: str
) -> None:
    token = minted_token(http, api, site_token, providers=["github", "github"])
    assert set(secrets_of(http, api, token).json()) == {"github"}
    # Naming a provider the site has not connected is allowed; it just reads nothing.
    token = minted_token(http, api, site_token, providers=["box"])
    assert secrets_of(http, api, token).json() == {}


@pytest.mark.fast
def test_a_function_token_stops_working_when_its_ttl_runs_out(
    app: InProcessServer, http: httpx.Client, api: str, site_token: str
) -> None:
    token = minted_token(http, api, site_token, ttl_seconds=1)
    assert secrets_of(http, api, token).status_code == 200
    app.advance(1.5)
    assert_error(secrets_of(http, api, token), 401, "unauthorized")
    assert secrets_of(http, api, site_token).status_code == 200


@pytest.mark.fast
def test_a_mint_answers_as_the_route_does(http: httpx.Client, api: str, site_token: str) -> None:
    # A plain JSON body is answered in front of the router (`fast_path`); a query string
    # takes the FastAPI route. The same answer either way, but for the token.
    bodies: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"github", "spotify"}),
        ({"ttl_seconds": 60, "providers": ["spotify"]}, {"spotify"}),
        ({"visitor_id": "user-1"}, set()),  # a visitor who connected nothing
    ]
    for body, readable in bodies:
        fast = http.post(f"{api}/function-tokens", json=body, headers=bearer(site_token))
        routed = http.post(
            f"{api}/function-tokens?the=route", json=body, headers=bearer(site_token)
        )
        assert fast.status_code == routed.status_code == 201
        per_answer = ("date", "server", "x-request-id", "content-length")
        headers = {k: v for k, v in routed.headers.items() if k not in per_answer}
        assert {k: v for k, v in fast.headers.items() if k not in per_answer} == headers
        assert list(fast.json()) == list(routed.json()) == ["token", "expires_at"]
        # The same form of time (pydantic's), within the second of both requests.
        expiries = [answer.json()["expires_at"] for answer in (fast, routed)]
        assert all(expiry.endswith("Z") for expiry in expiries)
        assert abs(
            datetime.fromisoformat(expiries[0]) - datetime.fromisoformat(expiries[1])
        ) < timedelta(seconds=5)
        for answer in (fast, routed):
            read = secrets_of(http, api, answer.json()["token"])
            assert read.status_code == 200
            assert set(read.json()) == readable


@pytest.mark.fast
def test_the_longest_ttl_is_a_day(http: httpx.Client, api: str, site_token: str) -> None:
    response = mint(http, api, site_token, ttl_seconds=86400)
    assert response.status_code == 201
    expires_at = datetime.fromisoformat(response.json()["expires_at"])
    assert expires_at - datetime.now(UTC) > timedelta(hours=23, minutes=59)


@pytest.mark.fast
@pytest.mark.parametrize(
    "body",
    [
        {"ttl_seconds": 0},
        {"ttl_seconds": -5},
        {"ttl_seconds": 86401},
        {"ttl_seconds": "x"},
        {"ttl_seconds": 1.5},
        {"ttl_seconds": None},
        {"providers": "github"},
        {"providers": []},
        {"providers": ["github"] * 101},
        {"providers": [1]},
        {"scope": "everything"},
    ],
)
def test_bad_function_token_requests_are_a_clear_422(
    http: httpx.Client, api: str, site_token: str, body: dict[str, Any]
) -> None:
    assert_error(mint(http, api, site_token, **body), 422, "invalid_input")


@pytest.mark.fast
def test_unknown_providers_are_named_in_the_422(
    http: httpx.Client, api: str, site_token: str
) -> None:
    message = assert_error(mint(http, api, site_token, providers=["github", "nosuch", "nope"]), 422)
    assert "'nosuch'" in message
    assert "'nope'" in message
    assert "'github'" not in message.partition("known")[0]


@pytest.mark.fast
def test_a_function_token_cannot_mint_another(
    http: httpx.Client, api: str, site_token: str
) -> None:
    token = minted_token(http, api, site_token)
    message = assert_error(mint(http, api, token), 403, "forbidden")
    assert "site token" in message
    assert token not in message


@pytest.mark.fast
def test_minting_needs_a_site_token(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    response = http.post(f"{api}/function-tokens", json={})
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_error(http.post(f"{api}/function-tokens", json={}, headers=pat), 401)
    assert_error(mint(http, api, site_token[:-1]), 401)


@pytest.mark.fast
def test_openapi_describes_the_function_token_endpoint(
    live: LiveServer, http: httpx.Client
) -> None:
    paths = http.get(live.url + "/openapi.json").json()["paths"]
    assert "post" in paths["/api/v1/function-tokens"]


@pytest.mark.fast
def test_minting_is_in_the_audit_log_without_the_token(
    broker: Broker, http: httpx.Client, api: str, site_token: str
) -> None:
    token = minted_token(http, api, site_token, ttl_seconds=60, providers=["github"])
    with broker.sessions() as db:
        events = list(
            db.scalars(select(AuditEvent).where(AuditEvent.kind == "function_token.minted"))
        )
    assert len(events) == 1
    assert events[0].detail["ttl_seconds"] == 60
    assert events[0].detail["providers"] == ["github"]
    assert events[0].ip == "127.0.0.1"
    assert token not in str(events[0].detail)
    assert site_token not in str(events[0].detail)


# --------------------------------------------------------------------------- revocation cascade


@pytest.mark.fast
def test_rotating_the_site_token_invalidates_its_function_tokens(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    tokens = [
        minted_token(http, api, site_token),
        minted_token(http, api, site_token, ttl_seconds=60),
    ]
    rotated = http.post(f"{api}/sites/my-site/api-auth/rotate", headers=pat)
    assert rotated.status_code == 200
    answers = {assert_error(secrets_of(http, api, token), 401) for token in tokens}
    answers.add(assert_error(secrets_of(http, api, site_token), 401))
    assert len(answers) == 1  # one answer for every kind of bad token
    fresh = minted_token(http, api, rotated.json()["token"])
    assert secrets_of(http, api, fresh).status_code == 200


@pytest.mark.fast
def test_disabling_api_auth_invalidates_function_tokens(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    token = minted_token(http, api, site_token)
    assert http.delete(f"{api}/sites/my-site/api-auth", headers=pat).status_code == 204
    assert_error(secrets_of(http, api, token), 401)


@pytest.mark.fast
def test_a_function_token_dies_with_its_parent_even_if_its_own_row_was_missed(
    broker: Broker, http: httpx.Client, api: str, site_token: str
) -> None:
    token = minted_token(http, api, site_token)
    with transaction(broker.sessions) as db:
        parent_id = db.scalar(select(SiteToken.id).where(SiteToken.kind == "site"))
        db.execute(
            update(SiteToken).where(SiteToken.id == parent_id).values(revoked_at=broker.clock())
        )
        child = db.scalar(select(SiteToken).where(SiteToken.kind == "function"))
        assert child is not None
        assert child.parent_id == parent_id
        assert child.revoked_at is None
    assert_error(secrets_of(http, api, token), 401)


# --------------------------------------------------------------------------- client library


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_the_client_mints_a_function_token_limited_to_some_providers(
    live: LiveServer, site_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIAUTH_TOKEN", site_token)
    monkeypatch.setenv("APIAUTH_URL", live.url)
    minted = apiauth.create_function_token(120, ["spotify"])
    assert isinstance(minted, apiauth.FunctionToken)
    assert minted.token.startswith("apiauth_fn_")
    assert minted.token not in repr(minted)
    assert timedelta(seconds=100) < minted.expires_at - datetime.now(UTC) <= timedelta(seconds=120)
    secrets = apiauth.get_secrets(token=minted.token)
    assert list(secrets) == ["spotify"]
    assert secrets.github is None


def test_the_client_takes_token_and_url_arguments(live: LiveServer, site_token: str) -> None:
    minted = apiauth.create_function_token(token=site_token, url=live.url)
    assert set(apiauth.get_secrets(token=minted.token, url=live.url)) == {"github", "spotify"}


def test_client_errors_are_typed_and_never_show_a_token(live: LiveServer, site_token: str) -> None:
    with pytest.raises(apiauth.NotConfigured):
        apiauth.create_function_token(url=live.url)
    with pytest.raises(apiauth.Unauthorized) as rejected:
        apiauth.create_function_token(token=site_token[:-1], url=live.url)
    assert site_token[:-1] not in str(rejected.value)
    with pytest.raises(apiauth.InvalidRequest, match="ttl_seconds") as invalid:
        apiauth.create_function_token(0, token=site_token, url=live.url)
    assert invalid.value.status_code == 422
    assert site_token not in str(invalid.value)
    with pytest.raises(apiauth.InvalidRequest, match="nosuch"):
        apiauth.create_function_token(providers=["nosuch"], token=site_token, url=live.url)
    minted = apiauth.create_function_token(token=site_token, url=live.url)
    with pytest.raises(apiauth.Unauthorized, match="only a site token") as forbidden:
        apiauth.create_function_token(token=minted.token, url=live.url)
    assert forbidden.value.status_code == 403
    assert minted.token not in str(forbidden.value)
    with pytest.raises(apiauth.BrokerUnavailable) as down:
        apiauth.create_function_token(token=site_token, url=closed_port_url())
    assert site_token not in str(down.value)


# --------------------------------------------------------------------------- `apiauth run`

CHILD = """
import os, sys
from apiauth import get_secrets

print("token prefix:", os.environ["APIAUTH_TOKEN"][:len("apiauth_fn_")])
secrets = get_secrets()
print("providers:", ",".join(sorted(secrets)))
sys.exit(3 if secrets.github and secrets.spotify is None else 4)
"""


@dataclass
class Served:
    server: ServerProcess
    site_token: str

    def run(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = client_env(self.server.url, self.site_token if token is None else token)
        if token == "":
            del env["APIAUTH_TOKEN"]
        return run_cli(["run", *args], env, cwd=self.server.workdir)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A real `apiauth serve --demo` process with my-site, GitHub and Spotify connected."""
    urls: Iterator[str]
    if request.param == "sqlite":
        urls = iter([f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'apiauth.db'}"])
    else:
        urls = fresh_postgres_database()
    database_url = next(urls)
    server = ServerProcess(Path(tmp_path_factory.mktemp("run")), database_url, free_port())
    server.start()
    try:
        site_token = seed_site(server, "my-site", ("github", "spotify")).site_token
        yield Served(server, site_token)
    finally:
        server.stop()
        for _ in urls:  # drops the PostgreSQL database
            pass


def test_apiauth_run_gives_the_command_a_function_token_and_its_exit_status(
    served: Served,
) -> None:
    result = served.run("--ttl", "60", "--provider", "github", "--", sys.executable, "-c", CHILD)
    assert result.returncode == 3, result.stderr
    assert "token prefix: apiauth_fn_" in result.stdout
    assert "providers: github\n" in result.stdout
    assert served.site_token not in result.stdout + result.stderr


def test_apiauth_run_without_providers_reads_everything_the_site_token_reads(
    served: Served,
) -> None:
    result = served.run("--", sys.executable, "-c", CHILD)
    assert result.returncode == 4, result.stderr
    assert "providers: github,spotify\n" in result.stdout


def test_apiauth_run_passes_through_failure_and_a_missing_command(served: Served) -> None:
    assert served.run("--", "false").returncode == 1
    assert served.run("--", "sh", "-c", "exit 42").returncode == 42
    missing = served.run("--", "no-such-command-for-apiauth")
    assert missing.returncode == 127
    assert "command not found: no-such-command-for-apiauth" in missing.stderr


def test_apiauth_run_explains_what_is_missing(served: Served) -> None:
    no_token = served.run("--", "true", token="")
    assert no_token.returncode == 1
    assert no_token.stderr.startswith("error:")
    assert "APIAUTH_TOKEN" in no_token.stderr
    bad_ttl = served.run("--ttl", "0", "--", "true")
    assert bad_ttl.returncode == 1
    assert "error:" in bad_ttl.stderr
    assert "ttl_seconds" in bad_ttl.stderr
    no_command = served.run("--ttl", "60")
    assert no_command.returncode == 2
    assert "name the command to run" in no_command.stderr
    assert "Usage: apiauth run [OPTIONS] -- " in " ".join(served.run("--help").stdout.split())
