"""Real third-party OAuth servers for tests, from the npm registry: `oidc-provider` (a certified
OpenID Provider: discovery, dynamic registration, resource indicators, client credentials) and
`oauth2-mock-server`, plus a small MCP-style protected resource that checks their tokens with
`jose`. Versions are pinned in `package.json` / `package-lock.json` here; `npm ci` in this
directory installs them (`.ci/run` does).

Each server is a Node process on 127.0.0.1 started by a script beside this file, configured
by one JSON document and stopped when the test is done (or when this process dies: the
scripts exit when their standard input closes). Outside CI a test that needs them skips with
a message saying how to install them; with `CI=true` it fails instead.

    with start_oidc_provider(registration=True, resources={...}) as peer:
        peer.issuer            # http://127.0.0.1:<port>
        peer.metadata(http)    # its discovery document
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

HERE = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() == "true"
START_TIMEOUT_SECONDS = 20.0


def peers_problem() -> str | None:
    """Why the peers cannot run here, or None."""
    if shutil.which("node") is None:
        return "Node.js is not installed (apt-get install nodejs npm)"
    for package in ("oidc-provider", "oauth2-mock-server"):
        if not (HERE / "node_modules" / package / "package.json").is_file():
            return f"the npm package {package} is missing: run `npm ci` in tests/peers"
    return None


def require_peers() -> None:
    """Skip the test (fail it in CI) when Node or the peers' packages are missing."""
    problem = peers_problem()
    if problem is None:
        return
    message = f"the third-party OAuth servers cannot run: {problem}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PeerProcess:
    """A running peer: its announcement (`issuer` or `resource`, `port`) and its process."""

    announced: dict[str, Any]
    process: subprocess.Popen[str]
    output: list[str]

    @property
    def url(self) -> str:
        return str(self.announced.get("issuer") or self.announced["resource"])

    @property
    def issuer(self) -> str:
        return str(self.announced["issuer"])

    @property
    def port(self) -> int:
        return int(self.announced["port"])

    def metadata(self, http: httpx.Client) -> dict[str, Any]:
        """The server's OpenID Connect discovery document (`/.well-known/openid-configuration`
        under its issuer, as OpenID Connect Discovery 1.0 §4 appends it)."""
        answer = http.get(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        return document

    def verified_claims(self, http: httpx.Client, token: str) -> dict[str, Any]:
        """The claims of a JWT this server signed, checked against its published keys (the
        access tokens it issues for a resource, its ID tokens)."""
        keys = KeySet.import_key_set(http.get(self.metadata(http)["jwks_uri"]).json())
        decoded = jose_jwt.decode(token, keys)
        jose_jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer}).validate(
            decoded.claims
        )
        return dict(decoded.claims)

    def log(self) -> str:
        """What the process wrote to its standard error so far (for a failing test's message)."""
        return "".join(self.output)


