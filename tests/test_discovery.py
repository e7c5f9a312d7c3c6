"""Discovery from one URL as untrusted input: both well-known forms and path issuers, RFC 9728
from a 401, strict and bounded parsing of whatever a server sends, and the URL policy (SSRF)
at input and before each call, with refusals that name the setting that would allow them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from apiauth.errors import DiscoveryFailed, UrlNotAllowed
from apiauth.oauth import discovery
from apiauth.oauth.discovery import parse_challenges, weakening
from apiauth.url_policy import GuardedTransport, UrlPolicy, check_url
from tests.peers.harness import start_oidc_provider
from tests.servers import serve_in_background

LOCAL = UrlPolicy(allow_loopback=True, providers=True)

Answer = tuple[int, dict[str, str], bytes]


class CraftedServer:
    """A server on loopback answering each path with what the test puts in `answers`."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer | Callable[[], Answer]] = {}
        self.seen: list[str] = []
        crafted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                crafted.seen.append(self.path)
                found = crafted.answers.get(self.path, (404, {}, b""))
                status, headers, body = found() if callable(found) else found
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_background(self.server)

    def json(self, path: str, document: Any, status: int = 200) -> None:
        body = json.dumps(document).encode()
        self.answers[path] = (status, {"Content-Type": "application/json"}, body)

    def metadata(self, issuer: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        document = {
            "issuer": issuer,
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["read"],
        }
        document.update(changes or {})
        return {k: v for k, v in document.items() if v is not None}


@pytest.fixture
def crafted() -> Iterator[CraftedServer]:
    server = CraftedServer()
    yield server
    server.server.shutdown()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(transport=GuardedTransport(LOCAL), timeout=5) as client:
        yield client


def check(url: str, what: str) -> None:
    check_url(url, LOCAL, what)


def test_an_issuer_with_a_path_is_found_at_the_rfc_8414_inserted_form(
    crafted: CraftedServer, http: httpx.Client
) -> None:
    issuer = crafted.url + "/tenant-a"
    crafted.json("/.well-known/oauth-authorization-server/tenant-a", crafted.metadata(issuer))
    found = discovery.discover(http, issuer, check)
    assert found.server.issuer == issuer
    assert found.server.metadata_url.endswith("/.well-known/oauth-authorization-server/tenant-a")
    assert found.resource is None


def test_an_openid_provider_with_a_path_is_found_at_the_appended_form(
    http: httpx.Client,
) -> None:
    """oidc-provider serves its discovery document only under the issuer's path."""
    with start_oidc_provider(path="/realms/acme") as peer:
        found = discovery.discover(http, peer.issuer, check)
    assert found.server.issuer == peer.issuer
    assert found.server.metadata_url == peer.issuer + "/.well-known/openid-configuration"
    assert found.server.openid
    assert found.server.registration_endpoint
    assert found.server.iss_parameter_supported


def test_a_401_names_the_resource_metadata_and_its_authorization_server(
    crafted: CraftedServer, http: httpx.Client
) -> None:
    resource, issuer = crafted.url + "/mcp", crafted.url + "/as"
    crafted.answers["/mcp"] = (
        401,
        {"WWW-Authenticate": f'Bearer resource_metadata="{crafted.url}/prm", scope="tools"'},
        b"",
    )
    crafted.json("/prm", {"resource": resource, "authorization_servers": [issuer]})
    crafted.json("/.well-known/oauth-authorization-server/as", crafted.metadata(issuer))
    found = discovery.discover(http, resource, check)
    assert found.resource is not None
    assert found.resource.resource == resource
    assert found.server.issuer == issuer
    assert found.challenge_scopes == ("tools",)


def test_resource_metadata_for_another_resource_is_not_used(
    crafted: CraftedServer, http: httpx.Client
) -> None:
    crafted.answers["/mcp"] = (
        401,
        {"WWW-Authenticate": f'Bearer resource_metadata="{crafted.url}/prm"'},
        b"",
    )
    crafted.json(
        "/prm",
        {"resource": "https://other.example/mcp", "authorization_servers": ["https://as.example"]},
    )
    with pytest.raises(DiscoveryFailed, match=r"is for https://other.example/mcp.*RFC 9728"):
        discovery.discover(http, crafted.url + "/mcp", check)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ((200, {"Content-Type": "application/json"}, b"x" * 300_000), "more than 256,000 bytes"),
        (
            (200, {"Content-Type": "application/json"}, b'{"issuer": "a", "issuer": "b"}'),
            "appears twice",
        ),
        ((200, {"Content-Type": "application/json"}, b'{"issuer": NaN}'), "NaN is not JSON"),
        ((200, {"Content-Type": "application/json"}, b"[1, 2]"), None),
        ((200, {"Content-Type": "text/html"}, b"<html>sign in</html>"), None),
    ],
)
def test_malformed_or_huge_metadata_is_refused_clearly(
    crafted: CraftedServer, http: httpx.Client, answer: Answer, why: str | None
) -> None:
    crafted.answers["/.well-known/oauth-authorization-server"] = answer
    with pytest.raises(DiscoveryFailed) as refused:
        discovery.discover(http, crafted.url, check)
    message = refused.value.message
    assert why is None or why in message
    assert "sign in" not in message  # a server's page is never repeated


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"issuer": "https://elsewhere.example"}, "names the issuer https://elsewhere.example"),
        ({"code_challenge_methods_supported": ["plain"]}, "does not list PKCE with S256"),
        ({"code_challenge_methods_supported": None}, "no PKCE at all"),
        ({"token_endpoint_auth_methods_supported": ["private_key_jwt"]}, "only by private_key_jwt"),
        ({"response_types_supported": ["token"]}, "authorization code grant"),
        ({"token_endpoint": None}, "has no token_endpoint"),
        ({"token_endpoint": 42}, "token_endpoint must be a non-empty string"),
        ({"scopes_supported": "read write"}, "scopes_supported must be a list"),
        ({"token_endpoint": "https://169.254.169.254/token"}, "link-local"),
        ({"token_endpoint": "ftp://as.example/token"}, r"not an absolute http\(s\) URL"),
        ({"authorization_response_iss_parameter_supported": "yes"}, "must be true or false"),
    ],
)
def test_metadata_apiauth_cannot_use_safely_is_refused(
    crafted: CraftedServer, http: httpx.Client, changes: dict[str, Any], why: str
) -> None:
    crafted.json("/.well-known/oauth-authorization-server", crafted.metadata(crafted.url, changes))
    with pytest.raises((DiscoveryFailed, UrlNotAllowed), match=why):
        discovery.discover(http, crafted.url, check)


