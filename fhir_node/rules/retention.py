"""Retention (deliberation 18/053, §15): an inclusion's data is kept while it is active, then 10 years from
the exclusion date (`FHIR_NODE_INCLUSION_RETENTION_YEARS`). `fhir-node retention --apply` physically
removes every version and index row of the inclusions excluded before that (period.end; a logically
deleted inclusion counts by its last version), then of their Patients when nothing else refers to them
any more (no other inclusion, consent, care team..., literally or by SSIN; AuditEvents do not count:
they are evidence and keep their ids). Each removal leaves an AuditEvent (BALP delete, patient variant:
the removed resource and its patient by id, nothing else), chained like every other, in the same
transaction as the removal. Work goes in batches of BATCH resources per transaction, each checked again
inside its transaction, so the job can run while the node serves."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Connection, select, true

from fhir_node.audit import chain
from fhir_node.audit.events import facts
from fhir_node.rules.inclusion import Inclusion
from fhir_node.rules.patients import patient_of, patient_ssins, referring
from fhir_node.rules.pseudonym import in_clear
from fhir_node.security.access import Access, Record
from fhir_node.security.principal import LOCAL_OPERATOR
from fhir_node.store import repository
from fhir_node.store.database import Database
from fhir_node.store.schema import idx_date, idx_reference, resource_versions, resources

BATCH = 200
_AGENT = "fhir-node retention"


@dataclass
class Removal:
    """What a run removed (or, dry, would remove), as ids."""

    inclusions: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    #: The X-Request-Id of its AuditEvents: one per run.
    run_id: str = field(default_factory=lambda: f"retention-{uuid.uuid4()}")


def cutoff(today: date, years: int) -> datetime:
    """The first instant still kept: midnight, `years` before `today` (29 February: the 28th)."""
    try:
        day = today.replace(year=today.year - years)
    except ValueError:
        day = today.replace(year=today.year - years, day=28)
    return datetime(day.year, day.month, day.day)


def run(db: Database, before: datetime, *, apply: bool) -> Removal:
    """Remove (`apply`) or list what retention removes: inclusions excluded before `before`, then their
    Patients that nothing else refers to."""
    done = Removal()
    with db.read() as conn:
        due = _due(conn, before)
    patients: set[str] = set()
    for start in range(0, len(due), BATCH):
        with db.write() if apply else db.read() as conn:
            last = {res_id: _last(conn, res_id, apply) for res_id in due[start : start + BATCH]}
            batch = [i for i, inclusion in last.items() if not apply or _ended_before(inclusion, before)]
            owners = {res_id: _patients(conn, last[res_id]) for res_id in batch}
            if apply and owners:
                _remove(conn, "EpisodeOfCare", owners, done.run_id)
        done.inclusions += batch
        patients.update(p for found in owners.values() for p in found)
    candidates = sorted(patients)
    spared = set() if apply else set(done.inclusions)  # a dry run removed nothing: count them as gone
    for start in range(0, len(candidates), BATCH):
        with db.write() if apply else db.read() as conn:
            free = [p for p in candidates[start : start + BATCH] if _unreferenced(conn, p, spared)]
            if apply and free:
                _remove(conn, "Patient", {p: {p} for p in free}, done.run_id)
        done.patients += free
    if apply:
        chain.settle(db)  # the removals' AuditEvents, staged with them: a command has no audit writer
    return done


def _due(conn: Connection, before: datetime) -> list[str]:
    """Ids of the inclusions excluded before `before`: live ones found by their indexed period, deleted
    ones by the period of their last version."""
    d, r = idx_date.c, resources.c
    live = select(d.res_id).where(d.res_type == "EpisodeOfCare", d.param == "date", d.high < before)
    deleted = select(r.res_id).where(r.res_type == "EpisodeOfCare", r.deleted == true())
    candidates = set(conn.execute(live).scalars()) | set(conn.execute(deleted).scalars())
    return sorted(i for i in candidates if _ended_before(_last(conn, i), before))


def _ended_before(inclusion: Inclusion | None, before: datetime) -> bool:
    """Whether the inclusion's (last) period ended before `before`."""
    return inclusion is not None and inclusion.span()[1] < before


def _last(conn: Connection, res_id: str, lock: bool = False) -> Inclusion | None:
    """The inclusion as its current content, or a deleted one's last, says it; `lock` holds its row until
    commit. Read once per batch: the check under the lock and the patient lookup both use it."""
    found = repository.current(conn, "EpisodeOfCare", res_id, for_update=lock)
    content = found.content if found is not None else None
    if found is not None and content is None:
        v = resource_versions.c
        last = v.res_type == "EpisodeOfCare", v.res_id == res_id, v.content.is_not(None)
        content = conn.execute(select(v.content).where(*last).order_by(v.version_id.desc()).limit(1)).scalar()
    return Inclusion.of(res_id, in_clear(content)) if content is not None else None


def _patients(conn: Connection, inclusion: Inclusion | None) -> set[str]:
    """Ids of the stored Patients an inclusion (its last version) refers to."""
    if inclusion is None:
        return set()
    patient = patient_of(conn, inclusion.reference)
    return {p for p in patient.ids if repository.current(conn, "Patient", p) is not None}


def _unreferenced(conn: Connection, patient_id: str, spared: set[str]) -> bool:
    """Whether nothing but AuditEvents (and the inclusions in `spared`, about to go) refers to the Patient,
    literally or by one of its SSINs."""
    ref = idx_reference.c
    literal = select(ref.res_type, ref.res_id).where(
        ref.target_type == "Patient", ref.target_id == patient_id, ref.res_type != "AuditEvent"
    )
    referrers = {(row.res_type, row.res_id) for row in conn.execute(literal)}
    found = repository.current(conn, "Patient", patient_id)
    for ssin in patient_ssins(found.content if found is not None else None):
        referrers |= {(t, i) for t, ids in referring(conn, ssin).items() for i in ids}
    return all(t == "EpisodeOfCare" and i in spared for t, i in referrers)


def _remove(conn: Connection, res_type: str, owners: dict[str, set[str]], run_id: str) -> None:
    """Erase these resources and record one AuditEvent per removal (`owners`: each one's Patients)."""
    repository.erase(conn, res_type, sorted(owners))
    access = Access(LOCAL_OPERATOR, request_id=run_id, server=_AGENT, user_agent=_AGENT)
    events = []
    for res_id, patients in sorted(owners.items()):
        record = Record("DELETE", f"/fhir/{res_type}/{res_id}", "", "delete", res_type, res_id)
        record.entities.append((res_type, res_id))
        record.patients |= patients
        events.append(facts(access, record, 204, _AGENT))
    chain.record(conn, events)
