"""A connection's token set at rest: sealed to its row, with the times that say when it must
be refreshed (or, for tokens that never expire, checked)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from apiauth.domain.broker import Broker
from apiauth.oauth.modes import Schedule, mode_of
from apiauth.oauth.token_set import TokenSet
from apiauth.store.dialect import for_update
from apiauth.store.models import Connection
from apiauth.vault import record_aad

CONNECTED = "connected"
REFRESHING = "refreshing"
NEEDS_REAUTH = "needs_reauth"
# Not a stored status: a connection whose last refresh failed (it is retried with backoff
# and serves its token while that is valid). What `apiauth_connections` reports it as.
DEGRADED = "degraded"
# Not stored either: connected, but its refresh token dies within
# `APIAUTH_EXPIRY_WARNING_DAYS` (re-authorize it).
EXPIRING = "expiring"

# The refresh schedule (SPEC §3: a connection is refreshed about once per lifetime, whether
# its tokens live 5 seconds or 8 hours). The margin before expiry is the smaller of
# `APIAUTH_REFRESH_MARGIN_SECONDS` and a fifth of the lifetime the provider granted; the
# jitter that spreads tokens issued together is at most a twentieth of it (and a minute), so
# a token is refreshed 75 to 80 % into its life at the earliest: 1.25 to 1.33 refreshes per
# lifetime for short tokens, about 1 for long ones.
MARGIN_FRACTION = 0.2
JITTER_FRACTION = 0.05
MAX_JITTER = timedelta(seconds=60)
# The safety net, whatever the schedule says: a connection is not refreshed again within a
# tenth of its token's lifetime of its last successful refresh, at least 2 s and at most a
# minute (`refresh_not_before`). A provider granting tokens that live less than
# `SHORTEST_SANE_LIFETIME` is logged, once per provider and process, and refreshed no more
# often than that.
MIN_INTERVAL_FRACTION = 0.1
MIN_INTERVAL_FLOOR = timedelta(seconds=2)
MIN_INTERVAL_CEILING = timedelta(seconds=60)
SHORTEST_SANE_LIFETIME = MIN_INTERVAL_FLOOR
KEEP_ALIVE_MARGIN = timedelta(days=1)


def _token_aad(connection_id: str) -> bytes:
    return record_aad("connections", connection_id, "token_enc")


def open_token(broker: Broker, connection: Connection) -> TokenSet | None:
    return open_sealed_token(broker, connection.id, connection.token_enc)


def open_sealed_token(
    broker: Broker, connection_id: str, blob: bytes | None, *, remember: bool = True
) -> TokenSet | None:
    """A connection's token set from its row id and `token_enc`, opened once per ciphertext.
    `remember=False` for a token about to be replaced (a refresh): the memory is the read
    path's, and a refresher process alone would fill it for nothing."""
    if blob is None:
        return None
    opened = broker.runtime.opened_tokens
    token = opened.get((connection_id, blob), broker.clock())
    if token is None:
        token = TokenSet.from_json(broker.vault.open_json(blob, _token_aad(connection_id)))
        if remember:
            opened.put((connection_id, blob), token, None, opened.begin())
    return token


def seal_token(broker: Broker, connection_id: str, token: TokenSet) -> bytes:
    """The `token_enc` of a connection row holding this token set."""
    return broker.vault.seal_json(token.to_json(), _token_aad(connection_id))


def put_token(broker: Broker, connection: Connection, token: TokenSet, now: datetime) -> None:
    """Seal the token set into the row and schedule its next refresh (or check)."""
    connection.token_enc = seal_token(broker, connection.id, token)
    connection.expires_at = token.expires_at
    connection.refresh_due_at = refresh_due_at(broker, token, now)
    connection.refresh_expires_at = token.refresh_expires_at
    connection.expiry_warned_at = None


def refresh_margin(broker: Broker, lifetime: timedelta) -> timedelta:
    """How long before expiry a token of this lifetime falls due: the smaller of
    `APIAUTH_REFRESH_MARGIN_SECONDS` and a fifth of the lifetime."""
    setting = timedelta(seconds=broker.settings.refresh_margin_seconds)
    return min(setting, max(lifetime, timedelta(0)) * MARGIN_FRACTION)