def test_pkce_may_be_waived_only_explicitly(crafted: CraftedServer, http: httpx.Client) -> None:
    crafted.json(
        "/.well-known/oauth-authorization-server",
        crafted.metadata(crafted.url, {"code_challenge_methods_supported": None}),
    )
    found = discovery.discover(http, crafted.url, check, allow_without_pkce=True)
    assert not found.server.s256


def test_nothing_found_says_what_was_tried(crafted: CraftedServer, http: httpx.Client) -> None:
    with pytest.raises(DiscoveryFailed) as refused:
        discovery.discover(http, crafted.url + "/api", check)
    assert "/.well-known/oauth-protected-resource/api (HTTP 404)" in refused.value.message
    assert "/.well-known/openid-configuration (HTTP 404)" in refused.value.message


@pytest.mark.parametrize(
    ("url", "setting"),
    [
        ("https://10.1.2.3/", "APIAUTH_ALLOW_PRIVATE_URLS=true"),
        ("https://10.1.2.3/", "APIAUTH_PROVIDER_HOSTS=10.1.2.3"),
        ("http://127.0.0.1:9/", "APIAUTH_ALLOW_LOOPBACK_URLS=true"),
    ],
)
def test_a_refused_provider_url_names_the_setting_that_allows_it(url: str, setting: str) -> None:
    with pytest.raises(UrlNotAllowed, match=setting.replace(".", r"\.")):
        check_url(url, UrlPolicy(providers=True), "provider URL")


