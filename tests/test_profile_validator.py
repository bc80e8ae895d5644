"""The profile validator: official R4 examples are valid against base R4; one invalid instance per rule
kind, each with its issue code and the exact FHIRPath of the element; official profiles (vital signs)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import bihr_instances
import pytest
from profile_builder import TEST_BASE, derive, element, registry_with

from fhir_node.outcome import Issue
from fhir_node.validation.validator import ERRORS, validate

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = sorted((FIXTURES / "r4-examples").glob("*.json"))
SNOMED = "http://snomed.info/sct"
STATUS_SYSTEM = "https://fhir-node.be/fhir/CodeSystem/test-status"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER_CS = "http://hl7.org/fhir/administrative-gender"
LOCAL_IDS = "https://example.org/episodes"
NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">An inclusion</div>'}

INCLUSION = derive(
    "inclusion",
    "EpisodeOfCare",
    {
        "EpisodeOfCare": {
            "constraint": [
                {
                    "key": "test-1",
                    "severity": "error",
                    "human": "An ended inclusion is finished",
                    "expression": "period.end.empty() or status = 'finished'",
                }
            ]
        },
        "EpisodeOfCare.identifier": {
            "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}
        },
        "EpisodeOfCare.status": {"fixedCode": "active"},
        "EpisodeOfCare.type": {
            "min": 1,
            "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"},
        },
        "EpisodeOfCare.diagnosis.role": {"binding": {"strength": "extensible", "valueSet": GENDER_VS}},
        "EpisodeOfCare.period": {"min": 1},
        "EpisodeOfCare.careManager": {
            "type": [{"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Practitioner"]}]
        },
        "EpisodeOfCare.managingOrganization": {"patternReference": {"type": "Organization"}},
    },
    [
        element("EpisodeOfCare.identifier:local", 0, "1", "Identifier"),
        element("EpisodeOfCare.identifier:local.system", 1, "1", "uri", fixedUri=LOCAL_IDS),
        element(
            "EpisodeOfCare.type:status",
            1,
            "1",
            "CodeableConcept",
            patternCodeableConcept={"coding": [{"system": STATUS_SYSTEM}]},
        ),
        element("EpisodeOfCare.type:status.coding", 1, "1", "Coding"),
        element("EpisodeOfCare.type:status.coding.system", 1, "1", "uri"),
        element("EpisodeOfCare.type:status.coding.code", 1, "1", "code"),
        element(
            "EpisodeOfCare.type:gender",
            0,
            "1",
            "CodeableConcept",
            patternCodeableConcept={"coding": [{"system": GENDER_CS}]},
            binding={"strength": "required", "valueSet": GENDER_VS},
        ),
    ],
)
RECORDER = derive(
    "recorder",
    "Extension",
    {
        "Extension.extension": {"max": "0"},
        "Extension.url": {"fixedUri": TEST_BASE + "recorder"},
        "Extension.value[x]": {
            "min": 1,
            "type": [{"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Practitioner"]}],
        },
    },
    context=[{"type": "element", "expression": "EpisodeOfCare"}],
)
DECEASED = derive("alive", "Patient", {"Patient.deceased[x]": {"type": [{"code": "boolean"}]}})
DEFINITIONS = registry_with(INCLUSION, RECORDER, DECEASED)


def valid_inclusion() -> dict[str, Any]:
    return {
        "resourceType": "EpisodeOfCare",
        "meta": {"profile": [TEST_BASE + "inclusion"]},
        "text": NARRATIVE,
        "identifier": [{"system": LOCAL_IDS, "value": "e-1"}],
        "status": "active",
        "type": [{"coding": [{"system": STATUS_SYSTEM, "code": "principal"}]}],
        "patient": {"reference": "Patient/p1"},
        "managingOrganization": {"reference": "Organization/o1", "type": "Organization"},
        "period": {"start": "2024-03-01"},
        "extension": [{"url": TEST_BASE + "recorder", "valueReference": {"reference": "Practitioner/d1"}}],
    }


def issues_of(resource: dict[str, Any]) -> list[Issue]:
    return validate(resource, definitions=DEFINITIONS)


def found(resource: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(severity, code, expression) of every issue."""
    return {(i.severity, i.code, ", ".join(i.expression)) for i in issues_of(resource)}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_official_examples_are_valid_base_r4(path: Path) -> None:
    """Structure and the core invariants: no error on any official example of our six types."""
    issues = validate(json.loads(path.read_bytes()))
    assert [i for i in issues if i.severity in ERRORS] == []


