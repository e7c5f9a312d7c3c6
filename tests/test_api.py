"""The REST API, against the in-process server whose providers are emulated: every
endpoint's success and error cases. Never a 500."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import update

from apiauth.domain import sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.store.db import transaction
from apiauth.store.models import AuthState
from tests.consent import consent, provider_url_of
from tests.servers import HookReceiver, LiveServer

pytestmark = pytest.mark.fast

PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful")
SECRET_KEYS = {
    "provider",
    "bearer_token",
    "token_type",
    "granted_scopes",
    "is_logged_in",
    "expires_at",
    "account",
    "extra",
    # SPEC §7: every entry names its auth mode; key-based credentials have fields of their own.
    "auth_mode",
    "api_key",
    "username",
    "password",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def pat(broker: Broker, owner: MemberView) -> dict[str, str]:
    return bearer(create_personal_token(broker, owner, "tests"))


@pytest.fixture
def api(live: LiveServer, http: httpx.Client) -> str:
    return live.url + "/api/v1"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["message"]
    if code:
        assert body["code"] == code
    return body


def connect(http: httpx.Client, api: str, pat: dict[str, str], provider: str, **body: Any) -> Any:
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": provider, **body}, headers=pat
    )
    assert started.status_code == 200, started.text
    done = consent(http, started.json()["authorize_url"])
    assert done.status_code == 200, done.text
    return done.json()


@pytest.fixture
def site_token(http: httpx.Client, api: str, pat: dict[str, str]) -> str:
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    enabled = http.post(f"{api}/sites/my-site/api-auth", headers=pat)
    assert enabled.status_code == 200
    token: str = enabled.json()["token"]
    return token


def test_health_and_readiness_answer(live: LiveServer, http: httpx.Client) -> None:
    assert http.get(live.url + "/healthz").json() == {"status": "ok"}
    assert http.get(live.url + "/readyz").json() == {"status": "ok"}


def test_openapi_lists_every_endpoint(live: LiveServer, http: httpx.Client) -> None:
    paths = http.get(live.url + "/openapi.json").json()["paths"]
    for path in (
        "/api/v1/providers",
        "/api/v1/sites",
        "/api/v1/sites/{site}",
        "/api/v1/sites/{site}/api-auth",
        "/api/v1/sites/{site}/api-auth/rotate",
        "/api/v1/sites/{site}/connections",
        "/api/v1/sites/{site}/connections/{provider}",
        "/api/v1/secrets",
        "/oauth/callback",
        "/healthz",
        "/readyz",
    ):
        assert path in paths


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/providers"),
        ("GET", "/sites"),
        ("POST", "/sites"),
        ("GET", "/sites/my-site"),
        ("PATCH", "/sites/my-site"),
        ("DELETE", "/sites/my-site"),
        ("POST", "/sites/my-site/api-auth"),
        ("POST", "/sites/my-site/api-auth/rotate"),
        ("GET", "/sites/my-site/connections"),
        ("POST", "/sites/my-site/connections"),
        ("GET", "/sites/my-site/connections/github"),
        ("DELETE", "/sites/my-site/connections/github"),
        ("GET", "/secrets"),
    ],
)
def test_every_endpoint_refuses_a_caller_without_a_token(
    http: httpx.Client, api: str, method: str, path: str
) -> None:
    response = http.request(method, api + path, json={} if method in ("POST", "PATCH") else None)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_management_api_refuses_malformed_and_unknown_personal_tokens(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    good = pat["Authorization"].removeprefix("Bearer ")
    for token in (
        "nonsense",
        good[:-1],  # truncated
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # checksum broken
        good.replace("apiauth_pat_", "apiauth_site_"),  # another prefix
    ):
        assert_error(http.get(f"{api}/sites", headers=bearer(token)), 401)


def test_site_token_cannot_manage_and_personal_token_cannot_read_secrets(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    assert_error(http.get(f"{api}/sites", headers=bearer(site_token)), 401)
    assert_error(http.get(f"{api}/secrets", headers=pat), 401)


def test_providers_lists_the_six_with_scopes_and_configured_apps(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    providers = {p["name"]: p for p in http.get(f"{api}/providers", headers=pat).json()}
    assert set(PROVIDERS) <= set(providers)
    github = providers["github"]
    assert github["display_name"] == "GitHub"
    assert github["configured"] is True
    assert any(s["name"] == "repo" for s in github["scopes"])
    assert any(s["default"] for s in github["scopes"])


def test_site_lifecycle_create_read_update_delete(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    created = http.post(
        f"{api}/sites",
        json={"name": "my-site", "deploy_hook_url": "http://127.0.0.1:9/hook"},
        headers=pat,
    )
    assert created.status_code == 201
    assert created.json()["api_auth_enabled"] is False
    assert [s["name"] for s in http.get(f"{api}/sites", headers=pat).json()] == ["my-site"]
    patched = http.patch(
        f"{api}/sites/my-site", json={"webhook_url": "https://example.com/hook"}, headers=pat
    )
    assert patched.json()["webhook_url"] == "https://example.com/hook"
    assert patched.json()["deploy_hook_url"] == "http://127.0.0.1:9/hook"
    assert http.delete(f"{api}/sites/my-site", headers=pat).status_code == 204
    assert_error(http.get(f"{api}/sites/my-site", headers=pat), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"name": "My Site"}, 422),
        ({"name": "-dash"}, 422),
        ({"name": "../etc"}, 422),
        ({"name": "a" * 64}, 422),
        ({"name": "ok", "unknown": 1}, 422),
        ({}, 422),
        ({"name": "ok", "deploy_hook_url": "ftp://x"}, 422),
        ({"name": "sité"}, 422),
    ],
)
def test_bad_site_input_is_a_clear_422(
    http: httpx.Client, api: str, pat: dict[str, str], body: dict[str, Any], status: int
) -> None:
    assert_error(http.post(f"{api}/sites", json=body, headers=pat), status)
    assert http.get(f"{api}/sites", headers=pat).json() == []


def test_malformed_json_is_a_422_not_a_500(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    response = http.post(
        f"{api}/sites", content=b"{not json", headers={**pat, "Content-Type": "application/json"}
    )
    assert_error(response, 422)


def test_duplicate_site_is_a_409(http: httpx.Client, api: str, pat: dict[str, str]) -> None:
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    assert_error(http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat), 409)


def test_member_of_another_team_cannot_see_the_site(
    http: httpx.Client, api: str, broker: Broker, pat: dict[str, str], site_token: str
) -> None:
    stranger = create_member(broker, "other@example.com", "another password", team_name="other")
    theirs = bearer(create_personal_token(broker, stranger, "theirs"))
    assert http.get(f"{api}/sites", headers=theirs).json() == []
    assert_error(http.get(f"{api}/sites/my-site", headers=theirs), 404)
    assert_error(http.post(f"{api}/sites/my-site/api-auth/rotate", headers=theirs), 404)
    assert_error(
        http.post(f"{api}/sites/my-site/connections", json={"provider": "github"}, headers=theirs),
        404,
    )


def test_enable_returns_the_token_once_and_rotation_revokes_the_old_one(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    assert site_token.startswith("apiauth_site_")
    assert http.get(f"{api}/secrets", headers=bearer(site_token)).json() == {}
    rotated = http.post(f"{api}/sites/my-site/api-auth/rotate", headers=pat)
    assert rotated.json()["env_var"] == "APIAUTH_TOKEN"
    new_token = rotated.json()["token"]
    assert_error(http.get(f"{api}/secrets", headers=bearer(site_token)), 401)
    assert http.get(f"{api}/secrets", headers=bearer(new_token)).status_code == 200
    assert site_token not in http.get(f"{api}/sites/my-site", headers=pat).text


def test_disabling_api_auth_revokes_the_site_token(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    assert http.delete(f"{api}/sites/my-site/api-auth", headers=pat).status_code == 204
    assert_error(http.get(f"{api}/secrets", headers=bearer(site_token)), 401)
    assert_error(http.post(f"{api}/sites/my-site/api-auth/rotate", headers=pat), 409)


def test_connection_start_carries_state_and_pkce(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    started = http.post(
        f"{api}/sites/my-site/connections",
        json={"provider": "github", "scopes": ["repo", "read:user"]},
        headers=pat,
    ).json()
    # Started from the API: the link opens apiauth's Continue page, which binds the browser
    # and goes on to the provider.
    assert started["authorize_url"].startswith(api.removesuffix("/api/v1") + "/oauth/continue/")
    query = parse_qs(urlsplit(provider_url_of(http, started["authorize_url"])).query)
    assert query["scope"] == ["repo read:user"]
    assert query["redirect_uri"] == [api.removesuffix("/api/v1") + "/oauth/callback"]
    assert len(query["state"][0]) >= 32
    assert query["code_challenge_method"] == ["S256"]
    salesforce = http.post(
        f"{api}/sites/my-site/connections", json={"provider": "salesforce"}, headers=pat
    ).json()
    salesforce_url = provider_url_of(http, salesforce["authorize_url"])
    assert parse_qs(urlsplit(salesforce_url).query)["prompt"] == ["consent"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"provider": "nosuch"}, 404),
        ({"provider": "github", "scopes": ["has space"]}, 422),
        ({"provider": "github", "scopes": ["s"] * 101}, 422),
        ({"provider": "github", "scopes": "repo"}, 422),
        ({}, 422),
    ],
)
def test_bad_connection_requests_are_clear_4xx(
    http: httpx.Client,
    api: str,
    pat: dict[str, str],
    site_token: str,
    body: dict[str, Any],
    status: int,
) -> None:
    assert_error(http.post(f"{api}/sites/my-site/connections", json=body, headers=pat), status)


def test_connecting_to_an_unknown_site_is_a_404(
    http: httpx.Client, api: str, pat: dict[str, str]
) -> None:
    response = http.post(f"{api}/sites/nope/connections", json={"provider": "github"}, headers=pat)
    assert_error(response, 404)


def test_all_six_providers_connect_and_their_tokens_work_at_the_provider(
    live: LiveServer, http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    for provider in PROVIDERS:
        done = connect(http, api, pat, provider)
        assert done["status"] == "connected"
        assert done["account"]["login"]
    secrets = http.get(f"{api}/secrets", headers=bearer(site_token)).json()
    assert set(secrets) == set(PROVIDERS)
    for name, secret in secrets.items():
        assert set(secret) == SECRET_KEYS
        assert secret["is_logged_in"] is True
        provider = live.broker.catalog[name]
        assert provider.userinfo_url is not None
        url = provider.userinfo_url.replace(
            "{instance_url}", secret["extra"].get("instance_url", "")
        )
        me = http.get(url, headers=bearer(secret["bearer_token"]))
        assert me.status_code == 200, f"{name} who-am-I refused the token"
    assert secrets["salesforce"]["extra"]["instance_url"].startswith(live.url)
    assert secrets["stripe"]["extra"]["stripe_user_id"].startswith("acct_")
    assert secrets["github"]["expires_at"] is None
    assert secrets["box"]["expires_at"] is not None


def test_github_grants_what_was_asked_and_reports_it_comma_separated(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    connect(http, api, pat, "github", scopes=["repo", "read:user"])
    connection = http.get(f"{api}/sites/my-site/connections/github", headers=pat).json()
    assert connection["requested_scopes"] == ["repo", "read:user"]
    assert connection["granted_scopes"] == ["repo", "read:user"]
    assert connection["account"] == {"id": "583231", "login": "octocat"}
    assert connection["status"] == "connected"
    assert "token" not in str(connection).replace("bearer_token", "")


def test_a_scope_unticked_at_consent_shows_as_requested_but_not_granted(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    started = http.post(
        f"{api}/sites/my-site/connections",
        json={"provider": "spotify", "scopes": ["user-read-email", "user-top-read"]},
        headers=pat,
    ).json()
    consent(http, started["authorize_url"], untick={"user-top-read"})
    connection = http.get(f"{api}/sites/my-site/connections/spotify", headers=pat).json()
    assert connection["requested_scopes"] == ["user-read-email", "user-top-read"]
    assert connection["granted_scopes"] == ["user-read-email"]


def test_connection_list_and_disconnect_revokes_at_the_provider(
    live: LiveServer, http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    connect(http, api, pat, "box")
    token = http.get(f"{api}/secrets", headers=bearer(site_token)).json()["box"]["bearer_token"]
    assert [
        c["provider"] for c in http.get(f"{api}/sites/my-site/connections", headers=pat).json()
    ] == ["box"]
    deleted = http.delete(f"{api}/sites/my-site/connections/box", headers=pat)
    assert deleted.json() == {"provider": "box", "deleted": True, "revoked_at_provider": True}
    userinfo = live.broker.catalog["box"].userinfo_url
    assert userinfo is not None
    assert http.get(userinfo, headers=bearer(token)).status_code == 401
    assert http.get(f"{api}/secrets", headers=bearer(site_token)).json() == {}
    assert_error(http.get(f"{api}/sites/my-site/connections/box", headers=pat), 404)
    assert_error(http.delete(f"{api}/sites/my-site/connections/box", headers=pat), 404)


def test_denied_consent_is_a_clear_error_and_stores_nothing(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": "github"}, headers=pat
    ).json()
    denied = consent(http, started["authorize_url"], button="Deny")
    assert "denied" in assert_error(denied, 400, "oauth_error")["message"]
    assert http.get(f"{api}/sites/my-site/connections", headers=pat).json() == []


def _callback_of(http: httpx.Client, authorize_url: str) -> str:
    """Consent, but stop before following the provider's redirect back to apiauth."""
    authorize_url = provider_url_of(http, authorize_url)
    page = http.get(authorize_url)
    query = parse_qs(urlsplit(authorize_url).query)
    form = {k: v[0] for k, v in query.items()}
    form["decision"] = "authorize"
    answer = http.post(str(page.url), data={**form, "scope": query.get("scope", [""])[0].split()})
    location: str = answer.headers["location"]
    return location


