"""Class 3 of docs/SECURITY.md: nothing one caller sends stops a background worker or
another team's view. The audit buffer and the outbox set aside a row they cannot store
(logged without its content, counted) while the rest of their batch is stored; a worker
whose database is away backs off instead of spinning; every stored audit row renders; events
buffered at shutdown are written. SQLite and PostgreSQL, real servers."""

from __future__ import annotations

import logging
import re
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text, update

from apiauth.domain import deliveries
from apiauth.domain.audit import AuditBuffer
from apiauth.domain.background import BackgroundThread
from apiauth.domain.broker import Broker
from apiauth.domain.delivery_worker import DeliveryWorker
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.sites import create_site, delete_site
from apiauth.store.db import session_factory
from apiauth.store.models import AuditEvent, Connection, Delivery, new_id, utcnow
from tests.databases import fresh_postgres_database
from tests.live_site import Site as LiveSite
from tests.processes import ServerProcess
from tests.seeding import seed_site
from tests.servers import (
    HookReceiver,
    LiveServer,
    free_port,
    make_settings,
    open_test_broker,
    running_server,
)

SECRET_LOOKING = "do-not-log-this-value-7f3a"


def stored_events(broker: Broker, site_id: str) -> list[AuditEvent]:
    with broker.sessions() as db:
        query = select(AuditEvent).where(AuditEvent.site_id == site_id).order_by(AuditEvent.id)
        return list(db.scalars(query))


def buffered(buffer: AuditBuffer, site_id: str, kind: str = "test.event", **detail: Any) -> None:
    buffer.add(site_id, kind, "tester", detail, ip="127.0.0.1", at=_now())


def _now() -> datetime:
    return utcnow()


@pytest.fixture
def member(broker: Broker) -> MemberView:
    return create_member(broker, "owner@example.com", "correct horse battery")


def test_an_audit_row_the_database_refuses_is_set_aside_and_the_rest_of_its_batch_is_stored(
    live: LiveServer, broker: Broker, member: MemberView, caplog: pytest.LogCaptureFixture
) -> None:
    """Four members of the class in one batch, between good rows of two sites: an event of
    a site deleted while it waited (a foreign key), a detail JSON cannot encode, a kind and
    an address past their columns (PostgreSQL refuses them; SQLite stores what it is given).
    Every good row is stored, in order; the refused ones are counted and logged by kind and
    site only."""
    kept = create_site(broker, member, "kept-site")
    doomed = create_site(broker, member, "doomed-site")
    buffer = AuditBuffer()
    buffered(buffer, kept.id, n=1)
    buffered(buffer, doomed.id, secret=SECRET_LOOKING)
    buffered(buffer, kept.id, n=2)
    buffer.add(kept.id, "test.event", "tester", {"odd": {1, 2}}, ip=None, at=_now())
    buffered(buffer, kept.id, n=3)
    # (An over-long actor is cut to fit, class 4: stored everywhere.)
    buffer.add(kept.id, "test.event", "x" * 300 + SECRET_LOOKING, {"n": 4}, ip=None, at=_now())
    buffer.add(kept.id, "k" * 100, "tester", {}, ip=None, at=_now())
    buffer.add(kept.id, "test.event", "tester", {"v": SECRET_LOOKING}, ip="1" * 100, at=_now())
    buffered(buffer, kept.id, n=5)
    delete_site(broker, member, "doomed-site")

    with caplog.at_level(logging.ERROR, logger="apiauth.domain.audit"):
        written = buffer.flush(broker.sessions)

    postgres = broker.engine.dialect.name == "postgresql"
    refused = 4 if postgres else 2  # SQLite keeps over-long text
    assert written == 9 - refused
    assert buffer.set_aside == refused
    assert len(buffer) == 0
    numbered = [row.detail["n"] for row in stored_events(broker, kept.id) if "n" in row.detail]
    assert numbered == [1, 2, 3, 4, 5]
    assert len(caplog.records) == refused
    assert all("set aside an audit event" in record.getMessage() for record in caplog.records)
    assert SECRET_LOOKING not in caplog.text
    assert "xxxxxxxx" not in caplog.text


