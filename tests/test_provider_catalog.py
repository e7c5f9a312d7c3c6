"""The built-in catalog of 30+ providers: every entry is well formed and cites its docs, and
every provider connects end to end through the emulator, connection parameters included."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from apiauth.domain.members import create_member, create_personal_token
from apiauth.oauth import protocol
from apiauth.providers import Catalog, CatalogError, ParamError, Provider, load_catalog
from apiauth.providers.catalog import builtin_catalog_texts
from tests.consent import consent, provider_url_of
from tests.servers import LiveServer, running_server

SITE = "catalog-site"
PARAMS = {
    "shopify": {"shop": "acme-store"},
    "zendesk": {"subdomain": "acme"},
    "bigcommerce": {"store_hash": "abc123"},
    "okta": {"okta_domain": "acme.okta.com"},
    "auth0": {"auth0_domain": "acme.us.auth0.com"},
    "keycloak": {"host": "sso.acme.example", "realm": "acme"},
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# --- the catalog as data ---------------------------------------------------------------


def test_the_catalog_has_at_least_thirty_providers_each_documented(catalog: Catalog) -> None:
    assert len(catalog) >= 30
    for provider in catalog.values():
        assert provider.docs_url, provider.name
        assert provider.docs_url.startswith("https://"), provider.name
        assert provider.app_registration_url, provider.name
        assert len(set(provider.scope_names())) == len(provider.scopes), provider.name
        assert all(s.description for s in provider.scopes), provider.name
        if provider.scopes:
            assert provider.default_scopes, f"{provider.name} has scopes but no default"
        for param in provider.params:
            # A value filled into URLs is checked; an email one is checked by its format.
            assert param.pattern is not None or param.choices or not param.fills_urls
            if param.pattern is not None:
                re.compile(param.pattern)


def test_every_entry_cites_the_providers_documentation_in_a_comment(catalog: Catalog) -> None:
    comment_above: dict[str, str] = {}
    for _label, text in builtin_catalog_texts():
        blocks = re.split(r"^\[providers\.([a-z0-9_-]+)\]$", text, flags=re.MULTILINE)
        # blocks: [preamble, name, body, name, body, ...]; the comment above an entry ends the
        # body before it.
        comment_above |= {
            name: blocks[i - 1].rsplit("\n\n", 1)[-1] for i, name in enumerate(blocks) if i % 2
        }
    for name in catalog:
        comment = comment_above[name]
        assert re.search(r"^# .*https://", comment, re.MULTILINE), f"{name}: no doc cited"


def test_connection_parameters_are_checked_against_their_declaration(catalog: Catalog) -> None:
    shopify, salesforce = catalog["shopify"], catalog["salesforce"]
    assert shopify.check_params({"shop": "acme-store"}) == {"shop": "acme-store"}
    with pytest.raises(ParamError, match="shop: is required"):
        shopify.check_params({})
    for bad in ("evil.example/x", "acme.evil", "Acme", "-acme", "a" * 61, "..", "x@y"):
        with pytest.raises(ParamError, match=r"^shop: "):
            shopify.check_params({"shop": bad})
    with pytest.raises(ParamError, match="no such parameter"):
        shopify.check_params({"shop": "acme", "region": "eu"})
    assert salesforce.check_params(None) == {}
    assert salesforce.check_params({"login_host": "test.salesforce.com"}) == {
        "login_host": "test.salesforce.com"
    }
    # My Domain, sandbox My Domain and Experience Cloud hosts; nothing outside Salesforce's.
    for host in (
        "acme.my.salesforce.com",
        "acme--uat.sandbox.my.salesforce.com",
        "acme.my.site.com",
    ):
        assert salesforce.check_params({"login_host": host}) == {"login_host": host}
    for bad in (
        "evil.example",
        "acme.my.salesforce.com.evil.example",
        "my.salesforce.com",
        "acme.salesforce.com",
    ):
        with pytest.raises(ParamError, match=r"login_host: .* does not fit"):
            salesforce.check_params({"login_host": bad})


def test_urls_fill_from_parameters_defaults_and_kept_fields(catalog: Catalog) -> None:
    client = protocol.ClientCredentials("client-1", "secret")
    url = protocol.authorization_url(
        catalog["shopify"],
        client,
        redirect_uri="https://apiauth.example/oauth/callback",
        scopes=["read_products", "read_orders"],
        state="s",
        code_verifier=None,
        params={"shop": "acme-store"},
    )
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("acme-store.myshopify.com", "/admin/oauth/authorize")
    assert parse_qs(parts.query)["scope"] == ["read_products,read_orders"]
    salesforce = protocol.authorization_url(
        catalog["salesforce"],
        client,
        redirect_uri="https://apiauth.example/oauth/callback",
        scopes=["api"],
        state="s",
        code_verifier=None,
    )
    assert salesforce.startswith("https://login.salesforce.com/services/oauth2/authorize?")
    slack = urlsplit(
        protocol.authorization_url(
            catalog["slack"],
            client,
            redirect_uri="https://apiauth.example/oauth/callback",
            scopes=["users:read", "chat:write"],
            state="s",
            code_verifier=None,
        )
    )
    # The user-token flow: scopes in user_scope, none in scope.
    assert parse_qs(slack.query)["user_scope"] == ["users:read,chat:write"]
    assert "scope" not in parse_qs(slack.query)


PARAM_MISTAKES = [
    ('shop = { description = "Shop", pattern = "^[a-z" , required = true }', "params.shop.pattern"),
    ('shop = { description = "Shop", required = true }', "params.shop"),
    ('shop = { pattern = "^[a-z]+$", required = true }', "params.shop.description"),
    ('shop = { description = "Shop", pattern = "^[a-z]+$" }', "params.shop"),
    (
        'shop = { description = "Shop", pattern = "^[a-z]+$", default = "A!" }',
        "params.shop.default",
    ),
    ('instance_url = { description = "x", pattern = "^x$", required = true }', "instance_url"),
]


@pytest.mark.parametrize(("declaration", "field"), PARAM_MISTAKES)
def test_a_custom_providers_parameter_mistakes_are_named(
    tmp_path: Path, declaration: str, field: str
) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[providers.acme]
display_name = "Acme"
authorization_url = "https://{{shop}}.acme.example/authorize"
token_url = "https://{{shop}}.acme.example/token"
token_auth_method = "client_secret_post"
[providers.acme.params]
{declaration}
""",
        encoding="utf-8",
    )
    with pytest.raises(CatalogError, match=re.escape(field)):
        load_catalog(path)


