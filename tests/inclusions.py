"""Inclusions (EpisodeOfCare) and patients for the rules' tests, built small: the rules read only the
patient reference, the status, the principal/information type and the period."""

from __future__ import annotations

from typing import Any

import orjson

SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"
STATUS = "https://fhir-node.be/fhir/CodeSystem/inclusion-status"
BILLING = "https://fhir-node.be/fhir/StructureDefinition/billing-period"
JSON = {"Content-Type": "application/fhir+json"}
#: Valid SSINs (check digits), one per test patient.
SSINS = ("85073003328", "17073003384", "98472899765", "01490700185")


def patient(ssin: str = SSINS[0], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": ssin}], **extra}


def inclusion(
    start: str,
    end: str | None = None,
    *,
    patient_id: str | None = None,
    ssin: str | None = None,
    kind: str = "principal",
    status: str = "active",
    org: str = "Organization/psi-a",
) -> dict[str, Any]:
    """An EpisodeOfCare of the patient `patient_id` (literal reference) and/or `ssin` (by identifier)."""
    ref: dict[str, Any] = {}
    if patient_id:
        ref["reference"] = f"Patient/{patient_id}"
    if ssin:
        ref["identifier"] = {"system": SSIN, "value": ssin}
    period = {"start": start, **({"end": end} if end else {})}
    return {
        "resourceType": "EpisodeOfCare",
        "status": status,
        "type": [{"coding": [{"system": STATUS, "code": kind}]}],
        "patient": ref,
        "managingOrganization": {"reference": org},
        "period": period,
    }


def post(client: Any, resource: dict[str, Any]) -> Any:
    return client.post(f"/fhir/{resource['resourceType']}", content=orjson.dumps(resource), headers=JSON)


def created(client: Any, resource: dict[str, Any]) -> str:
    r = post(client, resource)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def billing(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The billing-period extension's Period, or None."""
    found = [e["valuePeriod"] for e in resource.get("extension", []) if e["url"] == BILLING]
    assert len(found) <= 1
    return found[0] if found else None


def transaction(*entries: tuple[str, str, dict[str, Any] | None]) -> dict[str, Any]:
    """A transaction Bundle of (method, url, resource) entries."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": m, "url": u}, **({"resource": r} if r is not None else {})} for m, u, r in entries
        ],
    }
