"""Tamper evidence: the node's AuditEvents form one hash chain per node. `audit_chain` lists them in the
order written: each one's time, the facts it says (`events.facts`) preceded by the SHA-256 of its
predecessor's entry (`previous`), and the SHA-256 of its own; the AuditEvent built from them carries that
link too (extension CHAIN_EXTENSION). Chaining the facts rather than the event (~2 kB rather than ~14 kB
for a page of 50 patients) made a search's append on the event loop ~120 µs cheaper (in process,
2026-12-01), building and serialising the event included. Appends are serialised (SQLite's write
lock; a PostgreSQL advisory lock held to commit), so several workers, or hosts, extend one chain; `extend`
links many in one transaction (group commit). `verify` walks it and names the first break.

On SQLite the chain has a file of its own (`store.audit_file`), so that the commit of an audited
read leaves the page cache of the database's readers alone. A write's AuditEvent must commit with the
write, in the database's file: it is staged there (`record`, `audit_outbox`) and the audit writer chains
it at its next commit (`drain`); a request that may read AuditEvents has it done first (`catch_up`).

What a request waits for is its facts made durable: on SQLite written to its worker's journal
(`store.audit_journal`, chained by `absorb`), else chained. Building the event and storing it as a resource
with its search index rows (~60 rows, ~1.5 ms of CPU, more than the search it audits) comes afterwards:
`index` stores the events not yet indexed, in chain order, and `audit_indexed` records how far it got.
The audit writer does it when the node is idle, and any request that may read AuditEvents first has it
done (`catch_up`), so what a search of AuditEvents finds is the whole chain as of when it began."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, and_, bindparam, delete, exists, func, insert, select, update

from fhir_node.audit.events import CHAIN_EXTENSION, Facts, event
from fhir_node.rules.pseudonym import protected
from fhir_node.store import audit_journal, repository
from fhir_node.store.audit_file import apart
from fhir_node.store.batch import add_rows, add_together, batched
from fhir_node.store.database import Database, lock
from fhir_node.store.ready import Ready
from fhir_node.store.schema import (
    audit_anchor,
    audit_chain,
    audit_indexed,
    audit_outbox,
    resource_versions,
    resources,
)

GENESIS = "0" * 64
#: How an AuditEvent chained (or staged) whole begins: the node did so until 2026-12-01.
_OLD_FORM = b'{"resourceType"'
#: How facts begin once linked: their predecessor's hash first.
_LINKED = b'{"previous":"'
_LOCK = "audit-chain"
#: hashlib hashes smaller pieces holding the interpreter lock (CPython's HASHLIB_GIL_MINSIZE is 2048).
HASH_PIECE = 2000


# Built once (`Ready`): a group commit runs three of them.
_LAST = Ready(select(audit_chain.c.hash).order_by(audit_chain.c.seq.desc()).limit(1))
_ANCHOR = Ready(select(audit_anchor.c.hash).where(audit_anchor.c.id == 1))
_INDEXED = select(audit_indexed.c.seq).where(audit_indexed.c.id == 1)
_LAST_SEQ = select(func.max(audit_chain.c.seq))
_PENDING = Ready(
    select(audit_chain.c.seq, audit_chain.c.res_id, audit_chain.c.recorded, audit_chain.c.content)
    .where(audit_chain.c.seq > bindparam("after"))
    .order_by(audit_chain.c.seq)
    .limit(bindparam("limit"))
)
_UNCHAINED = ~exists().where(audit_chain.c.res_id == audit_outbox.c.res_id)
_STAGED = (
    select(audit_outbox.c.res_id, audit_outbox.c.recorded, audit_outbox.c.content)
    .where(_UNCHAINED)
    .order_by(audit_outbox.c.seq)
)
_WAITING = Ready(
    select(
        func.coalesce(_LAST_SEQ.scalar_subquery(), 0)
        - func.coalesce(_INDEXED.scalar_subquery(), 0)
        + select(func.count()).select_from(audit_outbox).where(_UNCHAINED).scalar_subquery()
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


def extend(conn: Connection, facts: list[Facts]) -> list[str]:
    """Chain the facts of the node's AuditEvents (`events.facts`) in this order, each linked to the one before,
    in `conn`'s transaction: one commit for the audits of many requests. Their ids. They are stored and
    indexed as AuditEvent resources later (`index`)."""
    ids = repository.time_ordered_ids(len(facts))
    items = [(res_id, ts, said) for res_id, (ts, said) in zip(ids, facts, strict=True)]
    _link(conn, items)
    return [res_id for res_id, _, _ in items]


def _link(conn: Connection, items: list[tuple[str, datetime, bytes]]) -> None:
    """Append (id, time, facts) to the chain, in this order: the facts with their predecessor's hash put first
    (`previous`), as hashed. Facts staged by a node before 2026-12-01 are whole AuditEvents: linked by their
    chain extension, in their stored form."""
    previous = head(conn)
    rows = []
    for res_id, ts, said in items:
        if said.startswith(_OLD_FORM):
            linked = {"extension": [{"url": CHAIN_EXTENSION, "valueString": previous}], **orjson.loads(said)}
            _, content = protected(repository.stored_form(linked, res_id, 1, ts))
        else:
            content = _LINKED + previous.encode() + b'",' + said[1:]
        previous = digest(content)
        rows.append({"res_id": res_id, "hash": previous, "recorded": ts, "content": content})
    add_together(conn, audit_chain, rows)


def stored(res_id: str, recorded: datetime, content: bytes) -> bytes:
    """The AuditEvent resource, as stored for search, that a chain entry's bytes stand for: built from its
    facts (the same bytes every time), or those bytes themselves (an event chained whole, before 2026-12-01)."""
    return _resource(res_id, recorded, content)[1]


def _resource(res_id: str, recorded: datetime, content: bytes) -> tuple[dict[str, Any], bytes]:
    """`stored`, with the resource as a dict too (what indexing it needs: built, not parsed back)."""
    if content.startswith(_OLD_FORM):
        return orjson.loads(content), content
    return protected(repository.stored_form(event(orjson.loads(content)), res_id, 1, recorded))


def record(conn: Connection, facts: list[Facts]) -> bool:
    """The AuditEvents of the writes of `conn`'s transaction, committed with them: chained there, or where
    the chain has a file of its own (SQLite), staged in the database for the audit writer to chain
    (`drain`); whether they were staged."""
    if not apart(conn):
        extend(conn, facts)
        return False
    ids = repository.time_ordered_ids(len(facts))
    rows = [{"res_id": res_id, "recorded": ts, "content": said} for res_id, (ts, said) in zip(ids, facts, strict=True)]
    add_rows(conn, audit_outbox, rows)
    return True


def settle(db: Database) -> int:
    """`drain` and `absorb` in a transaction of its own, for those that wrote AuditEvents with no audit
    writer to chain them (a command) or must see every one (`catch_up`, `audit verify`); how many."""
    with db.write(chain=True) as conn:
        return drain(conn) + (absorb(conn, db.journals) if db.journals is not None else 0)


def absorb(conn: Connection, journals: Path) -> int:
    """Chain the facts the workers' journals hold (SQLite, `store.audit_journal`) past what was chained, in
    `conn`'s transaction, which records how far each was read; how many."""
    found, reached = audit_journal.unread(conn, journals)
    if found:
        extend(conn, found)
    audit_journal.advance(conn, reached)
    return len(found)


