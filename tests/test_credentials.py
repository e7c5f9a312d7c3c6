"""Key-based connections (auth modes `api_key` and `basic`, SPEC §7): a pasted key is verified
at the provider before it is stored, read from `/api/v1/secrets` in `api_key` (basic: in
`username` and `password`), sent by the proxy where the catalog says, re-verified on a
schedule (a revoked key becomes `needs_reauth` with its hooks), and never shown anywhere
else. The emulator plays every key-based provider."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from apiauth.cli.commands import app as cli
from apiauth.domain import audit, refresh, sites
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.providers import KEY_MODES, Catalog, CatalogError, Provider, load_catalog
from tests.in_process import InProcessServer, in_process_server
from tests.servers import LiveServer, running_server

SITE = "keys-site"
# Connection parameters the key-based entries need in demo mode.
PARAMS = {"jira-api-token": {"subdomain": "acme"}, "zendesk-api-token": {"subdomain": "acme"}}


def demo_key(provider: str) -> str:
    """A key the emulator accepts for `provider` (SPEC §7: `emu-<provider>-<16+ chars>`)."""
    return f"emu-{provider}-{secrets.token_hex(12)}"


def demo_credentials(provider: Provider) -> dict[str, str]:
    if provider.auth_mode == "basic":
        return {"username": f"emu-{provider.name}", "password": demo_key(provider.name)}
    return {"api_key": demo_key(provider.name)}


class Site:
    """A site with API Authentication on, as its owner's API client sees it."""

    def __init__(self, live: LiveServer | InProcessServer, http: httpx.Client) -> None:
        self.live = live
        self.http = http
        self.owner: MemberView = create_member(
            live.broker, "owner@example.com", "correct horse battery"
        )
        self.pat = {
            "Authorization": f"Bearer {create_personal_token(live.broker, self.owner, 'keys')}"
        }
        sites.create_site(live.broker, self.owner, SITE)
        self.token = sites.enable_api_auth(live.broker, self.owner, SITE)

    def connect(self, provider: str, credentials: dict[str, str], **body: Any) -> httpx.Response:
        return self.http.post(
            f"{self.live.url}/api/v1/sites/{SITE}/connections",
            json={"provider": provider, "credentials": credentials, **body},
            headers=self.pat,
        )

    def connections(self) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.live.url}/api/v1/sites/{SITE}/connections", headers=self.pat)
        assert answer.status_code == 200, answer.text
        listed: list[dict[str, Any]] = answer.json()
        return listed

    def secrets(self) -> dict[str, Any]:
        answer = self.http.get(
            f"{self.live.url}/api/v1/secrets", headers={"Authorization": f"Bearer {self.token}"}
        )
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def proxy(self, provider: str, path: str, **options: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **options.pop("headers", {})}
        return self.http.get(
            f"{self.live.url}/api/v1/proxy/{provider}/{path.lstrip('/')}",
            headers=headers,
            **options,
        )

    def events(self) -> str:
        answer = self.http.get(f"{self.live.url}/api/v1/sites/{SITE}/events", headers=self.pat)
        assert answer.status_code == 200, answer.text
        return answer.text


@pytest.fixture
def site(live: LiveServer | InProcessServer, http: httpx.Client) -> Site:
    return Site(live, http)


def verification_path(provider: Provider) -> str:
    """The verification endpoint's path under the provider's API base (the proxy's view)."""
    assert provider.userinfo_url is not None
    assert provider.api_base_url is not None
    values = provider.url_values(PARAMS.get(provider.name, {}))
    url, base = provider.userinfo_url, provider.api_base_url
    for name, value in values.items():
        url, base = url.replace("{" + name + "}", value), base.replace("{" + name + "}", value)
    assert url.startswith(base), provider.name
    return url[len(base) :]


# --- the fast tier: one process, the emulator in it ----------------------------------------