@contextmanager
def start_peer(
    script: str, options: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> Iterator[PeerProcess]:
    """Start `script` (a file beside this one) with `options` and wait for its announcement.
    `env` adds to the process's environment (`NODE_EXTRA_CA_CERTS` for a test CA)."""
    require_peers()
    process = subprocess.Popen(
        ["node", str(HERE / script), json.dumps(dict(options))],
        cwd=HERE,
        env={**os.environ, **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output: list[str] = []
    assert process.stderr is not None
    assert process.stdout is not None
    threading.Thread(target=_drain, args=(process.stderr, output), daemon=True).start()
    announced: dict[str, Any] = {}
    reader = threading.Thread(target=_read_announcement, args=(process.stdout, announced))
    reader.start()
    reader.join(START_TIMEOUT_SECONDS)
    try:
        if not announced:
            raise RuntimeError(f"{script} did not start: {''.join(output)[-2000:]}")
        yield PeerProcess(announced, process, output)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def _read_announcement(stream: Any, into: dict[str, Any]) -> None:
    line = stream.readline()
    if line:
        into.update(json.loads(line))


def start_oidc_provider(
    *,
    path: str = "",
    registration: bool = True,
    registration_management: bool = True,
    client_id_metadata_document: bool = False,
    client_credentials: bool = True,
    clients: Sequence[Mapping[str, Any]] = (),
    resources: Mapping[str, Mapping[str, Any]] | None = None,
    access_token_ttl: int = 3600,
    scopes: Sequence[str] = (),
    fetch_loopback: bool = False,
    env: Mapping[str, str] | None = None,
) -> Any:
    """oidc-provider with dynamic registration (RFC 7591/7592), resource indicators (RFC 8707:
    each of `resources` gets JWT access tokens whose `aud` is its URL) and client credentials
    on; `clients` are pre-registered (oidc-provider's client metadata: client_id,
    client_secret, redirect_uris, grant_types, token_endpoint_auth_method...).
    `client_id_metadata_document` with `fetch_loopback` lets it read such documents from a
    test server on loopback (over https: give its CA in `env` as NODE_EXTRA_CA_CERTS). A
    context manager yielding a `PeerProcess`."""
    return start_peer(
        "oidc_provider.mjs",
        {
            "path": path,
            "registration": registration,
            "registration_management": registration_management,
            "client_id_metadata_document": client_id_metadata_document,
            "client_credentials": client_credentials,
            "clients": list(clients),
            "resources": dict(resources or {}),
            "access_token_ttl": access_token_ttl,
            "scopes": list(scopes),
            "fetch_loopback": fetch_loopback,
        },
        env=env,
    )


def start_oauth2_mock_server() -> Any:
    """oauth2-mock-server: any client id, consent without a page, JWT access tokens,
    client credentials. A context manager yielding a `PeerProcess`."""
    return start_peer("oauth2_mock_server.mjs", {})


def start_protected_resource(
    authorization_server: str,
    *,
    path: str = "/mcp",
    port: int = 0,
    scopes: Sequence[str] = (),
    well_known: bool = True,
    header: bool = True,
) -> Any:
    """An MCP-style protected resource (RFC 9728) whose tokens come from
    `authorization_server` (an oidc-provider issuer): 401 with `resource_metadata` without a
    token, 200 with the token's `aud`, `sub` and `scope` when the token is for it. A context
    manager yielding a `PeerProcess` whose `url` is the resource. `port` 0: any free one
    (give one to name the resource in the issuer's `resources` before it starts)."""
    return start_peer(
        "protected_resource.mjs",
        {
            "path": path,
            "port": port,
            "authorization_server": authorization_server,
            "scopes": list(scopes),
            "well_known": well_known,
            "header": header,
        },
    )


# --- a person at oidc-provider's (development) sign-in and consent pages -------------------


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.inputs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")
        elif tag == "input" and "name" in values:
            self.inputs.append(values["name"])


def sign_in_and_consent(
    http: httpx.Client, authorize_url: str, redirect_uri: str, *, login: str = "alice"
) -> httpx.Response:
    """Open the authorize URL, sign in as `login` on oidc-provider's sign-in page, press
    Continue on its consent page, and follow the way back to `redirect_uri` (apiauth's
    callback), whose answer is returned. `http` keeps the peer's cookies between pages."""
    location = authorize_url
    for _ in range(12):
        if location.startswith(redirect_uri):
            return http.get(location, headers={"Accept": "application/json"})
        answer = http.get(location, headers={"Accept": "text/html"})
        if answer.is_redirect:
            location = urljoin(str(answer.url), answer.headers["location"])
            continue
        assert answer.status_code == 200, f"{answer.status_code} at {location}: {answer.text}"
        form = _Form()
        form.feed(answer.text)
        assert form.action is not None, f"no form at {location}: {answer.text[:500]}"
        data = dict(form.fields)
        if "login" in form.inputs:
            data.update(login=login, password="any password")
        posted = http.post(urljoin(str(answer.url), form.action), data=data)
        assert posted.is_redirect, f"{posted.status_code}: {posted.text[:500]}"
        location = urljoin(str(posted.url), posted.headers["location"])
    raise AssertionError(f"never got back to {redirect_uri}; last at {location}")


@pytest.fixture
def oidc_peer() -> Iterator[PeerProcess]:
    """oidc-provider with its defaults here (dynamic registration on)."""
    with start_oidc_provider() as peer:
        yield peer


@pytest.fixture
def oauth2_mock_peer() -> Iterator[PeerProcess]:
    with start_oauth2_mock_server() as peer:
        yield peer
