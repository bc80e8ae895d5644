"""`POST Patient/[id]/$deceased` with Parameters `date` (valueDate): the National Register's death notice.

It records the date as the Patient's `deceasedDateTime` and, in the same transaction, closes every open
inclusion of the patient on that day (fhir_node.rules.death: what any write setting `deceasedDateTime`
does). A notice repeating the recorded date changes nothing, so the feed may send it again. The operator
only (security.rules.OPERATIONS); audited as an `operation` naming the Patient and each inclusion closed.
Answers Parameters: `patient`, and one `closed` per inclusion it closed."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from fhir_node.datetimes import date_range
from fhir_node.interactions import write
from fhir_node.interactions.incoming import check_id, check_resource
from fhir_node.node import Node
from fhir_node.operations.notice import one, patient
from fhir_node.outcome import fail
from fhir_node.rules.pseudonym import in_clear
from fhir_node.store import repository

NAME = "deceased"
DEFINITION = "https://fhir-node.be/fhir/OperationDefinition/Patient-deceased"
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


def deceased(node: Node, _query: list[tuple[str, str]], body: Any, res_id: str) -> dict[str, Any]:
    check_id(res_id)
    day = one(body, "date", "valueDate")
    if not _DATE.fullmatch(day) or date_range(day) is None:
        raise fail(400, "value", f"'{day}' is not a FHIR date (YYYY-MM-DD)", "Parameters.parameter.valueDate")
    if day[:10] > date.today().isoformat():
        raise fail(422, "business-rule", f"A death on {day} would be in the future", "Parameters.parameter.valueDate")
    with write.transaction(node) as conn:
        found = patient(conn, NAME, res_id)
        stored = in_clear(found.content)
        if stored.get("deceasedDateTime") == day:
            closed: tuple[repository.Version, ...] = ()
        else:
            noticed = {k: v for k, v in stored.items() if k != "deceasedBoolean"} | {"deceasedDateTime": day}
            resource = check_resource(noticed, "Patient", res_id, enforce_profiles=node.settings.enforce_profiles)
            closed = write.update_in(conn, "Patient", res_id, resource, None).entailed
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{res_id}"}},
            *({"name": "closed", "valueReference": {"reference": f"EpisodeOfCare/{v.res_id}"}} for v in closed),
        ],
    }