def drain(conn: Connection) -> int:
    """Chain the staged AuditEvents not chained yet, in the order staged, in `conn`'s transaction (which
    writes the chain's file only: the staged rows are removed later, by `index`); how many."""
    staged = conn.execute(_STAGED).all()
    if staged:
        _link(conn, [(res_id, recorded, content) for res_id, recorded, content in staged])
    return len(staged)


def index(conn: Connection, limit: int | None = None) -> int:
    """Store the next `limit` (default INDEX_BATCH) chained events not yet indexed as AuditEvent
    resources (`stored`: built from their facts), in `conn`'s (write) transaction; how many."""
    head(conn)  # appends and other indexers wait: the position read below stays the last indexed
    after = conn.execute(_INDEXED).scalar() or 0
    rows = _PENDING.rows(conn, {"after": after, "limit": limit or INDEX_BATCH})
    if not rows:
        return 0
    with batched(conn):
        for _, res_id, recorded, content in rows:
            if content is not None:  # else lost before this version of the node: `verify` names it
                resource, resource_bytes = _resource(res_id, recorded, content)
                repository.add(conn, "AuditEvent", res_id, resource, resource_bytes, recorded)
    conn.execute(update(audit_indexed).where(audit_indexed.c.id == 1).values(seq=rows[-1][0]))
    conn.execute(delete(audit_outbox).where(~_UNCHAINED))
    return len(rows)


def waiting(conn: Connection) -> int:
    """How many events wait to be indexed: chain positions after the last one indexed, and staged events
    not chained yet (0 or less: none)."""
    return _WAITING.scalar(conn)


def behind(db: Database) -> bool:
    """Whether any event waits to be chained or indexed: a read, which takes no lock; most requests that may
    read AuditEvents find none, and ask on the event loop (`api.guard`)."""
    with db.read() as conn:
        return waiting(conn) > 0 or (db.journals is not None and audit_journal.pending(conn, db.journals))


