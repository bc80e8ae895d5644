"""One `principal` inclusion per patient at any time (deliberation 18/053, annex item 9: it decides which
project the insurer bills). Every write of an EpisodeOfCare passes here, in its transaction, before it
is stored: a principal inclusion whose period would overlap another principal inclusion of the same
patient is refused with a 409 that names neither the other inclusion nor its project.

Concurrent writers: the check and the write happen under a lock per patient that the database enforces
until commit (SQLite: the single writer's lock taken at BEGIN IMMEDIATE; PostgreSQL: transaction-level
advisory locks named after the patient's id and SSIN, so two writers referring to the patient
differently still meet on one). Inclusions written earlier in the same transaction (a Bundle, whose
index rows are inserted at its end) are remembered per transaction and checked too."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from fhir_node.outcome import fail
from fhir_node.rules.inclusion import Inclusion
from fhir_node.rules.patients import Patient, inclusions_of, loaded, principal_criteria, remember


def check(conn: Connection, res_id: str, resource: dict[str, Any], patient: Patient) -> None:
    """Refuse (409) the EpisodeOfCare `resource` of `patient`, about to be stored as `res_id`, if it is a
    principal inclusion overlapping another one of its patient."""
    inclusion = Inclusion.of(res_id, resource)
    written = remember(conn, inclusion, patient)
    if not (inclusion.principal and inclusion.held and (patient.ids or patient.ssins)):
        return
    patient.lock(conn)
    others = loaded(conn, inclusions_of(conn, patient, principal_criteria()) - written.keys() - {res_id})
    others.update({i: inc for i, (inc, p) in written.items() if i != res_id and p.meets(patient)})
    if any(o.principal and o.held and o.overlaps(inclusion) for o in others.values()):
        raise fail(
            409,
            "business-rule",
            "This patient already has a principal inclusion whose period overlaps this one: a patient has one "
            "principal inclusion at a time (end the other first, or declare this one as information)",
            "EpisodeOfCare.period",
        )
