"""The provider emulator over real HTTP: each provider's flow and quirks, as a client meets them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
import uvicorn
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from starlette.applications import Starlette
from starlette.routing import Mount

from apiauth.emulator import create_emulator_app
from apiauth.providers import Catalog, Provider, demo_client, load_catalog

pytestmark = pytest.mark.fast

BUILTINS = ["github", "salesforce", "spotify", "stripe", "box", "contentful"]
REDIRECT_URI = "http://127.0.0.1:8000/oauth/callback"

ACME = """
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
token_auth_method = "client_secret_basic"
pkce = true
access_token_lifetime = 600
scopes = [{ name = "read", description = "Read <your> data", default = true }]
userinfo_url = "https://api.acme.example/me"
revoke_url = "https://auth.acme.example/revoke"
emulate = true
"""


@dataclass
class Emulator:
    url: str
    catalog: Catalog

    def __getitem__(self, name: str) -> Provider:
        return self.catalog[name]

    def stats(self, provider: str) -> dict[str, int]:
        stats: dict[str, dict[str, int]] = httpx.get(f"{self.url}/_admin/stats").json()
        return stats[provider]


@pytest.fixture(scope="module")
def providers_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("emulator") / "providers.toml"
    path.write_text(ACME, encoding="utf-8")
    return path


def serve(
    providers_file: Path,
    token_ttl: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Emulator]:
    """Run the emulator mounted at /_emulator, as `serve --demo` does, on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/_emulator"
    catalog = load_catalog(providers_file, emulator_url=url)
    clients = {name: demo_client(name) for name in catalog}
    app = create_emulator_app(
        catalog, base_url=url, clients=clients, token_ttl=token_ttl, clock=clock
    )
    config = uvicorn.Config(Starlette(routes=[Mount("/_emulator", app=app)]), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the emulator did not start"
        time.sleep(0.01)
    try:
        yield Emulator(url, catalog)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def emulator_server(providers_file: Path) -> Iterator[Emulator]:
    yield from serve(providers_file)


@pytest.fixture
def emulator(emulator_server: Emulator) -> Emulator:
    httpx.post(f"{emulator_server.url}/_admin/reset").raise_for_status()
    return emulator_server


# --- a client, as apiauth's server will be --------------------------------------------


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.title = ""
        self.fields: list[tuple[str, str]] = []
        self.buttons: list[tuple[str, str]] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action")
        elif tag == "title":
            self._in_title = True
        elif tag == "input" and (a.get("type") == "hidden" or "checked" in a):
            self.fields.append((a["name"], a["value"]))
        elif tag == "button":
            self.buttons.append((a["name"], a["value"]))

    def handle_endtag(self, tag: str) -> None:
        self._in_title = self._in_title and tag != "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def oauth_client(
    provider: Provider, *, method: str | None = None, secret: str | None = None
) -> OAuth2Client:
    client_id, client_secret = demo_client(provider.name)
    return OAuth2Client(
        client_id=client_id,
        client_secret=client_secret if secret is None else secret,
        token_endpoint_auth_method=method or provider.token_auth_method,
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256" if provider.pkce else None,
    )


@dataclass
class Consent:
    page: httpx.Response
    form: _FormParser


def open_consent(
    provider: Provider, client: OAuth2Client, verifier: str | None, scopes: list[str] | None = None
) -> Consent:
    url, _ = client.create_authorization_url(
        provider.authorization_url,
        state="state-123",
        code_verifier=verifier,
        scope=provider.scope_separator.join(scopes or provider.default_scopes),
        **provider.authorize_params,
    )
    page = httpx.get(url)
    form = _FormParser()
    form.feed(page.text)
    return Consent(page, form)


