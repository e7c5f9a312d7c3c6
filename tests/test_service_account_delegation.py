"""Domain-wide delegation for service accounts (auth mode `jwt_bearer`, issue 15 mode 4):
the optional connection parameter `subject` names the Workspace user a Google service
account acts as; it becomes the assertion's `sub`, is kept in the connection's `extra`, and
every renewed token acts as the same user. Without it there is no `sub`, as before.

The emulated Google token endpoint verifies the assertion (signature, `aud`, `exp`) and
accepts a `sub` only in the domain the account was granted delegation in (registered with
`/_emulator/_admin/public-keys`, as a Workspace administrator grants it); the emulated
Gmail `users.getProfile` answers the user a token acts as, so what the emulator read from
the signed assertion is what the tests see."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiauth.domain import refresh, sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from apiauth.providers import CatalogError, load_catalog
from tests.in_process import InProcessServer
from tests.servers import LiveServer
from tests.test_service_accounts import ACCOUNT, PROVIDER, key_file

SITE = "delegating-site"
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
PROFILE = "gmail/v1/users/me/profile"
USER = "ada@example.com"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery"


class Site:
    """A site whose team uploaded a service account key, the account granted delegation in
    example.com."""

    def __init__(self, app: InProcessServer | LiveServer, http: httpx.Client) -> None:
        self.app, self.http = app, http
        self.owner = create_member(app.broker, OWNER, PASSWORD)
        self.pat = {"Authorization": f"Bearer {create_personal_token(app.broker, self.owner, 'd')}"}
        sites.create_site(app.broker, self.owner, SITE)
        self.token = sites.enable_api_auth(app.broker, self.owner, SITE)
        self.site_auth = {"Authorization": f"Bearer {self.token}"}
        pem, public = key_file()
        registered = self.http.post(
            f"{app.url}/_emulator/_admin/public-keys",
            json={
                "provider": PROVIDER,
                "issuer": ACCOUNT,
                "jwk": public,
                "delegation_domain": "example.com",
            },
        )
        assert registered.status_code == 200, registered.text
        set_oauth_app(app.broker, self.owner, PROVIDER, ACCOUNT, pem)

    def connect(self, **params: str) -> httpx.Response:
        body: dict[str, Any] = {"provider": PROVIDER, "scopes": [GMAIL]}
        if params:
            body["params"] = params
        return self.http.post(
            f"{self.app.url}/api/v1/sites/{SITE}/connections", json=body, headers=self.pat
        )

    def secret(self) -> dict[str, Any]:
        answer = self.http.get(f"{self.app.url}/api/v1/secrets", headers=self.site_auth)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()[PROVIDER]
        return found

    def gmail_profile(self) -> httpx.Response:
        return self.http.get(
            f"{self.app.url}/api/v1/proxy/{PROVIDER}/{PROFILE}", headers=self.site_auth
        )

    def connections(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.http.get(
            f"{self.app.url}/api/v1/sites/{SITE}/connections", headers=self.pat
        ).json()
        return listed

    def tokens_minted(self) -> int:
        stats = self.http.get(f"{self.app.url}/_emulator/_admin/stats").json()
        return int(stats.get(PROVIDER, {}).get("client_tokens", 0))


@pytest.fixture
def site(app: InProcessServer) -> Site:
    return Site(app, app.new_client(timeout=15))


@pytest.mark.fast
def test_a_delegated_service_account_reads_the_workspace_users_mailbox(site: Site) -> None:
    made = site.connect(subject=USER)
    assert made.status_code == 201, made.text
    assert made.json()["auth_mode"] == "jwt_bearer"
    assert made.json()["granted_scopes"] == [GMAIL]
    secret = site.secret()
    assert secret["extra"]["subject"] == USER
    assert secret["bearer_token"]
    # The token the emulator minted from the assertion acts as the user its `sub` named.
    profile = site.gmail_profile()
    assert profile.status_code == 200, profile.text
    assert profile.json()["emailAddress"] == USER
    assert isinstance(profile.json()["historyId"], str)


@pytest.mark.fast
def test_without_a_subject_the_account_acts_as_itself_and_gmail_says_so(site: Site) -> None:
    made = site.connect()
    assert made.status_code == 201, made.text
    assert "subject" not in site.secret()["extra"]
    # No `sub` in the assertion: the account has no mailbox of its own.
    refused = site.gmail_profile()
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["status"] == "FAILED_PRECONDITION"
    assert error["errors"][0]["reason"] == "failedPrecondition"


@pytest.mark.fast
def test_the_refresher_renews_the_token_for_the_same_delegated_user(
    site: Site, app: InProcessServer
) -> None:
    assert site.connect(subject=USER).status_code == 201
    first = site.secret()["bearer_token"]
    assert refresh.lease_due_connections(app.broker, 10).leased == []
    app.clock.advance(3600)
    batch = refresh.lease_due_connections(app.broker, 10)
    outcomes = [
        refresh.attempt_refresh(app.broker, leased, batch.clients) for leased in batch.leased
    ]
    assert [outcome.kind for outcome in outcomes] == [refresh.FRESH]
    refresh.store_outcomes(app.broker, outcomes, batch.sites)
    assert site.tokens_minted() == 2
    renewed = site.secret()
    assert renewed["bearer_token"] != first
    assert renewed["extra"]["subject"] == USER
    profile = site.gmail_profile()
    assert profile.status_code == 200, profile.text
    assert profile.json()["emailAddress"] == USER
    # And a reader inside the margin gets one minted for the same user, too.
    app.clock.advance(3600)
    assert site.secret()["bearer_token"] != renewed["bearer_token"]
    assert site.tokens_minted() == 3
    assert site.gmail_profile().json()["emailAddress"] == USER


def test_a_delegated_connection_is_stored_and_renewed_on_both_databases(
    live: LiveServer, http: httpx.Client
) -> None:
    """Over real HTTP against `serve --demo`, on SQLite and PostgreSQL: the subject survives
    the encrypted token set's round trip through the database and a renewal ("refresh now")."""
    site = Site(live, http)
    made = site.connect(subject=USER)
    assert made.status_code == 201, made.text
    first = site.secret()
    assert first["extra"]["subject"] == USER
    renewed = http.post(
        f"{live.url}/api/v1/sites/{SITE}/connections/{PROVIDER}/refresh", headers=site.pat
    )
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["last_error"] is None
    second = site.secret()
    assert second["bearer_token"] != first["bearer_token"]
    assert second["extra"]["subject"] == USER
    assert site.tokens_minted() == 2
    profile = site.gmail_profile()
    assert profile.status_code == 200, profile.text
    assert profile.json()["emailAddress"] == USER


