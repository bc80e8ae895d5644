"""Base-R4 structural validation: every official example passes, and each rule names the right element."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fhir_node.outcome import Issue
from fhir_node.validation.structure import KNOWN_RESOURCE_TYPES, validate_structure

EXAMPLES = sorted((Path(__file__).parent / "fixtures" / "r4-examples").glob("*.json"))

EPISODE: dict[str, Any] = {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": "Patient/p1"}}
CONSENT: dict[str, Any] = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
}
AUDIT: dict[str, Any] = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "recorded": "2024-05-01T10:00:00Z",
    "agent": [{"requestor": True, "who": {"reference": "Practitioner/d1"}}],
    "source": {"observer": {"display": "fhir-node"}},
}
PATIENT: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Peeters", "given": ["An"]}]}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a valid resource with some elements replaced (None means JSON null, not removal)."""
    return {**json.loads(json.dumps(base)), **changes}


def without(base: dict[str, Any], *names: str) -> dict[str, Any]:
    """A copy of a valid resource with some elements removed."""
    return {k: v for k, v in base.items() if k not in names}


def only_issue(resource: Any) -> Issue:
    """The single issue a resource with exactly one defect must produce."""
    issues = validate_structure(resource)
    assert len(issues) == 1, issues
    assert issues[0].severity == "error"
    return issues[0]