@pytest.mark.fast
def test_an_openai_key_is_verified_stored_and_read_as_api_key(site: Site) -> None:
    key = demo_key("openai")
    made = site.connect("openai", {"api_key": key})
    assert made.status_code == 201, made.text
    connection = made.json()
    assert connection["provider"] == "openai"
    assert connection["auth_mode"] == "api_key"
    assert connection["status"] == "connected"
    assert "authorize_url" not in connection
    assert key not in made.text

    openai = site.secrets()["openai"]
    assert openai["auth_mode"] == "api_key"
    assert openai["api_key"] == key
    assert openai["bearer_token"] is None
    assert openai["is_logged_in"] is True
    assert openai["expires_at"] is None
    assert [c["auth_mode"] for c in site.connections()] == ["api_key"]
    assert key not in site.events()
    assert "connection.created" in site.events()


@pytest.mark.fast
def test_a_refused_key_is_a_422_naming_the_providers_answer_and_nothing_is_stored(
    site: Site,
) -> None:
    wrong = "sk-not-an-emulator-key-" + secrets.token_hex(16)
    refused = site.connect("openai", {"api_key": wrong})
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "OpenAI refused the credential (HTTP 401: Incorrect API key provided" in message
    assert wrong not in refused.text
    assert site.connections() == []
    assert "openai" not in site.secrets()
    # Basic credentials too: Twilio's own words.
    refused = site.connect("twilio", {"username": "AC-someone", "password": demo_key("twilio")})
    assert refused.status_code == 422
    assert "Authenticate" in refused.json()["error"]["message"]
    assert site.connections() == []


@pytest.mark.fast
def test_credentials_of_the_wrong_shape_are_refused_before_any_call(site: Site) -> None:
    cases: list[tuple[str, dict[str, str], str]] = [
        ("openai", {"username": "x", "password": "y"}, "OpenAI takes api_key"),
        ("openai", {"api_key": "  "}, "credentials.api_key is required"),
        ("openai", {"api_key": "sk-\nInjected: header"}, "printable"),
        ("twilio", {"username": "AC1"}, "credentials.password is required"),
        ("twilio", {"username": "a:b", "password": "p"}, "must not contain ':'"),
        ("github", {"api_key": "x"}, "auth_mode 'oauth2'"),
    ]
    for provider, credentials, named in cases:
        refused = site.connect(provider, credentials)
        assert refused.status_code == 422, refused.text
        assert named in refused.json()["error"]["message"], (provider, refused.text)
    # A key-based provider without credentials says what to send instead of starting a flow.
    started = site.http.post(
        f"{site.live.url}/api/v1/sites/{SITE}/connections",
        json={"provider": "openai"},
        headers=site.pat,
    )
    assert started.status_code == 422
    assert "send `credentials` with api_key" in started.json()["error"]["message"]
    stats = site.http.get(f"{site.live.url}/_emulator/_admin/stats").json()
    assert stats["openai"]["keys_verified"] == stats["openai"]["keys_refused"] == 0


@pytest.mark.fast
def test_twilio_reads_as_username_and_password_and_the_proxy_sends_basic(site: Site) -> None:
    password = demo_key("twilio")
    made = site.connect("twilio", {"username": "emu-twilio", "password": password})
    assert made.status_code == 201, made.text
    assert made.json()["account"]["login"] == "emu-twilio"
    twilio = site.secrets()["twilio"]
    assert (twilio["auth_mode"], twilio["username"], twilio["password"]) == (
        "basic",
        "emu-twilio",
        password,
    )
    assert twilio["api_key"] is None
    assert twilio["bearer_token"] is None
    answer = site.proxy("twilio", "/2010-04-01/Accounts.json")
    assert answer.status_code == 200, answer.text