@pytest.mark.fast
@pytest.mark.parametrize(
    "subject",
    [
        "ada",
        "ada@localhost",
        "Ada Lovelace <ada@example.com>",
        "ada@example.com/../admin",
        "ada@evil.example@example.com",
        "ada@@example.com",
        "ada@example..com",
    ],
)
def test_a_malformed_subject_is_a_422_naming_the_parameter_and_nothing_is_stored(
    site: Site, subject: str
) -> None:
    refused = site.connect(subject=subject)
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "subject" in message
    assert "email address" in message
    assert site.connections() == []
    assert site.tokens_minted() == 0


@pytest.mark.fast
def test_a_user_outside_the_delegated_domain_is_refused_by_google_with_422(site: Site) -> None:
    refused = site.connect(subject="bob@other.example")
    assert refused.status_code == 422, refused.text
    assert "unauthorized_client" in refused.json()["error"]["message"]
    assert site.connections() == []


@pytest.mark.fast
def test_the_catalog_offers_subject_as_an_optional_email_parameter(site: Site) -> None:
    listed = site.http.get(f"{site.app.url}/api/v1/providers", headers=site.pat)
    assert listed.status_code == 200, listed.text
    (google,) = [p for p in listed.json() if p["name"] == PROVIDER]
    (subject,) = google["params"]
    assert subject["name"] == "subject"
    assert subject["format"] == "email"
    assert subject["required"] is False
    assert "domain-wide delegation" in subject["description"]
    assert GMAIL in [s["name"] for s in google["scopes"]]


