"""Nothing in logs or pages: a real `apiauth serve --demo` process logging at DEBUG goes
through the whole life of a site (six providers connected, keys pasted, a GitHub App
installed, secrets read with site and function tokens, refreshes, provider faults, refused
and replayed flows, bad tokens, disconnects), and no token or secret then appears in its log
output, in an HTML page of the dashboard (signed in), in an error response, in the audit
log, in a webhook body or in its metrics.

At DEBUG, httpx logs one line per call to a provider; the test checks those lines are there
(so it would see a secret in a URL) and that SQLAlchemy echoes no SQL with parameters. The
log is JSON (`APIAUTH_LOG_FORMAT=json`) with the access log on, the most the server writes:
every line must be one JSON object, the access log's lines (whose URLs carry the OAuth
callbacks' codes and states) included, each with its request's id.
"""

from __future__ import annotations

import json
import re
import secrets as random_secrets
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from sqlalchemy import select

from apiauth.config import Settings
from apiauth.domain.token_format import hash_token
from apiauth.domain.token_store import open_token
from apiauth.providers import demo_client
from apiauth.store.models import AuthState, Connection
from apiauth.vault import record_aad
from tests.consent import consent, provider_url_of
from tests.leak_search import Secrets
from tests.processes import ServerProcess, run_cli
from tests.servers import HookReceiver, free_port, open_test_broker

pytestmark = pytest.mark.e2e

PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful")
SITE = "leaky"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"
HOSTILE = "<script>alert('from-the-provider')</script>"
DASHBOARD_PAGES = (
    "/",
    f"/sites/{SITE}",
    f"/sites/{SITE}/api-auth",
    f"/sites/{SITE}/events",
    "/team/oauth-apps",
    "/team/members",
)


class _HiddenFields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input" and values.get("type") == "hidden":
            self.fields[values.get("name", "")] = values.get("value", "")


class Journey:
    """What the test saw, gathered as it goes: secrets, pages, error answers, hook bodies."""

    def __init__(self, server: ServerProcess, http: httpx.Client) -> None:
        self.server = server
        self.http = http
        self.api = server.url + "/api/v1"
        self.secrets = Secrets()
        self.page_exempt: set[str] = set()  # shown on pages by design (the forms' CSRF token)
        self.errors: list[tuple[str, str]] = []  # (what, body) of every 4xx answer
        self.pages: dict[str, str] = {}
        self.pat = ""
        self.site_token = ""
        self.refresh_request_ids: set[str] = set()

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.pat}"}

    def call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        answer = self.http.request(method, self.api + path, **kwargs)
        assert answer.status_code < 500, f"{what}: {answer.status_code}"
        if answer.status_code >= 400:
            self.errors.append((what, answer.text))
        return answer

    def connect(self, provider: str, button: str = "Authorize") -> httpx.Response:
        started = self.call(
            "POST",
            f"/sites/{SITE}/connections",
            f"start {provider}",
            json={"provider": provider},
            headers=self.auth(),
        )
        assert started.status_code == 200
        continue_link = started.json()["authorize_url"]
        self.secrets.add(f"{provider} Continue token", continue_link.rsplit("/", 1)[-1])
        url = provider_url_of(self.http, continue_link)
        self.secrets.add(f"{provider} OAuth state", parse_qs(urlsplit(url).query)["state"][0])
        self.secrets.add(f"{provider} PKCE verifier", self._verifier(url))
        callback = consent(self.http, url, button=button)
        code = parse_qs(urlsplit(str(callback.request.url)).query).get("code")
        if code:
            self.secrets.add(f"{provider} authorization code", code[0])
        if callback.status_code >= 400:
            self.errors.append((f"callback of {provider}", callback.text))
        # The provider's redirect, replayed: the state is spent.
        replay = self.http.get(str(callback.request.url), headers={"Accept": "application/json"})
        assert replay.status_code == 400
        self.errors.append((f"replayed callback of {provider}", replay.text))
        return callback

    def _verifier(self, authorize_url: str) -> str | None:
        state = parse_qs(urlsplit(authorize_url).query)["state"][0]
        broker = self.open_test_broker()
        try:
            with broker.sessions() as db:
                row = db.scalar(select(AuthState).where(AuthState.state_hash == hash_token(state)))
                assert row is not None
                if row.pkce_verifier_enc is None:
                    return None
                aad = record_aad("auth_states", row.id, "pkce_verifier_enc")
                return broker.vault.open_text(row.pkce_verifier_enc, aad)
        finally:
            broker.close()

    def open_test_broker(self) -> Any:
        env = self.server.env
        settings = Settings(
            data_dir=Path(env["APIAUTH_DATA_DIR"]),
            database_url=env.get("APIAUTH_DATABASE_URL"),
            public_url=env["APIAUTH_PUBLIC_URL"],
        )
        return open_test_broker(settings)

    def stored_tokens(self, when: str) -> None:
        broker = self.open_test_broker()
        try:
            with broker.sessions() as db:
                for connection in db.scalars(select(Connection)):
                    token = open_token(broker, connection)
                    if token is None:
                        continue
                    name = connection.provider
                    self.secrets.add(f"{name} access token ({when})", token.access_token)
                    self.secrets.add(f"{name} refresh token ({when})", token.refresh_token)
        finally:
            broker.close()

    def fault(self, provider: str, **spec: Any) -> None:
        answer = self.http.post(
            f"{self.server.url}/_emulator/_admin/faults",
            json={"provider": provider, "endpoint": "token", **spec},
        )
        assert answer.status_code < 300, answer.text


