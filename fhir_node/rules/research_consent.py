"""Research use follows consent (deliberation 18/053, annex item 1): a patient's data may leave for
research or statistics only while their latest research consent is an active permit.

A *research consent* is a Consent whose root provision names the purpose v3-ActReason#HRESCH or our
`consent-purpose#statistics` (R4's `purpose` parameter: `Consent.provision.purpose`). Its *decisions*
are those whose status records one: `active` (in force), `inactive` (withdrawn) or `rejected`; a
`draft` or `proposed` consent decides nothing yet and an `entered-in-error` one never existed. The
*latest* decision is the one with the latest `dateTime`, then the most recently written, then the
highest id (so there is always exactly one). The patient is consented when that one is `active` with
root `provision.type` `permit`; a deny, a withdrawal, a newer decision or no decision at all leaves the
patient out.

Decided from the search index rows (never the JSON) of the patients' Consents, a few indexed queries per
batch of patients (`decide`), and kept in the table `research_consented`: every write of a Consent or
Patient refreshes the patients it may change in the write's own transaction (`follow`), and searches
probe that table once per row (`in_consent`), so they page by keyset, count exactly, and a consent
change counts from the next request."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, false, func, insert, select

from fhir_node.security.relationships import SSIN
from fhir_node.store.batch import after_inserts
from fhir_node.store.database import lock
from fhir_node.store.schema import idx_date, idx_reference, idx_token, research_consented, resources

RESEARCH_PURPOSES = (
    ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HRESCH"),
    ("https://fhir-node.be/fhir/CodeSystem/consent-purpose", "statistics"),
)
#: Consent statuses that record the patient's decision (or its withdrawal).
DECISION_STATUSES = ("active", "inactive", "rejected")
#: Patients decided per round of queries (bounded IN lists).
_CHUNK = 500

def in_consent(patient_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL: the Patient with id `patient_id` (a column of the enclosing query) is consented for research,
    as the table kept by `follow` says: one primary-key probe."""
    t = research_consented.alias()
    return select(t.c.patient_id).where(t.c.patient_id == patient_id).exists()


def follow(conn: Connection, res_type: str, res_id: str, before: Collection[str]) -> None:
    """After a write of a Consent or Patient (its index rows written, or pending in a batch): refresh the
    patients it may have changed, `before` being those a Consent was tied to until now (`tied`)."""
    if res_type in ("Consent", "Patient"):
        after_inserts(conn, _settle, [(res_type, res_id), *(("Patient", pid) for pid in before)])


def _settle(conn: Connection, written: list[tuple[str, str]]) -> None:
    """Once index rows are written: refresh the patients written (and those the Consents written tie)."""
    patients = {i for t, i in written if t == "Patient"}
    refresh(conn, patients | tied(conn, {i for t, i in written if t == "Consent"}))


def tied(conn: Connection, consent_ids: Collection[str]) -> set[str]:
    """Ids of the Patients these Consents are about (by reference, or by the SSIN they name)."""
    link, token = idx_reference.c, idx_token.c
    found: set[str] = set()
    for ids in _chunks(consent_ids):
        of = (link.res_type == "Consent", link.res_id.in_(ids), link.param == "patient")
        found.update(pid for (pid,) in conn.execute(select(link.target_id).where(*of, link.target_type == "Patient")))
        ssins = select(link.id_value).where(*of, link.id_system == SSIN)
        found.update(pid for pid, _ in _with_ssin(conn, token.code.in_(ssins)))
    return {pid for pid in found if pid}


def refresh(conn: Connection, patient_ids: Collection[str]) -> None:
    """Make `research_consented` say, for these patients, what their Consents decide now. Their locks are
    held to commit (PostgreSQL): two writers about one patient refresh it in turn, the second seeing the
    first's consent, never both deciding from a state without the other's."""
    ids = sorted(patient_ids)
    lock(conn, *(f"patient:{pid}" for pid in ids))
    fill(conn, ids)


def fill(conn: Connection, patient_ids: Collection[str]) -> None:
    """Rewrite the rows of these patients in `research_consented` from what their Consents decide."""
    for ids in _chunks(patient_ids):
        conn.execute(delete(research_consented).where(research_consented.c.patient_id.in_(ids)))
        keep = decide(conn, ids)
        if keep:
            conn.execute(insert(research_consented), [{"patient_id": pid} for pid in sorted(keep)])