def test_a_conformant_instance_has_no_issue() -> None:
    assert found(valid_inclusion()) == set()


def _broken(change: Any) -> dict[str, Any]:
    resource = valid_inclusion()
    change(resource)
    return resource


CASES: dict[str, tuple[Any, tuple[str, str, str]]] = {
    "cardinality": (lambda r: r.pop("period"), ("error", "required", "EpisodeOfCare.period")),
    "cardinality inside a slice": (
        lambda r: r["type"][0]["coding"][0].pop("code"),
        ("error", "required", "EpisodeOfCare.type[0].coding[0].code"),
    ),
    "reference target type": (
        lambda r: r.update(careManager={"reference": "PractitionerRole/r1"}),
        ("error", "structure", "EpisodeOfCare.careManager"),
    ),
    "fixed value": (lambda r: r.update(status="finished"), ("error", "value", "EpisodeOfCare.status")),
    "pattern": (
        lambda r: r["managingOrganization"].update(type="Patient"),
        ("error", "value", "EpisodeOfCare.managingOrganization"),
    ),
    "required slice missing": (
        lambda r: r.update(type=[{"text": "no status"}]),
        ("error", "required", "EpisodeOfCare.type"),
    ),
    "closed slicing": (
        lambda r: r["identifier"].append({"system": "urn:other", "value": "x"}),
        ("error", "structure", "EpisodeOfCare.identifier[1]"),
    ),
    "slice cardinality": (
        lambda r: r["type"].append({"coding": [{"system": STATUS_SYSTEM, "code": "information"}]}),
        ("error", "structure", "EpisodeOfCare.type"),
    ),
    "required binding": (
        lambda r: r["type"].append({"coding": [{"system": GENDER_CS, "code": "robot"}]}),
        ("error", "code-invalid", "EpisodeOfCare.type[1]"),
    ),
    "extensible binding": (
        lambda r: r.update(
            diagnosis=[
                {"condition": {"reference": "Condition/c1"}, "role": {"coding": [{"system": SNOMED, "code": "1"}]}}
            ]
        ),
        ("warning", "code-invalid", "EpisodeOfCare.diagnosis[0].role"),
    ),
    "profile invariant": (lambda r: r["period"].update(end="2025-01-01"), ("error", "invariant", "EpisodeOfCare")),
    "core invariant": (
        lambda r: r["period"].update(start="2024-03-01", end="2023-01-01"),
        ("error", "invariant", "EpisodeOfCare.period"),
    ),
    "extension value type": (
        lambda r: r["extension"][0].update({"valueString": "Dr X"}) or r["extension"][0].pop("valueReference"),
        ("error", "structure", "EpisodeOfCare.extension[0].value"),
    ),
    "extension reference target": (
        lambda r: r["extension"][0].update(valueReference={"reference": "Patient/p1"}),
        ("error", "structure", "EpisodeOfCare.extension[0].value"),
    ),
    "unknown modifier extension": (
        lambda r: r.update(modifierExtension=[{"url": "https://example.org/never", "valueBoolean": True}]),
        ("error", "extension", "EpisodeOfCare.modifierExtension[0]"),
    ),
    "unknown extension": (
        lambda r: r["extension"].append({"url": "https://example.org/unknown", "valueBoolean": True}),
        ("warning", "extension", "EpisodeOfCare.extension[1]"),
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_each_rule_kind(case: str) -> None:
    change, expected = CASES[case]
    assert expected in found(_broken(change))


def test_the_brief_example_names_code_and_expression_exactly() -> None:
    resource = _broken(lambda r: r["type"][0]["coding"][0].pop("code"))
    issue = next(i for i in issues_of(resource) if i.expression == ("EpisodeOfCare.type[0].coding[0].code",))
    assert (issue.severity, issue.code) == ("error", "required")
    assert TEST_BASE + "inclusion" in issue.diagnostics


def test_choice_type_restricted_by_profile() -> None:
    patient = {
        "resourceType": "Patient",
        "meta": {"profile": [TEST_BASE + "alive"]},
        "text": NARRATIVE,
        "deceasedDateTime": "2020-01-01",
    }
    assert ("error", "structure", "Patient.deceased") in found(patient)
    del patient["deceasedDateTime"]
    assert found({**patient, "deceasedBoolean": False}) == set()


def test_extension_outside_its_context() -> None:
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": TEST_BASE + "recorder", "valueReference": {"reference": "Practitioner/d1"}}],
    }
    assert ("error", "extension", "Patient.extension[0]") in found(patient)


def test_core_invariants_on_our_types() -> None:
    """ref-1 (a contained reference to nothing) and org-1 on plain R4 resources. (dom-3 is one that
    fhirpathpy cannot evaluate: its `as()` on several items raises.)"""
    contained = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "#nobody"},
        "policyRule": {"text": "opt-in"},
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "PSI"}],
    }
    got = found(contained)
    assert ("error", "invariant", "Consent.patient") in got  # ref-1
    assert ("error", "invariant", "Organization") in found({"resourceType": "Organization", "active": True})  # org-1


