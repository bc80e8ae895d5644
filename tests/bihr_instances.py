"""Instances of our own profiles (bihr-inclusion, bihr-research-consent) with valid check digits."""

from __future__ import annotations

from typing import Any

SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"
NIHDI = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi"
PROFILES = "https://fhir-node.be/fhir/StructureDefinition/"


def inclusion(ssin: str = "85073003328") -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "meta": {"profile": [PROFILES + "bihr-inclusion"]},
        "status": "active",
        "type": [
            {"coding": [{"system": "https://fhir-node.be/fhir/CodeSystem/inclusion-status", "code": "principal"}]}
        ],
        "patient": {"reference": "Patient/p1", "identifier": {"system": SSIN, "value": ssin}},
        "managingOrganization": {
            "reference": "Organization/o1",
            "identifier": {"system": NIHDI, "value": "95286761000"},
        },
        "period": {"start": "2024-05-25"},
    }


def research_consent(ssin: str = "17073003384") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "meta": {"profile": [PROFILES + "bihr-research-consent"]},
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1", "identifier": {"system": SSIN, "value": ssin}},
        "dateTime": "2019-03-11T10:38:07Z",
        "organization": [{"reference": "Organization/o1", "identifier": {"system": NIHDI, "value": "95286761000"}}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}],
        },
    }
