"""Provider-chosen URLs are untrusted: a host that a provider names in its token answer
(Salesforce's `instance_url`) and apiauth later calls - the proxy, the who-am-I check, the
code exchange's account lookup - goes through the URL policy, as deploy hooks do. Against a
live server with its emulator, on SQLite and PostgreSQL; the emulator's own loopback
`instance_url` (allowed in demo mode) keeps working."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from apiauth.domain import connect_flow, sites
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.token_store import CONNECTED, put_token
from apiauth.oauth.token_set import TokenSet
from apiauth.store.db import transaction
from apiauth.store.models import Connection, Site, new_id
from tests.consent import consent
from tests.servers import LiveServer

# Each is refused by the policy whatever the demo mode allows (loopback over http).
UNSAFE_INSTANCE_URLS = [
    "http://169.254.169.254",  # a cloud metadata service (link-local: never)
    "https://10.0.0.7",  # private
    "http://example.com",  # plain http off loopback
    "https://[::ffff:169.254.169.254]",  # IPv4-mapped link-local
    "https://0.0.0.0",  # unspecified
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def owner(live: LiveServer) -> MemberView:
    member = create_member(live.broker, "owner@example.com", "correct horse battery")
    sites.create_site(live.broker, member, "my-site")
    return member


def _store_salesforce(live: LiveServer, instance_url: str) -> None:
    now = live.broker.clock()
    token = TokenSet(
        access_token="sf-access-token-for-a-test",
        refresh_token="sf-refresh-token-for-a-test",
        token_type="Bearer",
        expires_at=None,
        granted_scopes=("api",),
        extra={"instance_url": instance_url, "login_host": "login.salesforce.com"},
    )
    with transaction(live.broker.sessions) as db:
        site = db.scalar(select(Site).where(Site.name == "my-site"))
        assert site is not None
        db.execute(Connection.__table__.delete().where(Connection.site_id == site.id))
        connection = Connection(
            id=new_id("con"),
            site_id=site.id,
            visitor_id="",
            provider="salesforce",
            status=CONNECTED,
            requested_scopes=["api"],
            granted_scopes=["api"],
            version=1,
            created_at=now,
        )
        db.add(connection)
        put_token(live.broker, connection, token, now)


@pytest.mark.parametrize("instance_url", UNSAFE_INSTANCE_URLS)
def test_the_proxy_and_the_who_am_i_check_refuse_an_unsafe_instance_url(
    live: LiveServer, owner: MemberView, instance_url: str
) -> None:
    token = sites.enable_api_auth(live.broker, owner, "my-site")
    _store_salesforce(live, instance_url)
    answer = httpx.get(
        f"{live.url}/api/v1/proxy/salesforce/services/data/v59.0/sobjects",
        headers=bearer(token),
        timeout=15,
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "provider_unreachable"
    assert answer.json()["error"]["message"].startswith("salesforce: the ")

    pat = create_personal_token(live.broker, owner, "t")
    checked = httpx.post(
        f"{live.url}/api/v1/sites/my-site/connections/salesforce/refresh",
        headers=bearer(pat),
        timeout=15,
    )
    assert checked.status_code < 500, checked.text


def test_a_token_answer_naming_an_unsafe_instance_url_connects_nothing(
    live: LiveServer, owner: MemberView, http: httpx.Client
) -> None:
    for instance_url in UNSAFE_INSTANCE_URLS[:3]:
        queued = http.post(
            f"{live.url}/_emulator/_admin/faults",
            json={
                "provider": "salesforce",
                "endpoint": "token",
                "status": 200,
                "body": {
                    "access_token": "sf-access-token-from-a-hostile-answer",
                    "token_type": "Bearer",
                    "instance_url": instance_url,
                    "id": "https://login.salesforce.com/id/00D/005",
                },
            },
        )
        assert queued.status_code == 200, queued.text
        start = connect_flow.start_connection(live.broker, owner, "my-site", "salesforce")
        refused = consent(http, start.authorize_url)
        assert refused.status_code == 400, refused.text
        assert "Salesforce: the " in refused.json()["error"]["message"]
    with live.broker.sessions() as db:
        assert list(db.scalars(select(Connection.provider))) == []
    # The emulator's own answer (a loopback instance_url, allowed in demo mode) connects.
    start = connect_flow.start_connection(live.broker, owner, "my-site", "salesforce")
    assert consent(http, start.authorize_url).status_code == 200
