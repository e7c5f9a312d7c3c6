"""Key-encryption keys wrapped by a KMS, and the vault's key source that uses them.

The design, and why: every record keeps its own data key, wrapped by a key-encryption key
(KEK) exactly as with the local key ring (`vault`). With a KMS, the KEK is a key the KMS made
(`generate_key`), stored only in the form the KMS wrapped it in (the `wrapped_keys` table),
and unwrapped by the KMS when a process needs it. Wrapping each record's data key with the
KMS instead would cost a KMS call per seal - a refresh, at hundreds a second - and per cold
read; wrapping the KEK costs one call per KEK per process every `cache_seconds`.

The cache (`WrappedKeys`) is bounded in size (`capacity` KEKs, the longest unwrapped out) and
age: a KEK unwrapped more than `cache_seconds` ago is unwrapped again on its next use, so a
KMS key disabled or a permission revoked stops every process within that time (the KMS's
refusal drops the KEK at once). A KMS that cannot be reached does not: the KEK it gave keeps
working, with a warning, so that an outage of the KMS is not an outage of apiauth, and a
process starting while the KMS is unreachable fails at once with a message saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from apiauth.kms.service import KeyManagementService, KmsError, KmsRefused, KmsUnavailable
from apiauth.vault import KeyConfigError, KeySource, MasterKey, UnknownKeyError

__all__ = ["KeyStore", "StoredKey", "VaultKeys", "WrappedKeys"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_SECONDS = 300.0
CAPACITY = 64


@dataclass(frozen=True)
class StoredKey:
    """A KEK as stored: its id (the one blobs name), the service and KMS key that wrapped
    it, and the wrapped bytes (useless without the KMS)."""

    id: str
    service: str
    kms_key_id: str
    wrapped: bytes = field(repr=False)
    created_at: datetime


class KeyStore(Protocol):
    """Where wrapped KEKs are kept (the database: `domain.master_keys.DatabaseKeyStore`)."""

    def get(self, key_id: str) -> StoredKey | None: ...

    def newest_for(self, service: str, kms_key_id: str) -> StoredKey | None: ...

    def add(self, key: StoredKey) -> None: ...


# (operation, outcome): what `apiauth_kms_requests_total` counts.
CallObserver = Callable[[str, str], None]


@dataclass
class _Unwrapped:
    key: MasterKey
    stored: StoredKey
    unwrapped_at: float  # monotonic
    warned: bool = False


class WrappedKeys:
    """The KEKs of `store`, unwrapped on demand by their service and kept for a while (see
    the module's docstring). Thread-safe; `calls` counts the KMS calls made."""

    def __init__(
        self,
        store: KeyStore,
        services: Callable[[str], KeyManagementService],
        *,
        cache_seconds: float = CACHE_SECONDS,
        capacity: int = CAPACITY,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime],
        observe: CallObserver | None = None,
    ) -> None:
        self._store = store
        self._services = services
        self._connected: dict[str, KeyManagementService] = {}
        self.cache_seconds = cache_seconds
        self.capacity = capacity
        self._monotonic = monotonic
        self._clock = clock
        self._observe = observe
        self._cache: OrderedDict[str, _Unwrapped] = OrderedDict()
        self._newest: dict[tuple[str, str], str] = {}
        self._known: dict[str, StoredKey] = {}  # `consider`ed, not in the store
        self._lock = threading.RLock()
        self.calls = 0

    def service(self, name: str) -> KeyManagementService:
        with self._lock:
            connected = self._connected.get(name)
            if connected is None:
                connected = self._connected[name] = self._services(name)
            return connected

    def get(self, key_id: str) -> MasterKey:
        """The KEK `key_id`; `UnknownKeyError` if the store has no such key."""
        entry = self._cache.get(key_id)
        if entry is not None and self._monotonic() - entry.unwrapped_at < self.cache_seconds:
            return entry.key
        with self._lock:
            entry = self._cache.get(key_id)
            if entry is not None and self._monotonic() - entry.unwrapped_at < self.cache_seconds:
                return entry.key
            stored = entry.stored if entry is not None else self.stored(key_id)
            if stored is None:
                raise UnknownKeyError(key_id)
            try:
                key = self._unwrap(stored)
            except KmsUnavailable as exc:
                if entry is None:
                    raise
                if not entry.warned:
                    entry.warned = True
                    log.warning("using key %s unwrapped earlier: %s", key_id, exc)
                return entry.key
            except KmsError:
                self._cache.pop(key_id, None)
                raise
            self._remember(key, stored)
            return key

    def for_kms_key(self, service: str, kms_key_id: str) -> MasterKey:
        """The newest KEK wrapped by `kms_key_id`, made by the KMS if there is none yet."""
        newest = self._newest.get((service, kms_key_id))
        if newest is not None:
            return self.get(newest)
        with self._lock:
            stored = self._store.newest_for(service, kms_key_id)
            if stored is None:
                plaintext, wrapped = self._call(
                    service, "generate", lambda kms: kms.generate_key(kms_key_id)
                )
                key = MasterKey.from_secret(plaintext)
                stored = StoredKey(key.id, service, kms_key_id, wrapped, self._clock())
                self._store.add(stored)
                self._remember(key, stored)
                log.info(
                    "made key-encryption key %s, wrapped by %s key %s", key.id, service, kms_key_id
                )
            self._newest[(service, kms_key_id)] = stored.id
            return self.get(stored.id)

    def stored(self, key_id: str) -> StoredKey | None:
        entry = self._cache.get(key_id)
        if entry is not None:
            return entry.stored
        return self._known.get(key_id) or self._store.get(key_id)

    def consider(self, stored: StoredKey) -> None:
        """Know a wrapped key the store does not hold (yet): the one a backup was sealed
        with, restored into an empty database."""
        self._known[stored.id] = stored

    def _unwrap(self, stored: StoredKey) -> MasterKey:
        plaintext = self._call(
            stored.service, "unwrap", lambda kms: kms.unwrap(stored.wrapped, stored.kms_key_id)
        )
        try:
            key = MasterKey.from_secret(plaintext)
        except KeyConfigError:
            raise KmsRefused(f"the KMS did not give back key {stored.id} (wrong length)") from None
        if key.id != stored.id:
            raise KmsRefused(f"the KMS did not give back key {stored.id} (another key)")
        return key

    def _call(self, service: str, operation: str, call: Callable[[KeyManagementService], T]) -> T:
        self.calls += 1
        try:
            result = call(self.service(service))
        except KmsUnavailable:
            self._observed(operation, "unavailable")
            raise
        except KmsError:
            self._observed(operation, "refused")
            raise
        self._observed(operation, "ok")
        return result

    def _observed(self, operation: str, outcome: str) -> None:
        if self._observe is not None:
            self._observe(operation, outcome)

    def _remember(self, key: MasterKey, stored: StoredKey) -> None:
        self._cache[key.id] = _Unwrapped(key, stored, self._monotonic())
        self._cache.move_to_end(key.id)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)


