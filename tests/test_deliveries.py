"""Deploy hooks and webhooks: fired on the events that change what a site's build reads,
delivered at least once from the outbox by the background worker, retried with backoff,
signed (webhooks), and never in a request's way. The fast tier (the app in-process, the
delivery worker running as in `serve`, time moved by the test), real receivers over HTTP,
SQLite and PostgreSQL; the CLI as a user runs it against a live server."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from apiauth.domain import deliveries
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_personal_token
from apiauth.domain.token_store import MARGIN_FRACTION
from apiauth.store.models import Delivery
from tests.consent import consent
from tests.in_process import InProcessServer
from tests.processes import apiauth_env, run_cli
from tests.servers import HookReceiver, LiveServer

README = Path(__file__).resolve().parent.parent / "README.md"
TTL = 4
MARGIN = 2
# When a token of TTL falls due at the latest: its margin is the smaller of MARGIN and a
# fifth of its lifetime (the refresh storm's fix, issue 12).
DUE = TTL - min(MARGIN, TTL * MARGIN_FRACTION)
STEP = 0.1


def readme_verify() -> Callable[[str, str, bytes], bool]:
    """The verification snippet of the README's webhook section, run as a receiver would."""
    section = README.read_text().split("## Deploy hooks and webhooks", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README shows how to verify a webhook signature"
    namespace: dict[str, Any] = {}
    exec(match.group(1), namespace)
    verify: Callable[[str, str, bytes], bool] = namespace["verify"]
    return verify


@pytest.fixture
def app_settings() -> dict[str, object]:
    """Failed deliveries are retried after 0.2 s, 0.4 s, … instead of 5 s, 10 s, …; emulated
    tokens live 4 s."""
    return {
        "delivery_retry_seconds": 0.2,
        "emulator_token_ttl": TTL,
        "refresh_margin_seconds": MARGIN,
    }


@pytest.fixture
def api(live: LiveServer) -> str:
    return live.url + "/api/v1"


@pytest.fixture
def pat(broker: Broker, owner: MemberView) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_personal_token(broker, owner, 'tests')}"}


def create_site(http: httpx.Client, api: str, pat: dict[str, str], **urls: str) -> Any:
    created = http.post(f"{api}/sites", json={"name": "my-site", **urls}, headers=pat)
    assert created.status_code == 201, created.text
    return created.json()


def connect(http: httpx.Client, api: str, pat: dict[str, str], provider: str, **body: Any) -> None:
    started = http.post(
        f"{api}/sites/my-site/connections", json={"provider": provider, **body}, headers=pat
    )
    assert started.status_code == 200, started.text
    assert consent(http, started.json()["authorize_url"]).status_code == 200


def events_of(posts: list[Any]) -> list[str]:
    return [post["event"] for post in posts]


def only_delivery(broker: Broker, settled: Callable[[Delivery], bool]) -> Delivery:
    """The one outbox row, once `settled` (the worker records an outcome after the POST)."""
    deadline = time.monotonic() + 15
    while True:
        with broker.sessions() as db:
            [row] = db.scalars(select(Delivery))
        if settled(row) or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def pass_time(app: InProcessServer, receiver: HookReceiver, until: Callable[[], bool]) -> float:
    """Time passes, STEP by STEP, for the delivery worker (woken each step) until `until`
    holds; each step waits (a moment, in real time) for a request it may have sent. How
    much time passed."""
    passed = 0.0
    while not until():
        assert passed < 60, "not delivered within a minute"
        arrived = len(receiver.received)
        app.advance(STEP)
        passed += STEP
        receiver.wait_for_requests(arrived + 1, timeout=0.05)
    return passed


@pytest.mark.fast
def test_deploy_hook_fires_on_enable_connect_and_scope_change_but_not_on_disconnect(
    http: httpx.Client, api: str, pat: dict[str, str], hook_receiver: HookReceiver
) -> None:
    create_site(http, api, pat, deploy_hook_url=hook_receiver.url)
    assert http.post(f"{api}/sites/my-site/api-auth", headers=pat).status_code == 200
    assert events_of(hook_receiver.wait_for(1)) == ["api_auth.enabled"]

    connect(http, api, pat, "github", scopes=["repo"])
    posts = hook_receiver.wait_for(2)
    assert posts[1]["event"] == "connection.created"
    assert posts[1]["site"] == "my-site"
    assert posts[1]["detail"]["provider"] == "github"

    connect(http, api, pat, "github", scopes=["repo", "read:user"])
    posts = hook_receiver.wait_for(3)
    assert posts[2]["event"] == "connection.updated"
    assert posts[2]["detail"]["granted_scopes"] == ["repo", "read:user"]

    deleted = http.delete(f"{api}/sites/my-site/connections/github", headers=pat)
    assert deleted.status_code == 200
    # Disconnecting does not re-deploy: the next hook call is the next connection's.
    connect(http, api, pat, "spotify")
    assert events_of(hook_receiver.wait_for(4)) == [
        "api_auth.enabled",
        "connection.created",
        "connection.updated",
        "connection.created",
    ]
    for received in hook_receiver.received:
        assert received.headers["content-type"] == "application/json"
        assert "apiauth-signature" not in received.headers
        assert received.headers["apiauth-delivery"].startswith("dlv_")


