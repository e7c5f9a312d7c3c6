"""Connect CSRF in a real browser (headless Chromium, Playwright) against a real `apiauth
serve --demo` process: a flow started by team B, finished at the provider in a browser signed
in as team A, or in one not signed in, connects nothing. The provider's consent goes through
(the emulator, like GitHub for an app already approved, has no idea who started the flow);
apiauth's callback refuses the browser that does not hold the flow's binding.

Outside CI the module skips when Chromium or Playwright is missing; with `CI=true` it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.browser.test_dashboard_in_chromium import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    _require_browser,
    provider,
    sign_in,
)
from tests.consent import press_continue
from tests.processes import ServerProcess, run_cli
from tests.servers import free_port

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
ALICE = "alice@team-a.example"  # team A: the victim
MALLORY = "mallory@team-b.example"  # team B: starts the flow


@dataclass
class Story:
    server: ServerProcess
    browser: Any
    mallory_pat: str

    def context(self) -> Any:
        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.server.url)
        context.set_default_timeout(TIMEOUT_MS)
        return context

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.mallory_pat}"}
        return httpx.request(
            method, f"{self.server.url}/api/v1{path}", headers=headers, timeout=30, **kwargs
        )

    def started_by_mallory(self) -> str:
        """Team B starts a GitHub connection of its site from the API: apiauth's link."""
        started = self.api("POST", "/sites/site-b/connections", json={"provider": "github"})
        assert started.status_code == 200, started.text
        link: str = started.json()["authorize_url"]
        return link

    def site_b_connections(self) -> list[Any]:
        listed = self.api("GET", "/sites/site-b/connections")
        assert listed.status_code == 200, listed.text
        found: list[Any] = listed.json()
        return found


def _cli(server: ServerProcess, *args: str, input: str | None = None) -> str:
    done = run_cli(args, server.env, input)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    sync_playwright = _require_browser()
    server = ServerProcess(tmp_path_factory.mktemp("connect-csrf"), None, free_port())
    _cli(server, "users", "create", ALICE, "--password-stdin", "--team", "Team A", input=PASSWORD)
    _cli(server, "users", "create", MALLORY, "--password-stdin", "--team", "Team B", input=PASSWORD)
    _cli(server, "sites", "create", "site-a", "--member", ALICE)
    _cli(server, "sites", "create", "site-b", "--member", MALLORY)
    _cli(server, "sites", "enable", "site-b", "--member", MALLORY)
    pat = _cli(server, "tokens", "create", "--member", MALLORY).strip()
    server.start()
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield Story(server, browser, pat)
        browser.close()
    finally:
        playwright.stop()
        server.stop()


def _signed_in_as_alice(story: Story) -> Any:
    context = story.context()
    page = context.new_page()
    page.goto("/sign-in")
    sign_in(page, ALICE, PASSWORD)
    page.wait_for_url("**/")
    return page


def _consent_at_provider(page: Any, provider_url: str) -> Any:
    """The victim's browser at the provider's page: they authorize, as GitHub would let them
    (or would skip asking for an app already approved); the answer of apiauth's callback."""
    page.goto(provider_url)
    assert "GitHub (emulated)" in page.inner_text("h1")
    with page.expect_response(lambda r: "/oauth/callback" in r.url) as callback:
        page.get_by_role("button", name="Authorize").click()
    return callback.value


def test_a_team_b_flow_finished_in_team_as_browser_connects_nothing(story: Story) -> None:
    # Mallory presses Continue in her own browser: the flow is bound to it, and she hands
    # the provider's URL to Alice.
    with httpx.Client(timeout=30) as mallory:
        pressed = press_continue(mallory, story.started_by_mallory())
        assert pressed.status_code == 303
        provider_url = pressed.headers["location"]
    page = _signed_in_as_alice(story)
    answer = _consent_at_provider(page, provider_url)
    assert answer.status == 403
    assert "started in another browser" in page.inner_text("body")
    assert "nothing was connected" in page.inner_text("body")
    assert story.site_b_connections() == []
    page.context.close()


