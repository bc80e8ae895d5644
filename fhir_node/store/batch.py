"""Deferred inserts: inside `batched(conn)`, rows for the same table are gathered and written with one
executemany at the end, instead of one statement per resource (a 100-entry transaction Bundle then
costs a handful of statements, not ~600). Safe because a Bundle writes each resource at most once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from itertools import chain
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Table

from fhir_node.store.database import driver_rows
from fhir_node.store.ready import bind_converter
from fhir_node.store.schema import resources

_PENDING = "fhir_node.pending_inserts"
_AFTER = "fhir_node.after_inserts"
_NOTES = "fhir_node.batch_notes"
_MARK = {"sqlite": "?", "postgresql": "%s"}
#: Rows per INSERT of `add_together`.
_ROWS = 64
#: A search index row's `rid`: its resource's (one probe of the resources' unique (type, id) index).
_RID = "(SELECT rid FROM resources WHERE res_type = {mark} AND res_id = {mark})"


@cache
def _insert(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    """The INSERT of these columns for the driver, and how a row (holding every one of them) becomes its
    parameters: the values in column order, converted where SQLite stores them in SQLAlchemy's text
    format (datetimes, numbers), which the queries compare with. A search index row's `rid` is its
    resource's, looked up by the row's type and id (`_RID`): the resource's row is written first."""
    mark = _MARK[dialect.name]
    marks = ", ".join([mark] * len(columns))
    names = ", ".join(columns)
    if "rid" in table.c and table is not resources:
        marks, names = f"{marks}, {_RID.format(mark=mark)}", f"{names}, rid"
        columns = (*columns, "res_type", "res_id")
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"
    converters = [bind_converter(dialect, table.c[c].type) for c in columns]
    values = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    converted = [(i, f) for i, f in enumerate(converters) if f is not None]
    if not converted:
        return sql, values

    def parameters(row: dict[str, Any]) -> tuple[Any, ...]:
        found = list(values(row))
        for i, f in converted:
            found[i] = f(found[i])
        return tuple(found)

    return sql, parameters


def _prepared(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
    """The one-row INSERT of `rows` (the columns of the first; a later row lacking one has None there) for the
    driver, and their parameters: SQLAlchemy's per-row parameter handling cost ~0.3 ms per AuditEvent indexed
    (~60 rows), more than SQLite's inserts (measured)."""
    columns = tuple(c.name for c in table.columns if c.name in rows[0])
    sql, parameters = _insert(conn.dialect, table, columns)
    try:
        return sql, [parameters(row) for row in rows]
    except KeyError:  # some row lacks a column
        blank = dict.fromkeys(columns)
        return sql, [parameters({**blank, **row}) for row in rows]


def _write(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """One executemany of `rows`, straight to the driver."""
    sql, values = _prepared(conn, table, rows)
    driver_rows(conn, sql, values, many=True)


@cache
def _rows_of(sql: str, n: int) -> str:
    """The INSERT of one row (`_insert`), for `n` rows."""
    head, _, marks = sql.partition(" VALUES ")
    return f"{head} VALUES {', '.join([marks] * n)}"


def add_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` now, or at the end of the enclosing `batched` block."""
    if not rows:
        return
    pending: dict[str, tuple[Table, list[dict[str, Any]]]] | None = conn.info.get(_PENDING)
    if pending is None:
        _write(conn, table, rows)
    else:
        pending.setdefault(table.name, (table, []))[1].extend(rows)


def add_together(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` now, on SQLite in multi-row INSERTs of up to _ROWS rows: for a thread that shares the
    interpreter with the event loop (the audit writer). An executemany lets go of the interpreter's lock at
    each row's step, and such a thread then waited behind the loop to take it back, row after row (context
    switches per audited search 0.7 -> 0.23). Not for every insert: loading over HTTP, where the loop parses
    the next Bundle while a thread writes, cost more CPU so (0.88-1.07 -> 1.10-1.23 ms per resource)."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        _write(conn, table, rows)
        return
    sql, values = _prepared(conn, table, rows)
    done = 0
    while done < len(values):  # as few statements as the row counts allow (64, 32, ... 1): 7 texts to prepare
        n = min(_ROWS, 1 << ((len(values) - done).bit_length() - 1))
        driver_rows(conn, _rows_of(sql, n), list(chain.from_iterable(values[done : done + n])))
        done += n


def deferring(conn: Connection) -> bool:
    """Whether inserts on `conn` are being gathered (inside `batched`), so not yet visible to queries."""
    return conn.info.get(_PENDING) is not None


def notes(conn: Connection) -> dict[str, Any] | None:
    """What callers noted for the batched writes under way on `conn` (answers that hold while their inserts
    are deferred), gone when the `batched` block ends; None outside one."""
    return conn.info.get(_NOTES)


def after_inserts(conn: Connection, task: Callable[[Connection, list[Any]], None], items: Iterable[Any]) -> None:
    """Run `task(conn, items)` once the rows added so far are written: now, or at the end of the enclosing
    `batched` block, once, with the items of every call made for it meanwhile. For work that reads what
    the writes index."""
    if not deferring(conn):
        task(conn, list(items))
        return
    tasks: dict[Callable[[Connection, list[Any]], None], list[Any]] = conn.info.setdefault(_AFTER, {})
    tasks.setdefault(task, []).extend(items)


@contextlib.contextmanager
def batched(conn: Connection) -> Iterator[None]:
    """Gather inserts on `conn` until the block ends, then write them (not when the block fails)."""
    pending: dict[str, tuple[Table, list[dict[str, Any]]]] = {}
    conn.info[_PENDING] = pending
    conn.info[_NOTES] = {}
    try:
        yield
    finally:
        conn.info.pop(_PENDING, None)
        conn.info.pop(_NOTES, None)
        tasks = conn.info.pop(_AFTER, {})
    for table, rows in sorted(pending.values(), key=lambda item: item[0] is not resources):
        _write(conn, table, rows)  # resources first: index rows look up their rid
    for task, items in tasks.items():
        task(conn, items)
