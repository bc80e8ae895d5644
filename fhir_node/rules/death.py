"""Death (deliberation 18/053, §9: the National Register's mutation service reports it "to close the
patient's open inclusions automatically"). When a write gives a Patient a `deceasedDateTime` (any write
path, or `Patient/[id]/$deceased`), every open inclusion of the patient is closed on that calendar day,
in the same transaction: status `finished` and `period.end` the day of death (an end already before it
is kept). An inclusion that would only have started after the death never was: it becomes `cancelled`.
Open means not yet finished, cancelled or entered in error, or ending after the death. An inclusion
written later for a Patient already recorded as deceased is closed the same way as it is stored."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection

from fhir_node.datetimes import date_range
from fhir_node.rules.inclusion import RUNNING, Inclusion
from fhir_node.rules.patients import Patient, inclusions_of, patient_of
from fhir_node.rules.pseudonym import in_clear
from fhir_node.store import repository


def death_day(resource: dict[str, Any]) -> str | None:
    """The calendar day of the Patient's deceasedDateTime, as written (no zone conversion)."""
    value = resource.get("deceasedDateTime")
    return value.split("T")[0] if isinstance(value, str) else None


def closures(conn: Connection, patient_id: str, resource: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(id, closed content) of each open inclusion of the Patient `resource` just written as `patient_id`."""
    day = death_day(resource)
    if day is None:
        return []
    patient = patient_of(conn, {"reference": f"Patient/{patient_id}"})
    out = []
    for res_id in sorted(inclusions_of(conn, patient)):
        found = repository.current(conn, "EpisodeOfCare", res_id)
        if found is None or found.content is None:
            continue
        content = in_clear(found.content)
        closed = closed_on(content, day)
        if closed != content:
            out.append((res_id, closed))
    return out


def closed_for(conn: Connection, patient: Patient, resource: dict[str, Any]) -> dict[str, Any]:
    """The EpisodeOfCare `resource` of `patient`, closed if a stored Patient it refers to is deceased (read
    as stored: its day of death needs none of its SSINs in clear)."""
    for patient_id in sorted(patient.ids):
        found = repository.current(conn, "Patient", patient_id)
        day = death_day(orjson.loads(found.content)) if found is not None and found.content else None
        if day is not None:
            return closed_on(resource, day)
    return resource


def closed_on(resource: dict[str, Any], day: str) -> dict[str, Any]:
    """The inclusion as the death on `day` leaves it (unchanged when it was not open then)."""
    inclusion = Inclusion.of("", resource)
    death = date_range(day)
    assert death is not None  # deceasedDateTime passed R4's dateTime check before
    low, high = inclusion.span()
    if not inclusion.held or (inclusion.status not in RUNNING and high <= death[1]):
        return resource
    if low > death[1]:
        return {**resource, "status": "cancelled"}
    period = dict(resource.get("period") or {})
    if high > death[1]:
        period["end"] = day
    return {**resource, "status": "finished", "period": period}