def test_fixtures_hold_every_official_example_of_the_six_types() -> None:
    kinds = Counter(json.loads(p.read_bytes())["resourceType"] for p in EXAMPLES)
    assert kinds == {
        "Patient": 22,
        "Practitioner": 14,
        "Organization": 13,
        "Consent": 12,
        "AuditEvent": 9,
        "EpisodeOfCare": 1,
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_official_example_is_structurally_valid(path: Path) -> None:
    assert validate_structure(json.loads(path.read_bytes())) == []


@pytest.mark.parametrize("resource", [EPISODE, CONSENT, AUDIT, PATIENT], ids=lambda r: r["resourceType"])
def test_minimal_resources_are_valid(resource: dict[str, Any]) -> None:
    assert validate_structure(resource) == []


def test_known_resource_types_are_the_r4_ones() -> None:
    assert len(KNOWN_RESOURCE_TYPES) == 146
    assert {"EpisodeOfCare", "Consent", "AuditEvent", "Patient", "Organization", "Practitioner"} <= KNOWN_RESOURCE_TYPES
    assert "Resource" not in KNOWN_RESOURCE_TYPES and "Foo" not in KNOWN_RESOURCE_TYPES


# (resource, IssueType code, FHIRPath expression)
INVALID: dict[str, tuple[dict[str, Any], str, str]] = {
    # unknown elements
    "unknown element": (with_(EPISODE, foo=1), "structure", "EpisodeOfCare.foo"),
    "unknown nested element": (
        with_(EPISODE, identifier=[{"sytem": "urn:x"}]),
        "structure",
        "EpisodeOfCare.identifier[0].sytem",
    ),
    "unknown extension twin": (with_(EPISODE, _patient={"id": "x"}), "structure", "EpisodeOfCare._patient"),
    # wrong JSON type
    "number for code": (with_(EPISODE, status=3), "structure", "EpisodeOfCare.status"),
    "string for Reference": (with_(EPISODE, patient="Patient/p1"), "structure", "EpisodeOfCare.patient"),
    "object for repeating element": (
        with_(EPISODE, identifier={"system": "urn:x"}),
        "structure",
        "EpisodeOfCare.identifier",
    ),
    "array for single element": (with_(EPISODE, period=[{"start": "2024"}]), "structure", "EpisodeOfCare.period"),
    "string for boolean": (with_(PATIENT, active="true"), "structure", "Patient.active"),
    "fraction for integer": (with_(PATIENT, multipleBirthInteger=1.5), "structure", "Patient.multipleBirth"),
    # missing required elements (R4 min=1)
    "EpisodeOfCare.status": (without(EPISODE, "status"), "required", "EpisodeOfCare.status"),
    "EpisodeOfCare.patient": (without(EPISODE, "patient"), "required", "EpisodeOfCare.patient"),
    "Consent.status": (without(CONSENT, "status"), "required", "Consent.status"),
    "Consent.scope": (without(CONSENT, "scope"), "required", "Consent.scope"),
    "Consent.category": (without(CONSENT, "category"), "required", "Consent.category"),
    "AuditEvent.type": (without(AUDIT, "type"), "required", "AuditEvent.type"),
    "AuditEvent.recorded": (without(AUDIT, "recorded"), "required", "AuditEvent.recorded"),
    "AuditEvent.agent": (without(AUDIT, "agent"), "required", "AuditEvent.agent"),
    "AuditEvent.source": (without(AUDIT, "source"), "required", "AuditEvent.source"),
    "AuditEvent.agent.requestor": (
        with_(AUDIT, agent=[{"who": {"reference": "Practitioner/d1"}}]),
        "required",
        "AuditEvent.agent[0].requestor",
    ),
    "AuditEvent.source.observer": (with_(AUDIT, source={"site": "x"}), "required", "AuditEvent.source.observer"),
    "required choice": (
        with_(AUDIT, entity=[{"detail": [{"type": "query"}]}]),
        "required",
        "AuditEvent.entity[0].detail[0].value[x]",
    ),
    "backbone element": (
        with_(EPISODE, statusHistory=[{"status": "active"}]),
        "required",
        "EpisodeOfCare.statusHistory[0].period",
    ),
    "Extension.url": (with_(PATIENT, extension=[{"valueString": "x"}]), "required", "Patient.extension[0].url"),
    # codes outside a required binding
    "EpisodeOfCare.status bogus": (with_(EPISODE, status="bogus"), "code-invalid", "EpisodeOfCare.status"),
    "Patient.gender x": (with_(PATIENT, gender="x"), "code-invalid", "Patient.gender"),
    "Consent.status bogus": (with_(CONSENT, status="signed"), "code-invalid", "Consent.status"),
    "Consent.provision.type": (with_(CONSENT, provision={"type": "maybe"}), "code-invalid", "Consent.provision.type"),
    "AuditEvent.action": (with_(AUDIT, action="X"), "code-invalid", "AuditEvent.action"),
    "code in backbone": (
        with_(EPISODE, statusHistory=[{"status": "done", "period": {"start": "2024"}}]),
        "code-invalid",
        "EpisodeOfCare.statusHistory[0].status",
    ),
    # malformed primitives
    "date": (with_(PATIENT, birthDate="1990-13-01"), "value", "Patient.birthDate"),
    "date with a trailing newline": (with_(PATIENT, birthDate="1990-01-01\n"), "value", "Patient.birthDate"),
    "no such day": (with_(PATIENT, birthDate="2023-02-29"), "value", "Patient.birthDate"),
    "dateTime": (
        with_(CONSENT, provision={"period": {"start": "yesterday"}}),
        "value",
        "Consent.provision.period.start",
    ),
    "dateTime without timezone": (with_(CONSENT, dateTime="2024-05-01T10:00:00"), "value", "Consent.dateTime"),
    "instant": (with_(AUDIT, recorded="2024-05-01"), "value", "AuditEvent.recorded"),
    "id": (with_(PATIENT, id="p_1"), "value", "Patient.id"),
    "uri": (
        with_(EPISODE, identifier=[{"system": "urn:my system", "value": "1"}]),
        "value",
        "EpisodeOfCare.identifier[0].system",
    ),
    "code": (
        with_(PATIENT, maritalStatus={"coding": [{"code": "M  "}]}),
        "value",
        "Patient.maritalStatus.coding[0].code",
    ),
    "unsignedInt": (with_(PATIENT, photo=[{"size": -1}]), "value", "Patient.photo[0].size"),
    "base64Binary": (with_(PATIENT, photo=[{"data": "abc"}]), "value", "Patient.photo[0].data"),
    "narrative div": (with_(PATIENT, text={"status": "generated", "div": "hello"}), "value", "Patient.text.div"),
    "choice type value": (with_(PATIENT, deceasedDateTime="last week"), "value", "Patient.deceased"),
    "extension of a primitive": (
        with_(EPISODE, _status={"extension": [{"url": "urn:a b", "valueCode": "x"}]}),
        "value",
        "EpisodeOfCare.status.extension[0].url",
    ),
    # empty string, null, empty array, empty object
    "empty string": (with_(PATIENT, name=[{"family": ""}]), "value", "Patient.name[0].family"),
    "empty uri": (with_(EPISODE, identifier=[{"system": ""}]), "value", "EpisodeOfCare.identifier[0].system"),
    "empty code": (with_(EPISODE, status=""), "value", "EpisodeOfCare.status"),
    "null primitive": (with_(PATIENT, active=None), "structure", "Patient.active"),
    "null code": (with_(EPISODE, status=None), "structure", "EpisodeOfCare.status"),
    "null complex": (with_(EPISODE, patient=None), "structure", "EpisodeOfCare.patient"),
    "null in array": (with_(PATIENT, name=[{"given": ["An", None]}]), "structure", "Patient.name[0].given[1]"),
    "null complex in array": (with_(PATIENT, telecom=[None]), "structure", "Patient.telecom[0]"),
    "null extension twin": (with_(PATIENT, _birthDate=None), "structure", "Patient.birthDate"),
    "empty array": (with_(EPISODE, identifier=[]), "structure", "EpisodeOfCare.identifier"),
    "empty object": (with_(EPISODE, period={}), "structure", "EpisodeOfCare.period"),
    "empty object in array": (with_(PATIENT, identifier=[{}]), "structure", "Patient.identifier[0]"),
    "value and extension arrays differ": (
        with_(PATIENT, name=[{"given": ["An"], "_given": [None, {"id": "g"}]}]),
        "structure",
        "Patient.name[0].given",
    ),
    # choice elements take one type
    "two choice types": (
        with_(PATIENT, deceasedBoolean=True, deceasedDateTime="2020"),
        "structure",
        "Patient.deceased[x]",
    ),
    # resourceType
    "missing resourceType": (without(EPISODE, "resourceType"), "required", "resourceType"),
    "unknown resourceType": (with_(EPISODE, resourceType="EpisodeOfCareX"), "invalid", "resourceType"),
    "contained without resourceType": (
        with_(PATIENT, contained=[{"name": "x"}]),
        "required",
        "Patient.contained[0].resourceType",
    ),
    "contained of unknown type": (
        with_(PATIENT, contained=[{"resourceType": "Foo"}]),
        "invalid",
        "Patient.contained[0].resourceType",
    ),
    "contained resource checked as its type": (
        with_(PATIENT, contained=[{"resourceType": "Organization", "active": "yes"}]),
        "structure",
        "Patient.contained[0].active",
    ),
}


@pytest.mark.parametrize(("resource", "code", "expression"), INVALID.values(), ids=INVALID.keys())
def test_invalid_resource_is_reported_at_the_offending_element(
    resource: dict[str, Any], code: str, expression: str
) -> None:
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == (code, (expression,))
    assert issue.diagnostics


def test_diagnostics_say_what_is_wrong() -> None:
    assert "Unknown element 'foo'" in only_issue(with_(EPISODE, foo=1)).diagnostics
    assert "Missing required element 'status'" in only_issue(without(EPISODE, "status")).diagnostics
    bogus = only_issue(with_(EPISODE, status="bogus")).diagnostics
    assert "'bogus'" in bogus and "episode-of-care-status" in bogus and "finished" in bogus
    assert (
        "expected a JSON object (FHIR Reference), found string"
        in only_issue(with_(EPISODE, patient="Patient/p1")).diagnostics
    )
    assert "Invalid date value '1990-13-01'" in only_issue(with_(PATIENT, birthDate="1990-13-01")).diagnostics
    assert "no such calendar day" in only_issue(with_(PATIENT, birthDate="2023-02-29")).diagnostics
    assert "null" in only_issue(with_(EPISODE, status=None)).diagnostics
    assert "Empty string" in only_issue(with_(EPISODE, status="")).diagnostics
    assert "Empty array" in only_issue(with_(EPISODE, identifier=[])).diagnostics
    assert "Empty object" in only_issue(with_(EPISODE, period={})).diagnostics
    assert "'EpisodeOfCareX'" in only_issue(with_(EPISODE, resourceType="EpisodeOfCareX")).diagnostics


def test_non_object_resource_is_an_issue_not_an_exception() -> None:
    issue = only_issue(["not", "a", "resource"])
    assert (issue.code, issue.expression) == ("structure", ())


def test_every_problem_is_reported_once() -> None:
    resource = with_(without(EPISODE, "patient"), status="bogus", foo=None, period={"start": ""})
    found = {(i.code, i.expression) for i in validate_structure(resource)}
    assert found == {
        ("required", ("EpisodeOfCare.patient",)),
        ("code-invalid", ("EpisodeOfCare.status",)),
        ("structure", ("EpisodeOfCare.foo",)),
        ("value", ("EpisodeOfCare.period.start",)),
    }
    assert len(validate_structure(resource)) == 4


@pytest.mark.parametrize(
    "resource",
    [
        # a primitive's extension stands in for its value, also for a required one
        with_(
            without(EPISODE, "status"),
            _status={
                "extension": [
                    {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
                ]
            },
        ),
        # null is the placeholder for a repeating primitive that only has an extension
        with_(
            PATIENT,
            name=[{"given": ["An", None], "_given": [None, {"extension": [{"url": "urn:x", "valueString": "y"}]}]}],
        ),
        # leap day, leap second, time zones, partial dates
        with_(PATIENT, birthDate="2024-02-29", deceasedDateTime="2016-12-31T23:59:60+14:00"),
        with_(CONSENT, dateTime="2024-05", provision={"period": {"start": "2024", "end": "2024-05-01T10:00:00.123Z"}}),
        # a no-break space is text, as in the Java and JavaScript validators
        with_(PATIENT, name=[{"text": "An\u00a0Peeters"}]),
        # the schema's FHIR-version enum lacks 4.0.1; the official value set wins
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "resource": {
                        "resourceType": "CapabilityStatement",
                        "status": "active",
                        "date": "2024",
                        "kind": "instance",
                        "fhirVersion": "4.0.1",
                        "format": ["json"],
                    }
                }
            ],
        },
    ],
    ids=[
        "extension-only required primitive",
        "null placeholder",
        "calendar edges",
        "partial dates",
        "nbsp",
        "fhirVersion 4.0.1",
    ],
)
def test_valid_corner_cases_pass(resource: dict[str, Any]) -> None:
    assert validate_structure(resource) == []
