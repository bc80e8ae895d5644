"""The CapabilityStatement, generated from the same registry that routes requests, so it cannot lie."""

from __future__ import annotations

from typing import Any

from fhir_node import FHIR_VERSION, __version__
from fhir_node.api.negotiate import JSON_PATCH, SUPPORTED_FORMATS
from fhir_node.conformance.package import canonical_base
from fhir_node.conformance.published import published
from fhir_node.conformance.smart import rest_security
from fhir_node.operations import deceased, export, ssin_change
from fhir_node.operations.terminology import OPERATIONS
from fhir_node.operations.validate import DEFINITION as VALIDATE_DEFINITION
from fhir_node.registry import KINDS, SYSTEM_INTERACTIONS, ResourceKind
from fhir_node.search.registry import MODIFIERS, SearchParam, registry
from fhir_node.search.values import EXTRACTORS
from fhir_node.settings import Settings
from fhir_node.validation.definitions import registry as profiles

#: The node's own operations, per type: Bulk Data's, and ours (OperationDefinitions published in profiles/).
_OWN_OPERATIONS = {
    "Patient": (
        ("export", export.DEFINITIONS["Patient"]),
        (deceased.NAME, deceased.DEFINITION),
        (ssin_change.NAME, ssin_change.DEFINITION),
    ),
    "Group": (("export", export.DEFINITIONS["Group"]),),
}
_RELEASED = "2026-11-24"  # the date of this software version, the same on every worker


def capability_statement(settings: Settings, base: str) -> dict[str, Any]:
    """The node's CapabilityStatement (kind `instance`) for clients that reach it at `base`."""
    guide = _guide()
    return {
        "resourceType": "CapabilityStatement",
        "url": f"{canonical_base(guide)}/CapabilityStatement/fhir-node",
        "version": __version__,
        "name": "FhirNode",
        "title": "fhir-node: a BIHR data-holder FHIR node",
        "status": "active",
        "date": _RELEASED,
        "publisher": "fhir-node",
        "kind": "instance",
        "instantiates": [export.BULK_DATA_SERVER],
        "software": {"name": "fhir-node", "version": __version__},
        "implementation": {"description": "BIHR data-holder FHIR node", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": list(SUPPORTED_FORMATS),
        "patchFormat": [JSON_PATCH],
        "implementationGuide": [guide["url"]],
        "rest": [
            {
                "mode": "server",
                "security": rest_security(settings),
                "documentation": f"Authentication: {settings.auth}"
                + (" (node operator, loopback only)" if settings.auth == "none" else ""),
                "resource": [_resource(k) for k in KINDS.values()],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "operation": [{"name": "export", "definition": export.DEFINITIONS["system"]}],
                "searchParam": [_param(p) for p in _common()],
            }
        ],
    }


def _resource(res_kind: ResourceKind) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": res_kind.name,
        "documentation": res_kind.documentation,
        "interaction": [{"code": code} for code in res_kind.interactions],
        "versioning": "versioned-update" if res_kind.allows("update") else "versioned",
        "readHistory": True,
        "updateCreate": res_kind.allows("update"),
        "conditionalCreate": res_kind.allows("create"),
        "conditionalRead": "full-support",
        "conditionalUpdate": res_kind.allows("update"),
        "conditionalDelete": "single" if res_kind.allows("delete") else "not-supported",
        "searchInclude": sorted(
            f"{res_kind.name}:{p.code}" for p in searchable(res_kind.name) if p.type == "reference"
        ),
        "searchRevInclude": sorted(
            f"{other}:{p.code}"
            for other in KINDS
            for p in searchable(other)
            if p.type == "reference" and (not p.targets or res_kind.name in p.targets)
        ),
        "searchParam": [_param(p) for p in searchable(res_kind.name)],
        "operation": [
            {"name": name, "definition": definition}
            for name, definition in (
                ("validate", VALIDATE_DEFINITION),
                *OPERATIONS.get(res_kind.name, ()),
                *_OWN_OPERATIONS.get(res_kind.name, ()),
            )
        ],
    }
    supported = profiles().published(res_kind.name)
    if supported:
        entry["supportedProfile"] = supported
    return entry


def searchable(res_type: str) -> list[SearchParam]:
    """The parameters a search on `res_type` honours: every registered one whose values are indexed."""
    return sorted((p for p in registry().of(res_type).values() if p.type in EXTRACTORS), key=lambda p: p.code)


def _common() -> list[SearchParam]:
    """Parameters every served type shares, usable in a system-level search."""
    per_type = [{p.code: p for p in searchable(t)} for t in KINDS]
    shared = set.intersection(*(set(d) for d in per_type))
    return [per_type[0][code] for code in sorted(shared) if all(d[code].url == per_type[0][code].url for d in per_type)]


def _param(p: SearchParam) -> dict[str, Any]:
    """R4's CapabilityStatement has no element for modifiers: the documentation names those honoured."""
    modifiers = ", ".join(f":{m}" for m in modifiers_of(p))
    documentation = f"{(p.documentation or p.code).rstrip('.')}. Modifiers: {modifiers}."
    return {"name": p.code, "definition": p.url, "type": p.type, "documentation": documentation}


def modifiers_of(p: SearchParam) -> list[str]:
    """The modifiers a search with `p` accepts: `:missing`, its type's, and for a reference its target types."""
    targets = [t for t in KINDS if not p.targets or t in p.targets] if p.type == "reference" else []
    return ["missing", *sorted(MODIFIERS.get(p.type, ())), *targets]


def _guide() -> dict[str, Any]:
    """Our ImplementationGuide, whose canonical the CapabilityStatement names."""
    return next(r for (t, _), r in published().items() if t == "ImplementationGuide")
