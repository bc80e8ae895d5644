"""Statements built once and run many times. SQLAlchemy walks a statement again at each execute (its
parameters, events, result metadata) and wraps each row it returns; for SQL that never changes that was
most of a small query's CPU (measured: a page of 50 EpisodeOfCare 185 -> 123 us on SQLite; on PostgreSQL
SQLAlchemy's execute and Rows were ~45 % of a search's CPU). A ready statement is compiled once per
dialect (its SQL text, its parameters' names and order, their conversions and the results') and runs on
the driver's connection (`database.driver_rows`); with a list bound to one parameter (an expanding `IN`,
spelled out per execution) SQLAlchemy runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect
from sqlalchemy.sql import Executable, Select
from sqlalchemy.types import TypeEngine

from fhir_node.store.database import driver_rows

Converter = Callable[[Any], Any]


def bind_converter(dialect: Dialect, column_type: TypeEngine[Any]) -> Callable[[Any], Any] | None:
    """How SQLAlchemy would bind a value of this type on this dialect; on SQLite, a naive datetime written by
    `isoformat` in the very text SQLAlchemy's DATETIME writes (~0.3 against ~1.3 us: every resource version,
    search index date, AuditEvent chained and date a search binds has one)."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    if process is None or dialect.name != "sqlite" or not isinstance(column_type, DateTime):
        return process

    def sqlite_datetime(value: Any) -> Any:
        if type(value) is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return process(value)

    return sqlite_datetime


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    binds: dict[str, Converter]
    results: tuple[Converter | None, ...] | None


class Ready:
    """One statement, compiled for each dialect on first use there (None: SQLAlchemy runs it)."""

    def __init__(self, query: Executable) -> None:
        self.query = query
        self._compiled: dict[str, _Compiled | None] = {}

    def rows(self, conn: Connection, values: dict[str, Any] | None = None) -> list[Any]:
        """The rows for `values` (bind parameters by name; the others keep the values built in): tuples,
        read by position (or by name, for the callers that wrap them); Rows when SQLAlchemy ran it."""
        dialect = conn.dialect
        compiled = self._compiled[dialect.name] if dialect.name in self._compiled else self._compile(dialect)
        if compiled is None:
            return list(conn.execute(self.query, values or {}))
        given = compiled.defaults if not values else {**compiled.defaults, **values}
        convert = compiled.binds
        params = tuple(convert[n](given[n]) if n in convert else given[n] for n in compiled.names)
        found = driver_rows(conn, compiled.sql, params)
        if compiled.results is None:
            return found
        results = compiled.results
        return [tuple(f(v) if f else v for f, v in zip(results, row, strict=True)) for row in found]

    def scalar(self, conn: Connection, values: dict[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        found = self.rows(conn, values)
        return found[0][0] if found else None

    def _compile(self, dialect: Dialect) -> _Compiled | None:
        """The statement for `dialect`'s driver, with positional parameters (SQLite's `?`, psycopg's `%s`: the
        node's engines say `format`); None for SQLAlchemy to run it."""
        compiled = self.query.compile(dialect=dialect)
        ready: _Compiled | None = None
        if compiled.positional and not any(b.expanding for b in compiled.binds.values()):
            names = tuple(compiled.positiontup or ())
            binds = {n: bind_converter(dialect, compiled.binds[n].type) for n in names}
            results: tuple[Converter | None, ...] | None = None
            if isinstance(self.query, Select):
                results = tuple(
                    c.type.dialect_impl(dialect).result_processor(dialect, None) for c in self.query.selected_columns
                )
                if not any(results):
                    results = None
            ready = _Compiled(
                compiled.string,
                names,
                {n: compiled.binds[n].effective_value for n in names},
                {n: f for n, f in binds.items() if f is not None},
                results,
            )
        self._compiled[dialect.name] = ready
        return ready
