"""Small test profiles: an official base snapshot with some elements changed and some added (slices,
expanded data types), enough for the validator, which reads snapshots only."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from fhir_node.validation.definitions import BASE_DIR, Registry
from fhir_node.validation.terminology import resources_in

TEST_BASE = "https://fhir-node.be/fhir/StructureDefinition/test-"


def base_snapshot(type_name: str) -> list[dict[str, Any]]:
    sd = orjson.loads((BASE_DIR / f"{type_name}.json").read_bytes())
    return copy.deepcopy(sd["snapshot"]["element"])


def derive(
    name: str,
    type_name: str,
    changed: dict[str, dict[str, Any]] | None = None,
    added: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A constraint profile `TEST_BASE + name` on `type_name`: base elements updated by id, then new
    elements (each with id, path, min, max and type, parents first)."""
    elements = base_snapshot(type_name)
    for element in elements:
        element.update((changed or {}).get(element["id"], {}))
    missing = set(changed or {}) - {e["id"] for e in elements}
    assert not missing, f"no such base elements: {missing}"
    return {
        "resourceType": "StructureDefinition",
        "url": TEST_BASE + name,
        "name": name,
        "status": "draft",
        "kind": "complex-type" if type_name == "Extension" else "resource",
        "abstract": False,
        "type": type_name,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{type_name}",
        "derivation": "constraint",
        "snapshot": {"element": elements + (added or [])},
        **top,
    }


def element(element_id: str, min_: int, max_: str, *types: str, **more: Any) -> dict[str, Any]:
    path = ".".join(step.split(":")[0] for step in element_id.split("."))
    return {"id": element_id, "path": path, "min": min_, "max": max_, "type": [{"code": t} for t in types], **more}


def registry_with(*definitions: dict[str, Any]) -> Registry:
    """The official base definitions plus these, as published profiles."""
    return Registry(resources_in(sorted(Path(BASE_DIR).glob("*.json"))), definitions)
