"""The audit trail of requests: interactions note what they touch as they run, and each request's
AuditEvent is durable before its answer leaves. A write's AuditEvent commits in the write's own
transaction (`stage`); anything else's is written when the answer starts (`flush`), and if it cannot
be written the answer becomes a 503 (fail closed)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from fhir_node.audit import chain
from fhir_node.audit.events import build
from fhir_node.security.access import Access, Record, current
from fhir_node.security.rules import PATIENT_PARAM
from fhir_node.store.database import Database
from fhir_node.store.schema import idx_reference


def note(conn: Connection, items: Iterable[tuple[str, str]]) -> None:
    """Record that the current request touched these resources (and so their patients)."""
    record = current().record
    if record is None:
        return
    items = list(items)
    if not items:
        return
    record.entities.extend(items)
    record.patients |= patients_of(conn, items)


def note_query(query: str) -> None:
    """The search as the server understood it (URL and form parameters), for `entity.query`."""
    record = current().record
    if record is not None:
        record.query = query


def patients_of(conn: Connection, items: list[tuple[str, str]]) -> set[str]:
    """Ids of the Patients these resources are, or belong to (one query per type)."""
    found = {i for t, i in items if t == "Patient"}
    by_type: dict[str, list[str]] = {}
    for t, i in items:
        if t in PATIENT_PARAM:
            by_type.setdefault(t, []).append(i)
    ref = idx_reference.c
    for t, ids in by_type.items():
        q = select(ref.target_id).where(
            ref.res_type == t, ref.res_id.in_(ids), ref.param == PATIENT_PARAM[t], ref.target_type == "Patient"
        )
        found.update(x for x in conn.execute(q).scalars() if x)
    return found


def stage(conn: Connection) -> None:
    """Inside a write transaction, before it commits: the AuditEvent of what the request did so far."""
    access = current()
    if access.record is not None:
        _append(conn, access, access.record, 200)


def committed() -> None:
    """The write transaction holding the staged AuditEvent committed: the request is audited, and a later
    transaction of the same request (a batch's next entry) gets an AuditEvent of its own."""
    record = current().record
    if record is not None:
        record.written = True
        record.entities.clear()
        record.patients.clear()


def flush(db: Database, status: int) -> None:
    """When the answer starts: the request's AuditEvent, unless a committed write already carried one."""
    access = current()
    record = access.record
    if record is None or record.written:
        return
    with db.write() as conn:
        _append(conn, access, record, status)
    record.written = True


def _append(conn: Connection, access: Access, record: Record, status: int) -> None:
    chain.append(conn, build(access, record, status, access.server, chain.head(conn)))