@pytest.mark.fast
def test_the_proxy_puts_each_key_where_the_catalog_says(site: Site) -> None:
    for provider in ("anthropic", "mapbox", "datadog", "pagerduty-api-key"):
        made = site.connect(provider, {"api_key": demo_key(provider)})
        assert made.status_code == 201, made.text
    # Anthropic's x-api-key header: a key of the caller's own is replaced, not forwarded.
    answer = site.proxy("anthropic", "/v1/models", headers={"x-api-key": "sk-ant-callers-own"})
    assert answer.status_code == 200, answer.text
    # Mapbox's access_token query parameter, likewise.
    answer = site.proxy("mapbox", "/tokens/v2", params={"access_token": "pk.callers-own"})
    assert answer.status_code == 200, answer.text
    # Datadog's DD-API-KEY on the default site; PagerDuty's "Token token=" prefix.
    assert site.proxy("datadog", "/api/v1/validate").status_code == 200
    assert site.proxy("pagerduty-api-key", "/abilities").status_code == 200
    stats = site.http.get(f"{site.live.url}/_emulator/_admin/stats").json()
    assert stats["anthropic"]["keys_refused"] == 0
    assert stats["mapbox"]["keys_refused"] == 0


@pytest.mark.fast
def test_a_revoked_key_becomes_needs_reauth_at_its_next_verification(
    site: Site, app: InProcessServer
) -> None:
    key = demo_key("sendgrid")
    assert site.connect("sendgrid", {"api_key": key}).status_code == 201
    # Nothing is due before the re-verification interval.
    assert refresh.lease_due_connections(app.broker, 10).leased == []

    revoked = site.http.post(
        f"{app.url}/_emulator/_admin/revoke-key", json={"provider": "sendgrid", "key": key}
    )
    assert revoked.status_code == 200
    app.clock.advance(app.broker.settings.validate_interval_seconds + 1)
    batch = refresh.lease_due_connections(app.broker, 10)
    assert [leased.provider for leased in batch.leased] == ["sendgrid"]
    outcomes = [
        refresh.attempt_refresh(app.broker, leased, batch.clients) for leased in batch.leased
    ]
    assert [outcome.kind for outcome in outcomes] == [refresh.REFUSED]
    refresh.store_outcomes(app.broker, outcomes, batch.sites)

    (connection,) = site.connections()
    assert connection["status"] == "needs_reauth"
    assert "SendGrid refused the credential" in connection["last_error"]
    sendgrid = site.secrets()["sendgrid"]
    assert sendgrid["is_logged_in"] is False
    assert sendgrid["api_key"] is None
    assert "connection.needs_reauth" in site.events()
    assert key not in site.events()

    # A new key reconnects it.
    assert site.connect("sendgrid", {"api_key": demo_key("sendgrid")}).status_code == 201
    assert site.connections()[0]["status"] == "connected"


@pytest.mark.fast
def test_a_key_that_still_works_is_checked_again_later_without_changing(
    site: Site, app: InProcessServer
) -> None:
    key = demo_key("openai")
    assert site.connect("openai", {"api_key": key}).status_code == 201
    app.clock.advance(app.broker.settings.validate_interval_seconds + 1)
    batch = refresh.lease_due_connections(app.broker, 10)
    outcomes = [
        refresh.attempt_refresh(app.broker, leased, batch.clients) for leased in batch.leased
    ]
    assert [outcome.kind for outcome in outcomes] == [refresh.CHECKED]
    refresh.store_outcomes(app.broker, outcomes, batch.sites)
    assert site.connections()[0]["status"] == "connected"
    assert site.secrets()["openai"]["api_key"] == key
    assert refresh.lease_due_connections(app.broker, 10).leased == []


@pytest.mark.fast
def test_every_key_based_provider_connects_proxies_and_disconnects(tmp_path: Path) -> None:
    with in_process_server(tmp_path, rate_limit_oauth_starts=0) as server:
        _every_key_based_provider(Site(server, server.new_client(timeout=15)))