def test_a_url_placeholder_must_be_a_declared_parameter(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.acme]
display_name = "Acme"
authorization_url = "https://{tenant}.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_post"
""",
        encoding="utf-8",
    )
    with pytest.raises(CatalogError, match=r"authorization_url.*unknown placeholder"):
        load_catalog(path)


# --- every provider, end to end --------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server (SQLite, emulator) for the whole module: this is not a storage test."""
    tmp = tmp_path_factory.mktemp("catalog")
    with running_server(tmp, f"sqlite:///{tmp / 'apiauth.db'}", rate_limit_oauth_starts=0) as live:
        yield live


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def pat(server: LiveServer, http: httpx.Client) -> dict[str, str]:
    owner = create_member(server.broker, "owner@example.com", "correct horse battery")
    headers = {"Authorization": f"Bearer {create_personal_token(server.broker, owner, 'tests')}"}
    created = http.post(f"{server.url}/api/v1/sites", json={"name": SITE}, headers=headers)
    assert created.status_code == 201, created.text
    return headers


@pytest.fixture(scope="module")
def site_token(server: LiveServer, http: httpx.Client, pat: dict[str, str]) -> str:
    enabled = http.post(f"{server.url}/api/v1/sites/{SITE}/api-auth", headers=pat)
    assert enabled.status_code == 200, enabled.text
    token: str = enabled.json()["token"]
    return token


