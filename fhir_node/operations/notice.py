"""What the National Register's notices on `Patient/[id]` ($deceased, $ssin-change) share: reading their
one input from the Parameters body (with the FHIR error a client needs when it is missing, repeated or of
the wrong type), and the Patient they change, once the caller is known to be allowed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from fhir_node.outcome import fail
from fhir_node.security import policy
from fhir_node.store import repository


def one(body: Any, name: str, value_type: str) -> str:
    """The `value[x]` (`value_type`, e.g. `valueDate`) of the single parameter `name`; 400 otherwise."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise fail(400, "invalid", f"The operation takes a Parameters resource holding '{name}'", "Parameters")
    found = [(i, p) for i, p in enumerate(body.get("parameter") or []) if isinstance(p, dict) and p.get("name") == name]
    if len(found) != 1:
        raise fail(400, "required", f"Parameters must hold exactly one '{name}' ({value_type})", "Parameters.parameter")
    index, parameter = found[0]
    value = parameter.get(value_type)
    if not isinstance(value, str) or not value:
        raise fail(400, "value", f"'{name}' needs a {value_type}", f"Parameters.parameter[{index}]")
    return value


def patient(conn: Connection, operation: str, res_id: str) -> repository.Version:
    """The Patient the operation changes, its row held until commit: 403 unless the caller may call the
    operation, 404 (as for a missing id) unless the Patient exists and the caller sees it."""
    policy.require_operation(operation)
    found = repository.current(conn, "Patient", res_id, for_update=True)
    if found is None or found.content is None:
        raise policy.not_found("Patient", res_id)
    policy.readable(conn, "Patient", res_id)
    return found
