"""What the catalog format can say beyond plain OAuth, each field through the emulator:
extra token and refresh parameters, JSON token requests, values learned after the exchange
(from the token answer, the who-am-I answer, the callback or a URL of their own), how the
proxy sends the token and its fixed headers, and variants (`extends`) of an entry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiauth.domain import connect_flow, sites
from apiauth.domain.members import create_member, create_personal_token, get_member
from apiauth.emulator.dialects import learned_value
from apiauth.errors import ProviderError
from apiauth.oauth import protocol
from apiauth.providers import CatalogError, load_catalog
from apiauth.providers.catalog import MissingValue, fill_template
from tests.consent import consent
from tests.in_process import InProcessServer

pytestmark = pytest.mark.fast

SITE = "format-site"
PARAMS = {
    "shopify": {"shop": "acme-store"},
    "zendesk": {"subdomain": "acme"},
    "bigcommerce": {"store_hash": "abc123"},
    "okta": {"okta_domain": "acme.okta.com"},
    "auth0": {"auth0_domain": "acme.us.auth0.com"},
    "keycloak": {"host": "sso.acme.example", "realm": "acme"},
}


@pytest.fixture
def site_token(app: InProcessServer) -> str:
    owner = create_member(app.broker, "owner@example.com", "correct horse battery")
    sites.create_site(app.broker, owner, SITE)
    return sites.enable_api_auth(app.broker, owner, SITE)


def connect(app: InProcessServer, provider: str) -> dict[str, Any]:
    member = get_member(app.broker, "owner@example.com")
    start = connect_flow.start_connection(
        app.broker, member, SITE, provider, params=PARAMS.get(provider)
    )
    done = consent(app.client, start.authorize_url)
    assert done.status_code == 200, done.text
    connection: dict[str, Any] = done.json()
    assert connection["status"] == "connected", connection
    return connection


def secrets_of(app: InProcessServer, site_token: str) -> dict[str, Any]:
    answer = app.client.get(
        f"{app.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site_token}"}
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def refresh(app: InProcessServer, provider: str, site_token: str) -> dict[str, Any]:
    member = get_member(app.broker, "owner@example.com")
    pat = create_personal_token(app.broker, member, "tests")
    answer = app.client.post(
        f"{app.url}/api/v1/sites/{SITE}/connections/{provider}/refresh",
        headers={"Authorization": f"Bearer {pat}"},
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def stats(app: InProcessServer, provider: str) -> dict[str, int]:
    found: dict[str, int] = app.client.get(f"{app.url}/_emulator/_admin/stats").json()[provider]
    return found


def proxy(app: InProcessServer, site_token: str, provider: str, path: str) -> httpx.Response:
    return app.client.get(
        f"{app.url}/api/v1/proxy/{provider}/{path}",
        headers={"Authorization": f"Bearer {site_token}"},
    )


# --- token_params, refresh_params, token_body_format -------------------------------------


def test_shopify_asks_for_expiring_offline_tokens_and_refreshes_them(
    app: InProcessServer, site_token: str
) -> None:
    # Without expiring=1 the emulated Shopify refuses the exchange, as the catalog says.
    connect(app, "shopify")
    secret = secrets_of(app, site_token)["shopify"]
    assert secret["expires_at"] is not None
    before = secret["bearer_token"]
    refreshed = refresh(app, "shopify", site_token)
    assert refreshed["last_error"] is None
    assert secrets_of(app, site_token)["shopify"]["bearer_token"] != before
    assert stats(app, "shopify")["refreshes"] == 1


def test_zendesk_sends_json_token_requests_with_its_lifetimes(
    app: InProcessServer, site_token: str
) -> None:
    # The emulated Zendesk refuses form bodies and requests without expires_in.
    connect(app, "zendesk")
    assert refresh(app, "zendesk", site_token)["last_error"] is None
    assert stats(app, "zendesk")["refreshes"] == 1


def test_the_emulator_refuses_a_token_request_without_the_catalogs_parameters(
    app: InProcessServer,
) -> None:
    token_url = app.broker.catalog["shopify"].token_url.replace("{shop}", "acme-store")
    answer = app.client.post(
        token_url,
        data={"grant_type": "authorization_code", "code": "x", "client_id": "a"},
    )
    assert answer.status_code in (400, 401)
    zendesk = app.broker.catalog["zendesk"].token_url.replace("{subdomain}", "acme")
    form = app.client.post(zendesk, data={"grant_type": "authorization_code", "code": "x"})
    assert form.status_code == 400
    assert "JSON" in form.json()["error_description"]


# --- learned values ----------------------------------------------------------------------


def test_mailchimp_learns_its_data_centre_and_the_proxy_calls_it_there(
    app: InProcessServer, site_token: str
) -> None:
    connect(app, "mailchimp")
    extra = secrets_of(app, site_token)["mailchimp"]["extra"]
    assert extra["dc"] == learned_value("dc")
    # The API base is https://{dc}.api.mailchimp.com/3.0, the token sent as "OAuth <token>".
    ping = proxy(app, site_token, "mailchimp", "ping")
    assert ping.status_code == 200, ping.text
    assert ping.json()["health_status"] == "Everything's Chimpy!"


def test_atlassian_learns_the_cloud_id_from_accessible_resources(
    app: InProcessServer, site_token: str
) -> None:
    connect(app, "atlassian")
    extra = secrets_of(app, site_token)["atlassian"]["extra"]
    assert extra["cloud_id"] == learned_value("cloud_id")
    # Learned values survive a refresh (Atlassian's rotating refresh token).
    assert refresh(app, "atlassian", site_token)["last_error"] is None
    assert secrets_of(app, site_token)["atlassian"]["extra"]["cloud_id"] == extra["cloud_id"]


def test_quickbooks_learns_the_realm_id_from_the_callback(
    app: InProcessServer, site_token: str
) -> None:
    if "quickbooks" not in app.broker.catalog:
        pytest.skip("no QuickBooks entry")
    connect(app, "quickbooks")
    assert secrets_of(app, site_token)["quickbooks"]["extra"]["realm_id"] == learned_value(
        "realm_id"
    )


# --- how the proxy sends the token -------------------------------------------------------


def test_the_proxy_sends_shopifys_token_in_its_own_header(
    app: InProcessServer, site_token: str
) -> None:
    connect(app, "shopify")
    answer = proxy(app, site_token, "shopify", "shop.json")
    assert answer.status_code == 200, answer.text
    assert answer.json()["shop"]["myshopify_domain"]


def test_the_proxy_adds_notions_version_header(app: InProcessServer, site_token: str) -> None:
    connect(app, "notion")
    # The emulated who-am-I, like Notion's API, wants Notion-Version on every call.
    answer = proxy(app, site_token, "notion", "users/me")
    assert answer.status_code == 200, answer.text


# --- the catalog as data -----------------------------------------------------------------


def test_one_filler_for_every_template() -> None:
    values = {"shop": "acme", "instance_url": "https://na1.example/"}
    assert fill_template("https://{shop}.myshopify.com/x", values) == "https://acme.myshopify.com/x"
    assert fill_template("{instance_url}/services", values) == "https://na1.example/services"
    with pytest.raises(MissingValue) as missing:
        fill_template("https://{dc}.api.mailchimp.com", values)
    assert missing.value.name == "dc"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_variant_extends_an_entry_without_copying_it(tmp_path: Path) -> None:
    catalog = load_catalog(
        write(
            tmp_path,
            """
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_basic"
scopes = [{ name = "read", description = "Read", default = true }]
access_token_lifetime = 600
api_base_url = "https://api.acme.example"