def start(
    server: LiveServer, http: httpx.Client, pat: dict[str, str], provider: str, **body: Any
) -> httpx.Response:
    return http.post(
        f"{server.url}/api/v1/sites/{SITE}/connections",
        json={"provider": provider, **body},
        headers=pat,
    )


def whoami(http: httpx.Client, provider: Provider, secret: dict[str, Any]) -> httpx.Response:
    """The emulated who-am-I call, made the way the catalog says (headers, method, URL)."""
    assert provider.userinfo_url is not None
    url = provider.userinfo_url
    for name, value in provider.url_values(secret["extra"]).items():
        url = url.replace("{" + name + "}", value)
    headers = protocol.userinfo_headers(provider, secret["bearer_token"])
    return http.request(provider.userinfo_method, url, headers=headers)


def test_every_provider_connects_refreshes_answers_who_am_i_and_disconnects(
    server: LiveServer, http: httpx.Client, pat: dict[str, str], site_token: str
) -> None:
    # The OAuth ones; the key-based ones connect in test_credentials.py.
    catalog = {n: p for n, p in server.broker.catalog.items() if p.auth_mode == "oauth2"}
    for name in catalog:
        started = start(server, http, pat, name, params=PARAMS.get(name))
        assert started.status_code == 200, f"{name}: {started.text}"
        done = consent(http, started.json()["authorize_url"])
        assert done.status_code == 200, f"{name}: {done.text}"
        connection = done.json()
        assert connection["status"] == "connected", name
        assert connection["granted_scopes"] == list(catalog[name].default_scopes), name
        if catalog[name].userinfo_url:
            assert connection["account"]["id"], f"{name}: no account id from who-am-I"

    secrets = http.get(
        f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site_token}"}
    ).json()
    assert set(secrets) == set(catalog)
    assert {secret["auth_mode"] for secret in secrets.values()} == {"oauth2"}
    for name, provider in catalog.items():
        secret = secrets[name]
        assert secret["is_logged_in"], name
        assert secret["bearer_token"], name
        assert secret["extra"].items() >= PARAMS.get(name, {}).items(), name
        if provider.userinfo_url:
            answer = whoami(http, provider, secret)
            assert answer.status_code == 200, f"{name}: {answer.text}"
            assert provider.account_from_userinfo(answer.json())[0], name
    assert "login_host" not in secrets["salesforce"]["extra"]

    # Every refresh token is accepted where the catalog sends it (Figma: its refresh URL).
    for name, provider in catalog.items():
        if provider.refresh_token == "none":
            continue
        refreshed = http.post(
            f"{server.url}/api/v1/sites/{SITE}/connections/{name}/refresh", headers=pat
        )
        assert refreshed.status_code == 200, f"{name}: {refreshed.text}"
        assert refreshed.json()["last_error"] is None, name

    # Disconnecting revokes wherever the catalog declares how, parameters filled in.
    for name, provider in catalog.items():
        deleted = http.delete(f"{server.url}/api/v1/sites/{SITE}/connections/{name}", headers=pat)
        assert deleted.status_code == 200, f"{name}: {deleted.text}"
        assert deleted.json()["revoked_at_provider"] is (provider.revoke_url is not None), name


def test_a_missing_or_bad_connection_parameter_is_refused_with_422(
    server: LiveServer, http: httpx.Client, pat: dict[str, str]
) -> None:
    for provider, params, named in [
        ("shopify", None, "shop"),
        ("shopify", {"shop": "evil.example/steal"}, "shop"),
        ("zendesk", {"subdomain": "acme.evil.example"}, "subdomain"),
        ("shopify", {"shop": "acme", "host": "x"}, "host"),
        ("salesforce", {"login_host": "evil.example"}, "login_host"),
    ]:
        refused = start(server, http, pat, provider, params=params)
        assert refused.status_code == 422, refused.text
        assert named in refused.json()["error"]["message"]


