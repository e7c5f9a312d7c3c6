"""The client library against a real local HTTP server standing in for the broker.

No httpx mocks: a `ThreadingHTTPServer` on 127.0.0.1 serves whatever status and body a test
sets, counts requests and records the Authorization header, so the real HTTP path runs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("apiauth") is None:  # the package is not installed: use the tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import apiauth
from apiauth import client

pytestmark = pytest.mark.fast

SITE_TOKEN = "apiauth_site_s3cr3tS1teT0kenValue"
OTHER_TOKEN = "apiauth_fn_an0therSecretFnT0ken"
GITHUB_TOKEN = "gho_16C7e42F292c6912E7710c838347Ae178B4a"


def github(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "provider": "github",
        "bearer_token": GITHUB_TOKEN,
        "token_type": "bearer",
        "granted_scopes": ["repo", "read:user"],
        "is_logged_in": True,
        "expires_at": None,
        "account": {"id": "583231", "login": "octocat"},
        "extra": {},
    }
    entry.update(overrides)
    return entry


@dataclass
class FakeBroker:
    """What the local server answers, and what it saw."""

    url: str = ""
    status: int = 200
    body: Any = field(default_factory=lambda: {"github": github()})
    delay: float = 0.0
    requests: int = 0
    authorizations: list[str | None] = field(default_factory=list)
    user_agents: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    state = FakeBroker()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.requests += 1
                state.authorizations.append(self.headers.get("Authorization"))
                state.user_agents.append(self.headers.get("User-Agent"))
                state.paths.append(self.path)
            if state.delay:
                time.sleep(state.delay)
            body = state.body
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("APIAUTH_TOKEN", raising=False)
    monkeypatch.delenv("APIAUTH_URL", raising=False)
    apiauth.clear_cache()
    yield
    apiauth.clear_cache()


@pytest.fixture
def configured(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    monkeypatch.setenv("APIAUTH_TOKEN", SITE_TOKEN)
    monkeypatch.setenv("APIAUTH_URL", broker.url)
    return broker


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def in_iso(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# --- reading secrets


def test_a_function_reads_its_github_token_by_attribute_and_by_name(
    configured: FakeBroker,
) -> None:
    secrets = apiauth.get_secrets()

    assert secrets.github is not None
    assert secrets.github.bearer_token == GITHUB_TOKEN
    assert secrets["github"] is secrets.github
    assert secrets["github"].granted_scopes == ("repo", "read:user")
    assert secrets.github.account == apiauth.Account(id="583231", login="octocat")
    assert secrets.github.expires_at is None
    assert "github" in secrets
    assert len(secrets) == 1
    assert list(secrets) == ["github"]
    assert secrets.get("github") is secrets.github


def test_the_broker_is_called_with_the_token_and_a_user_agent(configured: FakeBroker) -> None:
    apiauth.get_secrets()

    assert configured.paths == ["/api/v1/secrets"]
    assert configured.authorizations == [f"Bearer {SITE_TOKEN}"]
    # The version is the installed package's (pyproject.toml), read in one place.
    assert configured.user_agents == [f"apiauth-python/{version('apiauth')}"]


def test_a_provider_that_is_not_connected_is_none_by_attribute(configured: FakeBroker) -> None:
    secrets = apiauth.get_secrets()

    assert secrets.spotify is None
    assert "spotify" not in secrets
    assert secrets.get("spotify") is None


def test_asking_for_a_missing_provider_by_name_lists_the_connected_ones(
    configured: FakeBroker,
) -> None:
    secrets = apiauth.get_secrets()

    with pytest.raises(KeyError, match="spotify") as caught:
        secrets["spotify"]
    assert "connected: github" in str(caught.value)


def test_a_provider_needing_reauthorization_is_still_returned(configured: FakeBroker) -> None:
    configured.body = {"github": github(bearer_token=None, is_logged_in=False)}

    secrets = apiauth.get_secrets()

    assert secrets.github is not None
    assert bool(secrets.github) is True
    assert secrets.github.is_logged_in is False
    assert secrets.github.bearer_token is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-28T07:00:00Z", datetime(2026, 11, 28, 7, 0, tzinfo=UTC)),
        ("2026-11-28T07:00:00+00:00", datetime(2026, 11, 28, 7, 0, tzinfo=UTC)),
        ("2026-11-28T09:00:00+02:00", datetime(2026, 11, 28, 7, 0, tzinfo=UTC)),
    ],
)
def test_expires_at_is_an_aware_datetime(
    configured: FakeBroker, raw: str, expected: datetime
) -> None:
    configured.body = {"github": github(expires_at=raw)}

    expires_at = apiauth.get_secrets()["github"].expires_at

    assert expires_at == expected
    assert expires_at is not None
    assert expires_at.tzinfo is not None


def test_unknown_fields_from_a_newer_broker_are_ignored(configured: FakeBroker) -> None:
    configured.body = {
        "github": github(refresh_hint="soon", account={"id": 583231, "login": "octocat", "x": 1}),
        "spotify": {
            "provider": "spotify",
            "bearer_token": "BQDspot",
            "granted_scopes": [],
            "is_logged_in": True,
            "expires_at": None,
            "account": None,
            "extra": {"product": "premium"},
            "new_field": [1, 2, 3],
        },
    }

    secrets = apiauth.get_secrets()

    assert secrets.github is not None
    assert secrets.github.account is not None
    assert secrets.github.account.id == "583231"
    assert secrets.spotify is not None
    assert secrets.spotify.extra == {"product": "premium"}
    assert secrets.spotify.account is None
    assert sorted(secrets) == ["github", "spotify"]


def test_secrets_survive_copy_and_pickle(configured: FakeBroker) -> None:
    secrets = apiauth.get_secrets()

    assert copy.copy(secrets) == secrets
    assert copy.deepcopy(secrets) == secrets
    restored = pickle.loads(pickle.dumps(secrets))
    assert restored == secrets
    assert restored.github == secrets.github


# --- the token stays secret


def test_repr_of_secrets_masks_bearer_tokens(configured: FakeBroker) -> None:
    secrets = apiauth.get_secrets()

    for text in (repr(secrets), str(secrets), repr(secrets.github)):
        assert GITHUB_TOKEN not in text
        assert GITHUB_TOKEN[:5] not in text
        assert "bearer_token='gho_…'" in text
        assert SITE_TOKEN not in text


@pytest.mark.parametrize(
    ("status", "body", "url", "error"),
    [
        (401, {"detail": "bad token"}, None, apiauth.Unauthorized),
        (500, {"detail": "boom"}, None, apiauth.BrokerUnavailable),
        (200, b"<html>not json</html>", None, apiauth.BrokerUnavailable),
        (200, {}, "closed", apiauth.BrokerUnavailable),
    ],
)
def test_no_error_message_contains_the_token(
    broker: FakeBroker,
    status: int,
    body: Any,
    url: str | None,
    error: type[apiauth.ApiAuthError],
) -> None:
    broker.status, broker.body = status, body
    target = closed_port_url() if url == "closed" else broker.url

    with pytest.raises(error) as caught:
        apiauth.get_secrets(token=SITE_TOKEN, url=target)

    message = str(caught.value)
    assert SITE_TOKEN not in message
    assert "s3cr3t" not in message
    assert SITE_TOKEN not in repr(caught.value)


# --- caching


def test_a_second_call_is_answered_from_the_cache(configured: FakeBroker) -> None:
    first = apiauth.get_secrets()
    second = apiauth.get_secrets()

    assert configured.requests == 1
    assert second is first


def test_a_token_expiring_within_the_margin_is_fetched_again(configured: FakeBroker) -> None:
    configured.body = {"github": github(expires_at=in_iso(client.EXPIRY_MARGIN / 2))}

    apiauth.get_secrets()
    apiauth.get_secrets()

    assert configured.requests == 2


def test_a_token_expiring_later_is_cached_until_shortly_before_it_expires(
    configured: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured.body = {"github": github(expires_at=in_iso(client.EXPIRY_MARGIN + 120))}
    apiauth.get_secrets()
    apiauth.get_secrets()
    assert configured.requests == 1

    now = time.time()
    monkeypatch.setattr(client, "_clock", lambda: now + 121)
    apiauth.get_secrets()
    assert configured.requests == 2


def test_without_expiry_the_cache_lasts_the_default_window(
    configured: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = time.time()
    monkeypatch.setattr(client, "_clock", lambda: start)
    apiauth.get_secrets()

    monkeypatch.setattr(client, "_clock", lambda: start + client.DEFAULT_CACHE_TTL - 1)
    apiauth.get_secrets()
    assert configured.requests == 1

    monkeypatch.setattr(client, "_clock", lambda: start + client.DEFAULT_CACHE_TTL + 1)
    apiauth.get_secrets()
    assert configured.requests == 2


def test_clear_cache_makes_the_next_call_ask_the_broker(configured: FakeBroker) -> None:
    apiauth.get_secrets()
    apiauth.clear_cache()
    apiauth.get_secrets()

    assert configured.requests == 2


def test_different_tokens_are_cached_separately(broker: FakeBroker) -> None:
    apiauth.get_secrets(token=SITE_TOKEN, url=broker.url)
    apiauth.get_secrets(token=OTHER_TOKEN, url=broker.url)
    apiauth.get_secrets(token=SITE_TOKEN, url=broker.url)
    apiauth.get_secrets(token=OTHER_TOKEN, url=broker.url)

    assert broker.requests == 2
    assert broker.authorizations == [f"Bearer {SITE_TOKEN}", f"Bearer {OTHER_TOKEN}"]


def test_errors_are_not_cached(configured: FakeBroker) -> None:
    configured.status = 500
    with pytest.raises(apiauth.BrokerUnavailable):
        apiauth.get_secrets()

    configured.status = 200
    assert apiauth.get_secrets().github is not None
    assert configured.requests == 2


def test_concurrent_threads_share_the_cache_safely(configured: FakeBroker) -> None:
    apiauth.get_secrets()
    results: list[apiauth.Secrets] = []

    def worker() -> None:
        for _ in range(50):
            results.append(apiauth.get_secrets())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert configured.requests == 1
    assert len(results) == 400


# --- configuration and errors


def test_without_apiauth_token_the_error_says_how_to_get_one() -> None:
    with pytest.raises(apiauth.NotConfigured) as caught:
        apiauth.get_secrets()

    message = str(caught.value)
    assert "APIAUTH_TOKEN" in message
    assert "apiauth sites enable" in message
    assert "apiauth run --" in message
    assert isinstance(caught.value, apiauth.ApiAuthError)


def test_apiauth_url_defaults_to_the_local_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIAUTH_TOKEN", SITE_TOKEN)
    assert client._resolve(None, None, None).url == "http://127.0.0.1:8000"


def test_keyword_arguments_override_the_environment(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIAUTH_TOKEN", "apiauth_site_fromTheEnvironment")
    monkeypatch.setenv("APIAUTH_URL", closed_port_url())

    apiauth.get_secrets(token=OTHER_TOKEN, url=broker.url + "/")

    assert broker.authorizations == [f"Bearer {OTHER_TOKEN}"]


def test_a_revoked_token_raises_unauthorized_asking_for_a_fresh_one(
    configured: FakeBroker,
) -> None:
    configured.status, configured.body = 401, {"detail": "token revoked"}

    with pytest.raises(apiauth.Unauthorized) as caught:
        apiauth.get_secrets()

    message = str(caught.value)
    assert "fresh" in message
    assert "apiauth_site_" in message  # the kind of token, never the token itself
    assert caught.value.status_code == 401


def test_forbidden_is_unauthorized_too(configured: FakeBroker) -> None:
    configured.status = 403

    with pytest.raises(apiauth.Unauthorized):
        apiauth.get_secrets()


def test_a_broker_that_is_not_running_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url()
    monkeypatch.setenv("APIAUTH_TOKEN", SITE_TOKEN)
    monkeypatch.setenv("APIAUTH_URL", url)

    with pytest.raises(apiauth.BrokerUnavailable) as caught:
        apiauth.get_secrets()

    message = str(caught.value)
    assert url in message
    assert "APIAUTH_URL" in message
    assert "apiauth serve" in message


def test_a_broker_error_is_unavailable(configured: FakeBroker) -> None:
    configured.status, configured.body = 500, {"detail": "database is down"}

    with pytest.raises(apiauth.BrokerUnavailable, match="500") as caught:
        apiauth.get_secrets()
    assert configured.url in str(caught.value)


def test_a_non_json_answer_is_unavailable(configured: FakeBroker) -> None:
    configured.body = b"<html>Welcome to nginx!</html>"

    with pytest.raises(apiauth.BrokerUnavailable, match="not JSON"):
        apiauth.get_secrets()


def test_a_json_answer_of_the_wrong_shape_is_unavailable(configured: FakeBroker) -> None:
    configured.body = ["github"]

    with pytest.raises(apiauth.BrokerUnavailable, match="unexpected answer"):
        apiauth.get_secrets()


def test_a_broker_that_does_not_answer_in_time_is_unavailable(
    configured: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "DEFAULT_TIMEOUT", 0.2)
    configured.delay = 1.0

    with pytest.raises(apiauth.BrokerUnavailable, match="no answer"):
        apiauth.get_secrets()


# --- events and handlers


def test_an_event_carrying_apiauth_token_supplies_the_token(broker: FakeBroker) -> None:
    event = {"apiauth_token": OTHER_TOKEN, "path": "/"}

    secrets = apiauth.get_secrets(event, url=broker.url)

    assert secrets.github is not None
    assert broker.authorizations == [f"Bearer {OTHER_TOKEN}"]


def test_an_event_without_a_token_falls_back_to_the_environment(configured: FakeBroker) -> None:
    apiauth.get_secrets({"path": "/"})
    apiauth.clear_cache()
    apiauth.get_secrets("not a mapping")

    assert configured.authorizations == [f"Bearer {SITE_TOKEN}"] * 2


def test_a_sync_handler_receives_secrets(configured: FakeBroker) -> None:
    @apiauth.with_secrets
    def handler(event: Any, context: Any, *, secrets: apiauth.Secrets) -> str:
        """Say who we are on GitHub."""
        assert secrets.github is not None
        assert secrets.github.account is not None
        return f"{event['name']}: {secrets.github.account.login}"

    assert handler({"name": "hello"}, None) == "hello: octocat"
    assert handler.__name__ == "handler"
    assert handler.__doc__ == "Say who we are on GitHub."


async def test_an_async_handler_receives_secrets(configured: FakeBroker) -> None:
    @apiauth.with_secrets
    async def handler(event: Any, context: Any, *, secrets: apiauth.Secrets) -> str:
        assert secrets.github is not None
        return secrets.github.bearer_token or ""

    assert await handler({}, None) == GITHUB_TOKEN
    assert handler.__name__ == "handler"
    assert configured.requests == 1


def test_a_handler_uses_the_token_from_its_event(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIAUTH_URL", broker.url)

    @apiauth.with_secrets
    def handler(event: Any, *, secrets: apiauth.Secrets) -> int:
        return len(secrets)

    assert handler({"apiauth_token": OTHER_TOKEN}) == 1
    assert broker.authorizations == [f"Bearer {OTHER_TOKEN}"]


def test_a_handler_called_with_explicit_secrets_skips_the_broker() -> None:
    @apiauth.with_secrets
    def handler(event: Any, *, secrets: apiauth.Secrets) -> int:
        return len(secrets)

    assert handler({}, secrets=apiauth.Secrets()) == 0


async def test_async_code_gets_secrets_and_shares_the_cache(configured: FakeBroker) -> None:
    from_async = await apiauth.get_secrets_async()
    from_sync = apiauth.get_secrets()

    assert from_async.github is not None
    assert from_async.github.bearer_token == GITHUB_TOKEN
    assert from_sync is from_async
    assert configured.requests == 1


async def test_async_errors_are_typed_too(configured: FakeBroker) -> None:
    configured.status = 401
    with pytest.raises(apiauth.Unauthorized):
        await apiauth.get_secrets_async()


# --- packaging


def test_importing_apiauth_loads_only_the_client_library() -> None:
    src = Path(apiauth.__file__).resolve().parents[1]
    code = "import apiauth, sys; print(sorted(m for m in sys.modules if m.startswith('apiauth')))"

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )

    assert result.stdout.strip() == "['apiauth', 'apiauth.client']"


def test_the_public_names_are_exported() -> None:
    assert apiauth.__version__ == "0.1.0"
    for name in apiauth.__all__:
        assert hasattr(apiauth, name), name
    assert issubclass(apiauth.NotConfigured, apiauth.ApiAuthError)
    assert issubclass(apiauth.Unauthorized, apiauth.ApiAuthError)
    assert issubclass(apiauth.BrokerUnavailable, apiauth.ApiAuthError)