def test_a_replayed_callback_is_refused_and_changes_nothing(
    http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": "github"}, headers=pat
    ).json()
    callback = _callback_of(http, started["authorize_url"])
    assert http.get(callback).status_code == 200
    replay = http.get(callback)
    assert "used already" in assert_error(replay, 400, "oauth_error")["message"]


def test_an_expired_state_is_refused(
    broker: Broker, http: httpx.Client, api: str, pat: dict[str, str], site_token: str
) -> None:
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": "github"}, headers=pat
    ).json()
    callback = _callback_of(http, started["authorize_url"])
    with transaction(broker.sessions) as db:
        db.execute(update(AuthState).values(expires_at=broker.clock() - timedelta(seconds=1)))
    assert "expired" in assert_error(http.get(callback), 400)["message"]
    assert http.get(f"{api}/sites/my-site/connections", headers=pat).json() == []


@pytest.mark.parametrize(
    "query",
    ["", "?code=abc", "?state=made-up&code=abc", "?state=made-up&error=access_denied"],
)
def test_callback_without_a_known_state_is_a_400(
    live: LiveServer, http: httpx.Client, query: str
) -> None:
    assert_error(http.get(f"{live.url}/oauth/callback{query}"), 400, "oauth_error")


def test_callback_explains_failures_on_a_page_for_browsers(
    live: LiveServer, http: httpx.Client
) -> None:
    page = http.get(f"{live.url}/oauth/callback?state=x", headers={"Accept": "text/html"})
    assert page.status_code == 400
    assert "Connection failed" in page.text
    assert "start the connection again" in page.text


