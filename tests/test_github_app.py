"""GitHub App installations (auth mode `github_app`, SPEC §7) and GitHub App user tokens.

The team stores its App (id, slug, private key); Connect sends the person to the App's install
page, bound to the flow like an OAuth consent (state, Continue page, binding cookie); the
setup URL's `installation_id` is checked with the App's JWT, an installation token is minted
(an hour, `expires_at` in the answer) and minted again before it expires. The emulated GitHub
checks the JWT's RS256 signature against the public key the test registered, `iss`, `exp`
and `iat`. A made-up or foreign installation id, or a JWT GitHub refuses, stores nothing.
GitHub App user tokens are OAuth 2 with 8-hour tokens and rotating 6-month refresh tokens."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

from apiauth.domain import sites
from apiauth.domain.members import create_member, create_personal_token
from apiauth.domain.oauth_apps import set_oauth_app
from apiauth.domain.token_store import open_token, refresh_margin
from apiauth.errors import InvalidInput
from apiauth.oauth.github_app import app_jwt
from apiauth.oauth.protocol import ClientCredentials
from apiauth.store.models import Connection
from tests.consent import consent, provider_url_of
from tests.in_process import InProcessServer

pytestmark = pytest.mark.fast

PROVIDER = "github-app"
APP_ID = "424242"
SLUG = "apiauth-demo-app"
SITE = "app-site"


def app_key() -> tuple[str, dict[str, Any]]:
    """A GitHub App's private key (PEM, as GitHub's download) and its public JWK."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return pem, RSAKey.import_key(pem).as_dict(private=False)


def register_app(
    http: httpx.Client,
    app: InProcessServer,
    public: dict[str, Any],
    *,
    app_id: str = APP_ID,
    slug: str = SLUG,
) -> None:
    """What the App's owner does on GitHub: register it with its key and setup URL."""
    answer = http.post(
        f"{app.url}/_emulator/_admin/github-apps",
        json={
            "provider": PROVIDER,
            "app_id": app_id,
            "slug": slug,
            "jwk": public,
            "setup_url": f"{app.url}/oauth/callback",
            "account": {"login": "octo-org", "type": "Organization"},
        },
    )
    assert answer.status_code == 200, answer.text


class Site:
    def __init__(self, app: InProcessServer, http: httpx.Client) -> None:
        self.app, self.http = app, http
        self.owner = create_member(app.broker, "owner@example.com", "correct horse battery")
        self.pat = {"Authorization": f"Bearer {create_personal_token(app.broker, self.owner, 's')}"}
        sites.create_site(app.broker, self.owner, SITE)
        self.token = sites.enable_api_auth(app.broker, self.owner, SITE)
        self.site_auth = {"Authorization": f"Bearer {self.token}"}

    def start(self, provider: str = PROVIDER) -> str:
        started = self.http.post(
            f"{self.app.url}/api/v1/sites/{SITE}/connections",
            json={"provider": provider},
            headers=self.pat,
        )
        assert started.status_code == 200, started.text
        url: str = started.json()["authorize_url"]
        return url

    def install(self, *, installation_id: str | None = None) -> httpx.Response:
        """Connect, press Continue, install the App; the setup URL's answer (apiauth's
        callback). `installation_id` replaces GitHub's, as someone crafting the URL would."""
        install_page = provider_url_of(self.http, self.start())
        back = self.http.get(install_page)
        assert back.status_code == 302, back.text
        location = back.headers["location"]
        if installation_id is not None:
            parts = urlsplit(location)
            query = dict(parse_qsl(parts.query))
            query["installation_id"] = installation_id
            location = parts._replace(query=urlencode(query)).geturl()
        return self.http.get(location, headers={"Accept": "application/json"})

    def secrets(self) -> dict[str, Any]:
        answer = self.http.get(f"{self.app.url}/api/v1/secrets", headers=self.site_auth)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def connections(self) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.app.url}/api/v1/sites/{SITE}/connections", headers=self.pat)
        listed: list[dict[str, Any]] = answer.json()
        return listed

    def advance(self, seconds: float) -> None:
        """Time passes for the broker and for GitHub alike (the JWT's iat and exp are
        checked against GitHub's clock)."""
        self.app.clock.advance(seconds)
        moved = self.http.post(
            f"{self.app.url}/_emulator/_admin/clock", json={"advance_seconds": seconds}
        )
        assert moved.status_code == 200

    def stats(self, provider: str = PROVIDER) -> dict[str, int]:
        found: dict[str, int] = self.http.get(f"{self.app.url}/_emulator/_admin/stats").json()[
            provider
        ]
        return found


