"""The audit log: who did what to a site's API Authentication. Never a token or secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from apiauth.store.models import AuditEvent


def record(
    db: Session,
    site_id: str | None,
    kind: str,
    actor: str,
    detail: Mapping[str, Any] | None = None,
    *,
    ip: str | None = None,
) -> None:
    """Add an event to the caller's transaction, so it lands exactly when the change does."""
    db.add(AuditEvent(site_id=site_id, kind=kind, actor=actor, detail=dict(detail or {}), ip=ip))
