"""The outbox of deploy hook calls and webhook events.

`enqueue` adds deliveries inside the caller's transaction, so that an event is recorded
exactly when the change it describes commits; the delivery worker (`delivery_worker.py`)
sends them later, at least once, so a slow receiver never delays a request.

A delivery is claimed with a lease (its `next_attempt_at` pushed forward) in a short
transaction — `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never claim the same row —
then POSTed outside any transaction, and its outcome written in another short one. A failed
attempt is retried after an exponential backoff with jitter; after `MAX_ATTEMPTS` the row is
kept, marked as given up.

Webhooks are signed the way Stripe signs its events: the header
`Apiauth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import Engine, func, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.errors import UrlNotAllowed
from apiauth.store.db import transaction
from apiauth.store.models import Delivery, Site, new_id, utcnow
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
        "connection.needs_reauth",
        "connection.deleted",
    }
)

SIGNATURE_HEADER = "Apiauth-Signature"
EVENT_HEADER = "Apiauth-Event"
DELIVERY_HEADER = "Apiauth-Delivery"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)

MAX_ATTEMPTS = 10
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


def enqueue(db: Session, site: HookedSite, event: str, detail: Mapping[str, Any]) -> None:
    """Queue the deploy hook and the webhook the site has for `event` (never a token).

    Delivery workers of this process wake when the caller's transaction commits."""
    now = utcnow()
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
        _wake_after_commit(db)


# Wake-ups of the delivery workers of this process, by the engine they deliver from: the
# one thing `enqueue` knows besides the session. Rows enqueued by other processes are
# noticed when the worker's idle wait ends.
_wakeups: dict[Engine, set[Callable[[], None]]] = {}
_wakeups_lock = threading.Lock()


def subscribe(engine: Engine, wake: Callable[[], None]) -> None:
    with _wakeups_lock:
        _wakeups.setdefault(engine, set()).add(wake)


def unsubscribe(engine: Engine, wake: Callable[[], None]) -> None:
    with _wakeups_lock:
        waiting = _wakeups.get(engine)
        if waiting is not None:
            waiting.discard(wake)
            if not waiting:
                del _wakeups[engine]


def _notify(engine: Engine) -> None:
    with _wakeups_lock:
        waiting = list(_wakeups.get(engine, ()))
    for wake in waiting:
        wake()


def _wake_after_commit(db: Session) -> None:
    if db.info.get("apiauth_wakes_deliveries"):
        return
    db.info["apiauth_wakes_deliveries"] = True
    bind = db.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine

    def wake(session: Session) -> None:
        session.info.pop("apiauth_wakes_deliveries", None)
        _notify(engine)

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


def _pending() -> Any:
    return (Delivery.delivered_at.is_(None)) & (Delivery.attempts < MAX_ATTEMPTS)


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
    with transaction(broker.sessions) as db:
        query = (
            select(Delivery)
            .where(_pending(), Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(limit)
        )
        if db.get_bind().dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True)
        rows = list(db.scalars(query))
        if not rows:
            return []
        db.execute(
            update(Delivery)
            .where(Delivery.id.in_([row.id for row in rows]))
            .values(next_attempt_at=now + timedelta(seconds=LEASE_SECONDS))
        )
        site_ids = {row.site_id for row in rows if row.kind == "webhook"}
        sealed = dict(
            db.execute(select(Site.id, Site.webhook_secret_enc).where(Site.id.in_(site_ids))).all()
        )
    claimed = []
    for row in rows:
        secret = None
        blob = sealed.get(row.site_id) if row.kind == "webhook" else None
        if blob is not None:
            try:
                secret = broker.vault.open_text(blob, webhook_secret_aad(row.site_id))
            except VaultError:
                log.error("the webhook secret of site %s does not open", row.site_id)
        claimed.append(
            DueDelivery(row.id, row.kind, row.event, row.url, row.payload, row.attempts, secret)
        )
    return claimed


def deliver(broker: Broker, due: DueDelivery) -> bool:
    """POST one delivery and record the outcome; True when the receiver answered 2xx."""
    error = _post(broker, due)
    _record_outcome(broker, due, error)
    return error is None


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


def retry_delay(attempts: int, base_seconds: float) -> float:
    """Seconds before the next try after `attempts` failures: doubling, capped, jittered
    (±25 %) so that many deliveries failing together do not return together."""
    delay = min(base_seconds * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS)
    return float(delay * random.uniform(0.75, 1.25))  # noqa: S311 (jitter, not a secret)


def _record_outcome(broker: Broker, due: DueDelivery, error: str | None) -> None:
    now = broker.clock()
    with transaction(broker.sessions) as db:
        row = db.get(Delivery, due.id)
        if row is None or row.delivered_at is not None:
            return
        row.attempts += 1
        if error is None:
            row.delivered_at = now
            row.last_error = None
            return
        error = error[:_ERROR_LENGTH]
        if row.attempts >= MAX_ATTEMPTS:
            row.last_error = f"gave up after {row.attempts} attempts: {error}"
            return
        row.last_error = error
        delay = retry_delay(row.attempts, broker.settings.delivery_retry_seconds)
        row.next_attempt_at = now + timedelta(seconds=delay)
