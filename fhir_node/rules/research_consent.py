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

Written as SQL over the search index rows (never the JSON): `consented`. Filtering with it costs ~20
index probes per candidate row, so its result is kept in the table `research_consented`, refreshed by
every write of a Consent or Patient in the write's own transaction (`follow`), and searches probe that
table once per row (`in_consent`): they still page by keyset and count exactly, and a consent change
counts from the next request."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, delete, false, func, insert, or_, select, union

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


#: On a connection: (patients, consents) written in its transaction whose refresh is still to come.
_DIRTY = "fhir_node.research_consent_dirty"


def in_consent(patient_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL: the Patient with id `patient_id` (a column of the enclosing query) is consented for research,
    as the table kept by `follow` says: one primary-key probe."""
    t = research_consented.alias()
    return select(t.c.patient_id).where(t.c.patient_id == patient_id).exists()


def follow(conn: Connection, res_type: str, res_id: str, before: Collection[str]) -> None:
    """After a write of a Consent or Patient (its index rows written, or pending in a batch): refresh the
    patients it may have changed, `before` being those a Consent was tied to until now (`tied`)."""
    if res_type not in ("Consent", "Patient"):
        return
    dirty: tuple[set[str], set[str]] = conn.info.setdefault(_DIRTY, (set(), set()))
    (dirty[0] if res_type == "Patient" else dirty[1]).add(res_id)
    dirty[0].update(before)
    after_inserts(conn, _settle)


def _settle(conn: Connection) -> None:
    """Once index rows are written: refresh the patients noted by `follow` (and those their Consents tie)."""
    patients, consents = conn.info.pop(_DIRTY, (set(), set()))
    refresh(conn, patients | tied(conn, consents))


def tied(conn: Connection, consent_ids: Collection[str]) -> set[str]:
    """Ids of the Patients these Consents are about (by reference, or by the SSIN they name)."""
    if not consent_ids:
        return set()
    link, token = idx_reference.c, idx_token.c
    of = (link.res_type == "Consent", link.res_id.in_(list(consent_ids)), link.param == "patient")
    by_reference = select(link.target_id).where(*of, link.target_type == "Patient")
    by_ssin = select(token.res_id).where(
        token.res_type == "Patient",
        token.param == "identifier",
        token.system == SSIN,
        token.code.in_(select(link.id_value).where(*of, link.id_system == SSIN)),
    )
    return {pid for (pid,) in conn.execute(union(by_reference, by_ssin)) if pid}


def refresh(conn: Connection, patient_ids: Collection[str]) -> None:
    """Make `research_consented` say, for these patients, what `consented` says now. Each patient's lock is
    held to commit (PostgreSQL): two writers about one patient then refresh it in turn, the second seeing
    the first's consent, never both deciding from a state without the other's."""
    ids = sorted(patient_ids)
    if not ids:
        return
    for pid in ids:
        lock(conn, f"patient:{pid}")
    conn.execute(delete(research_consented).where(research_consented.c.patient_id.in_(ids)))
    conn.execute(insert(research_consented).from_select(["patient_id"], consented_patients(ids)))


def consented_patients(ids: Collection[str] | None = None) -> Select[Any]:
    """SQL: the ids of the live Patients (of `ids`, or all) that are consented, as the definition says."""
    r = resources.c
    q = select(r.res_id).where(r.res_type == "Patient", r.deleted == false(), consented(r.res_id))
    return q if ids is None else q.where(r.res_id.in_(ids))


def consented(patient_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL: the Patient with id `patient_id` (a column of the enclosing query) is consented for research:
    it has a decision in force that no other decision is later than. Decisions tie to the patient by
    reference or by SSIN, each probed through its own index (an OR of both would scan)."""
    kinds = ("reference", "ssin")
    return or_(
        *(
            permit.select()
            .where(
                permit.has("status", "active"),
                permit.has("provision-type", "permit"),
                *(
                    ~newer.select().where(newer.later_than(permit)).exists()
                    for newer in (_Decision(patient_id, k) for k in kinds)
                ),
            )
            .exists()
            for permit in (_Decision(patient_id, k) for k in kinds)
        )
    )


class _Decision:
    """One research decision of the patient, as FROM clauses of its own: the index row tying a Consent to
    the patient (`by` reference, or by the SSIN it carries: a Consent may name the patient by identifier
    only), the Consent's row (`written`: its last write) and its `dateTime` (`at`)."""

    def __init__(self, patient_id: ColumnElement[Any], by: str) -> None:
        self.patient_id = patient_id
        self.by = by
        self.link = idx_reference.alias()
        self.consent = resources.alias()
        self.date = idx_date.alias()
        self.at = self.date.c.low
        self.written = self.consent.c.last_updated

    def select(self) -> Select[Any]:
        link, c, d = self.link, self.consent, self.date
        # Subqueries name what they take from outside: auto-correlation only looks one level up.
        return (
            select(link.c.res_id)
            .correlate_except(link, c, d)
            .where(
                link.c.res_type == "Consent",
                link.c.param == "patient",
                *self._tied(),
                c.c.res_type == "Consent",
                c.c.res_id == link.c.res_id,
                d.c.res_type == "Consent",
                d.c.res_id == link.c.res_id,
                d.c.param == "date",
                self.has("purpose", *RESEARCH_PURPOSES),
                self.has("status", *DECISION_STATUSES),
            )
        )

    def later_than(self, other: _Decision) -> ColumnElement[bool]:
        """This decision comes after `other`: a later dateTime, then a later write, then a higher id."""
        return or_(
            self.at > other.at,
            and_(
                self.at == other.at,
                or_(
                    self.written > other.written,
                    and_(self.written == other.written, self.link.c.res_id > other.link.c.res_id),
                ),
            ),
        )

    def _tied(self) -> tuple[ColumnElement[bool], ...]:
        link = self.link
        if self.by == "reference":
            return (link.c.target_type == "Patient", link.c.target_id == self.patient_id)
        token = idx_token.alias()
        ssins = (
            select(token.c.code)
            .correlate_except(token)
            .where(
                token.c.res_type == "Patient",
                token.c.res_id == self.patient_id,
                token.c.param == "identifier",
                token.c.system == SSIN,
            )
        )
        # Only identifier-only references (with a literal one, the reference decides); tested through
        # coalesce() so the planner walks the SSIN's index rows, not every row without a target.
        return (link.c.id_value.in_(ssins), link.c.id_system == SSIN, func.coalesce(link.c.target_type, "") == "")

    def has(self, param: str, *values: str | tuple[str, str]) -> ColumnElement[bool]:
        """The Consent has a token of `param` among `values` (codes, or (system, code) pairs)."""
        t = idx_token.alias()
        match = [and_(t.c.system == v[0], t.c.code == v[1]) if isinstance(v, tuple) else t.c.code == v for v in values]
        own = (t.c.res_type == "Consent", t.c.res_id == self.link.c.res_id, t.c.param == param)
        return select(t.c.res_id).correlate_except(t).where(*own, or_(*match)).exists()
