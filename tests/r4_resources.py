"""Minimal base-R4 resources and writes shared by the REST-core tests (profile enforcement is off there)."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

JSON_HEADERS = {"Content-Type": "application/fhir+json"}


def episode(status: str = "active", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "EpisodeOfCare", "status": status, "patient": {"reference": "Patient/p1"}, **extra}


def audit_event() -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-01-01T10:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "node operator"}}],
        "source": {"observer": {"display": "fhir-node"}},
    }


def create(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    return r.json()["id"]
