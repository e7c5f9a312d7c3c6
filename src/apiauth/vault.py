"""Envelope encryption of secrets at rest: access and refresh tokens, OAuth client secrets,
PKCE verifiers.

Why envelope encryption: every record gets its own random data key (DEK), and only that
32-byte DEK is encrypted ("wrapped") under a master key. Rotating the master key therefore
means re-wrapping 60 bytes per record while the ciphertext body stays untouched, and a
record's blob says which master key it needs, so old and new keys can be read side by side
while a rotation is in progress (or after it was interrupted).

Why associated data: a database row is only as trustworthy as whoever can write to the
database. Every seal binds the blob to its place (`record_aad(table, row_id, column)`), so a
ciphertext copied to another row or column - e.g. someone else's refresh token pasted into
your connection - fails to open instead of silently handing out the wrong secret.

Blob layout (all integers are fixed sizes, nothing is length-prefixed)::

    offset  size  field
    0       3     b"AV\\x01": magic "AV" + format version 1
    3       8     master key id, ASCII lowercase hex (first 4 bytes of sha256(master secret))
    11      12    DEK-wrap nonce
    23      48    wrapped DEK: AESGCM(master).encrypt(nonce, dek, b"dek:" + key_id + aad),
                  i.e. 32-byte DEK ciphertext + 16-byte GCM tag
    71      12    body nonce
    83      >=16  AESGCM(dek).encrypt(body_nonce, plaintext, aad): ciphertext + 16-byte tag

The record AAD is part of the DEK wrap too, so the DEK of one row cannot be transplanted into
another. Any truncation, flipped bit or wrong AAD raises `DecryptionError`; the one exception
is a blob whose key id names no key in the ring - a damaged id looks exactly like a key that
was dropped from the configuration - which raises `UnknownKeyError` (both are `VaultError`).

Master keys (the key-encryption keys, KEKs) come from a `KeySource`, the one seam between
the vault and where keys live. The local sources: `APIAUTH_MASTER_KEY` (base64url keys,
comma-separated, newest first) as a `KeyRing`, or, when that is unset, the key file in the
data dir (one key per line, newest first, created with mode 0600 on first start) followed by
`FollowedKeyFile`. The first key seals; all keys open. `apiauth.kms` adds KEKs that only a
key management service can unwrap (AWS KMS), so that the database and the data dir together
are not enough to open a record; the blob format is the same for every source.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DecryptionError",
    "FollowedKeyFile",
    "KeyConfigError",
    "KeyFile",
    "KeyRing",
    "KeySource",
    "MasterKey",
    "UnknownKeyError",
    "Vault",
    "VaultError",
    "load_keyring",
    "local_keys",
    "record_aad",
]

logger = logging.getLogger(__name__)

MASTER_KEY_SETTING = "APIAUTH_MASTER_KEY"

KEY_BYTES = 32
KEY_ID_CHARS = 8
NONCE_BYTES = 12
TAG_BYTES = 16

MAGIC = b"AV\x01"
_KEY_ID_END = len(MAGIC) + KEY_ID_CHARS
_WRAP_NONCE_END = _KEY_ID_END + NONCE_BYTES
_WRAPPED_DEK_END = _WRAP_NONCE_END + KEY_BYTES + TAG_BYTES
_BODY_NONCE_END = _WRAPPED_DEK_END + NONCE_BYTES
MIN_BLOB_BYTES = _BODY_NONCE_END + TAG_BYTES

_KEY_ID_RE = re.compile(rb"[0-9a-f]{8}")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")

_OPEN_FAILED = (
    "could not decrypt the blob: it is damaged, belongs to another record (row/column), "
    "or was sealed with a different master key"
)


class VaultError(Exception):
    """Base class of every vault error."""


class DecryptionError(VaultError):
    """A blob did not open: tampered, truncated, wrong AAD or wrong key.

    The message never contains key or plaintext material.
    """


class UnknownKeyError(VaultError):
    """A blob was sealed under a master key id that is not in the key ring."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"the blob was sealed with master key {key_id!r}, which is missing from "
            f"{MASTER_KEY_SETTING} / the key file; add that key back (after the active key) "
            "until every record has been re-wrapped under the active key"
        )


