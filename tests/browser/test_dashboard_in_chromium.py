"""The site owner's whole flow in a real browser: headless Chromium (Debian's, driven by
Playwright) against a real `apiauth serve --demo` process and its emulated providers.

The tests are one story told in file order, on one server: first start and the owner
account, a site with API Authentication, connecting GitHub at the emulated consent page, the
failures a person can meet on the way (denied consent, an expired link, missing rights, a
forged form), and signing out. Screenshots of the main pages land in
`test-output/browser/`; `api-authentication.png` there is the README's screenshot.

Outside CI the module skips when Chromium or Playwright is missing; with `CI=true` it fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, update
from tests.processes import ServerProcess, run_cli
from tests.servers import HookReceiver, free_port

from apiauth.store.models import AuthState

pytestmark = pytest.mark.browser

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000

OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"
TEAM = "Acme Web"
SITE = "my-site"
SITE_TOKEN = re.compile(r"apiauth_site_[0-9A-Za-z]{49}")


def _require_browser() -> Any:
    """Playwright's sync API, or a skip (a failure in CI) saying what is missing."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[server,dev]')"
    if problem is None and not Path(CHROMIUM).exists():
        problem = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if problem is not None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright


@dataclass
class World:
    """What the story built so far; later tests read and extend it."""

    server: ServerProcess
    browser: Any
    owner: Any  # the owner's browser context: signed in once, for the whole story
    hook: HookReceiver
    shots: Path
    site_token: str = ""
    seen: set[str] = field(default_factory=set)

    def page(self) -> Any:
        page = self.owner.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        return page

    def visitor(self) -> Any:
        """A browser context with no cookies: someone else, or the owner on another machine."""
        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.server.url)
        context.set_default_timeout(TIMEOUT_MS)
        return context

    def shot(self, page: Any, name: str, *, full_page: bool = True) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    sync_playwright = _require_browser()
    shots = Path(request.config.rootpath) / "test-output" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    hook = HookReceiver()
    server = ServerProcess(tmp_path_factory.mktemp("dashboard"), None, free_port())
    server.start()
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        owner = browser.new_context(viewport=VIEWPORT, base_url=server.url)
        owner.set_default_timeout(TIMEOUT_MS)
        yield World(server, browser, owner, hook, shots)
        browser.close()
    finally:
        playwright.stop()
        server.stop()
        hook.server.shutdown()


def setup_link(server: ServerProcess) -> str:
    found = re.search(
        r"Open (http://\S+/setup\?token=\S+) to create the owner account", server.log()
    )
    assert found, f"no setup link in the server output:\n{server.log()[-2000:]}"
    return found.group(1)


