"""`POST Patient/[id]/$ssin-change` with Parameters `ssin` (valueString): the National Register's notice
that a patient's SSIN changed (a BIS number replaced by a national number, a correction).

In one transaction: the Patient's SSIN becomes the new one (a new version: the old SSIN stays in its
history), and every resource referring to the patient by the old SSIN (inclusions, consents, care
teams...) is re-linked to the new one (a new version each). Literal references (`Patient/[id]`) need no
change. Afterwards a search by the old SSIN finds nothing; the AuditEvents, which are evidence, are left
as written. Both SSINs must have valid check digits (422); a new SSIN another Patient already carries is
a 409; a notice repeating the current SSIN changes nothing. The operator only (security.rules.OPERATIONS),
audited as an `operation` naming every resource it changed. Answers Parameters: `patient`, and one
`relinked` per resource re-linked."""

from __future__ import annotations

from typing import Any

from fhir_node.interactions import write
from fhir_node.interactions.incoming import check_id, check_resource
from fhir_node.interactions.search import matching
from fhir_node.node import Node
from fhir_node.operations.notice import one, patient
from fhir_node.outcome import fail
from fhir_node.rules.check_digits import ssin_error
from fhir_node.rules.patients import MANY, Patient, patient_ssins, referring, ssin_token
from fhir_node.rules.pseudonym import in_clear
from fhir_node.security.relationships import SSIN
from fhir_node.store import repository

NAME = "ssin-change"
DEFINITION = "https://fhir-node.be/fhir/OperationDefinition/Patient-ssin-change"


def ssin_change(node: Node, _query: list[tuple[str, str]], body: Any, res_id: str) -> dict[str, Any]:
    check_id(res_id)
    new = one(body, "ssin", "valueString")
    problem = ssin_error(new)
    if problem:
        raise fail(422, "value", f"The new SSIN is not valid: {problem}", "Parameters.parameter.valueString")
    enforce = node.settings.enforce_profiles
    with write.transaction(node) as conn:
        found = patient(conn, NAME, res_id)
        olds = patient_ssins(found.content)
        if len(olds) != 1:
            raise fail(
                422, "business-rule", f"Patient/{res_id} carries {len(olds)} SSINs, not one", "Patient.identifier"
            )
        old = olds[0]
        if old == new:
            return _answer(res_id, [])
        problem = ssin_error(old)
        if problem:
            raise fail(422, "business-rule", f"The current SSIN is not valid: {problem}", "Patient.identifier")
        Patient(frozenset({res_id}), frozenset({old, new})).lock(conn)  # the locks rules.principal takes
        if set(matching(conn, "Patient", f"identifier={ssin_token(new)}", None, MANY)) - {res_id}:
            raise fail(409, "conflict", "Another Patient already carries the new SSIN", "Parameters.parameter")
        renamed = _relinked(in_clear(found.content), old, new, identifier_only=True)
        write.update_in(
            conn, "Patient", res_id, check_resource(renamed, "Patient", res_id, enforce_profiles=enforce), None
        )
        changed = []
        for res_type, ids in referring(conn, old).items():
            for ref_id in sorted(ids):
                current = repository.current(conn, res_type, ref_id, for_update=True)
                assert current is not None and current.content is not None  # a search just found it
                resource = _relinked(in_clear(current.content), old, new)
                checked = check_resource(resource, res_type, ref_id, enforce_profiles=enforce)
                changed.append(write.update_in(conn, res_type, ref_id, checked, None).version)
    return _answer(res_id, changed)


def _relinked(value: Any, old: str, new: str, *, identifier_only: bool = False) -> Any:
    """`value` with every SSIN identifier holding `old` (every reference's, or with `identifier_only` the
    resource's own identifiers) holding `new` instead."""
    if isinstance(value, list):
        return [_relinked(v, old, new, identifier_only=identifier_only) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("system") == SSIN and value.get("value") == old:
        return {**value, "value": new}
    if identifier_only:
        return {k: _relinked(v, old, new) if k == "identifier" else v for k, v in value.items()}
    return {k: _relinked(v, old, new) for k, v in value.items()}


def _answer(res_id: str, changed: list[repository.Version]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{res_id}"}},
            *({"name": "relinked", "valueReference": {"reference": f"{v.res_type}/{v.res_id}"}} for v in changed),
        ],
    }
