"""Tamper evidence: the node's AuditEvents form one hash chain per node. Each carries the SHA-256 of
its predecessor (extension CHAIN_EXTENSION), and `audit_chain` lists them in the order written with
their own hash. Appends are serialised (SQLite's write lock; a PostgreSQL advisory lock held to commit),
so several workers, or hosts, extend one chain; `extend` links many in one transaction (group commit).
`verify` walks it and names the first break."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, and_, delete, insert, select

from fhir_node.audit.events import CHAIN_EXTENSION
from fhir_node.store import repository
from fhir_node.store.batch import add_rows, batched
from fhir_node.store.database import lock
from fhir_node.store.schema import audit_anchor, audit_chain, resource_versions, resources

GENESIS = "0" * 64
_LOCK = "audit-chain"


# Built once: SQLAlchemy re-keys a statement built per call (7% of a group commit's CPU, measured).
_LAST = select(audit_chain.c.hash).order_by(audit_chain.c.seq.desc()).limit(1)
_ANCHOR = select(audit_anchor.c.hash).where(audit_anchor.c.id == 1)


def head(conn: Connection) -> str:
    """The hash the next event must carry; takes the chain's lock until `conn` commits."""
    lock(conn, _LOCK)
    last = conn.execute(_LAST).scalar()
    if last is not None:
        return last
    return conn.execute(_ANCHOR).scalar() or GENESIS


def extend(conn: Connection, events: list[dict[str, Any]]) -> list[str]:
    """Store the node's `events` (from `events.build`, without their link) in this order at the head of the
    chain, each linked to the one before, in `conn`'s transaction: one commit for the audits of many
    requests, inserts batched per table. Their ids."""
    previous = head(conn)
    ids = []
    with batched(conn):
        for event in events:
            linked = {"extension": [{"url": CHAIN_EXTENSION, "valueString": previous}], **event}
            res_id, previous = _store(conn, linked)
            ids.append(res_id)
    return ids


def _store(conn: Connection, event: dict[str, Any]) -> tuple[str, str]:
    """`event` as a new AuditEvent and its chain entry: (its id, its hash)."""
    res_id = repository.time_ordered_id()
    written = repository.write(conn, "AuditEvent", res_id, event, None, "POST")
    assert written.content is not None
    hashed = digest(written.content)
    add_rows(conn, audit_chain, [{"res_id": res_id, "hash": hashed}])
    return res_id, hashed


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first place the chain does not hold."""

    position: int
    res_id: str
    reason: str

    def __str__(self) -> str:
        return f"AuditEvent/{self.res_id} (chain position {self.position}): {self.reason}"


def verify(conn: Connection) -> tuple[int, str, Break | None]:
    """(events checked, head hash, first break or None). Every event's stored bytes (current row and
    version 1) must hash to its chain entry and carry its predecessor's hash."""
    expected = conn.execute(_ANCHOR).scalar() or GENESIS
    checked = 0
    for position, res_id, stored_hash, current, first in _walk(conn):
        checked += 1
        if current is None or first is None:
            return checked, expected, Break(position, res_id, "the AuditEvent is missing")
        if current != first:
            return checked, expected, Break(position, res_id, "the current row differs from the version written")
        if digest(first) != stored_hash:
            return checked, expected, Break(position, res_id, "its content does not match the hash recorded")
        carried = _previous_hash(first)
        if carried != expected:
            return checked, expected, Break(position, res_id, "it does not follow its predecessor (one was removed)")
        expected = stored_hash
    return checked, expected, None


def _walk(conn: Connection) -> Iterator[tuple[int, str, str, bytes | None, bytes | None]]:
    """Chain entries in order with both stored copies of each event, in pages (bounded memory). All of
    them: purge removes every entry up to the anchor, so the first left follows the anchor's hash."""
    c, r, v = audit_chain.c, resources.c, resource_versions.c
    after = 0
    while True:
        q = (
            select(c.seq, c.res_id, c.hash, r.content, v.content)
            .select_from(
                audit_chain.outerjoin(resources, and_(r.res_type == "AuditEvent", r.res_id == c.res_id)).outerjoin(
                    resource_versions,
                    and_(v.res_type == "AuditEvent", v.res_id == c.res_id, v.version_id == 1),
                )
            )
            .where(c.seq > after)
            .order_by(c.seq)
            .limit(1000)
        )
        rows = conn.execute(q).all()
        if not rows:
            return
        yield from ((row[0], row[1], row[2], row[3], row[4]) for row in rows)
        after = rows[-1][0]


def _previous_hash(content: bytes) -> str | None:
    try:
        event = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    for ext in event.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == CHAIN_EXTENSION:
            return ext.get("valueString")
    return None


def purge(conn: Connection, before: datetime) -> int:
    """Remove the node's AuditEvents recorded before `before` (retention): the oldest part of the chain,
    up to the first event still to keep, with the anchor moved to the last one removed so the rest still
    verifies. Returns how many were removed."""
    head(conn)
    c, v = audit_chain.c, resource_versions.c
    removed = 0
    while True:
        rows = conn.execute(
            select(c.seq, c.res_id, c.hash, v.last_updated)
            .select_from(
                audit_chain.join(
                    resource_versions, and_(v.res_type == "AuditEvent", v.res_id == c.res_id, v.version_id == 1)
                )
            )
            .order_by(c.seq)
            .limit(500)
        ).all()
        old = [row for row in rows[: next((i for i, r in enumerate(rows) if r.last_updated >= before), len(rows))]]
        if not old:
            return removed
        ids = [row.res_id for row in old]
        repository.erase(conn, "AuditEvent", ids)
        conn.execute(delete(audit_chain).where(c.res_id.in_(ids)))
        conn.execute(delete(audit_anchor))
        conn.execute(insert(audit_anchor).values(id=1, seq=old[-1].seq, hash=old[-1].hash))
        removed += len(old)
        if len(old) < len(rows) or len(rows) < 500:
            return removed