def test_another_sites_unstorable_event_does_not_fail_this_sites_events_page(
    live: LiveServer, broker: Broker, member: MemberView, http: httpx.Client
) -> None:
    """Team A's site is deleted while one of its events waits in the buffer; team B's events
    page (which writes the buffer first) still answers, with B's events, and the metric
    counts the row set aside."""
    pat = {"Authorization": f"Bearer {create_personal_token(broker, member, 'tests')}"}
    api = live.url + "/api/v1"
    other = create_member(broker, "other@example.com", "another horse battery", team_name="team-b")
    doomed = create_site(broker, other, "doomed-site")
    assert http.post(f"{api}/sites", json={"name": "my-site"}, headers=pat).status_code == 201
    buffer = broker.runtime.audit_buffer
    buffer.max_delay_seconds = 60.0  # (the worker must not write it before the deletion)
    buffered(buffer, doomed.id)
    delete_site(broker, other, "doomed-site")

    for _ in range(3):
        page = http.get(f"{api}/sites/my-site/events", headers=pat)
        assert page.status_code == 200, page.text
        assert [event["kind"] for event in page.json()["events"]] == ["site.created"]
    assert buffer.set_aside == 1
    assert len(buffer) == 0


ODD_DETAILS_BOTH = [
    "[1, 2, 3]",  # not an object
    '"just text"',
    "null",
    "42",
    '{"nested": {"deep": [{"x": null}]}, "unicode": "\\u00e9\\u4e2d"}',
    '{"lone": "\\ud800", "nul": "a\\u0000b"}',  # a lone surrogate cannot be UTF-8
    "[" * 5000 + "]" * 5000,  # deeper than Python's parser goes
]
ODD_DETAILS_SQLITE = [
    "{not json at all",  # json would refuse it on PostgreSQL
    '{"n": NaN, "i": Infinity}',
    "",
]


def test_every_stored_audit_row_renders_in_the_api_and_the_dashboard(
    live: LiveServer, broker: Broker, member: MemberView, http: httpx.Client
) -> None:
    """Rows written by hand or an older version, whatever their `detail` holds, are shown
    (non-objects under `value`, text that is not JSON as `unreadable`), never a 5xx."""
    site = create_site(broker, member, "my-site")
    odd = list(ODD_DETAILS_BOTH)
    if broker.engine.dialect.name == "sqlite":
        odd += ODD_DETAILS_SQLITE
    with broker.engine.begin() as db:
        for stored in odd:
            db.execute(
                text(
                    "INSERT INTO audit_events (site_id, kind, actor, detail, ip, created_at) "
                    "VALUES (:site, 'odd.row', :actor, :detail, :ip, :at)"
                ),
                {
                    "site": site.id,
                    "actor": "someone \u00e9",
                    "detail": stored,
                    "ip": "not an address",
                    "at": _now().replace(tzinfo=None),
                },
            )
    pat = {"Authorization": f"Bearer {create_personal_token(broker, member, 'tests')}"}
    page = http.get(f"{live.url}/api/v1/sites/my-site/events?limit=200", headers=pat)
    assert page.status_code == 200, page.text
    shown = [event for event in page.json()["events"] if event["kind"] == "odd.row"]
    assert len(shown) == len(odd)
    assert all(isinstance(event["detail"], dict) for event in shown)
    details = [event["detail"] for event in reversed(shown)]
    assert details[0] == {"value": [1, 2, 3]}
    assert details[2] == {"value": None}
    assert "nested too deeply" in details[len(ODD_DETAILS_BOTH) - 1]["unreadable"]
    if len(odd) > len(ODD_DETAILS_BOTH):
        assert "unreadable" in details[len(ODD_DETAILS_BOTH)]

    with httpx.Client(timeout=15) as browser:
        form = browser.get(f"{live.url}/sign-in")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf, form.text
        signed_in = browser.post(
            f"{live.url}/sign-in",
            data={
                "email": "owner@example.com",
                "password": "correct horse battery",
                "csrf_token": csrf.group(1),
            },
        )
        assert signed_in.status_code == 303
        dashboard = browser.get(f"{live.url}/sites/my-site/events")
    assert dashboard.status_code == 200, dashboard.text[:500]
    assert dashboard.text.count("odd.row") >= len(odd)


