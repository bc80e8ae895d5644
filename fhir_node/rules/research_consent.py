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

from sqlalchemy import ColumnElement, Select, and_, func, or_, select

from fhir_node.security.relationships import SSIN
from fhir_node.store.schema import idx_date, idx_reference, idx_token, resources

RESEARCH_PURPOSES = (
    ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HRESCH"),
    ("https://fhir-node.be/fhir/CodeSystem/consent-purpose", "statistics"),
)
#: Consent statuses that record the patient's decision (or its withdrawal).
DECISION_STATUSES = ("active", "inactive", "rejected")


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