METRICS_TOKEN = random_secrets.token_urlsafe(24)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path, database_url, free_port())
    process.env["APIAUTH_LOG_LEVEL"] = "DEBUG"
    process.env["APIAUTH_LOG_FORMAT"] = "json"
    process.env["APIAUTH_ACCESS_LOG"] = "true"
    process.env["APIAUTH_METRICS_TOKEN"] = METRICS_TOKEN
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_no_token_or_secret_in_logs_pages_errors_or_the_audit_log(
    server: ServerProcess, hook_receiver: HookReceiver
) -> None:
    with httpx.Client(timeout=20) as http:
        journey = Journey(server, http)
        run_through_a_sites_life(journey, hook_receiver)
        sign_in_and_read_every_page(journey)
        events = read_the_audit_log(journey)
        metrics = http.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert metrics.status_code == 200
    server.stop()
    log = server.log()
    journey.secrets.add("metrics token", METRICS_TOKEN)

    secrets = journey.secrets
    assert len(secrets) >= 40, f"too few secrets collected: {secrets.labels()}"
    lines = check_json_log(server.stderr_path.read_text(encoding="utf-8"), journey)
    # The log is at DEBUG and shows calls to providers: a secret in a URL would be there.
    assert any(line["level"] == "debug" for line in lines)
    assert re.search(r"HTTP Request: POST http://127\.0\.0\.1:\d+/_emulator/\S+", log)
    assert "sqlalchemy.engine" not in log, "SQL is echoed into the log"
    found = secrets.found_in(metrics.text)
    assert not found, f"secrets in the metrics: {found}"

    found = secrets.found_in(log)
    assert not found, f"secrets in the server log: {found}"
    for path, page in journey.pages.items():
        found = [label for label in secrets.found_in(page) if label not in journey.page_exempt]
        assert not found, f"secrets on the dashboard page {path}: {found}"
    for what, body in journey.errors:
        found = secrets.found_in(body)
        assert not found, f"secrets in the error answer to {what}: {found}"
    found = secrets.found_in(events)
    assert not found, f"secrets in the audit log: {found}"
    hooks = b"".join(hook.body for hook in hook_receiver.received)
    assert hooks, "no webhook was delivered"
    found = secrets.found_in(hooks)
    assert not found, f"secrets in webhook bodies: {found}"


