"""Demo mode must not hand a web page the dashboard: the emulator shares the dashboard's
origin in `serve --demo`, so its admin endpoints refuse anything a browser sends from
another site (forms, `fetch`), and whatever it serves - a fault's attacker-chosen HTML
included - is sandboxed: no script runs on the dashboard's origin. Against a live server."""

from __future__ import annotations

import httpx
import pytest

from apiauth.server.security_headers import EMULATOR_POLICY
from tests.servers import LiveServer

pytestmark = [pytest.mark.fast, pytest.mark.over_http]

FAULT = '{"provider": "github", "endpoint": "userinfo", "status": 500, "body": {}}'


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        # A form on another site (text/plain can carry JSON-looking text), with Origin.
        ({"Origin": "https://evil.example", "Content-Type": "text/plain"}, 403),
        ({"Origin": "null", "Content-Type": "application/json"}, 403),  # a sandboxed page
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),
        # Without Origin (an old browser's form): a form body is not JSON.
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ],
)
def test_the_emulators_admin_endpoints_refuse_requests_from_other_sites(
    live: LiveServer, http: httpx.Client, headers: dict[str, str], status: int
) -> None:
    for path in ("/_emulator/_admin/faults", "/_emulator/_admin/reset", "/_emulator/_admin/grants"):
        answer = http.post(f"{live.url}{path}", content=FAULT, headers=headers)
        assert answer.status_code == status, (path, answer.text)
    # Nothing was queued: the provider answers as usual.
    user = http.get(f"{live.url}/_emulator/github/api.github.com/user")
    assert user.status_code == 401, "no fault queued: a missing token is refused as usual"


def test_the_emulators_admin_endpoints_still_take_json_from_the_demo_and_the_tests(
    live: LiveServer, http: httpx.Client
) -> None:
    own = {"Origin": live.url, "Sec-Fetch-Site": "same-origin"}
    queued = http.post(
        f"{live.url}/_emulator/_admin/faults",
        content=FAULT,
        headers={**own, "Content-Type": "application/json"},
    )
    assert queued.status_code == 200, queued.text
    assert http.post(f"{live.url}/_emulator/_admin/reset").status_code == 200  # no body


def test_html_the_emulator_is_told_to_serve_runs_no_script_on_the_dashboards_origin(
    live: LiveServer, http: httpx.Client
) -> None:
    page = "<html><script>fetch('/api/v1/sites').then(r => r.text())</script></html>"
    queued = http.post(
        f"{live.url}/_emulator/_admin/faults",
        json={
            "provider": "github",
            "endpoint": "authorize",
            "status": 200,
            "raw_body": page,
            "content_type": "text/html",
        },
    )
    assert queued.status_code == 200
    served = http.get(f"{live.url}/_emulator/github/github.com/login/oauth/authorize")
    assert served.text == page
    assert served.headers["Content-Security-Policy"] == EMULATOR_POLICY
    directives = dict(
        part.strip().split(" ", 1) for part in EMULATOR_POLICY.split(";") if " " in part.strip()
    )
    assert directives["sandbox"] == "allow-forms", "an opaque origin, and no allow-scripts"
    assert directives["default-src"] == "'none'"
    assert served.headers["X-Frame-Options"] == "DENY"