@pytest.mark.fast
def test_deploy_hook_fires_when_a_connection_needs_reauthorization(
    app: InProcessServer,
    http: httpx.Client,
    api: str,
    pat: dict[str, str],
    hook_receiver: HookReceiver,
) -> None:
    create_site(http, api, pat, deploy_hook_url=hook_receiver.url)
    site_token = http.post(f"{api}/sites/my-site/api-auth", headers=pat).json()["token"]
    connect(http, api, pat, "box")
    assert events_of(hook_receiver.wait_for(2)) == ["api_auth.enabled", "connection.created"]
    # The owner revokes apiauth at Box: the refresh token dies with the access token.
    box = app.broker.catalog["box"]
    client = app.broker.default_apps["box"]
    secrets = http.get(f"{api}/secrets", headers={"Authorization": f"Bearer {site_token}"})
    assert box.revoke_url is not None
    revoked = http.post(
        box.revoke_url,
        data={
            "client_id": client.client_id,
            "client_secret": client.client_secret or "",
            "token": secrets.json()["box"]["bearer_token"],
        },
    )
    assert revoked.status_code == 200
    app.advance(DUE + 0.3)
    # The next read finds the refresh token refused.
    http.get(f"{api}/secrets", headers={"Authorization": f"Bearer {site_token}"})
    posts = hook_receiver.wait_for(3)
    assert posts[2]["event"] == "connection.needs_reauth"
    assert posts[2]["detail"]["provider"] == "box"


