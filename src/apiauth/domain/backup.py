"""`apiauth backup` / `apiauth restore`: every table's rows in one file, sealed by the vault.

The file is one line of JSON naming the format, then a vault blob (AES-256-GCM under a
data key wrapped by the master key, associated data `apiauth:backup:v1`) holding the
zlib-compressed dump: a manifest line, then one JSON line per row, tables in foreign-key
order. Ciphertexts in the rows (tokens, client secrets) stay as they are, so a restore needs
the same master key twice over: to open the file, and to open the records afterwards.

`server_state` is left out: it holds facts about one deployment (demo mode's emulator URL,
the first-start setup link), not data. A restore goes only into an empty database, in one
transaction: it either restores everything or nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, LargeBinary, Table, func, insert, select

from apiauth import __version__
from apiauth.domain.broker import Broker
from apiauth.errors import ApiAuthServerError
from apiauth.kms import StoredKey, VaultKeys
from apiauth.store.dialect import advance_id_sequences, begin_snapshot
from apiauth.store.models import Base, UTCDateTime, WrappedKey, utcnow
from apiauth.vault import DecryptionError, UnknownKeyError

FORMAT = "apiauth-backup"
VERSION = 1
AAD = b"apiauth:backup:v1"
SKIPPED_TABLES = frozenset({"server_state"})
# A server started with APIAUTH_KMS makes its key-encryption key before anything else, so an
# otherwise empty database may hold one: not counted as "not empty", and a backed-up key
# already there (the same id is the same key) is not inserted twice.
MERGED_TABLES = frozenset({WrappedKey.__tablename__})
_BATCH = 500

Progress = Callable[[int], None]


class BackupError(ApiAuthServerError):
    code = "backup_error"


@dataclass(frozen=True)
class BackupSummary:
    rows: Mapping[str, int]
    key_id: str

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def backed_up_tables() -> list[Table]:
    """The tables a backup holds, parents before children."""
    return [t for t in Base.metadata.sorted_tables if t.name not in SKIPPED_TABLES]


def count_rows(broker: Broker) -> int:
    with broker.engine.connect() as connection:
        return sum(_count(connection, table) for table in backed_up_tables())


def _count(connection: Connection, table: Table) -> int:
    return int(connection.scalar(select(func.count()).select_from(table)) or 0)


# --- writing ------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _dump_lines(broker: Broker, progress: Progress) -> tuple[list[bytes], dict[str, int]]:
    lines: list[bytes] = []
    counts: dict[str, int] = {}
    with broker.engine.connect() as connection:
        begin_snapshot(connection)
        try:
            for table in backed_up_tables():
                counts[table.name] = 0
                order = list(table.primary_key.columns)
                for row in connection.execute(select(table).order_by(*order)):
                    record = {key: _encode(value) for key, value in row._mapping.items()}
                    line = {"table": table.name, "row": record}
                    lines.append(json.dumps(line, separators=(",", ":")).encode("utf-8"))
                    counts[table.name] += 1
                    progress(1)
        finally:
            connection.rollback()
    return lines, counts


def write_backup(broker: Broker, path: Path, progress: Progress = lambda n: None) -> BackupSummary:
    """Dump every table into `path` (mode 0600), sealed under the active master key."""
    lines, counts = _dump_lines(broker, progress)
    manifest = {"format": FORMAT, "version": VERSION, "rows": counts}
    plaintext = b"\n".join([json.dumps(manifest).encode("utf-8"), *lines]) + b"\n"
    key_id = broker.vault.active_key_id
    sealed = broker.vault.seal(zlib.compress(plaintext, 6), AAD)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": utcnow().isoformat(),
        "apiauth": __version__,
        "master_key_id": key_id,
        "encryption": "apiauth vault (AES-256-GCM, envelope), aad apiauth:backup:v1",
        "compression": "zlib",
    }
    wrapped = _wrapped_key(broker, key_id)
    if wrapped is not None:
        # Not secret (only the KMS can unwrap it), and needed to open the file in a database
        # that does not hold it yet (a restore).
        header["wrapped_key"] = wrapped
    temporary = path.with_name(path.name + ".partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(json.dumps(header).encode("utf-8") + b"\n")
        file.write(sealed)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return BackupSummary(counts, key_id)


def _wrapped_key(broker: Broker, key_id: str) -> dict[str, str] | None:
    keys = broker.vault.keys
    stored = keys.wrapped.stored(key_id) if isinstance(keys, VaultKeys) else None
    if stored is None:
        return None
    return {
        "id": stored.id,
        "service": stored.service,
        "kms_key_id": stored.kms_key_id,
        "wrapped": base64.b64encode(stored.wrapped).decode("ascii"),
        "created_at": stored.created_at.isoformat(),
    }


def _consider_wrapped_key(broker: Broker, fields: Any) -> None:
    keys = broker.vault.keys
    if not isinstance(fields, dict) or not isinstance(keys, VaultKeys):
        return
    try:
        stored = StoredKey(
            id=str(fields["id"]),
            service=str(fields["service"]),
            kms_key_id=str(fields["kms_key_id"]),
            wrapped=base64.b64decode(fields["wrapped"]),
            created_at=datetime.fromisoformat(fields["created_at"]),
        )
    except (KeyError, ValueError, TypeError, binascii.Error):
        raise BackupError("the backup's wrapped key (in its first line) is damaged") from None
    keys.wrapped.consider(stored)


# --- reading and restoring ----------------------------------------------------------------


@dataclass(frozen=True)
class OpenedBackup:
    header: Mapping[str, Any]
    manifest: Mapping[str, Any]
    lines: list[bytes]

    @property
    def total(self) -> int:
        return len(self.lines)


def open_backup(broker: Broker, path: Path) -> OpenedBackup:
    """Read and decrypt a backup file, or a `BackupError` that says what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    first, _, sealed = raw.partition(b"\n")
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError(f"{path} is not an apiauth backup (made by `apiauth backup FILE`)")
    if header.get("version") != VERSION:
        raise BackupError(
            f"{path} is a version {header.get('version')} backup; this apiauth reads "
            f"version {VERSION}"
        )
    key_id = header.get("master_key_id", "?")
    _consider_wrapped_key(broker, header.get("wrapped_key"))
    try:
        compressed = broker.vault.open(sealed, AAD)
    except UnknownKeyError:
        raise BackupError(
            f"{path} was encrypted with master key {key_id}, which this server does not have: "
            "set APIAUTH_MASTER_KEY (or put the key file master.key in the data dir) to the "
            "master key of the server that made the backup, then run the command again"
        ) from None
    except DecryptionError:
        raise BackupError(
            f"{path} does not open with master key {key_id}: the file is damaged or was changed"
        ) from None
    try:
        lines = zlib.decompress(compressed).split(b"\n")
        manifest = json.loads(lines[0])
    except (zlib.error, ValueError, IndexError):
        raise BackupError(f"{path} opened but its contents are damaged") from None
    return OpenedBackup(header, manifest, [line for line in lines[1:] if line])


