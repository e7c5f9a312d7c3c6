"""The outbox of deploy hook calls and webhook events.

`enqueue` adds deliveries inside the caller's transaction, so that an event is recorded
exactly when the change it describes commits; the delivery worker (`delivery_worker.py`)
sends them later, at least once, so a slow receiver never delays a request.

A delivery is claimed with a lease (its `next_attempt_at` pushed forward) in a short
transaction — `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never claim the same row —
then POSTed outside any transaction, and its outcome written in another short one. A failed
attempt is retried after an exponential backoff with jitter (`backoff.py`); after
`MAX_ATTEMPTS` the row is kept, marked as given up.

Webhooks are signed the way Stripe signs its events: the header
`Apiauth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
from sqlalchemy import Text, cast, func, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from apiauth.domain.backoff import Backoff
from apiauth.domain.broker import Broker
from apiauth.domain.runtime import Wakeups
from apiauth.errors import UrlNotAllowed
from apiauth.store.db import database_unavailable, transaction
from apiauth.store.dialect import claim_rows
from apiauth.store.models import Delivery, Site, new_id
from apiauth.url_policy import check_url, pinned_request
from apiauth.vault import VaultError, record_aad

log = logging.getLogger(__name__)

# Netlify's "enabling API Authentication triggers a re-deploy": the events after which a
# site's build must run again because the tokens it reads changed.
DEPLOY_HOOK_EVENTS = frozenset(
    {
        "api_auth.enabled",
        "connection.created",
        "connection.updated",
        "connection.needs_reauth",
    }
)
WEBHOOK_EVENTS = frozenset(
    {
        "connection.created",
        "connection.updated",
        "connection.refreshed",
        "connection.refresh_failed",
        "connection.recovered",
        "connection.expiring",
        "connection.needs_reauth",
        "connection.deleted",
    }
)

SIGNATURE_HEADER = "Apiauth-Signature"
EVENT_HEADER = "Apiauth-Event"
DELIVERY_HEADER = "Apiauth-Delivery"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)

MAX_ATTEMPTS = 10
DeliveryOutcome = Literal["delivered", "retry", "gave_up"]
# Retries of a delivery wait `APIAUTH_DELIVERY_RETRY_SECONDS`, doubling, at most an hour.
MAX_BACKOFF_SECONDS = 3600.0
# How long a claimed delivery is ours: a process that dies mid-POST leaves a row that
# another process retries once this has passed.
LEASE_SECONDS = 60.0
_ERROR_LENGTH = 200


# --- enqueue ------------------------------------------------------------------------------


class HookedSite(Protocol):
    """What `enqueue` reads of a site: a `Site` row, or the refresher's `SiteHooks`."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def deploy_hook_url(self) -> str | None: ...

    @property
    def webhook_url(self) -> str | None: ...


