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

Written as SQL over the search index rows (never the JSON), probed per patient through the indexes, so
a search filtered by it still pages by keyset and counts exactly; it reads the current index rows, so a
consent change counts from the next request."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select, union_all

from fhir_node.security.relationships import SSIN
from fhir_node.store.schema import idx_date, idx_reference, idx_token, resources

RESEARCH_PURPOSES = (
    ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HRESCH"),
    ("https://fhir-node.be/fhir/CodeSystem/consent-purpose", "statistics"),
)
#: Consent statuses that record the patient's decision (or its withdrawal).
DECISION_STATUSES = ("active", "inactive", "rejected")


def consented(patient_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL: the Patient with id `patient_id` (a column of the enclosing query) is consented for research."""
    permit = _Decision(patient_id)
    newer = _Decision(patient_id)
    later = or_(
        newer.at > permit.at,
        and_(
            newer.at == permit.at,
            or_(
                newer.written > permit.written,
                and_(newer.written == permit.written, newer.consent.c.res_id > permit.consent.c.res_id),
            ),
        ),
    )
    superseded = newer.select().where(later).exists()
    status, kind = idx_token.alias(), idx_token.alias()
    in_force = (
        select(status.c.res_id).where(_own(status, permit, "status"), status.c.code == "active").exists(),
        select(kind.c.res_id).where(_own(kind, permit, "provision-type"), kind.c.code == "permit").exists(),
    )
    return permit.select().where(*in_force, ~superseded).exists()


class _Decision:
    """One research decision of the patient, as a FROM clause of its own aliases: the Consent's row
    (`written`: its last write), its `dateTime` (`at`), joined to the patient by reference or SSIN."""

    def __init__(self, patient_id: ColumnElement[Any]) -> None:
        self.patient_id = patient_id
        self.consent = resources.alias()
        self.date = idx_date.alias()
        self.at = self.date.c.low
        self.written = self.consent.c.last_updated

    def select(self) -> Select[Any]:
        c, d = self.consent, self.date
        purpose, status = idx_token.alias(), idx_token.alias()
        return select(c.c.res_id).where(
            c.c.res_type == "Consent",
            c.c.res_id.in_(_consents_of(self.patient_id)),
            d.c.res_type == "Consent",
            d.c.res_id == c.c.res_id,
            d.c.param == "date",
            select(purpose.c.res_id)
            .where(
                _own(purpose, self, "purpose"),
                or_(*(and_(purpose.c.system == s, purpose.c.code == code) for s, code in RESEARCH_PURPOSES)),
            )
            .exists(),
            select(status.c.res_id).where(_own(status, self, "status"), status.c.code.in_(DECISION_STATUSES)).exists(),
        )


def _own(table: Any, decision: _Decision, param: str) -> ColumnElement[bool]:
    """`table`'s row is an index row of `param` of the decision's Consent."""
    return and_(table.c.res_type == "Consent", table.c.res_id == decision.consent.c.res_id, table.c.param == param)


def _consents_of(patient_id: ColumnElement[Any]) -> Select[Any]:
    """Ids of the Consents whose `patient` is this Patient: by reference, or by the SSIN it carries (a
    Consent may name the patient by identifier only)."""
    by_ref, by_ssin, token = idx_reference.alias(), idx_reference.alias(), idx_token.alias()
    literal = select(by_ref.c.res_id).where(
        by_ref.c.res_type == "Consent",
        by_ref.c.param == "patient",
        by_ref.c.target_type == "Patient",
        by_ref.c.target_id == patient_id,
    )
    ssins = (
        select(token.c.code)
        .correlate_except(token)
        .where(
            token.c.res_type == "Patient",
            token.c.res_id == patient_id,
            token.c.param == "identifier",
            token.c.system == SSIN,
        )
    )
    logical = select(by_ssin.c.res_id).where(
        by_ssin.c.res_type == "Consent",
        by_ssin.c.param == "patient",
        by_ssin.c.id_system == SSIN,
        by_ssin.c.id_value.in_(ssins),
        or_(by_ssin.c.target_type.is_(None), by_ssin.c.target_type == "Patient"),
    )
    # Members of a UNION are not correlated on their own: each names what it takes from outside.
    return union_all(literal.correlate_except(by_ref), logical.correlate_except(by_ssin, token))
