"""What differs between SQLite and PostgreSQL, behind a few functions, so that no service in
`domain/` asks which database it is on.

- Row locks: PostgreSQL locks rows (`FOR UPDATE`, and `SKIP LOCKED` so that replicas claim
  disjoint batches); SQLite has one writer at a time and needs none (`for_update`,
  `claim_rows`).
- Leases: `claim_rows` is the one lease pattern of the outbox and the refresher - pick the
  candidates, then an UPDATE whose WHERE checks again that each is still free marks them
  ours and returns them (`RETURNING`, which both databases have), so a row another process
  took meanwhile is not taken twice.
- Row counts: what a guarded write matched (`rows_matched`), and whether one statement run
  for many parameter sets can tell (`counts_batched_writes`).
- Backups: one consistent snapshot to read from (`begin_snapshot`), and PostgreSQL's id
  sequences moved past restored rows (`advance_id_sequences`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Integer,
    Result,
    Row,
    Select,
    Table,
    func,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

__all__ = [
    "advance_id_sequences",
    "begin_snapshot",
    "claim_rows",
    "counts_batched_writes",
    "for_update",
    "rows_matched",
    "skip_locked",
]

S = TypeVar("S", bound=Select[Any])


def _locks_rows(db: Session | Connection) -> bool:
    bind = db.get_bind() if isinstance(db, Session) else db
    return bind.dialect.name != "sqlite"


def for_update(db: Session, query: S) -> S:
    """`query` reading rows this transaction will change: locked until it ends on
    PostgreSQL; SQLite's one writer needs no lock."""
    return query.with_for_update() if _locks_rows(db) else query


def skip_locked(db: Session, query: S) -> S:
    """`query` reading rows this transaction will change, skipping those another
    transaction holds (PostgreSQL): processes doing the same work at once take disjoint
    rows instead of waiting for each other."""
    return query.with_for_update(skip_locked=True) if _locks_rows(db) else query


def claim_rows(
    db: Session,
    candidates: Select[Any],
    claim: Update,
    key: Any,
    returning: Sequence[Any],
) -> list[Row[Any]]:
    """Lease rows: `candidates` selects their keys (`key`, the primary key column), in the
    order they should be served; `claim` is the UPDATE that marks a row ours, its WHERE
    checking again that the row is still claimable. Returns the `returning` columns of the
    rows claimed, in the candidates' order. On PostgreSQL the candidates are locked with
    SKIP LOCKED, so that processes claiming at once take disjoint sets."""
    if _locks_rows(db):
        candidates = candidates.with_for_update(skip_locked=True)
    keys = list(db.scalars(candidates))
    if not keys:
        return []
    rows = db.connection().execute(claim.where(key.in_(keys)).returning(*returning)).all()
    order = {value: index for index, value in enumerate(keys)}
    name = key.key
    return sorted(rows, key=lambda row: order[row._mapping[name]])


def rows_matched(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched: 1 or 0 tells a guarded write (a
    compare-and-set, a single-use token spent) whether it won."""
    return cast(CursorResult[Any], result).rowcount


def counts_batched_writes(connection: Connection) -> bool:
    """Whether one UPDATE run for many parameter sets reports the rows all of them matched
    (so a batch of guarded writes can be checked at once instead of one by one)."""
    return bool(connection.dialect.supports_sane_multi_rowcount)


def begin_snapshot(connection: Connection) -> None:
    """Begin a read-only transaction that sees one snapshot of every table while the server
    keeps writing."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
    else:
        # pysqlite begins transactions only before writes; a read transaction in WAL mode
        # sees one snapshot of the whole file.
        connection.exec_driver_sql("BEGIN")


def advance_id_sequences(connection: Connection, tables: Sequence[Table]) -> None:
    """Rows were inserted with their ids (a restore): move PostgreSQL's id sequences past
    them, so that the next row gets a fresh id. SQLite takes the next id from the rows."""
    if connection.dialect.name != "postgresql":
        return
    for table in tables:
        for column in table.primary_key.columns:
            if isinstance(column.type, Integer) and column.autoincrement in (True, "auto"):
                highest = func.max(column)
                connection.execute(
                    select(
                        func.setval(
                            func.pg_get_serial_sequence(table.name, column.name),
                            func.coalesce(highest, 1),
                            highest.is_not(None),
                        )
                    )
                )
