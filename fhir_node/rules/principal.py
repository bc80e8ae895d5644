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

import re
from typing import Any

from sqlalchemy import Connection

from fhir_node.interactions.search import any_match
from fhir_node.outcome import fail
from fhir_node.rules.inclusion import Inclusion
from fhir_node.rules.patients import (
    Patient,
    inclusions_of,
    loaded,
    lock_patients,
    principal_criteria,
    remember,
    ssin_token,
)
from fhir_node.store.batch import notes

_CLEARED = "fhir_node.rules.principal_cleared"
_ORED = 100  # ids or SSINs asked in one query
_PLAIN = re.compile(r"[A-Za-z0-9\-.]+")  # nothing a query string or a comma-separated list would escape


def check(conn: Connection, res_id: str, resource: dict[str, Any], patient: Patient) -> None:
    """Refuse (409) the EpisodeOfCare `resource` of `patient`, about to be stored as `res_id`, if it is a
    principal inclusion overlapping another one of its patient."""
    inclusion = Inclusion.of(res_id, resource)
    written = remember(conn, inclusion, patient)
    if not (_principal(inclusion) and (patient.ids or patient.ssins)):
        return
    patient.lock(conn)
    stored = set() if _cleared(conn, patient) else inclusions_of(conn, patient, principal_criteria())
    others = loaded(conn, stored - written.keys() - {res_id})
    others.update({i: inc for i, (inc, p) in written.items() if i != res_id and p.meets(patient)})
    if any(o.principal and o.held and o.overlaps(inclusion) for o in others.values()):
        raise fail(
            409,
            "business-rule",
            "This patient already has a principal inclusion whose period overlaps this one: a patient has one "
            "principal inclusion at a time (end the other first, or declare this one as information)",
            "EpisodeOfCare.period",
        )


def foresee(conn: Connection, inclusions: list[tuple[dict[str, Any], Patient]]) -> None:
    """Before a Bundle's batched writes of these EpisodeOfCare (with their patients): lock the patients of
    the principal ones and ask, in one query per 100 ids or SSINs instead of two per inclusion, whether a
    stored principal inclusion names any of them. None does (a load): `check` then skips their queries, as
    their answers could only shrink until the batch ends (its new index rows are written at its end).
    Ids and SSINs that a query string would have to escape are asked one by one, as before."""
    patients = {p for r, p in inclusions if _principal(Inclusion.of("", r)) and (p.ids or p.ssins)}
    ids = sorted({i for p in patients for i in p.ids})
    ssins = sorted({s for p in patients for s in p.ssins})
    if not patients or not all(_PLAIN.fullmatch(v) for v in (*ids, *ssins)):
        return
    lock_patients(conn, patients)
    queries = [f"patient={','.join(f'Patient/{i}' for i in ids[n : n + _ORED])}" for n in range(0, len(ids), _ORED)]
    queries += [
        f"patient:identifier={','.join(ssin_token(s) for s in ssins[n : n + _ORED])}"
        for n in range(0, len(ssins), _ORED)
    ]
    criteria = principal_criteria()
    noted = notes(conn)
    if noted is not None and not any(
        any_match(conn, "EpisodeOfCare", f"{q}&{criteria}") for q in queries
    ):
        noted[_CLEARED] = patients


def _cleared(conn: Connection, patient: Patient) -> bool:
    """Whether `foresee` found no stored principal inclusion of this patient, in these batched writes."""
    return patient in (notes(conn) or {}).get(_CLEARED, ())


def _principal(inclusion: Inclusion) -> bool:
    return inclusion.principal and inclusion.held