[providers.acme-eu]
extends = "acme"
display_name = "Acme (EU)"
api_base_url = "https://api.eu.acme.example"
""",
        )
    )
    base, variant = catalog["acme"], catalog["acme-eu"]
    assert variant.extends == "acme"
    assert variant.token_url == base.token_url
    assert variant.token_auth_method == "client_secret_basic"
    assert variant.access_token_lifetime == 600
    assert variant.api_base_url == "https://api.eu.acme.example"
    assert variant.scope_names() == ("read",)


def test_builtin_variants_of_google_microsoft_and_atlassian() -> None:
    catalog = load_catalog()
    for name, parent in [
        ("google-drive", "google"),
        ("gmail", "google"),
        ("outlook", "microsoft"),
        ("jira", "atlassian"),
    ]:
        if name not in catalog:
            continue
        assert catalog[name].extends == parent
        assert catalog[name].token_url == catalog[parent].token_url


FORMAT_MISTAKES = [
    ('extends = "nobody"', "extends"),
    ('token_params = { code = "x" }', "token_params.code"),
    ("token_params = { expiring = 1 }", "token_params.expiring"),
    ('token_body_format = "xml"', "token_body_format"),
    ('proxy_auth_header = "Bad Header"', "proxy_auth_header"),
    ('proxy_auth_scheme = "Bearer x"', "proxy_auth_scheme"),
    ('proxy_headers = { "X-Version" = "{nope}" }', "proxy_headers.X-Version"),
    ('proxy_headers = { Authorization = "x" }', "proxy_headers.Authorization"),
    ('learn = { dc = { from = "somewhere", path = "dc" } }', "learn.dc.from"),
    ('learn = { dc = { from = "token", path = "a b" } }', "learn.dc.path"),
    ('learn = { dc = { from = "userinfo", path = "dc" } }', "learn"),
    ('api_base_url = "https://{dc}.api.example"', "api_base_url"),
]


@pytest.mark.parametrize(("line", "field"), FORMAT_MISTAKES)
def test_format_mistakes_name_the_field(tmp_path: Path, line: str, field: str) -> None:
    path = write(
        tmp_path,
        f"""
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_post"
{line}
""",
    )
    with pytest.raises(CatalogError, match=re.escape(f"field {field!r}")):
        load_catalog(path)


def test_a_learned_value_that_would_reshape_a_url_is_refused() -> None:
    mailchimp = load_catalog()["mailchimp"]
    assert mailchimp.learned_from("userinfo", {"dc": "us6"}) == {"dc": "us6"}
    for bad in ("evil.example/x", "a@b", "..", "us6?x=1", "us6\n", "us6\r\n", "\nus6"):
        with pytest.raises(ValueError, match="dc"):
            mailchimp.learned_from("userinfo", {"dc": bad})


def test_a_host_chosen_at_connect_time_goes_through_the_url_policy(app: InProcessServer) -> None:
    # Keycloak's `{host}` is any host name: the server's calls there are checked like a
    # custom provider's, so a connection cannot aim the token request at a metadata service.
    production = load_catalog()
    assert not production["keycloak"].urls_reviewed
    assert production["shopify"].urls_reviewed  # {shop}.myshopify.com stays Shopify's
    keycloak = production["keycloak"]
    http = app.broker.http_for(keycloak)
    assert http is not app.broker.http
    with pytest.raises(ProviderError, match=r"not allowed|link-local|refused"):
        protocol.exchange_code(
            http,
            keycloak,
            protocol.ClientCredentials("client", "secret"),
            code="code",
            redirect_uri=f"{app.url}/oauth/callback",
            code_verifier=None,
            requested_scopes=["openid"],
            now=app.clock(),
            params={"host": "169.254.169.254", "realm": "acme"},
        )


def test_proxy_headers_carry_learned_values_and_the_token_goes_where_the_catalog_says() -> None:
    catalog = load_catalog()
    xero = protocol.api_headers(catalog["xero"], "tok", {"tenant_id": "t-1"})
    assert xero == {"Authorization": "Bearer tok", "xero-tenant-id": "t-1"}
    assert protocol.api_headers(catalog["clickup"], "tok", {}) == {"Authorization": "tok"}
    assert protocol.api_headers(catalog["zoho"], "tok", {}) == {
        "Authorization": "Zoho-oauthtoken tok"
    }
    assert protocol.api_headers(catalog["bigcommerce"], "tok", {}) == {"X-Auth-Token": "tok"}
    with pytest.raises(MissingValue, match="tenant_id"):
        protocol.api_headers(catalog["xero"], "tok", {})
