"""Data minimisation (deliberation 18/053, annex items 3-6): the node keeps a patient's SSIN, pseudonymised,
and nothing that the National Register shows anyway.

- A Patient's name, birth date, address and telecom are refused whenever the node enforces profiles
  (FHIR_NODE_ENFORCE_PROFILES, the default), on every write path, whether or not the Patient declares our
  `bihr-patient` profile (a Patient declaring none would otherwise be held to base R4 only).
- Whatever that setting, no SSIN anywhere but as the value of an SSIN Identifier, the one place it is
  pseudonymised: in a narrative, a display or a note it would rest in clear; nor as a resource id."""

from __future__ import annotations

import re
from typing import Any

import orjson

from fhir_node.outcome import FHIRError, error
from fhir_node.rules.check_digits import ssin_error
from fhir_node.rules.pseudonym import holds_ssin
from fhir_node.security.relationships import SSIN

#: What the National Register shows, and the node must not keep.
PATIENT_NOT_STORED = ("name", "birthDate", "address", "telecom")
_UNESCAPED = re.compile(r"[ !#-\[\]-~]+")  # printable ASCII but the quote and the backslash: JSON keeps it as is


def check(resource: dict[str, Any], demographics: bool) -> None:
    """422 naming each element that must not be stored (`demographics`: a Patient's too)."""
    res_type = resource["resourceType"]
    issues = [
        error("business-rule", f"A Patient's {element} is not stored (data minimisation)", f"Patient.{element}")
        for element in PATIENT_NOT_STORED
        if demographics and res_type == "Patient" and element in resource
    ]
    text = orjson.dumps(resource)
    held = _ssins(resource) if holds_ssin(text) else []
    issues += [
        error("business-rule", "An SSIN may only appear as the value of an SSIN identifier", where)
        for where in (_elsewhere(resource, set(held), res_type) if _maybe_elsewhere(text, held) else [])
    ]
    res_id = resource.get("id")
    if isinstance(res_id, str) and res_id.isdigit() and ssin_error(res_id) is None:
        issues.append(error("business-rule", "An SSIN may not be a resource id (in clear)", f"{res_type}.id"))
    if issues:
        raise FHIRError(422, issues)


def _ssins(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["value"]] if node.get("system") == SSIN and isinstance(node.get("value"), str) else []
        return found + [s for v in node.values() for s in _ssins(v)]
    if isinstance(node, list):
        return [s for v in node for s in _ssins(v)]
    return []


def _maybe_elsewhere(text: bytes, held: list[str]) -> bool:
    """Whether one of the SSINs the identifiers `held` may appear anywhere else in the resource's JSON
    `text`: it occurs there more often than in those values (it cannot straddle two JSON strings, having no
    quote), so the path-by-path walk runs only when there is something to name. SSINs JSON would escape are
    always walked for."""
    if not held:
        return False
    if any(not _UNESCAPED.fullmatch(s) for s in held):
        return True
    return any(text.count(s.encode()) > sum(v.count(s) for v in held) for s in set(held))


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
