"""Tamper evidence: the node's AuditEvents form one hash chain per node. Each carries the SHA-256 of
its predecessor (extension CHAIN_EXTENSION), and `audit_chain` lists them in the order written with
their time, stored bytes and own hash. Appends are serialised (SQLite's write lock; a PostgreSQL advisory
lock held to commit), so several workers, or hosts, extend one chain; `extend` links many in one
transaction (group commit). `verify` walks it and names the first break.

Appending is all a request waits for: the event is durable and chained then. Storing it as a resource
with its search index rows (~60 rows, ~1.5 ms of CPU, more than the search it audits) comes afterwards:
`index` stores the events not yet indexed, in chain order, and `audit_indexed` records how far it got.
The audit writer does it when the node is idle, and any request that may read AuditEvents first has it
done (`catch_up`), so what a search of AuditEvents finds is always the whole chain."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from fhir_node.audit.events import CHAIN_EXTENSION
from fhir_node.rules.pseudonym import protected
from fhir_node.store import repository
from fhir_node.store.batch import add_rows, batched
from fhir_node.store.database import Database, lock
from fhir_node.store.ready import Ready
from fhir_node.store.schema import audit_anchor, audit_chain, audit_indexed, resource_versions, resources

GENESIS = "0" * 64
_LOCK = "audit-chain"


# Built once (`Ready`): a group commit runs three of them.
_LAST = Ready(select(audit_chain.c.hash).order_by(audit_chain.c.seq.desc()).limit(1))
_ANCHOR = Ready(select(audit_anchor.c.hash).where(audit_anchor.c.id == 1))
_INDEXED = select(audit_indexed.c.seq).where(audit_indexed.c.id == 1)
_PENDING = Ready(
    select(audit_chain.c.seq, audit_chain.c.res_id, audit_chain.c.recorded, audit_chain.c.content)
    .where(audit_chain.c.seq > bindparam("after"))
    .order_by(audit_chain.c.seq)
    .limit(bindparam("limit"))
)
_WAITING = Ready(
    select(
        func.coalesce(select(func.max(audit_chain.c.seq)).scalar_subquery(), 0)
        - func.coalesce(_INDEXED.scalar_subquery(), 0)
    )
)
#: Events stored as resources per transaction: ~1.5 ms each, so the write lock is held ~0.1 s at most.
INDEX_BATCH = 50


def head(conn: Connection) -> str:
    """The hash the next event must carry; takes the chain's lock until `conn` commits."""
    lock(conn, _LOCK)
    last = _LAST.scalar(conn)
    if last is not None:
        return last
    return _ANCHOR.scalar(conn) or GENESIS


def extend(conn: Connection, events: list[dict[str, Any]]) -> list[str]:
    """Chain the node's `events` (from `events.build`, without their link) in this order, each linked to
    the one before, in `conn`'s transaction: one commit for the audits of many requests. Their ids. They
    are stored and indexed as resources later (`index`)."""
    previous = head(conn)
    ids, rows = [], []
    for event in events:
        res_id, ts = repository.time_ordered_id(), repository.now()
        linked = {"extension": [{"url": CHAIN_EXTENSION, "valueString": previous}], **event}
        _, content = protected(repository.stored_form(linked, res_id, 1, ts))
        previous = digest(content)
        rows.append({"res_id": res_id, "hash": previous, "recorded": ts, "content": content})
        ids.append(res_id)
    add_rows(conn, audit_chain, rows)
    return ids


def index(conn: Connection, limit: int | None = None) -> int:
    """Store the next `limit` (default INDEX_BATCH) chained events not yet indexed as AuditEvent
    resources, byte for byte as chained, in `conn`'s (write) transaction; how many."""
    head(conn)  # appends and other indexers wait: the position read below stays the last indexed
    after = conn.execute(_INDEXED).scalar() or 0
    rows = _PENDING.rows(conn, {"after": after, "limit": limit or INDEX_BATCH})
    if not rows:
        return 0
    with batched(conn):
        for _, res_id, recorded, content in rows:
            if content is not None:  # else lost before this version of the node: `verify` names it
                repository.add(conn, "AuditEvent", res_id, orjson.loads(content), content, recorded)
    conn.execute(update(audit_indexed).where(audit_indexed.c.id == 1).values(seq=rows[-1][0]))
    return len(rows)


def waiting(conn: Connection) -> int:
    """How many chained events wait to be indexed: chain positions after the last one indexed (0 or less:
    none)."""
    return _WAITING.scalar(conn)


def catch_up(db: Database) -> int:
    """Index every chained event not yet indexed, a batch per transaction; how many. Whether any wait is
    asked in a read, which takes no lock: most requests that call this find none."""
    done = 0
    while True:
        with db.read() as conn:
            if waiting(conn) <= 0:
                return done
        with db.write() as conn:
            done += index(conn)


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
    """(events checked, head hash, first break or None). Every event's chained bytes must hash to its
    chain entry and carry its predecessor's hash; once indexed, its stored copies (current row and
    version 1) must be those bytes."""
    expected = _ANCHOR.scalar(conn) or GENESIS
    indexed = conn.execute(_INDEXED).scalar() or 0
    checked = 0
    for position, res_id, stored_hash, chained, current, first in _walk(conn):
        checked += 1
        if chained is None or (position <= indexed and (current is None or first is None)):
            return checked, expected, Break(position, res_id, "the AuditEvent is missing")
        if digest(chained) != stored_hash:
            return checked, expected, Break(position, res_id, "its content does not match the hash recorded")
        if position <= indexed and not current == first == chained:
            return checked, expected, Break(position, res_id, "a stored copy differs from the event chained")
        carried = _previous_hash(chained)
        if carried != expected:
            return checked, expected, Break(position, res_id, "it does not follow its predecessor (one was removed)")
        expected = stored_hash
    return checked, expected, None


def _walk(conn: Connection) -> Iterator[tuple[int, str, str, bytes | None, bytes | None, bytes | None]]:
    """Chain entries in order with the stored copies of each event, in pages (bounded memory). All of
    them: purge removes every entry up to the anchor, so the first left follows the anchor's hash."""
    c, r, v = audit_chain.c, resources.c, resource_versions.c
    after = 0
    while True:
        q = (
            select(c.seq, c.res_id, c.hash, c.content, r.content, v.content)
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
        yield from ((row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows)
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
    c = audit_chain.c
    removed = 0
    while True:
        rows = conn.execute(select(c.seq, c.res_id, c.hash, c.recorded).order_by(c.seq).limit(500)).all()
        kept = (i for i, row in enumerate(rows) if row.recorded is not None and row.recorded >= before)
        old = rows[: next(kept, len(rows))]
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
