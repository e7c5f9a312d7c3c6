"""Browser security headers on every response: a Content-Security-Policy without inline
script, nosniff, no referrer, no framing; HSTS and Secure cookies when the public URL is
https. The emulator (a stand-in for third-party sites) and /docs get their own policies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from apiauth.config import Settings
from apiauth.domain.members import create_member
from apiauth.server.app import _PAGE_STYLE, create_app
from apiauth.server.security_headers import style_hash
from tests.servers import LiveServer, open_test_broker

pytestmark = pytest.mark.fast


@pytest.fixture
def https_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'apiauth.db'}",
        public_url="https://broker.example",
    )
    broker = open_test_broker(settings, demo=False)
    create_member(broker, "owner@example.com", "correct horse battery")
    try:
        with TestClient(
            create_app(broker, workers=False), base_url="https://broker.example"
        ) as client:
            yield client
    finally:
        broker.close()


def _directives(policy: str) -> dict[str, str]:
    parts = (part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


def test_every_dashboard_and_api_answer_carries_the_headers(
    live: LiveServer, http: httpx.Client
) -> None:
    for path in ("/sign-in", "/api/v1/sites", "/healthz", "/static/dashboard.css", "/nowhere"):
        answer = http.get(live.url + path)
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["Referrer-Policy"] == "no-referrer", path
        assert answer.headers["X-Frame-Options"] == "DENY", path
        assert "Strict-Transport-Security" not in answer.headers  # public URL is http here
        policy = _directives(answer.headers["Content-Security-Policy"])
        assert policy["script-src"] == "'self'", path
        assert "unsafe-inline" not in answer.headers["Content-Security-Policy"], path
        assert policy["frame-ancestors"] == "'none'"
        assert policy["form-action"] == "'self'"
        assert policy["base-uri"] == "'none'"


def test_the_oauth_result_page_style_is_allowed_by_its_hash(
    live: LiveServer, http: httpx.Client
) -> None:
    answer = http.get(f"{live.url}/oauth/callback?state=x&code=y", headers={"Accept": "text/html"})
    assert answer.status_code == 400
    assert f"<style>{_PAGE_STYLE}</style>" in answer.text
    assert style_hash(_PAGE_STYLE) in answer.headers["Content-Security-Policy"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text)


def test_docs_get_a_relaxed_policy_and_the_emulator_a_sandbox(
    live: LiveServer, http: httpx.Client
) -> None:
    docs = http.get(f"{live.url}/docs")
    assert docs.status_code == 200
    assert (
        "https://cdn.jsdelivr.net"
        in _directives(docs.headers["Content-Security-Policy"])["script-src"]
    )
    consent_page = http.get(f"{live.url}/_emulator/github/github.com/login/oauth/authorize")
    # The emulator stands in for a provider's site on the dashboard's origin: sandboxed,
    # so nothing it serves runs script there.
    emulator_policy = _directives(consent_page.headers["Content-Security-Policy"])
    assert emulator_policy["sandbox"] == "allow-forms"
    assert "script-src" not in emulator_policy
    assert emulator_policy["default-src"] == "'none'"
    assert consent_page.headers["X-Content-Type-Options"] == "nosniff"


def test_https_public_url_adds_hsts_and_secure_cookies(https_client: TestClient) -> None:
    page = https_client.get("/sign-in")
    assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    form_cookie = page.headers["set-cookie"]
    assert "apiauth_form=" in form_cookie
    assert "Secure" in form_cookie
    assert "HttpOnly" in form_cookie
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    signed_in = https_client.post(
        "/sign-in",
        data={
            "email": "owner@example.com",
            "password": "correct horse battery",
            "next": "/",
            "csrf_token": token.group(1),
        },
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    session_cookie = next(
        c for c in signed_in.headers.get_list("set-cookie") if c.startswith("apiauth_session=")
    )
    assert "Secure" in session_cookie
    assert "HttpOnly" in session_cookie
    assert "samesite=lax" in session_cookie.lower()
