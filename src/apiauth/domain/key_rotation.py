"""Re-wrap every encrypted record under the active master key (`apiauth keys rotate`):
a new local key, a KMS key's key-encryption key (local → KMS), the local key again (KMS →
local), or another KMS key's (`domain.master_keys` decides which key is active).

Only each record's data key is re-wrapped; the ciphertext itself stays as it is. Records
are committed in small batches, so an interrupted rotation leaves every record readable
(old keys stay in the ring until the end) and simply continues when run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from apiauth.domain.broker import Broker
from apiauth.kms import VaultKeys
from apiauth.store.db import transaction
from apiauth.store.models import AuthState, Connection, OAuthApp, Site, TeamProvider
from apiauth.vault import Vault, record_aad

BATCH = 200

ENCRYPTED_COLUMNS: tuple[tuple[Any, InstrumentedAttribute[bytes | None]], ...] = (
    (Connection, Connection.token_enc),
    (OAuthApp, OAuthApp.client_secret_enc),
    (AuthState, AuthState.pkce_verifier_enc),
    (Site, Site.webhook_secret_enc),
    (TeamProvider, TeamProvider.registration_enc),
)


@dataclass(frozen=True)
class RotationResult:
    rewrapped: int
    already_current: int


def count_encrypted_records(broker: Broker) -> int:
    total = 0
    with broker.sessions() as db:
        for _model, column in ENCRYPTED_COLUMNS:
            total += db.scalar(select(func.count()).where(column.is_not(None))) or 0
    return total


def key_location(broker: Broker, key_id: str) -> str:
    """Where a key lives, in words ("local key ring", "aws KMS key alias/apiauth")."""
    keys = broker.vault.keys
    return keys.describe(key_id) if isinstance(keys, VaultKeys) else "local key ring"


def records_by_key(broker: Broker) -> dict[str, int]:
    """How many records each master key wraps: rotation is done when only one is left."""
    return records_by_key_in(broker.sessions)


def records_by_key_in(sessions: sessionmaker[Session]) -> dict[str, int]:
    """`records_by_key` for a database without a broker (`apiauth doctor`)."""
    counts: dict[str, int] = {}
    for blob in _all_blobs(sessions):
        key_id = Vault.key_id_of(blob)
        counts[key_id] = counts.get(key_id, 0) + 1
    return counts


def _all_blobs(sessions: sessionmaker[Session]) -> Iterator[bytes]:
    with sessions() as db:
        for _model, column in ENCRYPTED_COLUMNS:
            for blob in db.scalars(select(column).where(column.is_not(None))):
                if blob is not None:
                    yield blob


def rewrap_all(broker: Broker, on_progress: Callable[[int], None] | None = None) -> RotationResult:
    active = broker.vault.active_key_id
    rewrapped = current = 0
    for model, column in ENCRYPTED_COLUMNS:
        table = model.__tablename__
        last_id = ""
        while True:
            with transaction(broker.sessions) as db:
                rows = list(
                    db.scalars(
                        select(model)
                        .where(column.is_not(None), model.id > last_id)
                        .order_by(model.id)
                        .limit(BATCH)
                    )
                )
                for row in rows:
                    blob: bytes = getattr(row, column.key)
                    if Vault.key_id_of(blob) == active:
                        current += 1
                        continue
                    aad = record_aad(table, row.id, column.key)
                    setattr(row, column.key, broker.vault.rewrap(blob, aad))
                    rewrapped += 1
            if not rows:
                break
            last_id = rows[-1].id
            if on_progress:
                on_progress(len(rows))
    return RotationResult(rewrapped, current)
