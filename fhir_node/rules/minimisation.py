"""Data minimisation (deliberation 18/053, annex items 3-6): the node keeps a patient's SSIN, pseudonymised,
and nothing that the National Register shows anyway. A Patient's name, birth date, address and telecom
are refused by our `bihr-patient` profile (FHIR_NODE_ENFORCE_PROFILES, on by default, on every write path);
this rule adds what no profile can say and holds whatever that setting: no SSIN anywhere but as the value
of an SSIN Identifier, the one place it is pseudonymised (in a narrative, a display or a note it would
rest in clear)."""

from __future__ import annotations

from typing import Any

from fhir_node.outcome import FHIRError, error
from fhir_node.security.relationships import SSIN

def check(resource: dict[str, Any]) -> None:
    """422 naming each element that holds an SSIN outside an SSIN Identifier's value."""
    issues = [
        error("business-rule", "An SSIN may only appear as the value of an SSIN identifier", where)
        for where in _elsewhere(resource, set(_ssins(resource)), resource["resourceType"])
    ]
    if issues:
        raise FHIRError(422, issues)


def _ssins(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["value"]] if node.get("system") == SSIN and isinstance(node.get("value"), str) else []
        return found + [s for v in node.values() for s in _ssins(v)]
    if isinstance(node, list):
        return [s for v in node for s in _ssins(v)]
    return []


def _elsewhere(node: Any, ssins: set[str], path: str) -> list[str]:
    """Paths of strings holding one of `ssins` other than SSIN identifier values."""
    if not ssins:
        return []
    if isinstance(node, dict):
        identifier = node.get("system") == SSIN
        return [
            where
            for k, v in node.items()
            if not (identifier and k == "value")
            for where in _elsewhere(v, ssins, f"{path}.{k}")
        ]
    if isinstance(node, list):
        return [where for i, v in enumerate(node) for where in _elsewhere(v, ssins, f"{path}[{i}]")]
    if isinstance(node, str) and any(s in node for s in ssins):
        return [path]
    return []