def catch_up(db: Database) -> int:
    """Chain the staged events, then index every event chained so far, a batch per transaction; how many.
    Events chained meanwhile (by requests answered since) are left for later: under sustained load they
    come about as fast as they are indexed, and chasing them kept a request waiting for minutes (measured).
    Whether any wait is asked first (`behind`)."""
    if not behind(db):
        return 0
    settle(db)
    with db.read() as conn:
        last = conn.execute(_LAST_SEQ).scalar() or 0
    done = 0
    while True:
        with db.write() as conn:
            if (conn.execute(_INDEXED).scalar() or 0) >= last:
                return done
            done += index(conn)


def digest(content: bytes) -> str:
    """SHA-256, hex, fed in pieces under HASH_PIECE bytes: hashlib lets go of the interpreter lock for a larger
    one, and the audit writer's thread then waited behind the event loop to take it back, once per event."""
    hashed = hashlib.sha256()
    view = memoryview(content)
    for k in range(0, len(view), HASH_PIECE):
        hashed.update(view[k : k + HASH_PIECE])
    return hashed.hexdigest()


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
    version 1) must be the AuditEvent those bytes stand for (`stored`)."""
    expected = _ANCHOR.scalar(conn) or GENESIS
    indexed = conn.execute(_INDEXED).scalar() or 0
    checked = 0
    for position, res_id, recorded, stored_hash, chained, current, first in _walk(conn):
        checked += 1
        if chained is None or (position <= indexed and (current is None or first is None)):
            return checked, expected, Break(position, res_id, "the AuditEvent is missing")
        if digest(chained) != stored_hash:
            return checked, expected, Break(position, res_id, "its content does not match the hash recorded")
        carried = _previous_hash(chained)
        if carried != expected:
            return checked, expected, Break(position, res_id, "it does not follow its predecessor (one was removed)")
        if position <= indexed and not current == first == _rebuilt(res_id, recorded, chained):
            return checked, expected, Break(position, res_id, "a stored copy differs from the event chained")
        expected = stored_hash
    return checked, expected, None


def _walk(
    conn: Connection,
) -> Iterator[tuple[int, str, datetime, str, bytes | None, bytes | None, bytes | None]]:
    """Chain entries in order with the stored copies of each event, in pages (bounded memory). All of
    them: purge removes every entry up to the anchor, so the first left follows the anchor's hash."""
    c, r, v = audit_chain.c, resources.c, resource_versions.c
    after = 0
    while True:
        q = (
            select(c.seq, c.res_id, c.recorded, c.hash, c.content, r.content, v.content)
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
        yield from ((row[0], row[1], row[2], row[3], row[4], row[5], row[6]) for row in rows)
        after = rows[-1][0]


def _rebuilt(res_id: str, recorded: datetime, content: bytes) -> bytes | None:
    """`stored`, or None where the chained bytes are no AuditEvent's facts."""
    try:
        return stored(res_id, recorded, content)
    except (ValueError, KeyError, TypeError):  # orjson's errors are ValueErrors
        return None


def _previous_hash(content: bytes) -> str | None:
    if content.startswith(_LINKED):  # facts: the hash comes first, as `_link` put it
        return content[len(_LINKED) : len(_LINKED) + len(GENESIS)].decode()
    try:
        event = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    for ext in event.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == CHAIN_EXTENSION:
            return ext.get("valueString")
    return None


def purge(db: Database, before: datetime) -> int:
    """Remove the node's AuditEvents recorded before `before` (retention): the oldest part of the chain,
    up to the first event still to keep, with the anchor moved to the last one removed so the rest still
    verifies. Returns how many were removed. Each batch is two transactions, the stored and staged copies
    first, then the chain's entries with the anchor's move (on SQLite they are two files): a crash between
    leaves entries whose copies are gone, which `verify` names and the next purge removes."""
    c = audit_chain.c
    removed = 0
    while True:
        with db.write() as conn:
            head(conn)
            rows = conn.execute(select(c.seq, c.res_id, c.hash, c.recorded).order_by(c.seq).limit(500)).all()
            kept = (i for i, row in enumerate(rows) if row.recorded is not None and row.recorded >= before)
            old = rows[: next(kept, len(rows))]
            if not old:
                return removed
            ids = [row.res_id for row in old]
            repository.erase(conn, "AuditEvent", ids)
            conn.execute(delete(audit_outbox).where(audit_outbox.c.res_id.in_(ids)))  # else staged again
        with db.write(chain=True) as conn:
            head(conn)
            conn.execute(delete(audit_chain).where(c.res_id.in_(ids)))
            conn.execute(delete(audit_anchor))
            conn.execute(insert(audit_anchor).values(id=1, seq=old[-1].seq, hash=old[-1].hash))
        removed += len(old)
        if len(old) < len(rows) or len(rows) < 500:
            return removed