def test_a_salesforce_sandbox_connects_through_test_salesforce_com(
    server: LiveServer, http: httpx.Client, pat: dict[str, str], site_token: str
) -> None:
    started = start(server, http, pat, "salesforce", params={"login_host": "test.salesforce.com"})
    assert started.status_code == 200, started.text
    authorize_url = provider_url_of(http, started.json()["authorize_url"])
    assert "/salesforce/test.salesforce.com/services/oauth2/authorize?" in authorize_url
    assert consent(http, authorize_url).status_code == 200
    secrets = http.get(
        f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site_token}"}
    ).json()
    assert secrets["salesforce"]["extra"]["login_host"] == "test.salesforce.com"
    refreshed = http.post(
        f"{server.url}/api/v1/sites/{SITE}/connections/salesforce/refresh", headers=pat
    )
    assert refreshed.json()["last_error"] is None


def test_the_cli_passes_param_to_the_connection(
    server: LiveServer, pat: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from apiauth.cli.commands import app

    settings = server.broker.settings
    monkeypatch.setenv("APIAUTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APIAUTH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("APIAUTH_PUBLIC_URL", settings.public_url)
    runner = CliRunner()
    args = ["connect", SITE, "zendesk", "--no-wait", "--member", "owner@example.com"]
    started = runner.invoke(app, [*args, "--param", "subdomain=acme-support"])
    assert started.exit_code == 0, started.output
    with httpx.Client(timeout=15) as browser:
        provider_url = provider_url_of(browser, started.stdout.strip())
    assert "/zendesk/acme-support.zendesk.com/oauth/authorizations/new?" in provider_url
    refused = runner.invoke(app, [*args, "--param", "subdomain=acme.evil.example"])
    assert refused.exit_code != 0
    assert "subdomain" in str(refused.exception)


def test_the_readme_lists_every_builtin_provider(catalog: Catalog) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    section = readme.split("## Providers", 1)[1].split("\n## ", 1)[0]
    for provider in catalog.values():
        assert provider.display_name.split(" (")[0] in section, provider.name
    assert f"all {len(catalog)}" in readme


def test_the_dashboard_connect_form_asks_for_the_parameters(
    server: LiveServer, pat: dict[str, str], site_token: str
) -> None:
    with httpx.Client(timeout=15) as browser:
        sign_in = browser.get(f"{server.url}/sign-in").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', sign_in)
        assert csrf is not None
        signed_in = browser.post(
            f"{server.url}/sign-in",
            data={
                "email": "owner@example.com",
                "password": "correct horse battery",
                "csrf_token": csrf[1],
            },
        )
        assert signed_in.status_code == 303, signed_in.text[:300]
        page = browser.get(f"{server.url}/sites/{SITE}/api-auth").text
        shopify = page.split('id="provider-shopify"', 1)[1].split("</li>", 1)[0]
        assert '<input type="hidden" name="param_name" value="shop">' in shopify
        assert 'name="param_value"' in shopify
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        form = {"csrf_token": csrf[1], "provider": "shopify", "param_name": "shop"}
        started = browser.post(
            f"{server.url}/sites/{SITE}/connections", data={**form, "param_value": "acme-store"}
        )
        assert started.status_code in (302, 303), started.text[:300]
        assert (
            "/shopify/acme-store.myshopify.com/admin/oauth/authorize?"
            in (started.headers["location"])
        )
        refused = browser.post(
            f"{server.url}/sites/{SITE}/connections", data={**form, "param_value": "a.evil.com"}
        )
        assert refused.status_code in (302, 303)
        assert refused.headers["location"].endswith(f"/sites/{SITE}/api-auth")