class KeyConfigError(VaultError):
    """The master key setting or key file is malformed. The message never echoes a key."""


def _key_id_for(secret: bytes) -> str:
    return hashlib.sha256(secret).digest()[:4].hex()


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A 32-byte key-encryption key and its public id."""

    id: str
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise KeyConfigError(
                f"a master key must be {KEY_BYTES} bytes, got {len(self.secret)} bytes"
            )
        if self.id != _key_id_for(self.secret):
            raise KeyConfigError("master key id does not match its secret")

    def __repr__(self) -> str:
        return f"MasterKey(id={self.id!r})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls.from_secret(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_secret(cls, secret: bytes) -> MasterKey:
        """A key from its 32 bytes (a KMS's data key, say), its id derived from them."""
        if len(secret) != KEY_BYTES:
            raise KeyConfigError(f"a master key must be {KEY_BYTES} bytes, got {len(secret)} bytes")
        return cls(id=_key_id_for(secret), secret=secret)

    @classmethod
    def from_text(cls, text: str, *, source: str = "master key") -> MasterKey:
        """Parse a base64url key (padding optional); `source` names it in error messages."""
        cleaned = text.strip()
        if not cleaned:
            raise KeyConfigError(f"{source}: the key is empty")
        if not _BASE64URL_RE.fullmatch(cleaned):
            raise KeyConfigError(
                f"{source}: not valid base64url (allowed: A-Z a-z 0-9 - _ and trailing =)"
            )
        unpadded = cleaned.rstrip("=")
        try:
            secret = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
        except (binascii.Error, ValueError):
            raise KeyConfigError(f"{source}: not valid base64url (bad length)") from None
        if len(secret) != KEY_BYTES:
            raise KeyConfigError(
                f"{source}: a master key must decode to {KEY_BYTES} bytes, got {len(secret)} bytes"
            )
        return cls(id=_key_id_for(secret), secret=secret)

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self.secret).rstrip(b"=").decode("ascii")


class KeySource(Protocol):
    """Where the vault's key-encryption keys come from: `active` seals, `get` finds the one
    a blob names (raising `UnknownKeyError` for an id it does not have). Implementations:
    `KeyRing` (fixed), `FollowedKeyFile` (the key file, followed), `apiauth.kms.VaultKeys`
    (KMS-wrapped keys beside a local source)."""

    @property
    def active(self) -> MasterKey: ...

    def get(self, key_id: str) -> MasterKey: ...


class KeyRing:
    """The master keys the vault may use: the first seals, every one of them opens."""

    def __init__(self, keys: Sequence[MasterKey]) -> None:
        unique: dict[str, MasterKey] = {}
        for key in keys:
            unique.setdefault(key.id, key)
        if not unique:
            raise KeyConfigError("a key ring needs at least one master key")
        self._keys = tuple(unique.values())
        self._by_id = unique

    def __repr__(self) -> str:
        return f"KeyRing(ids={[key.id for key in self._keys]!r})"

    @property
    def active(self) -> MasterKey:
        return self._keys[0]

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        return self._keys

    def get(self, key_id: str) -> MasterKey:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise UnknownKeyError(key_id) from None

    @classmethod
    def from_text(cls, text: str, *, source: str = MASTER_KEY_SETTING) -> KeyRing:
        """Parse comma- and/or newline-separated keys, newest first; blank entries are skipped.

        `source` names the setting or file in error messages.
        """
        keys: list[MasterKey] = []
        lines = text.splitlines()
        for line_no, line in enumerate(lines, start=1):
            for entry in line.split(","):
                if not entry.strip():
                    continue
                where = f"key #{len(keys) + 1}"
                if len(lines) > 1:
                    where += f" (line {line_no})"
                keys.append(MasterKey.from_text(entry, source=f"{source}, {where}"))
        if not keys:
            raise KeyConfigError(f"{source}: no master key found (the value is empty)")
        return cls(keys)