def test_the_audit_buffer_backs_off_while_the_database_is_away(tmp_path: Path) -> None:
    """A database without the table (as when it is restored, or failing over): the buffer
    keeps its events, and waits before each retry longer than before, instead of being due
    again at once (which made the delivery worker spin)."""
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    buffer = AuditBuffer()
    buffered(buffer, "site_x")
    waits = []
    for _ in range(3):
        with pytest.raises(Exception, match="no such table"):
            buffer.flush(session_factory(empty))
        due = buffer.due_in()
        assert due is not None
        waits.append(due)
        buffer._retry_at = time.monotonic()
    assert len(buffer) == 1
    assert waits[0] >= 0.9
    assert waits[1] > waits[0] * 1.5
    assert waits[2] > waits[1] * 1.5
    assert buffer.set_aside == 0


def test_the_delivery_worker_does_not_spin_when_it_cannot_write_the_audit_buffer(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit table gone: in two seconds the worker tries once or twice, not thousands
    of times, and the buffered event is still there to be written later."""
    broker = open_test_broker(make_settings(tmp_path, database_url, free_port()))
    try:
        with broker.engine.begin() as db:
            db.execute(text("DROP TABLE audit_events"))
        buffered(broker.runtime.audit_buffer, "site_x")
        broker.runtime.audit_buffer.max_delay_seconds = 0.0
        worker = DeliveryWorker(broker)
        with caplog.at_level(logging.ERROR, logger="apiauth.domain.delivery_worker"):
            worker.start()
            time.sleep(2.0)
            broker.runtime.audit_buffer.wakeup = None
            # The thread alone: `DeliveryWorker.stop` would try the buffer once more.
            BackgroundThread.stop(worker)
        attempts = [r for r in caplog.records if "could not write buffered" in r.getMessage()]
        assert 1 <= len(attempts) <= 3, len(attempts)
        assert len(broker.runtime.audit_buffer) == 1
    finally:
        broker.close()


def insert_delivery(broker: Broker, site_id: str, url: str) -> str:
    row_id = new_id("dlv")
    with broker.sessions() as db, db.begin():
        db.add(
            Delivery(
                id=row_id,
                site_id=site_id,
                kind="deploy_hook",
                event="connection.created",
                url=url,
                payload={"event": "connection.created", "site": "s", "detail": {}},
                attempts=0,
                next_attempt_at=broker.clock() - timedelta(seconds=1),
                created_at=broker.clock(),
            )
        )
    return row_id


def test_a_delivery_that_cannot_be_read_or_sent_is_set_aside_and_the_others_are_delivered(
    live: LiveServer, broker: Broker, member: MemberView, hook_receiver: HookReceiver
) -> None:
    """Among good deliveries: a payload that is not a JSON object, one nested 5000 deep
    (both databases keep it; Python's parser gives up), and on SQLite a payload that is not
    JSON at all. The good ones arrive; the others are given up at once (`set aside: …`),
    counted, never retried. A URL stored with a control character is refused by the URL
    policy when sent (a failed attempt, nothing sent)."""
    site = create_site(broker, member, "my-site")
    good_url = hook_receiver.url
    good = [insert_delivery(broker, site.id, good_url) for _ in range(2)]
    not_object = insert_delivery(broker, site.id, good_url)
    too_deep = insert_delivery(broker, site.id, good_url)
    # Stored before URLs were checked for control characters: refused when sent (no request).
    bad_url = insert_delivery(broker, site.id, good_url + "/hook\x01")
    odd = [not_object, too_deep]
    if broker.engine.dialect.name == "sqlite":
        odd.append(insert_delivery(broker, site.id, good_url))
    with broker.engine.begin() as db:
        db.execute(
            update(Delivery).where(Delivery.id == not_object).values(payload="just a string")
        )
        db.execute(
            text("UPDATE deliveries SET payload = :deep WHERE id = :id"),
            {"deep": "[" * 5000 + "]" * 5000, "id": too_deep},
        )
        if len(odd) > 2:
            db.execute(
                text("UPDATE deliveries SET payload = '{oops' WHERE id = :id"), {"id": odd[2]}
            )
    good.append(insert_delivery(broker, site.id, good_url))
    broker.runtime.delivery_wakeups.notify()

    assert len(hook_receiver.wait_for(len(good))) == len(good)
    deadline = time.monotonic() + 10
    while True:
        with broker.sessions() as db:
            columns = (Delivery.id, Delivery.attempts, Delivery.delivered_at, Delivery.last_error)
            rows = {row.id: row for row in db.execute(select(*columns))}
        if (
            all(rows[i].attempts >= deliveries.MAX_ATTEMPTS for i in odd)
            and all(rows[i].delivered_at is not None for i in good)
            and rows[bad_url].attempts == 1
        ):
            break
        assert time.monotonic() < deadline, {i: rows[i].last_error for i in odd}
        time.sleep(0.05)
    assert all(rows[i].delivered_at is not None for i in good)
    for row_id in odd:
        assert rows[row_id].delivered_at is None
        assert (rows[row_id].last_error or "").startswith(deliveries.SET_ASIDE_PREFIX)
    assert (rows[bad_url].last_error or "").startswith("not sent: ")
    assert "control characters" in (rows[bad_url].last_error or "")
    counted = broker.runtime.metrics.registry.get_sample_value(
        "apiauth_deliveries_set_aside_total", {"kind": "deploy_hook"}
    )
    assert counted == len(odd)
    time.sleep(0.3)
    assert len(hook_receiver.received) == len(good)


def reads_survive_a_sigterm(server: ServerProcess) -> None:
    """Four secrets reads (each its own connection, so that `--workers` spreads them), then
    SIGTERM at once, a restart, and the four are in the audit log."""
    seeded = seed_site(server, "my-site")
    pat, site_token = seeded.personal_token, seeded.site_token
    tokens = [site_token]
    for _ in range(3):
        minted = httpx.post(
            f"{server.url}/api/v1/function-tokens",
            json={"ttl_seconds": 300},
            headers={"Authorization": f"Bearer {site_token}"},
        )
        assert minted.status_code == 201, minted.text
        tokens.append(minted.json()["token"])
    time.sleep(1.5)  # (what came before the reads is written by now)
    for token in tokens:  # (buffered for up to a second: SIGTERM comes well before)
        answer = httpx.get(
            f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200
    assert server.stop() in (0, -signal.SIGTERM)  # (uvicorn re-raises the signal it handled)
    server.start()
    page = httpx.get(
        f"{server.url}/api/v1/sites/my-site/events?limit=200",
        headers={"Authorization": f"Bearer {pat}"},
    )
    assert page.status_code == 200, page.text
    reads = [event for event in page.json()["events"] if event["kind"] == "secrets.read"]
    assert len(reads) == len(tokens), reads


def test_events_buffered_at_shutdown_are_written_not_lost(
    tmp_path: Path, database_url: str
) -> None:
    server = ServerProcess(tmp_path, database_url, free_port())
    server.start()
    try:
        reads_survive_a_sigterm(server)
    finally:
        server.stop()


@pytest.mark.postgres
def test_events_buffered_in_each_worker_process_at_shutdown_are_written(tmp_path: Path) -> None:
    """`apiauth serve --workers 2` (PostgreSQL): every process writes its buffer on SIGTERM."""
    for database_url in fresh_postgres_database():
        server = ServerProcess(tmp_path, database_url, free_port())
        server.extra_args = ["--workers", "2"]
        server.start()
        try:
            reads_survive_a_sigterm(server)
        finally:
            server.stop()


def test_a_providers_endless_retry_after_does_not_lose_the_refreshes_of_its_batch(
    tmp_path: Path, database_url: str
) -> None:
    """Box answers a refresh with 429 and `Retry-After: 1e20` (no date holds it): before,
    storing the batch overflowed and every refresh in it was lost (Spotify's too, its new
    token spent). Now Box waits at most a day, Spotify's refresh is stored, and the
    refresher goes on."""
    with (
        running_server(tmp_path, database_url, emulator_token_ttl=3) as server,
        httpx.Client(timeout=15) as http,
    ):
        site = LiveSite(server, http)
        site.connect("box")
        site.connect("spotify")
        site.fault("box", "token", status=429, headers={"Retry-After": "1e20"}, times=1)
        started = server.broker.clock()
        deadline = time.monotonic() + 20
        while True:
            box, spotify = site.connection("box"), site.connection("spotify")
            if box.degraded_since is not None and spotify.last_refreshed_at is not None:
                break
            assert time.monotonic() < deadline, (box, spotify)
            time.sleep(0.1)
    assert spotify.status == "connected"
    with server.broker.sessions() as db:
        due = db.scalar(select(Connection.refresh_due_at).where(Connection.provider == "box"))
    assert due is not None
    assert due <= started + timedelta(days=1.25)
