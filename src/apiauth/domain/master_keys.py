"""The broker's key-encryption keys: the local ring (`APIAUTH_MASTER_KEY` or the key file)
and/or keys wrapped by a KMS (`APIAUTH_KMS`), kept in the `wrapped_keys` table.

Which key seals is configuration: the configured KMS key's KEK when `APIAUTH_KMS` is set,
else the local active key. Every key opens, whichever seals, so that `apiauth keys rotate`
can move the records from one to the other (local → KMS, KMS → local, one KMS key to
another) while servers keep reading. With a KMS, the local key file is not created: a new
deployment never has a key on disk, and an old one keeps its file only until no record
needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from apiauth.config import Settings
from apiauth.kms import KmsError, StoredKey, VaultKeys, WrappedKeys, kms_service
from apiauth.metrics import Metrics
from apiauth.store.db import transaction
from apiauth.store.models import WrappedKey
from apiauth.vault import KeyConfigError, KeySource, local_keys

__all__ = ["DatabaseKeyStore", "open_keys"]


def _stored(row: WrappedKey) -> StoredKey:
    return StoredKey(row.id, row.service, row.kms_key_id, row.ciphertext, row.created_at)


class DatabaseKeyStore:
    """`kms.KeyStore` on the `wrapped_keys` table, shared by every replica."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def get(self, key_id: str) -> StoredKey | None:
        with self._sessions() as db:
            row = db.get(WrappedKey, key_id)
            return None if row is None else _stored(row)

    def newest_for(self, service: str, kms_key_id: str) -> StoredKey | None:
        with self._sessions() as db:
            row = db.scalars(
                select(WrappedKey)
                .where(WrappedKey.service == service, WrappedKey.kms_key_id == kms_key_id)
                .order_by(WrappedKey.created_at.desc())
                .limit(1)
            ).first()
            return None if row is None else _stored(row)

    def add(self, key: StoredKey) -> None:
        try:
            with transaction(self._sessions) as db:
                db.add(
                    WrappedKey(
                        id=key.id,
                        service=key.service,
                        kms_key_id=key.kms_key_id,
                        ciphertext=key.wrapped,
                        created_at=key.created_at,
                    )
                )
        except IntegrityError:
            pass  # the same key stored already (its id is derived from its bytes)

    def all(self) -> list[StoredKey]:
        with self._sessions() as db:
            return [_stored(row) for row in db.scalars(select(WrappedKey))]


def open_keys(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    metrics: Metrics,
    clock: Callable[[], datetime],
) -> VaultKeys:
    """The key source of a broker. With a KMS, its KEK is unwrapped (or made) here, so that
    a KMS that cannot be reached, or refuses, stops the start with its reason."""
    local: KeySource | None
    seal_with: tuple[str, str] | None = None
    if settings.kms is not None:
        if not settings.kms_key_id:
            raise KeyConfigError(
                f"APIAUTH_KMS={settings.kms} needs APIAUTH_KMS_KEY_ID: the KMS key that wraps "
                "the key-encryption keys (AWS: a key id, ARN or alias/NAME)"
            )
        seal_with = (settings.kms, settings.kms_key_id)
        present = settings.master_key is not None or settings.key_file.exists()
        local = (
            local_keys(settings.master_key, settings.key_file, create=False) if present else None
        )
    else:
        local = local_keys(settings.master_key, settings.key_file)
    wrapped = WrappedKeys(
        DatabaseKeyStore(sessions),
        kms_service,
        cache_seconds=settings.kms_cache_seconds,
        clock=clock,
        observe=metrics.kms_call,
    )
    keys = VaultKeys(local, wrapped, seal_with)
    if seal_with is not None:
        try:
            keys.active  # noqa: B018 - unwrapped (or made) now, not at the first seal
        except KmsError as exc:
            raise type(exc)(f"cannot start with APIAUTH_KMS={settings.kms}: {exc}") from None
    return keys