class KeyFile:
    """The key file in the data dir."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"KeyFile({str(self.path)!r})"

    @property
    def _source(self) -> str:
        return f"key file {self.path}"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> KeyRing:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyConfigError(f"{self._source}: does not exist") from None
        except UnicodeDecodeError:
            raise KeyConfigError(f"{self._source}: not a UTF-8 text file") from None
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            logger.warning(
                "%s is readable by group/others (mode %o); run `chmod 600` on it",
                self._source,
                mode,
            )
        return KeyRing.from_text(text, source=self._source)

    def load_or_create(self) -> KeyRing:
        if self.exists():
            return self.load()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = MasterKey.generate()
        tmp = self._write_temp([key])
        try:
            # link() is create-if-absent and atomic: two servers starting at once cannot both
            # create a key, and nobody ever reads a half-written file.
            os.link(tmp, self.path)
        except FileExistsError:
            return self.load()
        except OSError:
            # Some mounts (SMB, a few FUSE filesystems) have no hard links; rename is still
            # atomic there, only the lost-race check above is skipped.
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir()
        logger.info("created master key file %s (key id %s)", self.path, key.id)
        return KeyRing([key])

    def add_new_key(self) -> MasterKey:
        """Put a new key first (it becomes active) and keep the old ones readable."""
        old = list(self.load().keys) if self.exists() else []
        if not old:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = MasterKey.generate()
        self._replace([key, *old])
        return key

    def keep_only(self, key_id: str) -> None:
        """Drop every key but `key_id`; only safe once no record is sealed under the others."""
        key = self.load().get(key_id)
        self._replace([key])

    def _write_temp(self, keys: Sequence[MasterKey]) -> Path:
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        # The mode is given to open() itself, so the file is never readable by others, not
        # even between create and chmod; umask can only remove bits from 0600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("".join(key.to_text() + "\n" for key in keys))
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _replace(self, keys: Sequence[MasterKey]) -> None:
        tmp = self._write_temp(keys)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        # Losing the key file to a crash loses every secret, so make the rename durable.
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def load_keyring(master_key_setting: str | None, key_file: Path) -> KeyRing:
    """The setting wins when set; otherwise the key file, created on first start.

    A setting that is present but empty is an error rather than "unset": silently falling back
    to a fresh key file would make every existing record unreadable.
    """
    if master_key_setting is not None:
        return KeyRing.from_text(master_key_setting, source=MASTER_KEY_SETTING)
    return KeyFile(key_file).load_or_create()


def local_keys(master_key_setting: str | None, key_file: Path, *, create: bool = True) -> KeySource:
    """The setting's ring when set, else the key file's (created unless `create` is False:
    then a missing file raises `KeyConfigError`), followed as it changes."""
    if master_key_setting is not None:
        return load_keyring(master_key_setting, key_file)
    file = KeyFile(key_file)
    return FollowedKeyFile(file, file.load_or_create() if create else file.load())


class FollowedKeyFile:
    """The key file's ring, following the file: when `apiauth keys rotate` adds a key, every
    running server seals under it from its next operation on and can open what the rotation
    re-wrapped, so a rotation needs no restart. One `stat` per operation is the price."""

    def __init__(self, key_file: KeyFile, ring: KeyRing) -> None:
        self.key_file = key_file
        self._ring = ring
        self._signature = self._stat()
        self._reload_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FollowedKeyFile({self.key_file!r}, {self.ring!r})"

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = self.key_file.path.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    @property
    def ring(self) -> KeyRing:
        signature = self._stat()
        if signature is not None and signature != self._signature:
            with self._reload_lock:
                if signature != self._signature:
                    self._ring = self.key_file.load()
                    self._signature = signature
        return self._ring

    @property
    def active(self) -> MasterKey:
        return self.ring.active

    def get(self, key_id: str) -> MasterKey:
        return self.ring.get(key_id)


def record_aad(table: str, row_id: str, column: str) -> bytes:
    """The associated data that binds a blob to one column of one row.

    Table and column may not contain ":" so that the row id (which may) stays unambiguous.
    """
    for name, value in (("table", table), ("column", column)):
        if not value or ":" in value:
            raise ValueError(f"{name} must be non-empty and contain no ':', got {value!r}")
    if not row_id:
        raise ValueError("row_id must be non-empty")
    return f"apiauth:v1:{table}:{row_id}:{column}".encode()


def _dek_aad(key_id: str, aad: bytes) -> bytes:
    return b"dek:" + key_id.encode("ascii") + aad


@dataclass(frozen=True)
class _Parts:
    key_id: str
    wrap_nonce: bytes
    wrapped_dek: bytes
    body: bytes  # body nonce + ciphertext, kept as one piece because rewrap never touches it


def _parse(blob: bytes) -> _Parts:
    if len(blob) < MIN_BLOB_BYTES or not blob.startswith(MAGIC):
        raise DecryptionError("not a vault blob (wrong header or too short)")
    raw_id = blob[len(MAGIC) : _KEY_ID_END]
    if not _KEY_ID_RE.fullmatch(raw_id):
        raise DecryptionError("not a vault blob (malformed key id)")
    return _Parts(
        key_id=raw_id.decode("ascii"),
        wrap_nonce=blob[_KEY_ID_END:_WRAP_NONCE_END],
        wrapped_dek=blob[_WRAP_NONCE_END:_WRAPPED_DEK_END],
        body=blob[_WRAPPED_DEK_END:],
    )


class Vault:
    """Seals and opens secrets with per-record data keys wrapped by the key source's keys."""

    def __init__(self, keys: KeySource) -> None:
        self.keys = keys

    @property
    def active_key_id(self) -> str:
        """The id of the key that seals now (what a finished rotation leaves every record under)."""
        return self.keys.active.id

    def __repr__(self) -> str:
        return f"Vault({self.keys!r})"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        dek = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        body_nonce = os.urandom(NONCE_BYTES)
        body = body_nonce + AESGCM(dek).encrypt(body_nonce, plaintext, aad)
        return self._wrap(dek, aad, body)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        parts = _parse(blob)
        return self._open_body(self._unwrap(parts, aad), parts.body, aad)

    def seal_json(self, value: Any, aad: bytes) -> bytes:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return self.seal(text.encode("utf-8"), aad)

    def open_json(self, blob: bytes, aad: bytes) -> Any:
        plaintext = self.open(blob, aad)
        try:
            return json.loads(plaintext)
        except ValueError:
            # `from None`: the JSON error would carry the plaintext along in its `doc`.
            raise DecryptionError("the blob opened but does not hold JSON") from None

    def seal_text(self, value: str, aad: bytes) -> bytes:
        return self.seal(value.encode("utf-8"), aad)

    def open_text(self, blob: bytes, aad: bytes) -> str:
        plaintext = self.open(blob, aad)
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            # `from None`: the decode error quotes the offending plaintext byte.
            raise DecryptionError("the blob opened but does not hold UTF-8 text") from None

    def rewrap(self, blob: bytes, aad: bytes) -> bytes:
        """Re-wrap the blob's DEK under the active key; the ciphertext body is kept as is.

        The blob is fully opened first, also when it is already under the active key (then it
        is returned unchanged), so a rotation reports a broken record instead of carrying it
        along; the new blob is opened again before it is returned, so a caller that stores the
        result never replaces a readable record with an unreadable one.
        """
        parts = _parse(blob)
        dek = self._unwrap(parts, aad)
        self._open_body(dek, parts.body, aad)
        if parts.key_id == self.keys.active.id:
            return blob
        new_blob = self._wrap(dek, aad, parts.body)
        self.open(new_blob, aad)
        return new_blob

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        return _parse(blob).key_id

    def _wrap(self, dek: bytes, aad: bytes, body: bytes) -> bytes:
        key = self.keys.active
        wrap_nonce = os.urandom(NONCE_BYTES)
        wrapped = AESGCM(key.secret).encrypt(wrap_nonce, dek, _dek_aad(key.id, aad))
        return MAGIC + key.id.encode("ascii") + wrap_nonce + wrapped + body

    def _unwrap(self, parts: _Parts, aad: bytes) -> bytes:
        key = self.keys.get(parts.key_id)
        try:
            return AESGCM(key.secret).decrypt(
                parts.wrap_nonce, parts.wrapped_dek, _dek_aad(parts.key_id, aad)
            )
        except InvalidTag:
            raise DecryptionError(_OPEN_FAILED) from None

    @staticmethod
    def _open_body(dek: bytes, body: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(dek).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(_OPEN_FAILED) from None