@pytest.mark.fast
def test_webhook_events_are_signed_with_the_secret_shown_at_creation(
    http: httpx.Client, api: str, pat: dict[str, str], hook_receiver: HookReceiver
) -> None:
    verify = readme_verify()
    site = create_site(http, api, pat, webhook_url=hook_receiver.url)
    secret = site["webhook_secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    # Shown once: reading the site again does not show it.
    assert "webhook_secret" not in http.get(f"{api}/sites/my-site", headers=pat).json()
    assert http.post(f"{api}/sites/my-site/api-auth", headers=pat).status_code == 200

    connect(http, api, pat, "github")
    assert http.delete(f"{api}/sites/my-site/connections/github", headers=pat).status_code == 200
    # Due deliveries go out concurrently: they may arrive in either order.
    posts = sorted(hook_receiver.wait_for(2), key=lambda post: post["created_at"])

    # api_auth.enabled is for deploy hooks only; the webhook hears about connections.
    assert events_of(posts) == ["connection.created", "connection.deleted"]
    assert posts[1]["detail"] == {"provider": "github", "revoked_at_provider": True}
    delivery_ids = set()
    for received in hook_receiver.received:
        header = received.headers["apiauth-signature"]
        assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
        assert verify(secret, header, received.body)
        assert received.headers["apiauth-event"] in received.body.decode()
        delivery_ids.add(received.headers["apiauth-delivery"])
        assert secret not in received.body.decode()
        # A tampered body, another secret or a replayed old signature fail verification.
        assert not verify(secret, header, received.body.replace(b"github", b"gitlab"))
        assert not verify(secret, header, received.body + b" ")
        assert not verify("whsec_" + "x" * 43, header, received.body)
        stale = "t=1000000000," + header.split(",", 1)[1]
        assert not verify(secret, stale, received.body)
    assert len(delivery_ids) == 2


@pytest.mark.fast
def test_a_new_webhook_url_gets_a_new_secret_and_the_same_url_keeps_it(
    http: httpx.Client, api: str, pat: dict[str, str], hook_receiver: HookReceiver
) -> None:
    first = create_site(http, api, pat)["webhook_secret"]
    assert first is None
    given = http.patch(
        f"{api}/sites/my-site", json={"webhook_url": hook_receiver.url}, headers=pat
    ).json()["webhook_secret"]
    assert given.startswith("whsec_")
    again = http.patch(
        f"{api}/sites/my-site", json={"webhook_url": hook_receiver.url}, headers=pat
    ).json()["webhook_secret"]
    assert again is None
    moved = http.patch(
        f"{api}/sites/my-site", json={"webhook_url": hook_receiver.url + "/v2"}, headers=pat
    ).json()["webhook_secret"]
    assert moved.startswith("whsec_")
    assert moved != given

    connect(http, api, pat, "github")
    hook_receiver.wait_for(1)
    received = hook_receiver.received[0]
    assert readme_verify()(moved, received.headers["apiauth-signature"], received.body)
    assert not readme_verify()(given, received.headers["apiauth-signature"], received.body)


@pytest.mark.fast
def test_a_failing_receiver_gets_the_event_on_a_later_retry(
    app: InProcessServer,
    broker: Broker,
    http: httpx.Client,
    api: str,
    pat: dict[str, str],
    hook_receiver: HookReceiver,
) -> None:
    hook_receiver.fail_first = 2
    create_site(http, api, pat, deploy_hook_url=hook_receiver.url)
    assert http.post(f"{api}/sites/my-site/api-auth", headers=pat).status_code == 200
    assert hook_receiver.wait_for_requests(1, timeout=10)  # the first attempt, at once

    # Retried after 0.2 s, then 0.4 s (+ jitter): not before.
    passed = pass_time(app, hook_receiver, lambda: len(hook_receiver.posts) >= 1)
    assert passed >= 0.2 + 0.4 - STEP
    assert events_of(hook_receiver.posts) == ["api_auth.enabled"]
    assert [r.status for r in hook_receiver.received] == [500, 500, 200]
    # The same delivery each time, so that a receiver can dedupe.
    assert len({r.headers["apiauth-delivery"] for r in hook_receiver.received}) == 1
    row = only_delivery(broker, lambda row: row.delivered_at is not None)
    assert row.attempts == 3
    assert row.delivered_at is not None
    assert row.last_error is None


@pytest.mark.fast
def test_a_receiver_that_never_answers_2xx_is_given_up_on_and_the_row_kept(
    app: InProcessServer,
    broker: Broker,
    http: httpx.Client,
    api: str,
    pat: dict[str, str],
    hook_receiver: HookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deliveries, "MAX_ATTEMPTS", 3)
    hook_receiver.fail_first = 1000
    create_site(http, api, pat, deploy_hook_url=hook_receiver.url)
    assert http.post(f"{api}/sites/my-site/api-auth", headers=pat).status_code == 200

    def given_up() -> bool:
        return (only_delivery(broker, lambda _: True).last_error or "").startswith("gave up")

    pass_time(app, hook_receiver, given_up)
    row = only_delivery(broker, lambda row: (row.last_error or "").startswith("gave up"))
    assert row.last_error == "gave up after 3 attempts: the receiver answered HTTP 500"
    assert row.delivered_at is None
    # An hour on, far past any backoff: no fourth attempt.
    app.advance(3600)
    assert not hook_receiver.wait_for_requests(4, timeout=0.5)
    assert len(hook_receiver.received) == 3


@pytest.mark.fast
def test_a_slow_receiver_does_not_slow_enabling(
    http: httpx.Client, api: str, pat: dict[str, str], hook_receiver: HookReceiver
) -> None:
    hook_receiver.delay = 2
    create_site(http, api, pat, deploy_hook_url=hook_receiver.url)
    started = time.monotonic()
    enabled = http.post(f"{api}/sites/my-site/api-auth", headers=pat)
    assert enabled.status_code == 200
    assert time.monotonic() - started < 1  # (in-process, enabling takes milliseconds)
    # …and the hook is still delivered, once the receiver gets round to answering.
    assert events_of(hook_receiver.wait_for(1, timeout=15)) == ["api_auth.enabled"]


def test_sites_create_prints_the_webhook_secret_once(
    live: LiveServer, tmp_path: Path, database_url: str, owner: MemberView
) -> None:
    port = int(live.url.rsplit(":", 1)[1])
    env = apiauth_env(tmp_path / "data", database_url, port)
    made = run_cli(["sites", "create", "cli-site", "--webhook", "https://example.com/h"], env)
    assert made.returncode == 0, made.stderr
    assert re.fullmatch(r"Created site cli-site\..*\nwhsec_[\w-]{43}\n", made.stdout, re.S)
    assert "shown once" in made.stderr
    listed = run_cli(["sites", "list"], env)
    assert "whsec_" not in listed.stdout + listed.stderr
