"""A server process's starting state, written from the test's own process.

What `apiauth users create`, `tokens create`, `sites create`, `sites enable` and `apiauth
connect` (consented) leave in the database, for the process tests whose subject comes after
them: each of those commands is a Python process of its own (about two seconds on a 2-core
machine), and the tests of the commands themselves are in test_end_to_end.py and
test_cli_serve_and_sites.py. The broker here opens the server's own database and data dir, as
another replica would; the consent goes to the server over HTTP, as a person's would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from apiauth.config import Settings
from apiauth.domain import connect_flow, members, sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView
from tests.consent import consent
from tests.processes import ServerProcess
from tests.servers import open_test_broker

OWNER = "owner@example.com"


def settings_of(server: ServerProcess) -> Settings:
    """The settings `server` runs with (its `APIAUTH_*` environment)."""
    values = {
        name.removeprefix("APIAUTH_").lower(): value
        for name, value in server.env.items()
        if name.startswith("APIAUTH_")
    }
    return Settings(**values)


@dataclass(frozen=True)
class Seeded:
    site_token: str
    personal_token: str


def seed_site(
    server: ServerProcess,
    site: str,
    providers: Sequence[str] = (),
    *,
    owner: str = OWNER,
    password: str | None = None,
) -> Seeded:
    """The owner `owner` (with `password`, if given), a personal access token, `site` with API
    Authentication on, and each of `providers` connected through the server's demo emulator."""
    broker = open_test_broker(settings_of(server), demo=True)
    try:
        member = members.create_member(broker, owner, password)
        personal_token = members.create_personal_token(broker, member, "tests")
        with httpx.Client(timeout=15) as http:
            site_token = connected_site(broker, member, site, providers, http)
    finally:
        broker.close()
    return Seeded(site_token, personal_token)


def connected_site(
    broker: Broker, member: MemberView, site: str, providers: Sequence[str], http: httpx.Client
) -> str:
    """`site` made by `member`, with API Authentication on (its site token returned) and each
    of `providers` connected through the demo emulator, consented with `http`."""
    sites.create_site(broker, member, site)
    site_token = sites.enable_api_auth(broker, member, site)
    for provider in providers:
        started = connect_flow.start_connection(broker, member, site, provider)
        answer = consent(http, started.authorize_url)
        assert answer.status_code == 200, answer.text[-500:]
    return site_token