@pytest.fixture
def site(app: InProcessServer, http: httpx.Client) -> Site:
    return Site(app, http)


def installed(site: Site) -> tuple[str, httpx.Response]:
    pem, public = app_key()
    register_app(site.http, site.app, public)
    set_oauth_app(site.app.broker, site.owner, PROVIDER, APP_ID, pem, SLUG)
    return pem, site.install()


def test_installing_the_app_connects_the_site_with_an_installation_token(site: Site) -> None:
    pem, done = installed(site)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "connected"
    assert done.json()["account"]["login"] == "octo-org"
    secret = site.secrets()[PROVIDER]
    assert secret["auth_mode"] == "github_app"
    assert secret["bearer_token"].startswith("ghs_")
    assert secret["extra"]["account_login"] == "octo-org"
    assert secret["extra"]["account_type"] == "Organization"
    assert secret["extra"]["installation_id"].isdigit()
    assert secret["granted_scopes"] == ["contents:read", "metadata:read"]
    expires = datetime.fromisoformat(secret["expires_at"])
    assert timedelta(minutes=59) < expires - site.app.clock() <= timedelta(hours=1, seconds=5)
    # The proxy sends the installation token, which the emulated API accepts.
    repos = site.http.get(
        f"{site.app.url}/api/v1/proxy/{PROVIDER}/installation/repositories",
        headers=site.site_auth,
    )
    assert repos.status_code == 200, repos.text
    assert repos.json()["repository_selection"] == "all"
    assert site.stats()["api_calls"] == 1
    assert pem.splitlines()[1] not in done.text + json.dumps(site.secrets())


