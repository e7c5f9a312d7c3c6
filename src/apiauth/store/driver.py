"""A hot SELECT run straight on the database driver (sqlite3, psycopg), on connections of its
own: compiled once per engine, its rows converted by the same SQLAlchemy types as any other
query (`TypeEngine.result_processor`), so that the rows are those `Connection.execute` gives
(tests/test_driver_reads.py compares them) - without SQLAlchemy's per-execution work (the
compiled-cache lookup, the execution context, the result's metadata) and, on PostgreSQL,
without the pool's ping at checkout and its rollback at return: the driver connection runs
in autocommit, so one statement is one round trip (and psycopg prepares it on the server
after a few executions).

For the read path's first read of a token (`secrets_read.first_read`), which costs a query
per request by its nature; everything else goes through the engine. A connection that fails
is closed and the error raised: the caller answers the long way then, through the engine,
whose pool pings and reconnects (a database restarted, docs/SECURITY.md), and a new
connection is made for the next call.
"""

from __future__ import annotations

import contextlib
import threading
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, Select, event

__all__ = ["DriverConnections", "DriverQuery"]


class DriverQuery:
    """`statement` compiled for `engine`'s dialect. Parameters are given to the driver as
    they are (no bind processing): strings and numbers only, which every driver takes as
    they are."""

    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        # Every bound parameter by the name the SQL uses, with the values the statement
        # holds itself (a literal it compares with).
        required = [bind.key for bind in compiled.binds.values() if bind.required]
        self._defaults = compiled.construct_params(dict.fromkeys(required), _check=False)
        self._positional = compiled.positiontup if dialect.positional else None
        self.row_type: Callable[..., Any] = namedtuple(  # type: ignore[misc]
            "Row", list(statement.selected_columns.keys())
        )
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]
        self._processors = [
            (index, processor) for index, processor in enumerate(processors) if processor
        ]

    def all(self, connection: Any, params: Mapping[str, Any]) -> list[Any]:
        """Every row, as named tuples of the statement's column keys."""
        values = {**self._defaults, **params}
        arguments: Any = (
            values if self._positional is None else [values[name] for name in self._positional]
        )
        cursor = connection.cursor()
        try:
            cursor.execute(self.sql, arguments)
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        make, processors = self.row_type, self._processors
        rows = []
        for row in fetched:
            if processors:
                row = list(row)
                for index, processor in processors:
                    row[index] = processor(row[index])
            rows.append(make(*row))
        return rows


class DriverConnections:
    """At most `size` driver connections of `engine`'s database, made by the engine (its
    connect events: SQLite's pragmas) and then kept outside its pool, in autocommit on
    PostgreSQL; closed when the engine is disposed (`Broker.close`)."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine = engine
        self.size = size
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._made = 0
        self._closed = False
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def run(self, query: DriverQuery, params: Mapping[str, Any]) -> list[Any] | None:
        """`query`'s rows on an idle connection (made now if fewer than `size` exist), or
        None when all `size` are in use or the engine was disposed: the caller asks the
        engine then. A failure closes the connection and is raised."""
        with self._lock:
            if self._idle:
                connection = self._idle.pop()
            elif self._made < self.size and not self._closed:
                self._made += 1
                connection = None
            else:
                return None
        try:
            if connection is None:
                connection = self._connect()
            rows = query.all(connection, params)
        except Exception:
            with self._lock:
                self._made -= 1
            if connection is not None:
                _close(connection)
            raise
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return rows
        _close(connection)
        return rows

    def _connect(self) -> Any:
        pooled = self.engine.raw_connection()
        pooled.detach()  # ours from now on, never back to the pool
        connection: Any = pooled.dbapi_connection
        if self.engine.dialect.name == "postgresql":
            connection.rollback()
            connection.autocommit = True
        return connection

    def close(self) -> None:
        """Close the idle connections now, and each busy one when its call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            _close(connection)


def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):  # broken already: nothing more to learn from it
        connection.close()
