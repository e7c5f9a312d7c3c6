"""The owner adds an MCP server by its URL on the team page and connects a site to it, in
headless Chromium against a real `apiauth serve --demo` process: the demo's emulated MCP
server leads to its authorization server, apiauth is its client through a Client ID Metadata
Document, and the site's API Authentication page then lists the new provider like any other.

Outside CI the module skips when Chromium or Playwright is missing; with `CI=true` it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_in_chromium import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    _require_browser,
    flash,
    sign_in,
)
from tests.processes import ServerProcess, run_cli
from tests.servers import free_port

pytestmark = pytest.mark.browser

OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def signed_in(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerProcess, Any, Path]]:
    sync_playwright = _require_browser()
    shots = Path(request.config.rootpath) / "test-output" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(tmp_path_factory.mktemp("add-provider"), None, free_port())
    server.start()
    playwright = sync_playwright().start()
    try:
        made = run_cli(["users", "create", OWNER, "--password-stdin"], server.env, PASSWORD)
        assert made.returncode == 0, made.stderr
        assert run_cli(["sites", "create", "my-site"], server.env).returncode == 0
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, base_url=server.url)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto("/sign-in")
        sign_in(page, OWNER, PASSWORD)
        page.close()
        yield server, context, shots
        browser.close()
    finally:
        playwright.stop()
        server.stop()


def test_owner_adds_an_mcp_server_by_url_and_connects_a_site(
    signed_in: tuple[ServerProcess, Any, Path],
) -> None:
    server, context, shots = signed_in
    page = context.new_page()
    page.goto("/team/oauth-apps")
    page.get_by_role("link", name="Providers").click()
    assert page.url.endswith("/team/providers"), page.url
    assert "Add provider" in page.content(), page.content()[:3000]
    page.get_by_label("Issuer or MCP server URL").fill(f"{server.url}/_emulator/_mcp")
    page.get_by_label("Name").fill("demo-mcp")
    page.get_by_role("button", name="Add provider").click()

    assert "demo-mcp (Demo MCP server) added" in flash(page)
    assert "Client ID Metadata Document" in flash(page)
    added = page.locator("#team-provider-demo-mcp")
    assert added.locator(".badge-ok").inner_text() == "Ready"
    assert f"{server.url}/_emulator/_mcp" in added.inner_text()
    page.screenshot(path=str(shots / "team-providers.png"), full_page=True)

    # A URL that leads nowhere is refused with what was tried; nothing is added.
    page.get_by_label("Issuer or MCP server URL").fill(f"{server.url}/_emulator/nothing")
    page.get_by_role("button", name="Add provider").click()
    assert "found no OAuth authorization server metadata" in flash(page)
    assert page.locator(".provider").count() == 1

    assert run_cli(["sites", "enable", "my-site"], server.env).returncode == 0
    page.goto("/sites/my-site/api-auth")
    mcp = page.locator("#provider-demo-mcp")
    mcp.locator("details.scopes summary").click()
    assert mcp.locator("input[name=scope][value='mcp:read']").is_checked()
    mcp.get_by_role("button", name="Connect Demo MCP server").click()
    page.wait_for_url("**/_emulator/_oauth/mcp/authorize**")
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url("**/sites/my-site/api-auth?connected=demo-mcp")
    assert "connected" in flash(page)
    assert provider_badge(page, "demo-mcp") == "Connected"
    page.close()


def provider_badge(page: Any, name: str) -> str:
    return str(page.locator(f"#provider-{name} .badge-ok").inner_text())
