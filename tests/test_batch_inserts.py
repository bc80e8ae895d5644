"""Batched inserts (`store.batch`): executemany, or (`add_together`, on SQLite) multi-row INSERTs of 64,
32, ... 1 rows each; on SQLite datetimes are written by `isoformat` rather than SQLAlchemy's processor. On
both databases every row must land exactly as given, in order, and compare as SQLAlchemy's own writes do.
And the chain's hash, fed to hashlib in pieces, is SHA-256 whatever the length."""

from __future__ import annotations

import hashlib
import os
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import DateTime, insert, select
from sqlalchemy.dialects import sqlite

from fhir_node.audit import chain
from fhir_node.store.batch import add_rows, add_together, batched
from fhir_node.store.database import Database
from fhir_node.store.ready import bind_converter
from fhir_node.store.schema import audit_outbox


@pytest.mark.parametrize("count", [1, 63, 64, 65, 200])
def test_every_row_lands_as_given_and_in_order(database_url: str, count: int) -> None:
    db = Database(database_url)
    try:
        db.migrate()
        start = datetime(2026, 12, 2, 0, 30, 0, 123456)
        rows = [
            {
                "res_id": f"ev-{k:04d}",
                "recorded": start + timedelta(seconds=k, microseconds=k),
                "content": bytes([k % 256]) * k,
            }
            for k in range(count)
        ]
        half, last = (count + 1) // 2, max((count + 1) // 2, count - 1)
        with db.write() as conn:
            add_together(conn, audit_outbox, rows[:half])
            add_rows(conn, audit_outbox, rows[half:last])
            with batched(conn):
                add_rows(conn, audit_outbox, rows[last:])
            conn.execute(insert(audit_outbox).values(res_id="by-sqlalchemy", recorded=start, content=b"x"))
        with db.read() as conn:
            c = audit_outbox.c
            found = conn.execute(select(c.res_id, c.recorded, c.content).order_by(c.seq)).all()
            same_time = conn.execute(select(c.res_id).where(c.recorded == start).order_by(c.seq)).scalars().all()
            later = conn.execute(select(c.res_id).where(c.recorded > start).order_by(c.seq)).scalars().all()
    finally:
        db.dispose()
    assert [tuple(r) for r in found[:-1]] == [(r["res_id"], r["recorded"], r["content"]) for r in rows]
    assert same_time == ["ev-0000", "by-sqlalchemy"]  # the same text as SQLAlchemy writes, so equal
    assert later == [r["res_id"] for r in rows[1:]]


def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them() -> None:
    dialect = sqlite.dialect()
    theirs = DateTime().dialect_impl(dialect).bind_processor(dialect)
    ours = bind_converter(dialect, DateTime())
    assert ours is not None and theirs is not None
    for value in (
        datetime(2026, 12, 2, 0, 30),
        datetime(999, 1, 2, 3, 4, 5, 6),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        date(2024, 2, 29),
        None,
    ):
        assert ours(value) == theirs(value)


@pytest.mark.parametrize("size", [0, 1, chain.HASH_PIECE - 1, chain.HASH_PIECE, chain.HASH_PIECE + 1, 2048, 14_000])
def test_the_chain_hash_is_sha256_of_the_whole(size: int) -> None:
    content = os.urandom(size)
    assert chain.digest(content) == hashlib.sha256(content).hexdigest()