def test_a_profile_asked_for_but_unknown_is_an_error() -> None:
    issues = validate({"resourceType": "Patient"}, ["https://example.org/nothing"], DEFINITIONS)
    assert [(i.severity, i.code) for i in issues if i.severity in ERRORS] == [("error", "not-found")]


def test_profile_of_another_type() -> None:
    issues = validate({"resourceType": "Patient"}, [TEST_BASE + "inclusion"], DEFINITIONS)
    assert ("error", "invalid") in {(i.severity, i.code) for i in issues}


def test_official_vital_signs_profiles() -> None:
    """The official blood-pressure profile (closed choice slicing, component slices by code) from the
    examples package, against the official example and a broken copy."""
    official = FIXTURES / "r4-profiles"
    sds = [json.loads((official / f"StructureDefinition-{n}.json").read_bytes()) for n in ("vitalsigns", "bp")]
    definitions = registry_with(*sds)
    observation = json.loads((official / "Observation-blood-pressure.json").read_bytes())
    bp = "http://hl7.org/fhir/StructureDefinition/bp"
    assert [i for i in validate(observation, [bp], definitions) if i.severity in ERRORS] == []
    broken = copy.deepcopy(observation)
    broken["component"][0]["code"]["coding"][0]["code"] = "0000-0"
    broken["category"] = [{"text": "none"}]
    got = {(i.code, i.expression) for i in validate(broken, [bp], definitions)}
    assert ("required", ("Observation.component",)) in got
    assert ("required", ("Observation.category",)) in got


def test_speed_of_validation() -> None:
    """Writes validate every resource: the official examples go through well above 100 resources/s."""
    resources = [json.loads(p.read_bytes()) for p in EXAMPLES]
    started = time.perf_counter()
    for resource in resources:
        validate(resource)
    rate = len(resources) / (time.perf_counter() - started)
    assert rate > 100, f"{rate:.0f} resources/s"


# -- our published profiles (profiles/) ----------------------------------------------------------------


def errors(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i.code, ", ".join(i.expression)) for i in validate(resource, required=True) if i.severity in ERRORS}


@pytest.mark.parametrize("ssin", ["85073003328", "17073003384", "98472899765", "01490700185"])
def test_bihr_inclusion_accepts_valid_ssins(ssin: str) -> None:
    assert errors(bihr_instances.inclusion(ssin)) == set()


@pytest.mark.parametrize("ssin", ["85073003329", "8507300332", "85133003328"])
def test_bihr_inclusion_refuses_bad_check_digits(ssin: str) -> None:
    assert ("invariant", "EpisodeOfCare.patient.identifier") in errors(bihr_instances.inclusion(ssin))


def test_bihr_inclusion_needs_an_inclusion_status_from_its_code_system() -> None:
    resource = bihr_instances.inclusion()
    resource["type"][0]["coding"][0]["code"] = "secondary"
    assert ("code-invalid", "EpisodeOfCare.type[0]") in errors(resource)
    del resource["type"]
    assert ("required", "EpisodeOfCare.type") in errors(resource)


def test_bihr_inclusion_applies_without_being_declared() -> None:
    """A write of an EpisodeOfCare is judged by bihr-inclusion whether or not meta.profile names it."""
    resource = bihr_instances.inclusion()
    del resource["meta"], resource["period"]
    assert ("required", "EpisodeOfCare.period") in errors(resource)


def test_bihr_research_consent() -> None:
    assert errors(bihr_instances.research_consent()) == set()
    no_decision = bihr_instances.research_consent()
    del no_decision["provision"]["type"]
    assert ("required", "Consent.provision.type") in errors(no_decision)
    assert ("invariant", "Consent.patient.identifier") in errors(bihr_instances.research_consent("17073003385"))