def decide(
    consent: Consent, decision: str = "authorize", untick: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Submit the consent form; the query the provider redirects back with."""
    assert consent.form.action is not None
    fields = [(k, v) for k, v in consent.form.fields if not (k == "scope" and v in untick)]
    answer = httpx.post(
        urljoin(str(consent.page.url), consent.form.action),
        data={"decision": decision, **_multi(fields)},
    )
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI)
    return parse_qs(urlsplit(location).query)


def _multi(fields: list[tuple[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in fields:
        data.setdefault(key, []).append(value)
    return data


def connect(
    provider: Provider, *, scopes: list[str] | None = None, untick: tuple[str, ...] = ()
) -> tuple[OAuth2Client, dict[str, Any]]:
    """The whole authorization-code flow; the client and the token answer."""
    client = oauth_client(provider)
    verifier = "v" * 20 + "-verifier-of-at-least-43-characters" if provider.pkce else None
    consent = open_consent(provider, client, verifier, scopes)
    assert consent.page.status_code == 200, consent.page.text
    code = decide(consent, untick=untick)["code"][0]
    token = client.fetch_token(provider.token_url, code=code, code_verifier=verifier)
    return client, dict(token)


def refresh_on_the_wire(provider: Provider, refresh_token: str) -> dict[str, Any]:
    """A refresh with plain httpx: Authlib fills in a missing refresh_token from the old one."""
    client_id, client_secret = demo_client(provider.name)
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.token_auth_method == "client_secret_basic":
        answer = httpx.post(provider.token_url, data=form, auth=(client_id, client_secret))
    else:
        form |= {"client_id": client_id, "client_secret": client_secret}
        answer = httpx.post(provider.token_url, data=form)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def whoami(provider: Provider, access_token: str, token: dict[str, Any]) -> httpx.Response:
    assert provider.userinfo_url is not None
    url = provider.userinfo_url.replace("{instance_url}", token.get("instance_url", ""))
    return httpx.get(url, headers={"Authorization": f"Bearer {access_token}"})


# --- every provider ------------------------------------------------------------------


@pytest.mark.parametrize("name", [*BUILTINS, "acme"])
def test_each_provider_runs_the_whole_flow(emulator: Emulator, name: str) -> None:
    provider = emulator[name]
    client = oauth_client(provider)
    consent = open_consent(provider, client, "x" * 43 if provider.pkce else None)
    assert consent.form.title == f"{provider.display_name} (emulated)"
    assert ("decision", "authorize") in consent.form.buttons
    assert ("decision", "deny") in consent.form.buttons
    assert [v for k, v in consent.form.fields if k == "scope"] == list(provider.default_scopes)

    _, token = connect(provider)
    assert token["access_token"]
    answer = whoami(provider, token["access_token"], token)
    assert answer.status_code == 200, answer.text
    account_id, login = provider.account_from_userinfo(answer.json())
    assert account_id
    assert login
    assert whoami(provider, "made-up-token", token).status_code == 401
    stats = emulator.stats(name)
    assert (stats["authorizations"], stats["token_exchanges"]) == (1, 1)
    assert (stats["userinfo_ok"], stats["userinfo_rejected"]) == (1, 1)


def test_github_answers_look_like_github(emulator: Emulator) -> None:
    github = emulator["github"]
    _, token = connect(github, scopes=["repo", "read:user"])
    assert token["access_token"].startswith("gho_")
    assert len(token["access_token"]) == 40
    assert token["scope"] == "repo,read:user"
    assert github.parse_granted_scopes(token["scope"], []) == ("repo", "read:user")
    me = httpx.get(
        github.userinfo_url or "", headers={"Authorization": f"token {token['access_token']}"}
    )
    assert me.json()["login"] == "octocat"
    assert me.json()["id"] == 583231
    assert me.headers["x-oauth-scopes"] == "repo, read:user"


def test_github_answers_form_encoded_without_accept_json_and_errors_with_200(
    emulator: Emulator,
) -> None:
    github = emulator["github"]
    client = oauth_client(github)
    verifier = "g" * 43
    code = decide(open_consent(github, client, verifier))["code"][0]
    client_id, client_secret = demo_client("github")
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    answer = httpx.post(github.token_url, data=form)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-www-form-urlencoded")
    fields = parse_qs(answer.text)
    assert fields["access_token"][0].startswith("gho_")
    assert fields["token_type"] == ["bearer"]

    replay = httpx.post(github.token_url, data=form)
    assert replay.status_code == 200
    assert parse_qs(replay.text)["error"] == ["bad_verification_code"]
    replay_json = httpx.post(github.token_url, data=form, headers={"Accept": "application/json"})
    assert replay_json.status_code == 200
    assert replay_json.json()["error"] == "bad_verification_code"

    with pytest.raises(OAuthError) as caught:
        client.fetch_token(github.token_url, code="nope", code_verifier=verifier)
    assert caught.value.error == "bad_verification_code"


def test_salesforce_returns_instance_url_identity_and_no_expiry(emulator: Emulator) -> None:
    salesforce = emulator["salesforce"]
    client, token = connect(salesforce)
    assert token["instance_url"] == f"{emulator.url}/salesforce/emulated.my.salesforce.com"
    assert token["id"].startswith(f"{emulator.url}/salesforce/login.salesforce.com/id/00D")
    assert {"issued_at", "signature", "refresh_token"} <= set(token)
    assert "expires_in" not in token
    assert "!" in token["access_token"]
    me = whoami(salesforce, token["access_token"], token).json()
    assert salesforce.account_from_userinfo(me) == (me["user_id"], "demo@emulated.example")

    refreshed = refresh_on_the_wire(salesforce, token["refresh_token"])
    assert "refresh_token" not in refreshed  # reusable: keep the one you have
    assert refreshed["instance_url"] == token["instance_url"]
    again = client.refresh_token(salesforce.token_url, refresh_token=token["refresh_token"])
    assert again["access_token"] != refreshed["access_token"]
    assert emulator.stats("salesforce")["refreshes"] == 2


def test_salesforce_gives_no_refresh_token_without_the_refresh_token_scope(
    emulator: Emulator,
) -> None:
    _, token = connect(emulator["salesforce"], untick=("refresh_token",))
    assert "refresh_token" not in token
    assert token["scope"] == "api"


def test_stripe_returns_its_account_fields_and_a_reusable_refresh_token(
    emulator: Emulator,
) -> None:
    stripe = emulator["stripe"]
    client, token = connect(stripe)
    assert token["stripe_user_id"].startswith("acct_")
    assert token["stripe_publishable_key"].startswith("pk_test_")
    assert token["livemode"] is False
    assert token["scope"] == "read_write"
    assert token["access_token"].startswith("sk_test_")
    assert "expires_in" not in token
    me = whoami(stripe, token["access_token"], token).json()
    assert (me["id"], me["object"]) == (token["stripe_user_id"], "account")
    refreshed = client.refresh_token(stripe.token_url, refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] == token["refresh_token"]


def test_spotify_tokens_last_an_hour_and_refresh_tokens_sometimes_change(
    emulator: Emulator,
) -> None:
    spotify = emulator["spotify"]
    _, token = connect(spotify)
    assert token["expires_in"] == 3600
    assert token["scope"] == "user-read-email user-read-private"
    first = refresh_on_the_wire(spotify, token["refresh_token"])
    second = refresh_on_the_wire(spotify, token["refresh_token"])
    assert "refresh_token" not in first
    assert second["refresh_token"] != token["refresh_token"]
    # Old access tokens stay valid until they expire.
    assert whoami(spotify, token["access_token"], token).status_code == 200
    assert whoami(spotify, second["access_token"], token).status_code == 200


def test_contentful_tokens_never_expire_and_cannot_be_refreshed(emulator: Emulator) -> None:
    contentful = emulator["contentful"]
    client, token = connect(contentful)
    assert "expires_in" not in token
    assert "refresh_token" not in token
    me = whoami(contentful, token["access_token"], token).json()
    assert contentful.account_from_userinfo(me) == (me["sys"]["id"], "editor@example.com")
    with pytest.raises(OAuthError) as caught:
        client.refresh_token(contentful.token_url, refresh_token="anything")
    assert caught.value.error == "invalid_grant"


def test_the_user_may_untick_scopes(emulator: Emulator) -> None:
    github = emulator["github"]
    _, token = connect(github, scopes=["repo", "gist"], untick=("gist",))
    assert token["scope"] == "repo"


# --- refusals ------------------------------------------------------------------------


def test_deny_redirects_with_access_denied(emulator: Emulator) -> None:
    box = emulator["box"]
    answer = decide(open_consent(box, oauth_client(box), None), decision="deny")
    assert answer["error"] == ["access_denied"]
    assert answer["state"] == ["state-123"]
    assert "code" not in answer


def test_unknown_client_id_is_refused_without_a_redirect(emulator: Emulator) -> None:
    box = emulator["box"]
    page = httpx.get(
        box.authorization_url,
        params={"client_id": "someone-else", "redirect_uri": REDIRECT_URI, "response_type": "code"},
    )
    assert page.status_code == 400
    assert "Unknown client_id" in page.text


def test_the_consent_page_escapes_what_it_shows(emulator: Emulator) -> None:
    acme = emulator["acme"]
    client_id, _ = demo_client("acme")
    page = httpx.get(
        acme.authorization_url,
        params={
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "state": '"><script>alert(1)</script>',
        },
    )
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "Read &lt;your&gt; data" in page.text


def test_unknown_scopes_are_refused(emulator: Emulator) -> None:
    box = emulator["box"]
    consent = open_consent(box, oauth_client(box), None, scopes=["root_everything"])
    assert consent.page.status_code == 302
    assert "error=invalid_scope" in consent.page.headers["location"]


@pytest.mark.parametrize(
    ("name", "wrong_method"),
    [
        ("spotify", "client_secret_post"),
        ("box", "client_secret_basic"),
        ("salesforce", "none"),
        ("acme", "client_secret_post"),
    ],
)
def test_the_wrong_client_auth_method_is_invalid_client(
    emulator: Emulator, name: str, wrong_method: str
) -> None:
    provider = emulator[name]
    verifier = "w" * 43 if provider.pkce else None
    code = decide(open_consent(provider, oauth_client(provider), verifier))["code"][0]
    with pytest.raises(OAuthError) as caught:
        oauth_client(provider, method=wrong_method).fetch_token(
            provider.token_url, code=code, code_verifier=verifier
        )
    assert caught.value.error == "invalid_client"


def test_a_wrong_client_secret_is_invalid_client(emulator: Emulator) -> None:
    box = emulator["box"]
    code = decide(open_consent(box, oauth_client(box), None))["code"][0]
    answer = httpx.post(
        box.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": demo_client("box")[0],
            "client_secret": "wrong",
        },
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_a_code_works_once(emulator: Emulator) -> None:
    spotify = emulator["spotify"]
    client = oauth_client(spotify)
    verifier = "r" * 43
    code = decide(open_consent(spotify, client, verifier))["code"][0]
    client.fetch_token(spotify.token_url, code=code, code_verifier=verifier)
    with pytest.raises(OAuthError) as caught:
        client.fetch_token(spotify.token_url, code=code, code_verifier=verifier)
    assert caught.value.error == "invalid_grant"


def test_a_pkce_mismatch_is_invalid_grant(emulator: Emulator) -> None:
    spotify = emulator["spotify"]
    client = oauth_client(spotify)
    code = decide(open_consent(spotify, client, "a" * 43))["code"][0]
    with pytest.raises(OAuthError) as caught:
        client.fetch_token(spotify.token_url, code=code, code_verifier="b" * 43)
    assert caught.value.error == "invalid_grant"
    assert create_s256_code_challenge("a" * 43) != create_s256_code_challenge("b" * 43)


def test_a_different_redirect_uri_is_invalid_grant(emulator: Emulator) -> None:
    box = emulator["box"]
    client = oauth_client(box)
    code = decide(open_consent(box, client, None))["code"][0]
    with pytest.raises(OAuthError) as caught:
        client.fetch_token(box.token_url, code=code, redirect_uri="http://evil.example/cb")
    assert caught.value.error == "invalid_grant"


def test_box_refresh_tokens_are_single_use_and_reuse_is_counted(emulator: Emulator) -> None:
    box = emulator["box"]
    client, token = connect(box)
    assert token["expires_in"] == 3600
    assert "scope" not in token
    assert box.parse_granted_scopes(token.get("scope"), ["root_readwrite"]) == ("root_readwrite",)
    refreshed = client.refresh_token(box.token_url, refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    with pytest.raises(OAuthError) as caught:
        client.refresh_token(box.token_url, refresh_token=token["refresh_token"])
    assert caught.value.error == "invalid_grant"
    client.refresh_token(box.token_url, refresh_token=refreshed["refresh_token"])
    stats = emulator.stats("box")
    assert (stats["refreshes"], stats["refresh_token_reuse"]) == (2, 1)


def test_a_box_refresh_token_is_spent_once_under_concurrent_refreshes(emulator: Emulator) -> None:
    box = emulator["box"]
    _, token = connect(box)
    form = {
        "grant_type": "refresh_token",
        "refresh_token": token["refresh_token"],
        "client_id": demo_client("box")[0],
        "client_secret": demo_client("box")[1],
    }
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: httpx.post(box.token_url, data=form), range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 7
    stats = emulator.stats("box")
    assert (stats["refreshes"], stats["refresh_token_reuse"]) == (1, 7)


def test_a_revoked_token_no_longer_answers_who_am_i(emulator: Emulator) -> None:
    for name in ("box", "salesforce", "acme"):
        provider = emulator[name]
        client, token = connect(provider)
        assert provider.revoke_url is not None
        client.revoke_token(provider.revoke_url, token=token["access_token"])
        assert whoami(provider, token["access_token"], token).status_code == 401, name
        if "refresh_token" in token:
            with pytest.raises(OAuthError):
                client.refresh_token(provider.token_url, refresh_token=token["refresh_token"])
        assert emulator.stats(name)["revocations"] == 1


def test_github_revokes_with_delete_and_basic_auth(emulator: Emulator) -> None:
    github = emulator["github"]
    _, token = connect(github)
    client_id, client_secret = demo_client("github")
    url = (github.revoke_url or "").replace("{client_id}", client_id)
    answer = httpx.request(
        "DELETE",
        url,
        auth=(client_id, client_secret),
        json={"access_token": token["access_token"]},
        headers={"Accept": "application/vnd.github+json"},
    )
    assert answer.status_code == 204
    assert whoami(github, token["access_token"], token).status_code == 401
    again = httpx.request(
        "DELETE", url, auth=(client_id, client_secret), json={"access_token": "gho_nope"}
    )
    assert again.status_code == 422


def test_stripe_deauthorize_disconnects_the_account(emulator: Emulator) -> None:
    stripe = emulator["stripe"]
    _, token = connect(stripe)
    client_id, client_secret = demo_client("stripe")
    answer = httpx.post(
        stripe.revoke_url or "",
        auth=(client_secret, ""),
        data={"client_id": client_id, "stripe_user_id": token["stripe_user_id"]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"stripe_user_id": token["stripe_user_id"]}
    assert whoami(stripe, token["access_token"], token).status_code == 401


def test_unknown_paths_are_json_404s(emulator: Emulator) -> None:
    for path in ("/github/github.com/nope", "/nobody/example.com/x"):
        answer = httpx.get(emulator.url + path)
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"


def test_reset_forgets_everything(emulator: Emulator) -> None:
    box = emulator["box"]
    _, token = connect(box)
    httpx.post(f"{emulator.url}/_admin/reset").raise_for_status()
    assert emulator.stats("box")["token_exchanges"] == 0
    assert whoami(box, token["access_token"], token).status_code == 401


# --- a short token lifetime ----------------------------------------------------------


@pytest.fixture(scope="module")
def short_lived(providers_file: Path) -> Iterator[Emulator]:
    yield from serve(providers_file, token_ttl=1)


def test_token_ttl_makes_box_tokens_expire(short_lived: Emulator) -> None:
    box = short_lived["box"]
    client, token = connect(box)
    assert token["expires_in"] == 1
    assert whoami(box, token["access_token"], token).status_code == 200
    advance(short_lived, 1.5)  # the emulator's clock, not a sleep
    assert whoami(box, token["access_token"], token).status_code == 401
    refreshed = client.refresh_token(box.token_url, refresh_token=token["refresh_token"])
    assert whoami(box, refreshed["access_token"], token).status_code == 200


def test_tokens_age_by_the_clock_the_emulator_is_given(providers_file: Path) -> None:
    """`create_emulator_app(clock=...)`: the token expires when that clock says so, not
    when real time does (the in-process tier's emulator stands still until a test moves it)."""
    now = [1000.0]
    for emulator in serve(providers_file, token_ttl=1, clock=lambda: now[0]):
        box = emulator["box"]
        _, token = connect(box)
        assert whoami(box, token["access_token"], token).status_code == 200
        now[0] += 1.5
        assert whoami(box, token["access_token"], token).status_code == 401


def test_token_ttl_leaves_tokens_that_never_expire_alone(short_lived: Emulator) -> None:
    _, token = connect(short_lived["github"])
    assert "expires_in" not in token


# --- lifetimes and limits the providers document --------------------------------------


def advance(emulator: Emulator, seconds: float) -> None:
    moved = httpx.post(f"{emulator.url}/_admin/clock", json={"advance_seconds": seconds})
    assert moved.status_code == 200, moved.text


def refresh_refused(provider: Provider, refresh_token: str) -> str:
    client_id, client_secret = demo_client(provider.name)
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.token_auth_method == "client_secret_basic":
        answer = httpx.post(provider.token_url, data=form, auth=(client_id, client_secret))
    else:
        form |= {"client_id": client_id, "client_secret": client_secret}
        answer = httpx.post(provider.token_url, data=form)
    assert answer.status_code == 400, answer.text
    error: str = answer.json()["error"]
    return error


def test_salesforce_full_scope_alone_brings_no_refresh_token(emulator: Emulator) -> None:
    _, token = connect(emulator["salesforce"], scopes=["api", "full"])
    assert "refresh_token" not in token


def test_a_salesforce_session_times_out_without_saying_so(emulator: Emulator) -> None:
    salesforce = emulator["salesforce"]
    _, token = connect(salesforce)
    assert "expires_in" not in token
    assert whoami(salesforce, token["access_token"], token).status_code == 200
    advance(emulator, 2 * 3600)  # the org's default session timeout
    assert whoami(salesforce, token["access_token"], token).status_code == 401
    fresh = refresh_on_the_wire(salesforce, token["refresh_token"])
    assert whoami(salesforce, fresh["access_token"], token).status_code == 200


def test_spotify_refresh_tokens_die_six_months_after_consent_however_used(
    emulator: Emulator,
) -> None:
    spotify = emulator["spotify"]
    _, token = connect(spotify)
    advance(emulator, 150 * 86400)
    refresh_on_the_wire(spotify, token["refresh_token"])  # still alive, not extended
    advance(emulator, 40 * 86400)
    assert refresh_refused(spotify, token["refresh_token"]) == "invalid_grant"


def test_each_box_refresh_token_lives_sixty_days(emulator: Emulator) -> None:
    box = emulator["box"]
    _, token = connect(box)
    advance(emulator, 59 * 86400)
    second = refresh_on_the_wire(box, token["refresh_token"])["refresh_token"]
    advance(emulator, 59 * 86400)  # 118 days after consent: the new one still lives
    third = refresh_on_the_wire(box, second)["refresh_token"]
    advance(emulator, 61 * 86400)
    assert refresh_refused(box, third) == "invalid_grant"


def test_github_revokes_the_oldest_token_beyond_ten_per_scopes(emulator: Emulator) -> None:
    github = emulator["github"]
    tokens = [connect(github)[1]["access_token"] for _ in range(11)]
    assert whoami(github, tokens[0], {}).status_code == 401
    assert all(whoami(github, t, {}).status_code == 200 for t in tokens[1:])
    # Another scope set is another combination.
    other = connect(github, scopes=["read:user", "gist"])[1]["access_token"]
    assert whoami(github, other, {}).status_code == 200
    assert whoami(github, tokens[1], {}).status_code == 200


def test_the_clock_refuses_nonsense(emulator: Emulator) -> None:
    for body in ({}, {"advance_seconds": "soon"}, {"advance_seconds": -5}):
        assert httpx.post(f"{emulator.url}/_admin/clock", json=body).status_code == 400