def check_json_log(stderr: str, journey: Journey) -> list[dict[str, Any]]:
    """Every line one JSON object; access lines with their request's id, the OAuth
    callbacks' among them; the failed refresh's warning with the id of the request that
    asked for it."""
    lines = []
    for number, line in enumerate(stderr.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON", pytrace=False)
        assert {"timestamp", "level", "logger", "message"} <= set(entry), number
        lines.append(entry)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access, "no access log lines"
    assert all(line.get("request_id") for line in access)
    callbacks = [line for line in access if line["path"].startswith("/oauth/callback")]
    assert callbacks, "the OAuth callbacks are not in the access log"
    assert all("code=[redacted]" in line["path"] for line in callbacks if "code=" in line["path"])
    failed = [
        line
        for line in lines
        if line["message"].startswith("refresh of box failed") and line.get("outcome") == "failed"
    ]
    assert failed, "the failed refresh is not logged with its outcome"
    assert failed[0]["request_id"] in journey.refresh_request_ids
    assert failed[0]["provider"] == "box"
    return lines


def connect_with_pasted_credentials(journey: Journey) -> None:
    """An API key and basic credentials (SPEC §7), one of them refused first: neither the
    good ones nor the refused one appear anywhere but `/api/v1/secrets`."""
    secrets = journey.secrets
    pasted = {
        "openai": {"api_key": "emu-openai-" + "no-leak-key-0123456789"},
        "twilio": {"username": "emu-twilio", "password": "emu-twilio-" + "no-leak-pw-0123456789"},
    }
    refused_key = "sk-proj-refused-no-leak-key-0123456789"
    secrets.add("refused OpenAI key", refused_key)
    refused = journey.call(
        "POST",
        f"/sites/{SITE}/connections",
        "a refused key",
        json={"provider": "openai", "credentials": {"api_key": refused_key}},
        headers=journey.auth(),
    )
    assert refused.status_code == 422
    for provider, credentials in pasted.items():
        for label, value in credentials.items():
            if label != "username":
                secrets.add(f"{provider} {label}", value)
        made = journey.call(
            "POST",
            f"/sites/{SITE}/connections",
            f"paste {provider}",
            json={"provider": provider, "credentials": credentials},
            headers=journey.auth(),
        )
        assert made.status_code == 201, made.text
    proxied = journey.http.get(
        f"{journey.api}/proxy/openai/v1/models", headers=journey.auth(journey.site_token)
    )
    assert proxied.status_code == 200


def connect_a_github_app(journey: Journey) -> None:
    """A GitHub App (SPEC §7): its private key stored with `apps set --private-key-file`, an
    installation made through the install page, a made-up installation id refused; neither
    the key nor an installation token appears anywhere but `/api/v1/secrets`."""
    server, http = journey.server, journey.http
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    for number, line in enumerate(pem.splitlines()[1:-1]):
        journey.secrets.add(f"GitHub App private key (line {number})", line)
    key_file = server.workdir / "no-leak-app.private-key.pem"
    key_file.write_text(pem, encoding="utf-8")
    saved = run_cli(
        [
            *("apps", "set", "github-app", "--app-id", "5150", "--slug", "no-leak-app"),
            *("--private-key-file", str(key_file)),
        ],
        server.env,
    )
    assert saved.returncode == 0, saved.stderr[-500:]
    key_file.unlink()
    registered = http.post(
        f"{server.url}/_emulator/_admin/github-apps",
        json={
            "provider": "github-app",
            "app_id": "5150",
            "slug": "no-leak-app",
            "jwk": RSAKey.import_key(pem).as_dict(private=False),
            "setup_url": f"{server.url}/oauth/callback",
        },
    )
    assert registered.status_code == 200, registered.text
    for installation_id in ("987654321", None):
        started = journey.call(
            "POST",
            f"/sites/{SITE}/connections",
            "start github-app",
            json={"provider": "github-app"},
            headers=journey.auth(),
        )
        continue_link = started.json()["authorize_url"]
        journey.secrets.add("github-app Continue token", continue_link.rsplit("/", 1)[-1])
        install_page = provider_url_of(http, continue_link)
        state = parse_qs(urlsplit(install_page).query)["state"][0]
        journey.secrets.add(f"github-app OAuth state {installation_id}", state)
        setup = http.get(install_page)
        assert setup.status_code == 302, setup.text
        query = dict(parse_qsl(urlsplit(setup.headers["location"]).query))
        if installation_id is not None:
            query["installation_id"] = installation_id  # made up: refused, nothing stored
        back = http.get(
            f"{server.url}/oauth/callback",
            params=query,
            headers={"Accept": "application/json"},
        )
        if installation_id is not None:
            assert back.status_code == 400, back.text
            journey.errors.append(("made-up installation id", back.text))
        else:
            assert back.status_code == 200, back.text
    proxied = http.get(
        f"{journey.api}/proxy/github-app/installation/repositories",
        headers=journey.auth(journey.site_token),
    )
    assert proxied.status_code == 200, proxied.text


def run_through_a_sites_life(journey: Journey, hooks: HookReceiver) -> None:
    server, secrets = journey.server, journey.secrets
    created = run_cli(["users", "create", OWNER, "--password-stdin"], server.env, PASSWORD + "\n")
    assert created.returncode == 0, created.stderr[-500:]
    pat = run_cli(["tokens", "create"], server.env)
    assert pat.returncode == 0, pat.stderr[-500:]
    journey.pat = pat.stdout.strip()
    secrets.add("personal access token", journey.pat)
    secrets.add("owner password", PASSWORD)
    for provider in PROVIDERS:
        secrets.add(f"{provider} demo client secret", demo_client(provider)[1])

    site = journey.call(
        "POST",
        "/sites",
        "create site",
        json={"name": SITE, "webhook_url": hooks.url},
        headers=journey.auth(),
    )
    assert site.status_code == 201
    secrets.add("webhook secret", site.json()["webhook_secret"])
    enabled = journey.call("POST", f"/sites/{SITE}/api-auth", "enable", headers=journey.auth())
    first_site_token = enabled.json()["token"]
    secrets.add("first site token", first_site_token)
    rotated = journey.call(
        "POST", f"/sites/{SITE}/api-auth/rotate", "rotate", headers=journey.auth()
    )
    journey.site_token = rotated.json()["token"]
    secrets.add("site token", journey.site_token)

    for provider in PROVIDERS:
        assert journey.connect(provider).status_code == 200, provider
    denied = journey.connect("github", button="Deny")
    assert denied.status_code == 400
    connect_with_pasted_credentials(journey)
    connect_a_github_app(journey)
    journey.stored_tokens("as connected")

    read = journey.call("GET", "/secrets", "read secrets", headers=journey.auth(journey.site_token))
    assert sorted(read.json()) == sorted([*PROVIDERS, "openai", "twilio", "github-app"])
    minted = journey.call(
        "POST",
        "/function-tokens",
        "mint",
        json={"ttl_seconds": 60, "providers": ["github", "box"]},
        headers=journey.auth(journey.site_token),
    )
    function_token = minted.json()["token"]
    secrets.add("function token", function_token)
    assert journey.call("GET", "/secrets", "fn read", headers=journey.auth(function_token)).json()

    # Refreshes: normal ones, a transient fault, a refusal, and a hostile error page.
    for provider in ("box", "spotify", "salesforce", "github-app"):
        journey.call(
            "POST",
            f"/sites/{SITE}/connections/{provider}/refresh",
            "refresh",
            headers=journey.auth(),
        )
    journey.fault("box", status=503, times=1)
    journey.fault("salesforce", status=500, raw_body=HOSTILE, content_type="text/html", times=1)
    journey.fault("spotify", status=400, body={"error": "invalid_grant"}, times=1)
    for provider in ("box", "salesforce", "spotify"):
        faulted = journey.call(
            "POST", f"/sites/{SITE}/connections/{provider}/refresh", "fault", headers=journey.auth()
        )
        journey.refresh_request_ids.add(faulted.headers["x-request-id"])
    journey.stored_tokens("after refreshes")
    journey.call("GET", "/secrets", "read again", headers=journey.auth(journey.site_token))

    # Refused: the old site token, bad tokens, another site, bad input, a forged callback.
    for what, token in (
        ("rotated site token", first_site_token),
        ("personal token as site token", journey.pat),
        ("truncated site token", journey.site_token[:-3]),
    ):
        assert journey.call("GET", "/secrets", what, headers=journey.auth(token)).status_code == 401
    journey.call("GET", "/sites", "site token as PAT", headers=journey.auth(journey.site_token))
    journey.call("GET", "/sites/nowhere/connections", "unknown site", headers=journey.auth())
    journey.call(
        "POST",
        f"/sites/{SITE}/connections",
        "bad json",
        content=b'{"provider":',
        headers={**journey.auth(), "Content-Type": "application/json"},
    )
    forged = journey.http.get(
        f"{server.url}/oauth/callback",
        params={"state": "forged-state-value", "code": "forged-code-value"},
    )
    assert forged.status_code == 400
    journey.errors.append(("forged callback", forged.text))

    for provider in ("github", "box", "github-app"):
        journey.call(
            "DELETE", f"/sites/{SITE}/connections/{provider}", "disconnect", headers=journey.auth()
        )
    hooks.wait_for(3)


def sign_in_and_read_every_page(journey: Journey) -> None:
    http, url = journey.http, journey.server.url
    form = _HiddenFields()
    form.feed(http.get(f"{url}/sign-in").text)
    csrf = form.fields["csrf_token"]
    wrong = http.post(
        f"{url}/sign-in", data={"email": OWNER, "password": "wrong password", "csrf_token": csrf}
    )
    assert wrong.status_code == 401
    journey.pages["/sign-in (refused)"] = wrong.text
    signed_in = http.post(
        f"{url}/sign-in", data={"email": OWNER, "password": PASSWORD, "csrf_token": csrf}
    )
    assert signed_in.status_code == 303, signed_in.text[:300]
    journey.secrets.add("session token", http.cookies["apiauth_session"])
    for path in DASHBOARD_PAGES:
        page = http.get(url + path)
        assert page.status_code == 200, path
        journey.pages[path] = page.text
        fields = _HiddenFields()
        fields.feed(page.text)
        if "csrf_token" in fields.fields:
            journey.secrets.add("session CSRF token", fields.fields["csrf_token"])
            journey.page_exempt.add("session CSRF token")
    page = journey.pages[f"/sites/{SITE}/api-auth"]
    assert HOSTILE not in page, "a provider's error page is shown unescaped"
    missing = http.get(f"{url}/sites/nowhere/api-auth")
    assert missing.status_code == 404
    journey.pages["/sites/nowhere/api-auth"] = missing.text


def read_the_audit_log(journey: Journey) -> str:
    bodies = []
    before: int | None = None
    while True:
        params = {"limit": 200} if before is None else {"limit": 200, "before": before}
        page = journey.call(
            "GET", f"/sites/{SITE}/events", "events", params=params, headers=journey.auth()
        )
        assert page.status_code == 200
        bodies.append(page.text)
        before = page.json()["next_before"]
        if before is None:
            break
    kinds = "".join(bodies)
    assert "secrets.read" in kinds or "secrets_read" in kinds, "reads are not in the audit log"
    return kinds
