"""Reading one input of an operation from its Parameters body, with the FHIR error a client needs when it
is missing, repeated or of the wrong type."""

from __future__ import annotations

from typing import Any

from fhir_node.outcome import fail


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