def test_the_app_jwt_is_rs256_issued_a_minute_ago_and_expires_within_ten_minutes(
    site: Site,
) -> None:
    pem, public = app_key()
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    provider = site.app.broker.catalog[PROVIDER]
    token = app_jwt(provider, ClientCredentials(APP_ID, pem, SLUG), now)
    decoded = jwt.decode(token, RSAKey.import_key(public), algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    claims = decoded.claims
    assert claims["iss"] == APP_ID
    assert claims["iat"] == int(now.timestamp()) - 60
    assert 0 < claims["exp"] - int(now.timestamp()) <= 600


def test_an_installation_token_is_minted_again_before_it_expires(site: Site) -> None:
    _pem, done = installed(site)
    assert done.status_code == 200, done.text
    first = site.secrets()[PROVIDER]
    expires = datetime.fromisoformat(first["expires_at"])
    broker = site.app.broker
    with broker.sessions() as db:
        due = db.scalar(select(Connection.refresh_due_at).where(Connection.provider == PROVIDER))
    assert due is not None
    margin = refresh_margin(broker, expires - site.app.clock())
    # The shared schedule: the margin before expiry, less at most a minute of jitter.
    assert expires - margin - timedelta(seconds=61) <= due.replace(tzinfo=UTC) <= expires - margin
    site.advance(3600 - broker.settings.refresh_margin_seconds + 1)
    second = site.secrets()[PROVIDER]
    assert second["bearer_token"] != first["bearer_token"]
    assert second["bearer_token"].startswith("ghs_")
    assert second["extra"]["installation_id"] == first["extra"]["installation_id"]
    assert datetime.fromisoformat(second["expires_at"]) > expires
    assert site.stats()["client_tokens"] == 2


@pytest.mark.parametrize("made_up", ["999999999", "../../user", "12abc", ""])
def test_a_made_up_installation_id_is_refused_and_nothing_is_stored(
    site: Site, made_up: str
) -> None:
    pem, public = app_key()
    register_app(site.http, site.app, public)
    set_oauth_app(site.app.broker, site.owner, PROVIDER, APP_ID, pem, SLUG)
    refused = site.install(installation_id=made_up)
    assert refused.status_code == 400, refused.text
    assert "installation" in refused.json()["error"]["message"]
    assert site.connections() == []
    assert PROVIDER not in site.secrets()


def test_an_installation_of_another_app_is_refused(site: Site) -> None:
    pem, public = app_key()
    _other_pem, other_public = app_key()
    register_app(site.http, site.app, public)
    register_app(site.http, site.app, other_public, app_id="777", slug="someone-elses-app")
    # Someone installs their own App and hands its installation id to this flow.
    theirs = site.http.get(
        f"{site.app.url}/_emulator/{PROVIDER}/github.com/apps/someone-elses-app/installations/new"
    )
    foreign = dict(parse_qsl(urlsplit(theirs.headers["location"]).query))["installation_id"]
    set_oauth_app(site.app.broker, site.owner, PROVIDER, APP_ID, pem, SLUG)
    refused = site.install(installation_id=foreign)
    assert refused.status_code == 400, refused.text
    assert f"installation {foreign} of this App was not found" in refused.text
    assert site.connections() == []


def test_a_jwt_github_cannot_verify_is_refused_with_its_message(site: Site) -> None:
    pem, _public = app_key()
    _other, other_public = app_key()
    register_app(site.http, site.app, other_public)  # the App's key was rotated on GitHub
    set_oauth_app(site.app.broker, site.owner, PROVIDER, APP_ID, pem, SLUG)
    refused = site.install()
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "refused the App's JWT" in message
    assert "A JSON web token could not be decoded" in message
    assert site.connections() == []


def test_the_emulated_github_refuses_a_jwt_that_lives_too_long(site: Site) -> None:
    pem, public = app_key()
    register_app(site.http, site.app, public)
    now = int(site.app.clock().timestamp())
    key = RSAKey.import_key(pem)
    long_lived = jwt.encode({"alg": "RS256"}, {"iat": now, "exp": now + 3600, "iss": APP_ID}, key)
    answer = site.http.get(
        f"{site.app.url}/_emulator/{PROVIDER}/api.github.com/app/installations/1",
        headers={"Authorization": f"Bearer {long_lived}"},
    )
    assert answer.status_code == 401
    assert answer.json()["message"] == "'Expiration time' claim ('exp') is too far in the future"


def test_disconnecting_revokes_the_installation_token(site: Site) -> None:
    _pem, done = installed(site)
    assert done.status_code == 200, done.text
    token = site.secrets()[PROVIDER]["bearer_token"]
    gone = site.http.delete(
        f"{site.app.url}/api/v1/sites/{SITE}/connections/{PROVIDER}", headers=site.pat
    )
    assert gone.status_code == 200, gone.text
    assert site.stats()["revocations"] == 1
    api = site.http.get(
        f"{site.app.url}/_emulator/{PROVIDER}/api.github.com/installation/repositories",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert api.status_code == 401
    assert api.json()["message"] == "Bad credentials"


def test_a_suspended_installation_needs_the_app_installed_again(site: Site) -> None:
    _pem, done = installed(site)
    assert done.status_code == 200, done.text
    installation = site.secrets()[PROVIDER]["extra"]["installation_id"]
    suspended = site.http.post(
        f"{site.app.url}/_emulator/_admin/github-apps",
        json={"suspend_installation": int(installation)},
    )
    assert suspended.status_code == 200
    site.advance(3600)
    refused = site.http.post(
        f"{site.app.url}/api/v1/sites/{SITE}/connections/{PROVIDER}/refresh", headers=site.pat
    )
    assert refused.json()["status"] == "needs_reauth", refused.text
    assert "install the App again" in refused.json()["last_error"]
    assert site.connections()[0]["status"] == "needs_reauth"
    assert site.secrets()[PROVIDER]["is_logged_in"] is False


def test_an_app_without_a_slug_or_with_a_bad_key_is_refused(site: Site) -> None:
    pem, _public = app_key()
    broker = site.app.broker
    with pytest.raises(InvalidInput, match="slug"):
        set_oauth_app(broker, site.owner, PROVIDER, APP_ID, pem, None)
    with pytest.raises(InvalidInput, match="slug"):
        set_oauth_app(broker, site.owner, PROVIDER, APP_ID, pem, "Bad/Slug")
    with pytest.raises(InvalidInput, match="not an unencrypted PEM"):
        set_oauth_app(broker, site.owner, PROVIDER, APP_ID, "not a key", SLUG)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(InvalidInput, match="RSA"):
        set_oauth_app(broker, site.owner, PROVIDER, APP_ID, ec_pem, SLUG)
    # Without the team's App, Connect says what to set.
    refused = site.http.post(
        f"{site.app.url}/api/v1/sites/{SITE}/connections",
        json={"provider": PROVIDER},
        headers=site.pat,
    )
    assert refused.status_code == 422, refused.text
    assert "apps set github-app --app-id ID --slug SLUG --private-key-file" in refused.text


# --- GitHub App user access tokens ----------------------------------------------------------

USER_PROVIDER = "github-app-user"


def test_app_user_tokens_last_eight_hours_and_rotate_their_refresh_token(site: Site) -> None:
    done = consent(site.http, site.start(USER_PROVIDER))
    assert done.status_code == 200, done.text
    first = site.secrets()[USER_PROVIDER]
    assert first["auth_mode"] == "oauth2"
    assert first["bearer_token"].startswith("ghu_")
    now = site.app.clock()
    expires = datetime.fromisoformat(first["expires_at"])
    assert timedelta(hours=8) - timedelta(seconds=5) <= expires - now <= timedelta(hours=8)
    connection = site.connections()[0]
    refresh_dies = datetime.fromisoformat(connection["refresh_expires_at"])
    assert abs(refresh_dies - (now + timedelta(seconds=15_897_600))) < timedelta(seconds=5)

    broker = site.app.broker
    with broker.sessions() as db:
        row = db.scalar(select(Connection).where(Connection.provider == USER_PROVIDER))
        assert row is not None
        stored = open_token(broker, row)
    assert stored is not None
    assert stored.refresh_token is not None
    spent = stored.refresh_token

    site.advance(8 * 3600 - broker.settings.refresh_margin_seconds + 1)
    second = site.secrets()[USER_PROVIDER]
    assert second["bearer_token"] != first["bearer_token"]
    assert site.stats(USER_PROVIDER)["refreshes"] == 1
    with broker.sessions() as db:
        row = db.scalar(select(Connection).where(Connection.provider == USER_PROVIDER))
        assert row is not None
        rotated = open_token(broker, row)
    assert rotated is not None
    assert rotated.refresh_token not in (None, spent)
    # The spent refresh token is refused as GitHub refuses it.
    demo_app = broker.default_apps[USER_PROVIDER]
    again = site.http.post(
        f"{site.app.url}/_emulator/{USER_PROVIDER}/github.com/login/oauth/access_token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": spent,
            "client_id": demo_app.client_id,
            "client_secret": demo_app.client_secret or "",
        },
        headers={"Accept": "application/json"},
    )
    assert again.json()["error"] == "bad_refresh_token"
    assert site.stats(USER_PROVIDER)["refresh_token_reuse"] == 1


def sign_in(site: Site) -> None:
    http, url = site.http, site.app.url
    page = http.get(f"{url}/sign-in").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    done = http.post(
        f"{url}/sign-in",
        data={
            "email": "owner@example.com",
            "password": "correct horse battery",
            "csrf_token": csrf[1],
        },
    )
    assert done.status_code == 303, done.text[:300]


def test_connect_on_the_dashboard_installs_the_app_and_comes_back_to_the_site(
    site: Site,
) -> None:
    pem, public = app_key()
    register_app(site.http, site.app, public)
    set_oauth_app(site.app.broker, site.owner, PROVIDER, APP_ID, pem, SLUG)
    sign_in(site)
    http, url = site.http, site.app.url
    page = http.get(f"{url}/sites/{SITE}/api-auth").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    pressed = http.post(
        f"{url}/sites/{SITE}/connections", data={"provider": PROVIDER, "csrf_token": csrf[1]}
    )
    assert pressed.status_code == 303, pressed.text[:300]
    assert f"/github.com/apps/{SLUG}/installations/new?state=" in pressed.headers["location"]
    setup = http.get(pressed.headers["location"])
    assert setup.status_code == 302
    back = http.get(setup.headers["location"])
    assert back.status_code == 303, back.text[:300]
    assert back.headers["location"] == f"/sites/{SITE}/api-auth?connected={PROVIDER}"
    shown = http.get(url + back.headers["location"]).text
    assert "octo-org" in shown
    assert site.secrets()[PROVIDER]["bearer_token"] not in shown


def test_the_team_page_takes_a_github_app_with_its_key_in_a_write_only_textarea(
    site: Site,
) -> None:
    http, url = site.http, site.app.url
    sign_in(site)
    page = http.get(f"{url}/team/oauth-apps").text
    item = page[page.index('id="app-github-app"') :]
    item = item[: item.index("</li>")]
    assert '<textarea id="client-secret-github-app" name="client_secret"' in item
    assert 'name="app_slug"' in item
    assert "App id" in item
    form_csrf = re.search(r'name="csrf_token" value="([^"]+)"', item)
    assert form_csrf is not None
    pem, public = app_key()
    saved = http.post(
        f"{url}/team/oauth-apps/{PROVIDER}",
        data={
            "client_id": APP_ID,
            "app_slug": SLUG,
            "client_secret": pem.replace("\n", "\r\n"),  # as a browser sends a textarea
            "csrf_token": form_csrf[1],
        },
    )
    assert saved.status_code == 303, saved.text[:300]
    again = http.get(f"{url}/team/oauth-apps").text
    assert "is saved" in again
    assert f'value="{SLUG}"' in again
    assert not any(line in again for line in pem.splitlines()[1:-1])
    register_app(http, site.app, public)
    installed_now = site.install()
    assert installed_now.status_code == 200, installed_now.text


def test_github_failing_while_a_token_is_renewed_leaves_the_current_one_serving(
    site: Site,
) -> None:
    _pem, done = installed(site)
    assert done.status_code == 200, done.text
    first = site.secrets()[PROVIDER]
    fault = site.http.post(
        f"{site.app.url}/_emulator/_admin/faults",
        json={"provider": PROVIDER, "endpoint": "token", "status": 503, "times": 1},
    )
    assert fault.status_code == 200, fault.text
    failed = site.http.post(
        f"{site.app.url}/api/v1/sites/{SITE}/connections/{PROVIDER}/refresh", headers=site.pat
    )
    assert failed.json()["status"] == "connected", failed.text
    assert "right now (HTTP 503" in failed.json()["last_error"]
    still = site.secrets()[PROVIDER]
    assert still["is_logged_in"] is True
    assert still["bearer_token"] == first["bearer_token"]
    assert site.stats()["faults_served"] == 1