def test_provider_hosts_open_private_addresses_to_providers_only() -> None:
    hooks = UrlPolicy()
    providers = hooks.for_providers(["gitlab.corp.example"])
    resolve = lambda host, port, **_: [(2, 1, 6, "", ("10.0.0.7", port))]  # noqa: E731
    assert check_url(
        "https://gitlab.corp.example/oauth/token", providers, "token URL", resolve=resolve
    )
    with pytest.raises(UrlNotAllowed, match="private address"):
        check_url("https://gitlab.corp.example/hook", hooks, "webhook URL", resolve=resolve)
    with pytest.raises(UrlNotAllowed, match="private address"):
        check_url("https://other.corp.example/token", providers, "token URL", resolve=resolve)
    with pytest.raises(UrlNotAllowed, match="must use https"):
        check_url("http://gitlab.corp.example/token", providers, "token URL", resolve=resolve)


def test_each_call_is_checked_again_before_it_is_sent() -> None:
    """A name that resolved to a public address when entered and to a metadata service
    later is refused at the call (DNS rebinding)."""
    answers = iter([[(2, 1, 6, "", ("169.254.169.254", 443))]])
    transport = GuardedTransport(UrlPolicy(providers=True), resolve=lambda *a, **k: next(answers))
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(UrlNotAllowed, match="link-local"),
    ):
        client.get("https://as.example/.well-known/oauth-authorization-server")


def test_www_authenticate_challenges_are_parsed_by_structure() -> None:
    header = (
        'Basic realm="x", Bearer realm="api", error="invalid_token", '
        'resource_metadata="https://api.example/.well-known/oauth-protected-resource", '
        'scope="a b", Negotiate'
    )
    assert parse_challenges([header]) == [
        ("Basic", {"realm": "x"}),
        (
            "Bearer",
            {
                "realm": "api",
                "error": "invalid_token",
                "resource_metadata": "https://api.example/.well-known/oauth-protected-resource",
                "scope": "a b",
            },
        ),
        ("Negotiate", {}),
    ]
    assert parse_challenges(['Bearer scope="unterminated']) == [("Bearer", {})]


def test_weakening_names_every_change_that_lowers_security() -> None:
    old = {
        "issuer": "https://as.example",
        "endpoints": {"token_endpoint": "https://as.example/token"},
        "code_challenge_methods_supported": ["S256"],
        "iss_parameter_supported": True,
    }
    same = discovery.ServerMetadata(
        issuer="https://as.example",
        metadata_url="https://as.example/.well-known/oauth-authorization-server",
        openid=False,
        authorization_endpoint="https://as.example/authorize",
        token_endpoint="https://as.example/v2/token",
        registration_endpoint=None,
        revocation_endpoint=None,
        userinfo_endpoint=None,
        jwks_uri=None,
        scopes_supported=(),
        grant_types_supported=("authorization_code",),
        code_challenge_methods_supported=("S256",),
        token_endpoint_auth_methods_supported=("client_secret_basic",),
        iss_parameter_supported=True,
        client_id_metadata_document_supported=False,
    )
    assert weakening(old, same) == []  # a moved endpoint is followed
    from dataclasses import replace

    worse = replace(
        same,
        issuer="https://evil.example",
        token_endpoint="http://as.example/token",
        code_challenge_methods_supported=(),
        iss_parameter_supported=False,
    )
    reasons = " / ".join(weakening(old, worse))
    assert "issuer changed" in reasons
    assert "token_endpoint moved from https to http" in reasons
    assert "PKCE with S256 is no longer offered" in reasons
    assert "no longer carries iss" in reasons