def _decoder(table: Table) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    binary = {c.name for c in table.columns if isinstance(c.type, LargeBinary)}
    moments = {c.name for c in table.columns if isinstance(c.type, UTCDateTime)}

    def decode(row: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        for key, value in row.items():
            if key not in table.columns:
                raise BackupError(f"the backup has a column {table.name}.{key} this schema lacks")
            if value is not None and key in binary:
                value = base64.b64decode(value)
            elif value is not None and key in moments:
                value = datetime.fromisoformat(value)
            values[key] = value
        return values

    return decode


def _rows(backup: OpenedBackup) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for line in backup.lines:
        try:
            entry = json.loads(line)
            yield entry["table"], entry["row"]
        except (ValueError, KeyError, TypeError):
            raise BackupError("the backup opened but a row in it is damaged") from None


def non_empty_tables(connection: Connection) -> dict[str, int]:
    found = {}
    for table in backed_up_tables():
        if table.name in MERGED_TABLES:
            continue
        count = _count(connection, table)
        if count:
            found[table.name] = count
    return found


def restore_backup(
    broker: Broker, backup: OpenedBackup, progress: Progress = lambda n: None
) -> dict[str, int]:
    """Insert every row of an opened backup into this (empty) database, in one transaction."""
    tables = {table.name: table for table in backed_up_tables()}
    decoders = {name: _decoder(table) for name, table in tables.items()}
    restored = dict.fromkeys(tables, 0)
    with broker.engine.begin() as connection:
        occupied = non_empty_tables(connection)
        if occupied:
            listed = ", ".join(f"{n} rows in {name}" for name, n in occupied.items())
            raise BackupError(
                f"the database is not empty ({listed}): restore only into a fresh database "
                "(a new APIAUTH_DATABASE_URL or data dir)"
            )
        present = {
            name: {row[0] for row in connection.execute(select(*tables[name].primary_key.columns))}
            for name in MERGED_TABLES
        }
        batch: list[dict[str, Any]] = []
        batch_table: str | None = None

        def flush() -> None:
            if batch and batch_table is not None:
                connection.execute(insert(tables[batch_table]), batch)
                progress(len(batch))
                batch.clear()

        for name, row in _rows(backup):
            if name not in tables:
                raise BackupError(f"the backup has a table {name!r} this schema lacks")
            if name != batch_table or len(batch) >= _BATCH:
                flush()
                batch_table = name
            decoded = decoders[name](row)
            if name in present and decoded["id"] in present[name]:
                continue
            batch.append(decoded)
            restored[name] += 1
        flush()
        advance_id_sequences(connection, list(tables.values()))
    return restored