class VaultKeys:
    """The vault's key source: the local keys (if any) and the KMS-wrapped ones both open;
    `seal_with` (service, KMS key id) names the KMS key whose KEK seals, or None for the
    local active key."""

    def __init__(
        self,
        local: KeySource | None,
        wrapped: WrappedKeys,
        seal_with: tuple[str, str] | None,
    ) -> None:
        if local is None and seal_with is None:
            raise KeyConfigError("no key to seal with: neither a master key nor a KMS key")
        self.local = local
        self.wrapped = wrapped
        self.seal_with = seal_with

    def __repr__(self) -> str:
        return f"VaultKeys(local={self.local!r}, seal_with={self.seal_with!r})"

    @property
    def active(self) -> MasterKey:
        if self.seal_with is not None:
            return self.wrapped.for_kms_key(*self.seal_with)
        assert self.local is not None
        return self.local.active

    def get(self, key_id: str) -> MasterKey:
        if self.local is not None:
            try:
                return self.local.get(key_id)
            except UnknownKeyError:
                pass
        return self.wrapped.get(key_id)

    def describe(self, key_id: str) -> str:
        """Where a key lives, in words: "local" or the KMS key that wraps it."""
        stored = self.wrapped.stored(key_id)
        if stored is not None:
            return f"{stored.service} KMS key {stored.kms_key_id}"
        return "local key ring" if self.local is not None else "unknown"