def sign_in(page: Any, email: str, password: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def flash(page: Any) -> str:
    return " ".join(page.locator(".flash").all_inner_texts())


def scope_box(container: Any, scope: str) -> Any:
    """A scope's checkbox (its label also holds the scope's description)."""
    return container.locator(f"input[name=scope][value='{scope}']")


def provider(page: Any, name: str) -> Any:
    return page.locator(f"#provider-{name}")


def expire_open_authorizations(server: ServerProcess) -> None:
    """Ten minutes pass for every authorization link in flight (the server's clock is real)."""
    engine = create_engine(f"sqlite:///{server.data_dir / 'apiauth.db'}")
    with engine.begin() as db:
        db.execute(
            update(AuthState)
            .where(AuthState.used_at.is_(None))
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    engine.dispose()


# --------------------------------------------------------------------------- first start


def test_first_start_prints_a_one_time_link_that_creates_the_owner(world: World) -> None:
    page = world.page()
    page.goto("/")
    assert page.url.endswith("/sign-in?next=%2F")
    assert "No account exists yet" in page.inner_text("main")
    assert "Demo mode" in page.inner_text(".demo-banner")

    page.goto(setup_link(world.server))
    page.get_by_label("Email").fill(OWNER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Team name").fill(TEAM)
    world.shot(page, "setup")
    page.get_by_role("button", name="Create owner account").click()

    assert page.url == world.server.url + "/"
    assert "Welcome! You own the team Acme Web" in flash(page)
    assert "No sites yet" in page.inner_text("main")
    cookie = next(c for c in world.owner.cookies() if c["name"] == "apiauth_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"
    page.close()


def test_the_setup_link_works_only_once(world: World) -> None:
    context = world.visitor()
    page = context.new_page()
    response = page.goto(setup_link(world.server))
    assert response.status == 403
    assert "The owner account exists already" in page.inner_text("main")
    context.close()


# --------------------------------------------------------------------------- the core journey


def test_owner_adds_a_site_and_enables_api_authentication(world: World) -> None:
    page = world.page()
    page.goto("/")
    page.get_by_label("Name").fill(SITE)
    page.get_by_label("Deploy hook URL").fill(world.hook.url)
    page.get_by_role("button", name="Add site").click()

    assert page.url.endswith(f"/sites/{SITE}/api-auth")
    assert "Site my-site added." in flash(page)
    sidebar = page.get_by_role("navigation", name="Site")
    assert sidebar.get_by_role("link", name="API Authentication").get_attribute("aria-current")
    assert "triggers the site's deploy hook (at 127.0.0.1)" in page.inner_text(".enable-card")
    world.shot(page, "api-authentication-off")

    page.get_by_role("button", name=f"Enable API Authentication for {SITE}").click()
    token = page.locator("#new-token")
    assert not token.is_visible()  # revealed only on request
    page.get_by_text("Reveal token").click()
    assert token.is_visible()
    world.site_token = token.inner_text().strip()
    world.seen.add(world.site_token)
    assert SITE_TOKEN.fullmatch(world.site_token)
    world.shot(page, "api-authentication-token-revealed")
    assert world.hook.wait_for(1)  # enabling fired the deploy hook

    # The token works for the site's functions...
    answer = httpx.get(
        world.server.url + "/api/v1/secrets",
        headers={"Authorization": f"Bearer {world.site_token}"},
    )
    assert answer.status_code == 200
    # ...and is never shown again: a reload shows it masked (and posts nothing again).
    page.reload()
    assert page.url.endswith(f"/sites/{SITE}/api-auth")
    assert world.site_token not in page.content()
    assert "apiauth_site_••••" in page.inner_text(".env")
    page.close()


def test_owner_connects_github_with_the_scopes_they_tick(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    github = provider(page, "github")
    scopes = github.locator("details.scopes")
    assert not scope_box(scopes, "repo").is_visible()
    scopes.locator("summary").click()  # the arrow expands the scopes
    assert scope_box(scopes, "read:user").is_checked()  # the default
    assert not scope_box(scopes, "repo").is_checked()
    assert "Full control of public and private repositories" in scopes.inner_text()
    scope_box(scopes, "repo").check()
    scope_box(scopes, "user:email").check()
    scope_box(scopes, "user:email").uncheck()
    assert "2 of" in scopes.locator("summary").inner_text()
    world.shot(page, "api-authentication-scopes")

    github.get_by_role("button", name="Connect GitHub").click()
    page.wait_for_url("**/_emulator/github/**")
    assert "GitHub (emulated)" in page.inner_text("h1")
    offered = page.locator("input[name=scope]").evaluate_all("boxes => boxes.map(b => b.value)")
    assert offered == ["read:user", "repo"]
    world.shot(page, "consent")
    page.get_by_role("button", name="Authorize").click()

    page.wait_for_url(f"**/sites/{SITE}/api-auth?connected=github")
    assert "GitHub connected." in flash(page)
    github = provider(page, "github")
    assert github.locator(".badge-ok").inner_text() == "Connected"
    assert github.locator("dd.account").inner_text() == "octocat"
    assert github.locator("dd.granted").inner_text().split() == ["read:user", "repo"]
    assert "never" in github.locator("dl.connection").inner_text()  # GitHub tokens do not expire
    world.shot(page, "api-authentication-connected")
    page.close()


def test_readme_screenshot_of_the_api_authentication_page(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    provider(page, "salesforce").locator("details.scopes summary").click()
    world.shot(page, "api-authentication", full_page=False)
    page.close()


def test_changing_scopes_shows_what_the_provider_did_not_grant(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    github = provider(page, "github")
    github.locator("details.scopes summary").click()
    assert scope_box(github, "repo").is_checked()
    scope_box(github, "gist").check()
    github.get_by_role("button", name="Change scopes").click()

    page.wait_for_url("**/_emulator/github/**")
    scope_box(page, "gist").uncheck()  # the person grants less than was asked for
    page.get_by_role("button", name="Authorize").click()

    page.wait_for_url(f"**/sites/{SITE}/api-auth?connected=github")
    github = provider(page, "github")
    assert github.locator("dd.granted").inner_text().split() == ["read:user", "repo"]
    assert github.locator("dd.not-granted").inner_text().split() == ["gist"]
    page.close()


def test_owner_finds_a_provider_by_searching_and_connects_it(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    search = page.get_by_role("searchbox", name="Find a provider")
    assert search.is_visible()  # above the list, no scrolling past a hundred providers
    search.fill("quickb")  # filters as you type, no submit
    quickbooks = provider(page, "quickbooks")
    assert quickbooks.is_visible()
    assert not provider(page, "xero").is_visible()
    assert not page.locator("section.provider-group[data-group='Social']").is_visible()
    assert provider(page, "github").is_visible()  # connected ones stay on top
    world.shot(page, "api-authentication-search")
    search.fill("no such provider at all")
    assert page.locator("#available-providers .no-match").is_visible()
    search.fill("QuickBooks")

    quickbooks.get_by_role("button", name="Connect QuickBooks").click()
    page.wait_for_url("**/_emulator/quickbooks/**")
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"**/sites/{SITE}/api-auth?connected=quickbooks")
    quickbooks = provider(page, "quickbooks")
    assert quickbooks.locator(".badge-ok").inner_text() == "Connected"
    # Connected now: at the top, with GitHub, above the search.
    connected = page.locator("ul.connected-providers li.provider").evaluate_all(
        "rows => rows.map(r => r.id)"
    )
    assert "provider-quickbooks" in connected
    page.close()


def test_denying_consent_brings_the_owner_back_with_the_reason(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    provider(page, "spotify").get_by_role("button", name="Connect Spotify").click()
    page.wait_for_url("**/_emulator/spotify/**")
    page.get_by_role("button", name="Deny").click()

    page.wait_for_url(f"**/sites/{SITE}/api-auth?error=*")
    assert "access to Spotify was denied" in flash(page)
    assert page.locator(".flash-error").get_attribute("role") == "alert"
    assert provider(page, "spotify").get_by_role("button", name="Connect Spotify").is_visible()
    world.shot(page, "consent-denied")
    page.close()


def test_an_expired_authorization_link_says_to_start_again(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    provider(page, "box").get_by_role("button", name="Connect Box").click()
    page.wait_for_url("**/_emulator/box/**")
    expire_open_authorizations(world.server)  # the person went for coffee
    page.get_by_role("button", name="Authorize").click()

    page.wait_for_url(f"**/sites/{SITE}/api-auth?error=*")
    assert "this authorization link expired" in flash(page)
    assert provider(page, "box").get_by_role("button", name="Connect Box").is_visible()
    page.close()


def test_rotating_the_token_asks_first_and_reveals_the_new_one_once(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    env = page.locator(".env")
    env.get_by_text("Rotate token").click()
    assert "stops working at once" in env.locator(".confirm-panel").inner_text()
    env.get_by_role("button", name="Yes, rotate the token").click()
    page.get_by_text("Reveal token").click()
    new_token = page.locator("#new-token").inner_text().strip()
    world.seen.add(new_token)
    assert SITE_TOKEN.fullmatch(new_token)
    assert new_token != world.site_token
    old = httpx.get(
        world.server.url + "/api/v1/secrets",
        headers={"Authorization": f"Bearer {world.site_token}"},
    )
    assert old.status_code == 401
    world.site_token = new_token
    page.close()


def test_audit_log_shows_who_did_what(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    page.get_by_role("navigation", name="Site").get_by_role("link", name="Audit log").click()
    assert page.url.endswith(f"/sites/{SITE}/events")
    kinds = page.locator("table.events td code").all_inner_texts()
    assert kinds[0] == "api_auth.rotated"  # newest first
    for kind in ("site.created", "api_auth.enabled", "connection.created", "connection.updated"):
        assert kind in kinds
    assert OWNER in page.inner_text("table.events")
    assert not any(secret in page.content() for secret in world.seen)
    world.shot(page, "audit-log")
    page.close()


def test_disconnecting_asks_first_then_revokes(world: World) -> None:
    page = world.page()
    page.goto(f"/sites/{SITE}/api-auth")
    github = provider(page, "github")
    github.locator(".connection-actions summary", has_text="Disconnect").click()
    assert "Its token is revoked at GitHub" in github.locator(".confirm-panel").inner_text()
    github.get_by_role("button", name="Yes, disconnect GitHub").click()

    page.wait_for_url(f"**/sites/{SITE}/api-auth")
    assert "GitHub disconnected and its token revoked at GitHub." in flash(page)
    assert provider(page, "github").get_by_role("button", name="Connect GitHub").is_visible()
    page.close()


# --------------------------------------------------------------------------- team settings


def test_owner_sets_a_team_oauth_app_whose_secret_is_never_shown(world: World) -> None:
    page = world.page()
    page.goto("/")
    page.get_by_role("link", name="Team settings").click()
    assert page.url.endswith("/team/oauth-apps")
    contentful = page.locator("#app-contentful")
    link = contentful.get_by_role("link", name=re.compile("app registration page"))
    assert link.get_attribute("href", timeout=TIMEOUT_MS).startswith("https://app.contentful.com/")
    assert f"{world.server.url}/oauth/callback" in contentful.inner_text()
    world.shot(page, "oauth-apps")

    contentful.locator("details summary").first.click()
    contentful.get_by_label("Client id").fill("acme-contentful-app")
    contentful.get_by_label("Client secret").fill("contentful-secret-do-not-show")
    contentful.get_by_role("button", name="Save Contentful app").click()

    assert "The team's OAuth app for contentful is saved." in flash(page)
    contentful = page.locator("#app-contentful")
    assert contentful.locator(".badge-ok").inner_text() == "Team app"
    assert "acme-contentful-app" in contentful.inner_text()
    assert "contentful-secret-do-not-show" not in page.content()

    contentful.locator("details summary").first.click()
    contentful.get_by_text("Remove team app").click()
    contentful.get_by_role("button", name="Yes, remove it").click()
    assert "The team's OAuth app for contentful is removed." in flash(page)
    page.close()


def test_a_member_cannot_open_team_settings(world: World) -> None:
    page = world.page()
    page.goto("/team/members")
    page.get_by_label("Email").fill("member@example.com")
    page.get_by_label("First password").fill(PASSWORD)
    page.get_by_role("button", name="Add member").click()
    assert "member@example.com was added as member" in flash(page)
    world.shot(page, "members")
    page.close()

    context = world.visitor()
    member = context.new_page()
    member.goto("/sign-in")
    sign_in(member, "member@example.com", PASSWORD)
    assert SITE in member.inner_text(".site-list")  # the team's sites, yes
    response = member.goto("/team/oauth-apps")
    assert response.status == 403
    assert "Only team owners can manage the team's OAuth apps" in member.inner_text("main")
    world.shot(member, "member-forbidden")
    assert member.goto("/team/members").status == 403
    context.close()


def test_a_member_of_another_team_does_not_find_the_site(world: World) -> None:
    made = run_cli(
        ["users", "create", "other@example.com", "--password-stdin", "--team", "other"],
        world.server.env,
        input=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    context = world.visitor()
    page = context.new_page()
    page.goto("/sign-in")
    sign_in(page, "other@example.com", PASSWORD)
    assert "No sites yet" in page.inner_text("main")
    response = page.goto(f"/sites/{SITE}/api-auth")
    assert response.status == 404
    assert "no site named 'my-site'" in page.inner_text("main")
    context.close()


# --------------------------------------------------------------------------- sessions and forms


def test_a_form_posted_without_its_csrf_token_is_refused(world: World) -> None:
    forged = world.owner.request.post(
        world.server.url + "/sites", form={"name": "forged-site"}, max_redirects=0
    )
    assert forged.status == 403
    assert "security token (CSRF)" in forged.text()
    wrong = world.owner.request.post(
        world.server.url + f"/sites/{SITE}/api-auth/rotate",
        form={"csrf_token": "not-the-right-one"},
        max_redirects=0,
    )
    assert wrong.status == 403
    page = world.page()
    page.goto("/")
    assert "forged-site" not in page.inner_text("main")
    world.shot(page, "sites")
    page.close()


def test_the_rest_api_accepts_the_session_with_its_csrf_header(world: World) -> None:
    api = world.server.url + "/api/v1/sites"
    listed = world.owner.request.get(api)
    assert listed.status == 200
    assert [site["name"] for site in listed.json()] == [SITE]
    forged = world.owner.request.post(api, data={"name": "forged-site"})
    assert forged.status == 403
    assert "CSRF" in forged.json()["error"]["message"]


def test_pages_fit_a_phone_screen(world: World) -> None:
    phone = world.browser.new_context(
        viewport={"width": 390, "height": 844},
        base_url=world.server.url,
        storage_state=world.owner.storage_state(),
    )
    page = phone.new_page()
    for path in ("/", f"/sites/{SITE}/api-auth", f"/sites/{SITE}/events", "/team/oauth-apps"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
    page.goto(f"/sites/{SITE}/api-auth")
    world.shot(page, "api-authentication-phone")
    phone.close()


def test_signed_out_pages_send_to_sign_in_and_back(world: World) -> None:
    context = world.visitor()
    page = context.new_page()
    page.goto(f"/sites/{SITE}/events")
    assert "/sign-in?next=" in page.url
    world.shot(page, "sign-in")
    sign_in(page, OWNER, PASSWORD)
    assert page.url.endswith(f"/sites/{SITE}/events")
    context.close()


def test_guessing_passwords_is_slowed_down(world: World) -> None:
    context = world.visitor()
    page = context.new_page()
    page.goto("/sign-in")
    for _ in range(5):
        sign_in(page, "guess@example.com", "wrong password!")
        assert "Wrong email or password." in page.inner_text("main")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        sign_in(page, "guess@example.com", "wrong password!")
    assert answer.value.status == 429
    assert int(answer.value.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in page.inner_text("main")
    context.close()


def test_signing_out_ends_the_session(world: World) -> None:
    page = world.page()
    page.goto("/")
    page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/sign-in")
    assert "You are signed out." in flash(page)
    page.goto("/")
    assert "/sign-in" in page.url
    page.close()


def test_no_token_reaches_the_server_log(world: World) -> None:
    log = world.server.log()
    assert world.seen
    assert not any(secret in log for secret in world.seen)