@dataclass
class _Decision:
    """What the index says of one research Consent: enough to order it and read its decision."""

    consent_id: str
    status: str = ""
    permit: bool = False
    research: bool = False
    at: datetime | None = None
    written: datetime | None = None
    patients: set[str] = field(default_factory=set)

    def key(self) -> tuple[datetime, datetime, str]:
        """Later decisions sort higher: `dateTime`, then the last write, then the id."""
        assert self.at is not None and self.written is not None
        return (self.at, self.written, self.consent_id)


def decide(conn: Connection, patient_ids: list[str]) -> set[str]:
    """Those of these (at most _CHUNK) live patients that are consented: a handful of indexed queries."""
    r, link, token, date = resources.c, idx_reference.c, idx_token.c, idx_date.c
    live = select(r.res_id).where(r.res_type == "Patient", r.res_id.in_(patient_ids), r.deleted == false())
    alive = {pid for (pid,) in conn.execute(live)}
    if not alive:
        return set()
    of = (link.res_type == "Consent", link.param == "patient")
    decisions: dict[str, _Decision] = {}
    by_reference = select(link.res_id, link.target_id).where(
        *of, link.target_type == "Patient", link.target_id.in_(alive)
    )
    ssins = dict(_with_ssin(conn, token.res_id.in_(alive)))
    # Only identifier-only references (with a literal one, the reference decides); tested through
    # coalesce() so the planner walks the SSIN's index rows, not every row without a target.
    by_ssin = select(link.res_id, link.id_value).where(
        *of, link.id_system == SSIN, link.id_value.in_(list(ssins.values())), func.coalesce(link.target_type, "") == ""
    )
    owner = {ssin: pid for pid, ssin in ssins.items()}
    for consent_id, pid in conn.execute(by_reference):
        decisions.setdefault(consent_id, _Decision(consent_id)).patients.add(pid)
    for consent_id, ssin in conn.execute(by_ssin):
        decisions.setdefault(consent_id, _Decision(consent_id)).patients.add(owner[ssin])
    ids = list(decisions)
    facts = select(token.res_id, token.param, token.system, token.code).where(
        token.res_type == "Consent", token.res_id.in_(ids), token.param.in_(("purpose", "status", "provision-type"))
    )
    for consent_id, param, system, code in conn.execute(facts):
        d = decisions[consent_id]
        if param == "purpose":
            d.research = d.research or (system, code) in RESEARCH_PURPOSES
        elif param == "status":
            d.status = code if code in DECISION_STATUSES else d.status
        else:
            d.permit = d.permit or code == "permit"
    dates = select(date.res_id, date.low).where(date.res_type == "Consent", date.res_id.in_(ids), date.param == "date")
    for consent_id, low in conn.execute(dates):
        decisions[consent_id].at = low
    writes = select(r.res_id, r.last_updated).where(r.res_type == "Consent", r.res_id.in_(ids), r.deleted == false())
    for consent_id, written in conn.execute(writes):
        decisions[consent_id].written = written
    latest: dict[str, _Decision] = {}
    for d in decisions.values():
        if d.research and d.status and d.at is not None and d.written is not None:
            for pid in d.patients:
                if pid not in latest or d.key() > latest[pid].key():
                    latest[pid] = d
    return {pid for pid, d in latest.items() if d.status == "active" and d.permit}


def _with_ssin(conn: Connection, which: ColumnElement[bool]) -> Iterator[tuple[str, str]]:
    """(Patient id, SSIN as it rests) of the Patients' SSIN identifiers that `which` selects."""
    token = idx_token.c
    q = select(token.res_id, token.code).where(
        token.res_type == "Patient", token.param == "identifier", token.system == SSIN, which
    )
    yield from ((pid, code) for pid, code in conn.execute(q))


def _chunks(items: Collection[str]) -> Iterator[list[str]]:
    it = iter(sorted(items))
    while chunk := list(islice(it, _CHUNK)):
        yield chunk
