"""Providers added by URL, against the emulator's standards-compliant servers (the demo's):
a Client ID Metadata Document, dynamic registration with RFC 7592, a server that needs a
client made by hand, the RFC 9207 mix-up defence, metadata re-checks, the REST API. Every
test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import select

from apiauth.domain import (
    connect_flow,
    connections,
    oauth_apps,
    provider_rechecks,
    sites,
    team_providers,
)
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.token_store import open_token
from apiauth.errors import Conflict, ProviderNotConfigured
from apiauth.store.models import Connection, TeamProvider, utcnow
from apiauth.url_policy import UrlPolicy
from tests.consent import consent
from tests.servers import LiveServer

SITE = "my-site"


@pytest.fixture
def site(live: LiveServer, owner: MemberView) -> str:
    sites.create_site(live.broker, owner, SITE)
    return sites.enable_api_auth(live.broker, owner, SITE)


def emulated(live: LiveServer, path: str) -> str:
    return f"{live.url}/_emulator{path}"


def test_an_mcp_server_is_connected_through_a_client_id_metadata_document(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    added = team_providers.add_provider(live.broker, owner, emulated(live, "/_mcp"))
    view = added.view
    assert view.name == "demo-mcp-server"  # from its metadata's resource_name
    assert view.resource == emulated(live, "/_mcp")
    assert view.issuer == emulated(live, "/_oauth/mcp")
    assert view.client_kind == "metadata_document"
    assert view.client_id == f"{live.url}/oauth/client-metadata.json"
    # apiauth serves the document the server reads: its client id is its own URL.
    document = http.get(view.client_id).json()
    assert document["client_id"] == view.client_id
    assert document["redirect_uris"] == [f"{live.url}/oauth/callback"]
    assert document["token_endpoint_auth_method"] == "none"

    start = connect_flow.start_connection(live.broker, owner, SITE, view.name)
    query = parse_qs(urlsplit(start.provider_url).query)
    assert query["resource"] == [view.resource]
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["mcp:read mcp:write offline_access"]
    done = consent(http, start.authorize_url)
    assert done.status_code == 200, done.text
    # The proxy reaches the resource with a token issued for it.
    answer = http.post(
        f"{live.url}/api/v1/proxy/{view.name}/_emulator/_mcp",
        headers={"Authorization": f"Bearer {site}"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["audience"] == view.resource
    refreshed = connections.refresh_site_connection(live.broker, owner, SITE, view.name)
    assert refreshed.last_error is None


def test_the_proxy_checks_a_provider_url_again_at_each_call(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    """The URL policy applies when the proxy calls a provider added by URL, not only when
    it was added: here loopback is no longer allowed when the call is made."""
    view = team_providers.add_provider(
        live.broker, owner, emulated(live, "/_mcp"), name="tools"
    ).view
    start = connect_flow.start_connection(live.broker, owner, SITE, view.name)
    assert consent(http, start.authorize_url).status_code == 200
    live.broker.provider_url_policy = UrlPolicy(providers=True)
    answer = http.get(
        f"{live.url}/api/v1/proxy/tools/_emulator/_mcp", headers={"Authorization": f"Bearer {site}"}
    )
    assert answer.status_code == 502
    assert "APIAUTH_ALLOW_LOOPBACK_URLS" in answer.json()["error"]["message"]


def test_dynamic_registration_is_used_read_and_deleted_with_the_provider(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    added = team_providers.add_provider(
        live.broker, owner, emulated(live, "/_oauth/oidc"), name="demo-sso"
    )
    assert added.view.client_kind == "registered"
    assert "registered dynamically (RFC 7591)" in added.message
    registered = team_providers.opened_registration(live.broker, _row(live, "demo-sso"))
    assert registered is not None
    assert registered.manageable
    # RFC 7592: the registration can be read with its access token ...
    auth = {"Authorization": f"Bearer {registered.registration_access_token}"}
    assert http.get(str(registered.registration_client_uri), headers=auth).status_code == 200
    assert provider_rechecks.recheck_named_provider(live.broker, owner, "demo-sso") is None

    start = connect_flow.start_connection(live.broker, owner, SITE, "demo-sso")
    done = consent(http, start.authorize_url)
    assert done.status_code == 200, done.text
    assert done.json()["account"]["login"] == "demo-user"  # OpenID Connect userinfo
    with pytest.raises(Conflict, match="connected on my-site"):
        team_providers.remove_provider(live.broker, owner, "demo-sso")
    connections.delete_connection(live.broker, owner, SITE, "demo-sso")

    removed = team_providers.remove_provider(live.broker, owner, "demo-sso")
    assert removed.registration_deleted
    # ... and is gone at the server once the provider is.
    assert http.get(str(registered.registration_client_uri), headers=auth).status_code == 401
    assert team_providers.list_team_providers(live.broker, owner) == []


def test_a_moved_public_url_updates_the_dynamic_registration(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    """RFC 7592 §2.2: when apiauth's redirect URI changed since it registered (the operator
    moved `APIAUTH_PUBLIC_URL`), the next re-check replaces the registered metadata, so that
    the server accepts the new callback."""
    team_providers.add_provider(live.broker, owner, emulated(live, "/_oauth/oidc"), name="sso")

    def registered_at_the_server() -> dict[str, object]:
        made = team_providers.opened_registration(live.broker, _row(live, "sso"))
        assert made is not None
        assert made.manageable
        answer = http.get(
            str(made.registration_client_uri),
            headers={"Authorization": f"Bearer {made.registration_access_token}"},
        )
        assert answer.status_code == 200, answer.text
        document: dict[str, object] = answer.json()
        return document

    assert registered_at_the_server()["redirect_uris"] == [f"{live.url}/oauth/callback"]
    assert provider_rechecks.recheck_named_provider(live.broker, owner, "sso") is None
    assert registered_at_the_server()["redirect_uris"] == [f"{live.url}/oauth/callback"]

    live.broker.settings = live.broker.settings.model_copy(
        update={"public_url": "https://apiauth.example.com"}
    )
    assert provider_rechecks.recheck_named_provider(live.broker, owner, "sso") is None
    assert registered_at_the_server()["redirect_uris"] == [
        "https://apiauth.example.com/oauth/callback"
    ]


def test_a_server_without_registration_needs_a_client_made_by_hand(
    live: LiveServer, owner: MemberView, site: str
) -> None:
    added = team_providers.add_provider(
        live.broker, owner, emulated(live, "/_oauth/manual"), name="by-hand"
    )
    assert added.view.needs_client
    assert f"redirect URI {live.url}/oauth/callback" in added.message
    with pytest.raises(ProviderNotConfigured, match="needs a client registered by hand"):
        connect_flow.start_connection(live.broker, owner, SITE, "by-hand")
    # The team's own client (a pre-registered one) is used from then on.
    oauth_apps.set_oauth_app(live.broker, owner, "by-hand", "hand-made-client", None)
    start = connect_flow.start_connection(live.broker, owner, SITE, "by-hand")
    assert parse_qs(urlsplit(start.provider_url).query)["client_id"] == ["hand-made-client"]


def test_a_pre_registered_client_wins_over_registering_one(
    live: LiveServer, owner: MemberView, site: str
) -> None:
    added = team_providers.add_provider(
        live.broker,
        owner,
        emulated(live, "/_oauth/oidc"),
        name="own-client",
        client_id="made-by-hand",
        client_secret="hand-made-secret",
    )
    assert added.view.has_own_app
    assert added.view.client_kind == "none"  # nothing was registered at the server
    start = connect_flow.start_connection(live.broker, owner, SITE, "own-client")
    assert parse_qs(urlsplit(start.provider_url).query)["client_id"] == ["made-by-hand"]


def test_an_answer_naming_another_issuer_is_refused_and_stores_nothing(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    """RFC 9207: an attacker's server that got the user to come back with its own code
    names itself in `iss`; the callback refuses it, whatever the code."""
    view = team_providers.add_provider(
        live.broker, owner, emulated(live, "/_oauth/oidc"), name="mixup"
    ).view
    for forged_iss in ("https://attacker.example", None):
        start = connect_flow.start_connection(live.broker, owner, SITE, "mixup")
        back = _consented_redirect(http, start.authorize_url)
        query = dict(parse_qs(urlsplit(back).query))
        assert query["iss"] == [view.issuer]
        query.pop("iss")
        if forged_iss is not None:
            query["iss"] = [forged_iss]
        forged = urlunsplit(urlsplit(back)._replace(query=urlencode(query, doseq=True)))
        answer = http.get(forged, headers={"Accept": "application/json"})
        assert answer.status_code == 400
        assert "iss" in answer.json()["error"]["message"]
        assert connections.list_connections(live.broker, owner, SITE) == []


def test_a_metadata_change_that_weakens_security_is_refused_and_shown(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    team_providers.add_provider(live.broker, owner, emulated(live, "/_oauth/mcp"), name="mcp")
    admin = emulated(live, "/_admin/oauth-metadata")
    # An endpoint that moved is followed ...
    moved = emulated(live, "/_oauth/mcp/token?v=2")
    http.post(admin, json={"tenant": "mcp", "set": {"token_endpoint": moved}})
    assert provider_rechecks.recheck_named_provider(live.broker, owner, "mcp") is None
    assert _row(live, "mcp").entry["token_url"] == moved
    # ... PKCE dropped is not, nor a new issuer: refused, shown, the old entry kept.
    http.post(admin, json={"tenant": "mcp", "drop": ["code_challenge_methods_supported"]})
    refused = provider_rechecks.recheck_named_provider(live.broker, owner, "mcp")
    assert refused is not None
    assert "PKCE" in refused
    (view,) = team_providers.list_team_providers(live.broker, owner)
    assert view.refused_change == refused
    assert _row(live, "mcp").entry["token_url"] == moved
    http.post(admin, json={"tenant": "mcp", "reset": True, "set": {"issuer": "https://x.example"}})
    assert "issuer" in str(provider_rechecks.recheck_named_provider(live.broker, owner, "mcp"))
    http.post(admin, json={"tenant": "mcp", "reset": True})
    assert provider_rechecks.recheck_named_provider(live.broker, owner, "mcp") is None
    (view,) = team_providers.list_team_providers(live.broker, owner)
    assert view.refused_change is None


def test_metadata_is_fetched_again_on_schedule(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    team_providers.add_provider(live.broker, owner, emulated(live, "/_oauth/oidc"), name="sso")
    assert provider_rechecks.recheck_due_providers(live.broker) == 0
    http.post(
        emulated(live, "/_admin/oauth-metadata"),
        json={"tenant": "oidc", "set": {"scopes_supported": ["openid", "offline_access", "tasks"]}},
    )
    later = utcnow() + timedelta(seconds=live.broker.settings.provider_recheck_seconds + 1)
    live.broker.clock = lambda: later
    assert provider_rechecks.recheck_due_providers(live.broker) == 1
    (view,) = team_providers.list_team_providers(live.broker, owner)
    assert "tasks" in [s.name for s in view.scopes]  # a new scope is offered, unticked
    assert not next(s for s in view.scopes if s.name == "tasks").default
    assert provider_rechecks.recheck_due_providers(live.broker) == 0  # next one hours away


def test_a_failed_refresh_brings_the_re_check_forward(
    live: LiveServer, owner: MemberView, site: str, http: httpx.Client
) -> None:
    team_providers.add_provider(live.broker, owner, emulated(live, "/_oauth/mcp"), name="mcp")
    start = connect_flow.start_connection(live.broker, owner, SITE, "mcp")
    assert consent(http, start.authorize_url).status_code == 200
    assert provider_rechecks.recheck_due_providers(live.broker) == 0  # not due for hours
    moved = emulated(live, "/_oauth/mcp/token?v=2")
    admin = emulated(live, "/_admin/oauth-metadata")
    http.post(admin, json={"tenant": "mcp", "set": {"token_endpoint": moved}})
    # The server forgets the grant (RFC 7009 revocation): the next refresh is refused ...
    with live.broker.sessions() as db:
        row = db.scalar(select(Connection).where(Connection.provider == "mcp"))
        assert row is not None
        token = open_token(live.broker, row)
    assert token is not None
    http.post(emulated(live, "/_oauth/mcp/revoke"), data={"token": token.refresh_token})
    refreshed = connections.refresh_site_connection(live.broker, owner, SITE, "mcp")
    assert refreshed.status == "needs_reauth"
    # ... and the provider is looked at again at once, following the moved endpoint.
    assert provider_rechecks.recheck_due_providers(live.broker) == 1
    assert _row(live, "mcp").entry["token_url"] == moved
    assert provider_rechecks.recheck_due_providers(live.broker) == 0


def test_the_rest_api_adds_lists_and_removes_providers_for_owners_only(
    live: LiveServer, owner: MemberView, http: httpx.Client
) -> None:
    pat = {"Authorization": f"Bearer {create_personal_token(live.broker, owner, 'cli')}"}
    url = f"{live.url}/api/v1/providers"
    added = http.post(url, headers=pat, json={"url": emulated(live, "/_mcp"), "name": "tools"})
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["client"]["kind"] == "metadata_document"
    assert body["resource"] == emulated(live, "/_mcp")
    assert [s["name"] for s in body["scopes"] if s["default"]] == [
        "mcp:read",
        "mcp:write",
        "offline_access",
    ]
    listed = {p["name"]: p for p in http.get(url, headers=pat).json()}
    assert listed["tools"]["added_by_url"] is True
    assert listed["github"]["added_by_url"] is False
    assert http.get(f"{url}/tools", headers=pat).json()["issuer"] == emulated(live, "/_oauth/mcp")
    again = http.post(url, headers=pat, json={"url": emulated(live, "/_mcp"), "name": "tools"})
    assert again.status_code == 409
    nothing = http.post(url, headers=pat, json={"url": emulated(live, "/nothing-here")})
    assert nothing.status_code == 422
    assert "found no OAuth authorization server metadata" in nothing.json()["error"]["message"]

    member = create_member(live.broker, "member@example.com", "correct horse battery")
    member_pat = {"Authorization": f"Bearer {create_personal_token(live.broker, member, 'x')}"}
    refused = http.post(url, headers=member_pat, json={"url": emulated(live, "/_mcp")})
    assert refused.status_code == 403
    assert http.delete(f"{url}/tools", headers=member_pat).status_code == 403
    gone = http.delete(f"{url}/tools", headers=pat)
    assert gone.status_code == 200, gone.text
    assert http.get(f"{url}/tools", headers=pat).status_code == 404
    assert "/api/v1/providers/{name}" in http.get(f"{live.url}/openapi.json").json()["paths"]


def _consented_redirect(http: httpx.Client, authorize_url: str) -> str:
    """Press Authorize at the emulated server and return where it sends the browser."""
    from tests.consent import _FormReader, provider_url_of

    page = http.get(provider_url_of(http, authorize_url))
    form = _FormReader()
    form.feed(page.text)
    data: dict[str, list[str]] = {}
    for name, value in [*form.fields, *(("scope", s) for s in form.checkboxes)]:
        data.setdefault(name, []).append(value)
    data.setdefault("decision", []).append("authorize")
    answer = http.post(str(page.url), data=data)
    assert answer.status_code in (302, 303), answer.text
    return str(answer.headers["location"])


def _row(live: LiveServer, name: str) -> TeamProvider:
    with live.broker.sessions() as db:
        row = db.scalar(select(TeamProvider).where(TeamProvider.name == name))
        assert row is not None
        db.expunge(row)
        return row
