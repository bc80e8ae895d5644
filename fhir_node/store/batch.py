"""Deferred inserts: inside `batched(conn)`, rows for the same table are gathered and written with one
executemany at the end, instead of one statement per resource (a 100-entry transaction Bundle then
costs a handful of statements, not ~600). Safe because a Bundle writes each resource at most once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, Insert, Table, insert

_PENDING = "fhir_node.pending_inserts"
_AFTER = "fhir_node.after_inserts"
_INSERTS: dict[str, Insert] = {}


def _statement(table: Table) -> Insert:
    """One Insert object per table, so SQLAlchemy's compiled cache is hit without re-keying."""
    stmt = _INSERTS.get(table.name)
    if stmt is None:
        stmt = _INSERTS[table.name] = insert(table)
    return stmt


def add_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` now, or at the end of the enclosing `batched` block."""
    if not rows:
        return
    pending: dict[str, tuple[Table, list[dict[str, Any]]]] | None = conn.info.get(_PENDING)
    if pending is None:
        conn.execute(_statement(table), rows)
    else:
        pending.setdefault(table.name, (table, []))[1].extend(rows)


def deferring(conn: Connection) -> bool:
    """Whether inserts on `conn` are being gathered (inside `batched`), so not yet visible to queries."""
    return conn.info.get(_PENDING) is not None


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
    try:
        yield
    finally:
        conn.info.pop(_PENDING, None)
        tasks = conn.info.pop(_AFTER, {})
    for table, rows in pending.values():
        conn.execute(_statement(table), rows)
    for task, items in tasks.items():
        task(conn, items)
