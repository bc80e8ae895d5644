"""The rules `validate()` (the CLI, `$validate`) took from HL7's validator to reach its verdict on HL7's
test cases (issue 13): unknown extensions and the official extensions' contexts, SNOMED CT concept ids
in value sets, parameterised value sets, StructureDefinition differentials, ambiguous Bundle references.
Writes keep accepting extensions the node does not know (a warning)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from starlette.testclient import TestClient

from fhir_node.validation.snomed import concept_id_problem, verhoeff_valid
from fhir_node.validation.validator import ERRORS, validate

JSON = {"Content-Type": "application/fhir+json"}
MOTHERS_FAMILY = "http://hl7.org/fhir/StructureDefinition/humanname-mothers-family"
UNKNOWN = "https://vendor.test/fhir/StructureDefinition/favourite-colour"


def errors(resource: dict[str, Any]) -> list[str]:
    return [f"{', '.join(i.expression)}: {i.diagnostics}" for i in validate(resource) if i.severity in ERRORS]


# --- extensions -----------------------------------------------------------------------------------------


def patient_with_extension(url: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "extension": [{"url": url, "valueString": "x"}]}


def test_an_extension_nobody_can_resolve_is_an_error_in_validate():
    (found,) = errors(patient_with_extension(UNKNOWN))
    assert found.startswith("Patient.extension[0]: ") and "could not be found" in found
    other_guide = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-questionnaireAdaptive"
    assert len(errors(patient_with_extension(other_guide))) == 1  # an HL7 guide that HL7's validator does not load
    primitive = {"resourceType": "Patient", "birthDate": "1975", "_birthDate": {"extension": [{"url": UNKNOWN}]}}
    primitive["_birthDate"]["extension"][0]["valueAge"] = {
        "value": 45,
        "system": "http://unitsofmeasure.org",
        "code": "a",
    }
    assert [e.split(":")[0] for e in errors(primitive)] == ["Patient._birthDate.extension[0]"]


@pytest.mark.parametrize(
    "url",
    [
        "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",  # an official R4 extension
        "http://hl7.org/fhir/StructureDefinition/patient-sexParameterForClinicalUse",  # HL7's extensions pack
        "http://example.org/fhir/StructureDefinition/trial",  # the specification's example host
        "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-x",  # our guide's dependency
    ],
)
def test_extensions_hl7_or_our_guide_vouch_for_are_not_errors(url: str):
    resource = patient_with_extension(url)
    if url.endswith("birthPlace"):
        resource["extension"][0] = {"url": url, "valueAddress": {"city": "Gent"}}
    assert errors(resource) == []


def test_an_official_extension_only_where_its_context_allows():
    name = {"family": "Peeters", "given": ["An"]}
    misplaced = {
        "resourceType": "Patient",
        "name": [{**name, "extension": [{"url": MOTHERS_FAMILY, "valueString": "Janssens"}]}],
    }
    (found,) = errors(misplaced)
    assert found.startswith("Patient.name[0].extension[0]: ") and "HumanName.family" in found
    placed = {
        "resourceType": "Patient",
        "name": [{**name, "_family": {"extension": [{"url": MOTHERS_FAMILY, "valueString": "J"}]}}],
    }
    assert errors(placed) == []


def test_contexts_of_recursive_elements_and_the_official_packages_own_uses_pass():
    control = {
        "url": "http://hl7.org/fhir/StructureDefinition/questionnaire-itemControl",
        "valueCodeableConcept": {"text": "drop-down"},
    }
    deep = {"linkId": "3", "type": "choice", "extension": [control]}
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "2", "type": "group", "item": [deep]}]}],
    }
    assert errors(questionnaire) == []
    normative = {
        "url": "http://hl7.org/fhir/StructureDefinition/structuredefinition-normative-version",
        "valueCode": "4.0.0",
    }
    value_set = {"resourceType": "ValueSet", "status": "active", "extension": [normative]}
    assert errors(value_set) == []


def test_writes_still_accept_an_extension_the_node_does_not_know(client: TestClient):
    created = client.post("/fhir/Patient", json=patient_with_extension(UNKNOWN), headers=JSON)
    assert created.status_code == 201, created.text
    judged = client.post("/fhir/Patient/$validate", json=patient_with_extension(UNKNOWN), headers=JSON)
    assert [i["expression"] for i in judged.json()["issue"] if i["severity"] == "error"] == [["Patient.extension[0]"]]


# --- SNOMED CT ------------------------------------------------------------------------------------------


def test_snomed_identifiers_by_syntax_and_verhoeff_check_digit():
    for known in ("73211009", "404684003", "1142143009", "900000000000207008"):
        assert concept_id_problem(known) is None
    assert not verhoeff_valid("404684004")
    assert "check digit" in concept_id_problem("404684004")
    assert "partition" in concept_id_problem("2342342123")  # a description id's partition, not a concept's
    assert concept_id_problem("1") and concept_id_problem("something")


def snomed_value_set(**include: Any) -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "status": "active",
        "compose": {"include": [{"system": "http://snomed.info/sct", **include}]},
    }


def test_a_snomed_value_set_names_concepts_that_can_exist():
    (found,) = errors(snomed_value_set(concept=[{"code": "73211009"}, {"code": "1"}]))
    assert found.startswith("ValueSet.compose.include[0].concept[1].code: '1' is not a SNOMED CT concept identifier")
    bad_filter = snomed_value_set(filter=[{"property": "concept", "op": "is-a", "value": "something"}])
    assert [e.split(":")[0] for e in errors(bad_filter)] == ["ValueSet.compose.include[0].filter[0].value"]
    good = snomed_value_set(
        concept=[{"code": "73211009 |Diabetes mellitus|"}],  # an expression: not judged
        filter=[{"property": "concept", "op": "is-a", "value": "404684003 |Clinical finding|"}],
    )
    assert errors(good) == []


# --- parameterised value sets ---------------------------------------------------------------------------


def parameterised(language: str, expression: str) -> dict[str, Any]:
    value = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/cqf-expression",
                "valueExpression": {"language": language, "expression": expression},
            }
        ]
    }
    declared = {
        "url": "http://hl7.org/fhir/tools/StructureDefinition/valueset-parameter",
        "extension": [{"url": "name", "valueCode": "p-inactive"}],
    }
    value_set = snomed_value_set(filter=[{"property": "inactive", "op": "=", "_value": value}])
    return {**value_set, "extension": [declared]}


@pytest.mark.parametrize(
    ("language", "expression", "said"),
    [
        ("text/cql", "%p-inactive", "must be 'text/fhirpath', not 'text/cql'"),
        ("text/fhirpath", "$ and %p-inactive", "is not a valid FHIRPath expression"),
        ("text/fhirpath", "%p-inactive3", "unknown parameter 'p-inactive3'"),
    ],
)
def test_parameterised_value_sets(language: str, expression: str, said: str):
    (found,) = errors(parameterised(language, expression))
    assert (
        found.startswith("ValueSet.compose.include[0].filter[0]._value.extension[0].valueExpression") and said in found
    )
    assert errors(parameterised("text/fhirpath", "%p-inactive")) == []


# --- StructureDefinitions -------------------------------------------------------------------------------


def observation_profile(*elements: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/obs",
        "name": "Obs",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {"element": list(elements)},
    }


def test_a_differential_names_only_elements_of_its_type():
    (found,) = errors(observation_profile({"id": "Observation.valueQuantity", "path": "Observation.valueBla"}))
    assert found.startswith("StructureDefinition.differential.element[0].path: The path 'Observation.valueBla'")
    fine = observation_profile(
        {"id": "Observation.value[x]", "path": "Observation.value[x]", "min": 1},
        {"id": "Observation.valueQuantity.unit", "path": "Observation.valueQuantity.unit", "min": 1},
        {"id": "Observation.code.coding:loinc", "path": "Observation.code.coding", "sliceName": "loinc"},
        {"id": "Observation.component.referenceRange", "path": "Observation.component.referenceRange", "max": "0"},
    )
    assert errors(fine) == []
    assert len(errors(observation_profile({"id": "Observation.code.codingg", "path": "Observation.code.codingg"}))) == 1


def test_no_slicing_on_the_root_element():
    sliced = {
        "id": "Observation",
        "path": "Observation",
        "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"},
    }
    assert [e.split(":")[1].strip() for e in errors(observation_profile(sliced))] == ["sdf-20"]


# --- Bundles --------------------------------------------------------------------------------------------


def document(*references: str) -> dict[str, Any]:
    observation = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "t"}}
    versions = [copy.deepcopy(observation) for _ in range(2)]
    for n, version in enumerate(versions, 1):
        version["meta"] = {"versionId": str(n)}
    composition = {
        "resourceType": "Composition",
        "id": "c",
        "status": "final",
        "type": {"text": "note"},
        "date": "2026-01-01",
        "author": [{"display": "Dr X"}],
        "title": "Note",
        "section": [{"title": "S", "entry": [{"reference": r} for r in references]}],
    }
    entries = [{"fullUrl": "http://example.org/Composition/c", "resource": composition}]
    entries += [{"fullUrl": "http://example.org/Observation/o", "resource": v} for v in versions]
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3f1f6e-8a51-4a32-9a43-6f3c5f1e2d10"},
        "type": "document",
        "timestamp": "2026-01-01T00:00:00Z",
        "entry": entries,
    }


def test_a_reference_to_several_versions_in_a_bundle_is_ambiguous():
    assert errors(document("Observation/o/_history/1", "Observation/o/_history/2")) == []
    (found,) = errors(document("Observation/o/_history/1", "Observation/o"))
    assert found.startswith("Bundle.entry[0].resource.section[0].entry[1].reference: ") and "2 entries" in found