def _every_key_based_provider(site: Site) -> None:
    catalog = site.live.broker.catalog
    keyed = {name: p for name, p in catalog.items() if p.auth_mode in KEY_MODES}
    given: dict[str, dict[str, str]] = {}
    for name, provider in keyed.items():
        given[name] = demo_credentials(provider)
        made = site.connect(name, given[name], params=PARAMS.get(name))
        assert made.status_code == 201, f"{name}: {made.text}"
        if provider.account_id_field:
            assert made.json()["account"]["id"], name
    found = site.secrets()
    for name, provider in keyed.items():
        secret = found[name]
        assert secret["auth_mode"] == provider.auth_mode, name
        assert secret["is_logged_in"], name
        if provider.auth_mode == "api_key":
            assert secret["api_key"] == given[name]["api_key"], name
        else:
            assert secret["password"] == given[name]["password"], name
        answer = site.proxy(name, verification_path(provider))
        assert answer.status_code == 200, f"{name}: {answer.text}"
    for name in keyed:
        deleted = site.http.delete(
            f"{site.live.url}/api/v1/sites/{SITE}/connections/{name}", headers=site.pat
        )
        assert deleted.status_code == 200, f"{name}: {deleted.text}"
        assert deleted.json()["revoked_at_provider"] is False
    assert site.secrets() == {}


@pytest.mark.fast
def test_another_teams_site_cannot_be_given_a_key(site: Site) -> None:
    other = create_member(site.live.broker, "other@example.com", None, team_name="other-team")
    headers = {"Authorization": f"Bearer {create_personal_token(site.live.broker, other, 'o')}"}
    body = {"provider": "openai", "credentials": {"api_key": demo_key("openai")}}
    theirs = site.http.post(
        f"{site.live.url}/api/v1/sites/{SITE}/connections", json=body, headers=headers
    )
    missing = site.http.post(
        f"{site.live.url}/api/v1/sites/nowhere/connections", json=body, headers=headers
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {
        "error": {
            **missing.json()["error"],
            "message": missing.json()["error"]["message"].replace("nowhere", SITE),
        }
    }
    assert site.connections() == []
    stats = site.http.get(f"{site.live.url}/_emulator/_admin/stats").json()
    assert stats["openai"]["keys_verified"] == 0


@pytest.mark.fast
def test_the_providers_list_names_the_mode_and_the_connect_form_fields(site: Site) -> None:
    listed = site.http.get(f"{site.live.url}/api/v1/providers", headers=site.pat).json()
    by_name = {p["name"]: p for p in listed}
    assert by_name["github"]["auth_mode"] == "oauth2"
    assert by_name["openai"]["auth_mode"] == "api_key"
    assert by_name["openai"]["configured"] is True
    assert by_name["openai"]["credentials_url"] == "https://platform.openai.com/api-keys"
    assert by_name["twilio"]["credential_fields"] == [
        {"name": "username", "label": "Account SID (or API key SID)", "secret": False},
        {"name": "password", "label": "Auth token (or API key secret)", "secret": True},
    ]


@pytest.mark.fast
def test_the_client_library_reads_api_key_username_and_password(site: Site) -> None:
    from apiauth.client import _parse_secrets

    key, password = demo_key("openai"), demo_key("twilio")
    assert site.connect("openai", {"api_key": key}).status_code == 201
    assert (
        site.connect("twilio", {"username": "emu-twilio", "password": password}).status_code == 201
    )
    parsed = _parse_secrets(site.secrets())
    assert parsed["openai"].auth_mode == "api_key"
    assert parsed["openai"].api_key == key
    assert (parsed["twilio"].username, parsed["twilio"].password) == ("emu-twilio", password)
    assert key not in repr(parsed["openai"])
    assert password not in repr(parsed["twilio"])


# --- the catalog -------------------------------------------------------------------------


def test_the_catalog_holds_at_least_25_key_based_entries_each_with_its_key_page() -> None:
    catalog = load_catalog()
    keyed = [p for p in catalog.values() if p.auth_mode in KEY_MODES]
    assert len(keyed) >= 25
    for provider in keyed:
        assert provider.userinfo_url, provider.name
        assert provider.app_registration_url, provider.name
        assert provider.api_base_url, provider.name
        assert provider.authorization_url == provider.token_url == "", provider.name
    for name in ("openai", "anthropic", "sendgrid"):
        assert catalog[name].auth_mode == "api_key"
    assert catalog["twilio"].auth_mode == "basic"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ('auth_mode = "api_key"\n', "userinfo_url"),
        ('auth_mode = "apikey"\nuserinfo_url = "https://acme.example/me"\n', "auth_mode"),
        (
            'auth_mode = "api_key"\nuserinfo_url = "https://acme.example/me"\n'
            'api_key_header = "x-api-key"\napi_key_query_param = "key"\n',
            "api_key_query_param",
        ),
        (
            'auth_mode = "api_key"\nuserinfo_url = "https://acme.example/me"\n'
            'api_key_header = "x api key"\n',
            "api_key_header",
        ),
        (
            'authorization_url = "https://acme.example/a"\ntoken_url = "https://acme.example/t"\n'
            'token_auth_method = "none"\napi_key_header = "x-api-key"\n',
            "api_key_header",
        ),
    ],
)
def test_a_custom_key_based_entry_with_a_mistake_is_named(
    tmp_path: Path, entry: str, field: str
) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(f'[providers.acme]\ndisplay_name = "Acme"\n{entry}', encoding="utf-8")
    with pytest.raises(CatalogError, match=f"provider 'acme': field '{field}'"):
        load_catalog(path)