def enqueue(
    broker: Broker, db: Session, site: HookedSite, event: str, detail: Mapping[str, Any]
) -> None:
    """Queue the deploy hook and the webhook the site has for `event` (never a token), in
    the caller's transaction `db`. The broker's delivery workers wake when it commits."""
    now = broker.clock()
    payload = {
        "event": event,
        "site": site.name,
        "created_at": now.isoformat(),
        "detail": dict(detail),
    }
    targets = []
    # A visitor's connection changes no token the site's build reads: no re-deploy for it.
    if event in DEPLOY_HOOK_EVENTS and site.deploy_hook_url and not detail.get("visitor_id"):
        targets.append(("deploy_hook", site.deploy_hook_url))
    if event in WEBHOOK_EVENTS and site.webhook_url:
        targets.append(("webhook", site.webhook_url))
    for kind, url in targets:
        db.add(
            Delivery(
                id=new_id("dlv"),
                site_id=site.id,
                kind=kind,
                event=event,
                url=url,
                payload=payload,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    if targets:
        _wake_after_commit(db, broker.runtime.delivery_wakeups)


def _wake_after_commit(db: Session, wakeups: Wakeups) -> None:
    if db.info.get("apiauth_wakes_deliveries"):
        return
    db.info["apiauth_wakes_deliveries"] = True

    def wake(session: Session) -> None:
        session.info.pop("apiauth_wakes_deliveries", None)
        wakeups.notify()

    sa_event.listen(db, "after_commit", wake, once=True)


# --- webhook secrets and signatures -------------------------------------------------------


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


def webhook_secret_aad(site_id: str) -> bytes:
    return record_aad("sites", site_id, "webhook_secret_enc")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Apiauth-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --- claiming and delivering --------------------------------------------------------------


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery, with what sending it needs. `secret` only for webhooks."""

    id: str
    kind: str
    event: str
    url: str
    payload: Mapping[str, Any]
    attempts: int
    secret: str | None

    def __repr__(self) -> str:
        return f"DueDelivery(id={self.id!r}, kind={self.kind!r}, event={self.event!r})"


_CLAIMED_COLUMNS = (
    Delivery.id,
    Delivery.site_id,
    Delivery.kind,
    Delivery.event,
    Delivery.url,
    # As text, parsed row by row: a payload that does not parse sets its row aside instead
    # of failing the whole claim, round after round.
    cast(Delivery.payload, Text).label("payload"),
    Delivery.attempts,
)


def _pending() -> Any:
    return (Delivery.delivered_at.is_(None)) & (Delivery.attempts < MAX_ATTEMPTS)


@dataclass(frozen=True)
class OutboxCounts:
    """What the outbox holds (for `apiauth_outbox_*`): deliveries still to be sent, by kind,
    when the oldest of them was written, and how many were given up."""

    pending: Mapping[str, int]
    oldest_pending_at: datetime | None
    given_up: int


def outbox_counts(db: Session) -> OutboxCounts:
    by_kind = select(Delivery.kind, func.count()).where(_pending()).group_by(Delivery.kind)
    pending: dict[str, int] = {row[0]: row[1] for row in db.execute(by_kind)}
    oldest: datetime | None = db.scalar(select(func.min(Delivery.created_at)).where(_pending()))
    given_up = db.scalar(
        select(func.count()).where(
            Delivery.delivered_at.is_(None), Delivery.attempts >= MAX_ATTEMPTS
        )
    )
    return OutboxCounts(pending, oldest, given_up or 0)


def next_attempt_time(broker: Broker) -> datetime | None:
    """When the earliest undelivered delivery is due (or its lease ends), if any."""
    with broker.sessions() as db:
        result: datetime | None = db.scalar(
            select(func.min(Delivery.next_attempt_at)).where(_pending())
        )
    return result


def claim_due_deliveries(broker: Broker, limit: int) -> list[DueDelivery]:
    """Take a lease on up to `limit` due deliveries, oldest first, in one short transaction."""
    if limit <= 0:
        return []
    now = broker.clock()
    due = _pending() & (Delivery.next_attempt_at <= now)
    with transaction(broker.sessions) as db:
        rows = claim_rows(
            db,
            select(Delivery.id)
            .where(due)
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(limit),
            update(Delivery)
            .where(due)
            .values(next_attempt_at=now + timedelta(seconds=LEASE_SECONDS)),
            Delivery.id,
            _CLAIMED_COLUMNS,
        )
        if not rows:
            return []
        site_ids = {row.site_id for row in rows if row.kind == "webhook"}
        sealed = dict(
            db.execute(select(Site.id, Site.webhook_secret_enc).where(Site.id.in_(site_ids))).all()
        )
    claimed = []
    for row in rows:
        payload = _parsed_payload(row.payload)
        if payload is None:
            set_aside(broker, row.id, row.kind, "its payload is not a JSON object")
            continue
        secret = None
        blob = sealed.get(row.site_id) if row.kind == "webhook" else None
        if blob is not None:
            try:
                secret = broker.vault.open_text(blob, webhook_secret_aad(row.site_id))
            except VaultError:
                log.error("the webhook secret of site %s does not open", row.site_id)
        claimed.append(
            DueDelivery(row.id, row.kind, row.event, row.url, payload, row.attempts, secret)
        )
    return claimed


def deliver(broker: Broker, due: DueDelivery) -> bool:
    """POST one delivery and record the outcome; True when the receiver answered 2xx.

    A delivery that cannot be sent or recorded because of what the row holds (not because
    the database is away) is set aside at once (`set_aside`) instead of failing again at
    every lease: one site's odd row never keeps the worker busy."""
    try:
        error = _post(broker, due)
    except Exception as exc:
        set_aside(broker, due.id, due.kind, f"it could not be sent ({type(exc).__name__})")
        return False
    try:
        outcome = _record_outcome(broker, due, error)
    except Exception as exc:
        if database_unavailable(exc):
            raise
        set_aside(
            broker, due.id, due.kind, f"its outcome could not be stored ({type(exc).__name__})"
        )
        return False
    broker.runtime.metrics.delivery(due.kind, outcome)
    return error is None


def _parsed_payload(stored: str | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    try:
        payload = json.loads(stored)
    except (ValueError, RecursionError):  # (RecursionError: nested thousands deep)
        return None
    return payload if isinstance(payload, dict) else None


SET_ASIDE_PREFIX = "set aside: "


def set_aside(broker: Broker, delivery_id: str, kind: str, why: str) -> None:
    """Give up a delivery whose row apiauth cannot handle, at once: kept, marked given up
    (`last_error` says why), logged by id only (its URL and payload came from a caller, and
    deploy hook URLs are often secret), counted in `apiauth_deliveries_set_aside_total`."""
    broker.runtime.metrics.delivery_set_aside(kind)
    log.error("set aside delivery %s (%s): %s", delivery_id, kind, why)
    try:
        with transaction(broker.sessions) as db:
            db.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(attempts=MAX_ATTEMPTS, last_error=(SET_ASIDE_PREFIX + why)[:_ERROR_LENGTH])
            )
    except Exception as exc:  # its lease lapses; it is set aside again next time
        log.warning("could not mark delivery %s set aside (%s)", delivery_id, type(exc).__name__)


def _post(broker: Broker, due: DueDelivery) -> str | None:
    body = json.dumps(due.payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: due.event,
        DELIVERY_HEADER: due.id,
    }
    if due.kind == "webhook":
        if due.secret is None:
            # Sites given a webhook URL before secrets existed: never send unsigned.
            return "the site's webhook secret is missing or unreadable: set its webhook URL again"
        headers[SIGNATURE_HEADER] = sign(due.secret, int(time.time()), body)
    what = "deploy hook URL" if due.kind == "deploy_hook" else "webhook URL"
    try:
        # Checked again now: the host's DNS answer may have changed since it was entered.
        checked = check_url(due.url, broker.url_policy, what, require_resolution=True)
    except UrlNotAllowed as exc:
        return f"not sent: {exc.message}"
    url, pinned_headers, extensions = pinned_request(checked)
    try:
        # `broker.http` follows no redirects: a 3xx cannot send us to a forbidden address.
        response = broker.http.post(
            url,
            content=body,
            headers={**headers, **pinned_headers},
            timeout=broker.settings.delivery_timeout_seconds,
            extensions=extensions,
        )
    except httpx.TimeoutException:
        return "the receiver did not answer in time"
    except httpx.HTTPError as exc:
        # The exception's text may hold the URL, and deploy hook URLs are often secret.
        return f"could not reach the receiver ({type(exc).__name__})"
    if 200 <= response.status_code < 300:
        return None
    return f"the receiver answered HTTP {response.status_code}"


def _record_outcome(broker: Broker, due: DueDelivery, error: str | None) -> DeliveryOutcome:
    now = broker.clock()
    with transaction(broker.sessions) as db:
        row = db.get(Delivery, due.id)
        if row is None or row.delivered_at is not None:
            return "delivered" if error is None else "gave_up"
        row.attempts += 1
        if error is None:
            row.delivered_at = now
            row.last_error = None
            return "delivered"
        error = error[:_ERROR_LENGTH]
        if row.attempts >= MAX_ATTEMPTS:
            row.last_error = f"gave up after {row.attempts} attempts: {error}"
            return "gave_up"
        row.last_error = error
        backoff = Backoff(broker.settings.delivery_retry_seconds, MAX_BACKOFF_SECONDS)
        delay = backoff.delay(row.attempts)
        row.next_attempt_at = now + timedelta(seconds=delay)
    return "retry"
