"""The CapabilityStatement, generated from the same registry that routes requests, so it cannot lie."""

from __future__ import annotations

from typing import Any

from fhir_node import FHIR_VERSION, __version__
from fhir_node.api.negotiate import SUPPORTED_FORMATS
from fhir_node.registry import KINDS, ResourceKind
from fhir_node.settings import Settings

_RELEASED = "2026-11-24"  # the date of this software version, the same on every worker


def capability_statement(settings: Settings, base: str) -> dict[str, Any]:
    """The node's CapabilityStatement (kind `instance`) for clients that reach it at `base`."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _RELEASED,
        "publisher": "fhir-node",
        "kind": "instance",
        "software": {"name": "fhir-node", "version": __version__},
        "implementation": {"description": "BIHR data-holder FHIR node", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": list(SUPPORTED_FORMATS),
        "rest": [
            {
                "mode": "server",
                "documentation": f"Authentication: {settings.auth}"
                + (" (node operator, loopback only)" if settings.auth == "none" else ""),
                "resource": [_resource(k) for k in KINDS.values()],
                "interaction": [{"code": "history-system"}],
            }
        ],
    }


def _resource(res_kind: ResourceKind) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": res_kind.name,
        "documentation": res_kind.documentation,
        "interaction": [{"code": code} for code in res_kind.interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": res_kind.allows("update"),
        "conditionalCreate": res_kind.allows("create"),
        "conditionalRead": "full-support",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
    }
    return entry