def test_a_custom_provider_may_be_key_based_too(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.acme-keys]
display_name = "Acme Keys"
auth_mode = "api_key"
api_key_header = "X-Acme-Key"
userinfo_url = "https://api.acme.example/whoami"
api_base_url = "https://api.acme.example"
account_login_field = "login"
emulate = true
""",
        encoding="utf-8",
    )
    database = f"sqlite:///{tmp_path / 'apiauth.db'}"
    with running_server(tmp_path, database, providers_file=path) as server, httpx.Client() as http:
        catalog: Catalog = server.broker.catalog
        assert catalog["acme-keys"].auth_mode == "api_key"
        site = Site(server, http)
        made = site.connect("acme-keys", {"api_key": demo_key("acme-keys")})
        assert made.status_code == 201, made.text
        assert made.json()["account"]["login"]
        assert site.proxy("acme-keys", "/whoami").status_code == 200
        assert site.secrets()["acme-keys"]["auth_mode"] == "api_key"


# --- real processes and both databases ------------------------------------------------------


def test_keys_and_basic_credentials_are_stored_and_read_on_both_databases(
    live: LiveServer, http: httpx.Client
) -> None:
    site = Site(live, http)
    key, password = demo_key("openai"), demo_key("twilio")
    assert site.connect("openai", {"api_key": key}).status_code == 201
    assert (
        site.connect("twilio", {"username": "emu-twilio", "password": password}).status_code == 201
    )
    found = site.secrets()
    assert found["openai"]["api_key"] == key
    assert found["twilio"]["password"] == password
    assert site.proxy("openai", "/v1/models").status_code == 200
    # A new key replaces the old one in place.
    newer = demo_key("openai")
    assert site.connect("openai", {"api_key": newer}).status_code == 201
    assert site.secrets()["openai"]["api_key"] == newer
    assert [c["provider"] for c in site.connections()] == ["openai", "twilio"]
    assert audit is not None


def test_the_cli_connects_a_key_read_from_stdin(
    live: LiveServer, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(live, http)
    settings = live.broker.settings
    monkeypatch.setenv("APIAUTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APIAUTH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("APIAUTH_PUBLIC_URL", settings.public_url)
    runner = CliRunner()
    key = demo_key("openai")
    member = ["--member", "owner@example.com"]
    done = runner.invoke(cli, ["connect", SITE, "openai", "--api-key-stdin", *member], input=key)
    assert done.exit_code == 0, done.output
    assert "openai connected" in done.stdout
    assert key not in done.output
    password = demo_key("twilio")
    done = runner.invoke(
        cli,
        ["connect", SITE, "twilio", "--username", "emu-twilio", "--password-stdin", *member],
        input=password + "\n",
    )
    assert done.exit_code == 0, done.output
    found = site.secrets()
    assert found["openai"]["api_key"] == key
    assert found["twilio"]["password"] == password
    refused = runner.invoke(
        cli, ["connect", SITE, "openai", "--api-key-stdin", *member], input="sk-wrong-key-123"
    )
    assert refused.exit_code != 0
    assert "sk-wrong-key-123" not in refused.output
