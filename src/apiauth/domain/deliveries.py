"""The outbox of deploy hook calls and webhook events.

`enqueue` adds deliveries inside the caller's transaction, so that an event is recorded
exactly when the change it describes commits; a worker delivers them later, at least once,
so a slow receiver never delays a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from apiauth.store.models import Delivery, Site, new_id, utcnow

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


def enqueue(db: Session, site: Site, event: str, detail: Mapping[str, Any]) -> None:
    """Queue the deploy hook and the webhook the site has for `event` (never a token)."""
    now = utcnow()
    payload = {"event": event, "site": site.name, "created_at": now.isoformat(), **detail}
    if event in DEPLOY_HOOK_EVENTS and site.deploy_hook_url:
        db.add(
            Delivery(
                id=new_id("dlv"),
                site_id=site.id,
                kind="deploy_hook",
                event=event,
                url=site.deploy_hook_url,
                payload=payload,
                attempts=0,
                next_attempt_at=now,
            )
        )
    if event in WEBHOOK_EVENTS and site.webhook_url:
        db.add(
            Delivery(
                id=new_id("dlv"),
                site_id=site.id,
                kind="webhook",
                event=event,
                url=site.webhook_url,
                payload=payload,
                attempts=0,
                next_attempt_at=now,
            )
        )
