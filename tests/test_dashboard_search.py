"""The dashboard at a hundred providers: connected ones first, the site's token and snippets
above the list, a search (`?q=`, `?category=`) that works without JavaScript, and the
providers grouped by the catalog's categories; the OAuth apps page likewise."""

from __future__ import annotations

import re

import pytest

from apiauth.domain import connect_flow, oauth_apps, sites
from apiauth.domain.members import create_member, create_personal_token, get_member
from tests.consent import consent
from tests.in_process import InProcessServer

pytestmark = pytest.mark.fast

SITE = "search-site"
PASSWORD = "correct horse battery"


@pytest.fixture
def signed_in(app: InProcessServer) -> InProcessServer:
    owner = create_member(app.broker, "owner@example.com", PASSWORD)
    sites.create_site(app.broker, owner, SITE)
    sites.enable_api_auth(app.broker, owner, SITE)
    start = connect_flow.start_connection(app.broker, owner, SITE, "github")
    assert consent(app.client, start.authorize_url).status_code == 200
    page = app.client.get(f"{app.url}/sign-in").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    done = app.client.post(
        f"{app.url}/sign-in",
        data={"email": "owner@example.com", "password": PASSWORD, "csrf_token": csrf[1]},
    )
    assert done.status_code == 303, done.text[:300]
    return app


def api_auth_page(app: InProcessServer, **query: str) -> str:
    answer = app.client.get(f"{app.url}/sites/{SITE}/api-auth", params=query)
    assert answer.status_code == 200, answer.text[:300]
    return answer.text


def listed(page: str) -> list[str]:
    return re.findall(r'<li class="provider[^"]*" id="provider-([a-z0-9_-]+)"', page)


def test_connected_providers_come_first_then_every_other_by_category(
    signed_in: InProcessServer,
) -> None:
    page = api_auth_page(signed_in)
    names = listed(page)
    assert names[0] == "github"
    assert set(names) == set(signed_in.broker.catalog)
    # The token and its snippets are above the provider list, not after a hundred providers.
    assert page.index('id="env-title"') < page.index('id="providers-title"')
    assert page.index('id="snippet-function"') < page.index('id="provider-github"')
    categories = re.findall(r'<section class="provider-group" data-group="([^"]+)"', page)
    assert categories == sorted(categories, key=str.lower)
    assert {"Accounting", "CRM", "Identity"} <= set(categories)


def test_a_search_without_javascript_finds_a_provider_by_name_or_category(
    signed_in: InProcessServer,
) -> None:
    found = listed(api_auth_page(signed_in, q="quickbooks"))
    assert found == ["github", "quickbooks"]  # the connected one stays at the top
    assert listed(api_auth_page(signed_in, q="  QUICK  ")) == ["github", "quickbooks"]
    accounting = listed(api_auth_page(signed_in, category="Accounting"))[1:]
    assert {"xero", "quickbooks"} <= set(accounting)
    assert all(signed_in.broker.catalog[n].category == "Accounting" for n in accounting)
    # Words narrow down: both must match.
    assert listed(api_auth_page(signed_in, q="google drive"))[1:] == ["google-drive"]
    page = api_auth_page(signed_in, q="google drive")
    assert 'value="google drive"' in page
    assert "Show all" in page


def test_a_search_that_finds_nothing_says_so_and_odd_input_is_harmless(
    signed_in: InProcessServer,
) -> None:
    page = api_auth_page(signed_in, q="<script>alert(1)</script>")
    assert listed(page) == ["github"]
    assert "<script>alert(1)</script>" not in page
    assert "No provider matches" in page
    assert listed(api_auth_page(signed_in, q="x" * 5000)) == ["github"]
    assert listed(api_auth_page(signed_in, category="No such category")) == ["github"]


def test_the_oauth_apps_page_searches_too(signed_in: InProcessServer) -> None:
    # The team's own app comes first, whatever the search.
    who = get_member(signed_in.broker, "owner@example.com")
    oauth_apps.set_oauth_app(signed_in.broker, who, "xero", "xero-client", "xero-secret")
    page = signed_in.client.get(f"{signed_in.url}/team/oauth-apps", params={"q": "okta"}).text
    apps = re.findall(r'<li class="provider" id="app-([a-z0-9_-]+)"', page)
    assert apps == ["xero", "okta"]
    everything = signed_in.client.get(f"{signed_in.url}/team/oauth-apps").text
    assert len(re.findall(r'<li class="provider" id="app-', everything)) == len(
        signed_in.broker.catalog
    )


def test_the_api_lists_each_providers_category_and_searches_like_the_dashboard(
    app: InProcessServer,
) -> None:
    owner = create_member(app.broker, "owner@example.com", PASSWORD)
    pat = {"Authorization": f"Bearer {create_personal_token(app.broker, owner, 'tests')}"}

    def names(**query: str) -> list[str]:
        answer = app.client.get(f"{app.url}/api/v1/providers", params=query, headers=pat)
        assert answer.status_code == 200, answer.text
        listed = answer.json()
        assert all(entry["category"] for entry in listed)
        return [entry["name"] for entry in listed]

    everything = app.client.get(f"{app.url}/api/v1/providers", headers=pat).json()
    assert {e["name"]: e["category"] for e in everything}["quickbooks"] == "Accounting"
    accounting = names(category="Accounting")
    assert {"xero", "quickbooks"} <= set(accounting)
    assert all(app.broker.catalog[n].category == "Accounting" for n in accounting)
    assert names(q="  QUICK  ") == ["quickbooks"]
    assert names(q="google drive") == ["google-drive"]
    assert names(category="No such category") == []
    too_long = app.client.get(f"{app.url}/api/v1/providers", params={"q": "x" * 101}, headers=pat)
    assert too_long.status_code == 422