@pytest.mark.fast
def test_the_dashboard_connect_form_asks_for_the_subject_as_an_email(site: Site) -> None:
    base = site.app.url
    sign_in = site.http.get(f"{base}/sign-in").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', sign_in)
    assert csrf is not None
    signed = site.http.post(
        f"{base}/sign-in",
        data={"email": OWNER, "password": PASSWORD, "csrf_token": csrf[1]},
    )
    assert signed.status_code == 303, signed.text[:300]
    page = site.http.get(f"{base}/sites/{SITE}/api-auth", params={"q": "service account"})
    assert page.status_code == 200
    item = page.text[page.text.index(f'id="provider-{PROVIDER}"') :]
    item = item[: item.index("</li>")]
    assert '<input type="hidden" name="param_name" value="subject">' in item
    assert '<input type="email" name="param_value"' in item
    assert "domain-wide delegation" in item
    token = re.search(r'name="csrf_token" value="([^"]+)"', item)
    assert token is not None
    posted = site.http.post(
        f"{base}/sites/{SITE}/connections",
        data={
            "csrf_token": token[1],
            "provider": PROVIDER,
            "scope": GMAIL,
            "param_name": "subject",
            "param_value": USER,
        },
    )
    assert posted.status_code == 303, posted.text[:300]
    assert site.secret()["extra"]["subject"] == USER
    assert site.gmail_profile().json()["emailAddress"] == USER


@pytest.mark.fast
def test_the_cli_names_a_malformed_subject(
    site: Site,
    app: InProcessServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apiauth.cli import main

    settings = app.broker.settings
    monkeypatch.setenv("APIAUTH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APIAUTH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("APIAUTH_PUBLIC_URL", settings.public_url)
    argv = ["apiauth", "connect", SITE, PROVIDER, "--param", "subject=not-an-address"]
    monkeypatch.setattr("sys.argv", [*argv, "--member", OWNER])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    printed = capsys.readouterr().err
    assert "connection parameter subject: must be an email address" in printed
    assert "Traceback" not in printed
    assert site.connections() == []


@pytest.mark.parametrize(
    "use",
    [
        'api_base_url = "https://api.acme.example/{subject}"',
        'token_params = { sub = "{subject}" }',
        'proxy_headers = { "X-User" = "{subject}" }',
    ],
)
def test_an_email_parameter_cannot_stand_in_a_url_or_header(tmp_path: Path, use: str) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[providers.acme-sa]
display_name = "Acme service account"
auth_mode = "jwt_bearer"
token_url = "https://auth.acme.example/token"
token_auth_method = "none"
{use}
[providers.acme-sa.params]
subject = {{ description = "The user to act as", format = "email" }}
""",
        encoding="utf-8",
    )
    with pytest.raises(CatalogError, match=re.escape("unknown placeholder {subject}")):
        load_catalog(path)


def test_a_custom_jwt_bearer_provider_may_declare_an_email_subject(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.acme-sa]
display_name = "Acme service account"
auth_mode = "jwt_bearer"
token_url = "https://auth.acme.example/token"
token_auth_method = "none"
[providers.acme-sa.params]
subject = { description = "The user to act as", format = "email", pattern = ".*@acme[.]example" }
""",
        encoding="utf-8",
    )
    provider = load_catalog(path)["acme-sa"]
    assert provider.check_params({"subject": "ada@acme.example"}) == {"subject": "ada@acme.example"}
    with pytest.raises(ValueError, match="does not fit"):
        provider.check_params({"subject": "ada@example.com"})
    bad_format = path.read_text(encoding="utf-8").replace('"email"', '"phone"')
    path.write_text(bad_format, encoding="utf-8")
    with pytest.raises(CatalogError, match=re.escape("params.subject.format")):
        load_catalog(path)