def test_secrets_refuse_bad_tokens_with_one_answer(
    http: httpx.Client, api: str, site_token: str
) -> None:
    answers = set()
    for token in (
        "x",
        "apiauth_site_",
        site_token[:-2],
        site_token[:-1] + ("A" if site_token[-1] != "A" else "B"),
        site_token.replace("apiauth_site_", "apiauth_fn_"),
        site_token.replace("apiauth_site_", "apiauth_pat_"),
    ):
        response = http.get(f"{api}/secrets", headers={"Authorization": f"Bearer {token}"})
        body = assert_error(response, 401)
        answers.add(body["message"])
    assert len(answers) <= 2  # "no token" and "not a valid token"


def test_unknown_paths_and_methods_are_json_4xx(
    live: LiveServer, http: httpx.Client, api: str
) -> None:
    assert_error(http.get(f"{api}/nothing-here"), 404)
    assert_error(http.put(f"{api}/secrets"), 405)


def test_enabling_fires_the_deploy_hook(
    broker: Broker, owner: MemberView, hook_receiver: HookReceiver
) -> None:
    sites.create_site(broker, owner, "hooked", deploy_hook_url=hook_receiver.url)
    sites.enable_api_auth(broker, owner, "hooked")
    posts = hook_receiver.wait_for(1)
    assert posts[0] == {
        "event": "api_auth.enabled",
        "site": "hooked",
        "created_at": posts[0]["created_at"],
        "detail": {},
    }