def test_a_team_b_flow_finished_in_a_browser_not_signed_in_connects_nothing(
    story: Story,
) -> None:
    with httpx.Client(timeout=30) as mallory:
        provider_url = press_continue(mallory, story.started_by_mallory()).headers["location"]
    context = story.context()
    page = context.new_page()
    answer = _consent_at_provider(page, provider_url)
    assert answer.status == 403
    assert "started in another browser" in page.inner_text("body")
    assert story.site_b_connections() == []
    context.close()


def test_a_dashboard_flow_of_team_b_finished_in_team_as_browser_connects_nothing(
    story: Story,
) -> None:
    """Mallory presses Connect in her dashboard (bound to her browser at once), stops at
    the provider's page and sends its URL to Alice."""
    mallory = story.context()
    page = mallory.new_page()
    page.goto("/sign-in")
    sign_in(page, MALLORY, PASSWORD)
    page.wait_for_url("**/")
    page.goto("/sites/site-b/api-auth")
    provider(page, "github").get_by_role("button", name="Connect GitHub").click()
    page.wait_for_url("**/_emulator/github/**")
    provider_url = page.url
    mallory.close()

    alice = _signed_in_as_alice(story)
    answer = _consent_at_provider(alice, provider_url)
    assert answer.status == 403
    assert story.site_b_connections() == []
    alice.context.close()


def test_the_continue_page_names_everything_and_another_site_cannot_press_it(
    story: Story,
) -> None:
    link = story.started_by_mallory()
    context = story.context()
    page = context.new_page()

    # A page elsewhere posts the Continue form for the visitor: refused (no CSRF token), and
    # the flow is not bound to this browser.
    page.set_content(
        f'<form method="post" action="{link}"><input name="csrf_token" value="guess">'
        '<button id="go">go</button></form>'
    )
    with page.expect_navigation():
        page.click("#go")
    assert "Form refused" in page.inner_text("body")

    page.goto(link)
    shown = page.inner_text("main")
    for fact in ("site-b", "Team B", "GitHub", MALLORY):
        assert fact in shown
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**/_emulator/github/**")
    with page.expect_response(lambda r: "/oauth/callback" in r.url) as callback:
        page.get_by_role("button", name="Authorize").click()
    assert callback.value.status == 200, "the browser that pressed Continue finishes the flow"
    assert [c["provider"] for c in story.site_b_connections()] == ["github"]
    context.close()


def test_in_demo_mode_a_page_elsewhere_cannot_drive_the_emulator_or_run_script_through_it(
    story: Story,
) -> None:
    """Class 9: the emulator shares the dashboard's origin in `serve --demo`."""
    context = story.context()
    page = context.new_page()
    # Another site's form posting a fault (text/plain can carry JSON-looking text).
    page.set_content(
        f'<form method="post" enctype="text/plain" '
        f'action="{story.server.url}/_emulator/_admin/faults">'
        '<input name=\'{"provider":"github","endpoint":"authorize","raw_body":"x","a":"\' '
        'value=\'"}\'><button id="go">go</button></form>'
    )
    with page.expect_response(lambda r: "/_admin/faults" in r.url) as posted:
        page.click("#go")
    assert posted.value.status == 403

    # HTML the emulator is told to serve (here by the demo's own operator) runs no script.
    queued = httpx.post(
        f"{story.server.url}/_emulator/_admin/faults",
        json={
            "provider": "github",
            "endpoint": "authorize",
            "status": 200,
            "raw_body": "<html><title>before</title><script>document.title='ran'</script></html>",
            "content_type": "text/html",
        },
        timeout=15,
    )
    assert queued.status_code == 200
    page.goto(f"{story.server.url}/_emulator/github/github.com/login/oauth/authorize")
    assert page.title() == "before"
    context.close()