def min_refresh_interval(lifetime: timedelta | None) -> timedelta:
    """How long after a successful refresh the connection is not refreshed again (the
    safety net): a tenth of the token's lifetime, at least 2 s and at most a minute."""
    if lifetime is None:
        return MIN_INTERVAL_CEILING
    return min(max(lifetime * MIN_INTERVAL_FRACTION, MIN_INTERVAL_FLOOR), MIN_INTERVAL_CEILING)


def refresh_due_at(broker: Broker, token: TokenSet, now: datetime) -> datetime | None:
    """`expires_at - margin` (`refresh_margin`), a little earlier at random so that tokens
    issued together are not all refreshed in the same second, but never sooner than the
    minimum interval from now: a token just stored is never due at once. A refreshable
    token without an expiry (Salesforce gives none) is checked at the who-am-I endpoint on a
    schedule instead, so that it never silently dies; a token without a refresh token has
    nothing to schedule. Which tokens are renewed, and how one without an expiry is checked
    (a pasted key is re-verified), is its auth mode's to say (`Mode.renewable`,
    `Mode.next_renewal`); an expiring token of any mode follows this schedule."""
    mode = mode_of(token)
    if not mode.renewable(token):
        return None
    if token.expires_at is None:
        due_to_check = mode.next_renewal(token, now, renewal_schedule(broker))
        keep_alive = keep_alive_at(token, now)
        if due_to_check is None or keep_alive is None:
            return due_to_check or keep_alive
        return min(due_to_check, keep_alive)
    lifetime = max(token.expires_at - now, timedelta(0))
    jitter = random.uniform(0, min(MAX_JITTER, lifetime * JITTER_FRACTION).total_seconds())  # noqa: S311
    due = token.expires_at - refresh_margin(broker, lifetime) - timedelta(seconds=jitter)
    due = min(due, keep_alive_at(token, now) or due)
    return max(due, now + min_refresh_interval(lifetime))


def keep_alive_at(token: TokenSet, now: datetime) -> datetime | None:
    """When a refresh token that dies unused (`refresh_idle_expires_at`) must be used to stay
    alive: a fifth of its idle life before it dies, at most a day before (Nango refreshes at
    least every 24 h for the same reason)."""
    idle = token.refresh_idle_expires_at
    if idle is None:
        return None
    return idle - min(KEEP_ALIVE_MARGIN, max(idle - now, timedelta(0)) * MARGIN_FRACTION)


def expires_soon(broker: Broker, refresh_expires_at: datetime | None, now: datetime) -> bool:
    """The refresh token dies within `APIAUTH_EXPIRY_WARNING_DAYS`: re-authorize."""
    warning = timedelta(days=broker.settings.expiry_warning_days)
    return refresh_expires_at is not None and refresh_expires_at - now <= warning


def refresh_not_before(token: TokenSet, now: datetime) -> datetime:
    """When a connection whose token was refreshed `now` may be refreshed again, at the
    earliest (by anyone: the refresher, a reader, the proxy after a 401)."""
    lifetime = None if token.expires_at is None else token.expires_at - now
    return now + min_refresh_interval(lifetime)


def is_short_lived(token: TokenSet, now: datetime) -> bool:
    """A token living less than `SHORTEST_SANE_LIFETIME`: the provider is logged, not
    hammered."""
    return token.expires_at is not None and token.expires_at - now < SHORTEST_SANE_LIFETIME


def renewal_schedule(broker: Broker) -> Schedule:
    settings = broker.settings
    return Schedule(settings.validate_interval_seconds)


def lock_connection(db: Session, query: Any) -> Connection | None:
    """Read a connection row for update (`dialect.for_update`)."""
    result: Connection | None = db.scalar(for_update(db, query))
    return result


def count_by_status(db: Session, expiring_before: datetime) -> dict[tuple[str, str], int]:
    """Connections by (provider, status), with failing ones counted as `DEGRADED` and
    connected ones whose refresh token dies before `expiring_before` (now plus
    `APIAUTH_EXPIRY_WARNING_DAYS`) as `EXPIRING`; one aggregate query (a scan of
    `connections`, for the metrics' scrape-time gauges)."""
    shown = case(
        ((Connection.failure_count > 0) & (Connection.status != NEEDS_REAUTH), DEGRADED),
        (
            (Connection.status == CONNECTED) & (Connection.refresh_expires_at <= expiring_before),
            EXPIRING,
        ),
        else_=Connection.status,
    )
    rows = db.execute(
        select(Connection.provider, shown, func.count()).group_by(Connection.provider, shown)
    ).all()
    return {(provider, status): count for provider, status, count in rows}
