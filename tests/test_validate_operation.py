"""$validate over HTTP (always 200 with the OperationOutcome), and profile enforcement on writes."""

from __future__ import annotations

import json
from typing import Any

import bihr_instances
from fhir_files import EXAMPLES
from starlette.testclient import TestClient

JSON = {"Content-Type": "application/fhir+json"}


def parameters(resource: dict[str, Any], **more: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "resource", "resource": resource}]
    params += [{"name": name, "valueUri" if name == "profile" else "valueCode": v} for name, v in more.items()]
    return {"resourceType": "Parameters", "parameter": params}


def issues(response: Any) -> list[tuple[str, str, list[str]]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return [(i["severity"], i["code"], i.get("expression", [])) for i in body["issue"]]


def test_valid_resource_is_all_ok(client: TestClient) -> None:
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Org</div>'}
    org = {"resourceType": "Organization", "name": "PSI Brussels", "text": narrative}
    response = client.post("/fhir/Organization/$validate", json=org, headers=JSON)
    assert issues(response) == [("information", "informational", [])]
    assert response.json()["issue"][0]["diagnostics"] == "All OK"


def test_invalid_resource_is_200_with_its_issues(client: TestClient) -> None:
    bad = {"resourceType": "Patient", "gender": "robot"}
    assert ("error", "code-invalid", ["Patient.gender"]) in issues(
        client.post("/fhir/Patient/$validate", json=parameters(bad), headers=JSON)
    )


def test_profile_parameter(client: TestClient) -> None:
    resource = bihr_instances.inclusion()
    del resource["meta"], resource["period"]
    assert not [
        i for i in issues(client.post("/fhir/EpisodeOfCare/$validate", json=resource, headers=JSON)) if i[0] == "error"
    ]
    inclusion = bihr_instances.PROFILES + "bihr-inclusion"
    asked = client.post(f"/fhir/EpisodeOfCare/$validate?profile={inclusion}", json=resource, headers=JSON)
    assert ("error", "required", ["EpisodeOfCare.period"]) in issues(asked)
    in_body = client.post("/fhir/EpisodeOfCare/$validate", json=parameters(resource, profile=inclusion), headers=JSON)
    assert ("error", "required", ["EpisodeOfCare.period"]) in issues(in_body)


def test_mode_update_checks_the_id(client: TestClient) -> None:
    resource = {"resourceType": "Organization", "id": "a", "name": "x"}
    found = issues(
        client.post("/fhir/Organization/b/$validate", json=parameters(resource, mode="update"), headers=JSON)
    )
    assert ("error", "invalid", ["Organization.id"]) in found


def test_mode_delete_checks_existence_and_deletability(client: TestClient) -> None:
    assert [i[1] for i in issues(client.post("/fhir/Organization/nope/$validate?mode=delete"))] == ["not-found"]
    created = client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "x"}, headers=JSON)
    org_id = created.json()["id"]
    assert issues(client.post(f"/fhir/Organization/{org_id}/$validate?mode=delete")) == [
        ("information", "informational", [])
    ]
    assert ("error", "business-rule", []) in issues(client.post("/fhir/AuditEvent/x/$validate?mode=delete"))


def test_unusable_requests(client: TestClient) -> None:
    assert (
        client.post("/fhir/Patient/$validate?mode=explode", json={"resourceType": "Patient"}, headers=JSON).status_code
        == 400
    )
    empty = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]}
    assert client.post("/fhir/Patient/$validate", json=empty, headers=JSON).status_code == 400
    assert client.get("/fhir/Patient/$validate").status_code == 405


def test_capability_statement_lists_validate_and_profiles(client: TestClient) -> None:
    resources = {r["type"]: r for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]}
    for entry in resources.values():
        assert {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"} in entry[
            "operation"
        ]
    assert bihr_instances.PROFILES + "bihr-inclusion" in resources["EpisodeOfCare"]["supportedProfile"]
    assert bihr_instances.PROFILES + "bihr-research-consent" in resources["Consent"]["supportedProfile"]


def test_enforcement_refuses_a_non_conformant_inclusion(enforcing_client: TestClient) -> None:
    resource = bihr_instances.inclusion("85073003329")  # wrong check digits
    response = enforcing_client.post("/fhir/EpisodeOfCare", json=resource, headers=JSON)
    assert response.status_code == 422
    found = [(i["code"], i["expression"]) for i in response.json()["issue"]]
    assert ("invariant", ["EpisodeOfCare.patient.identifier"]) in found
    assert (
        enforcing_client.post("/fhir/EpisodeOfCare", json=bihr_instances.inclusion(), headers=JSON).status_code == 201
    )


def test_enforcement_on_update_patch_and_transaction(enforcing_client: TestClient) -> None:
    created = enforcing_client.post("/fhir/Consent", json=bihr_instances.research_consent(), headers=JSON)
    assert created.status_code == 201
    consent = created.json()
    del consent["provision"]["type"]
    assert enforcing_client.put(f"/fhir/Consent/{consent['id']}", json=consent, headers=JSON).status_code == 422
    patch = [{"op": "remove", "path": "/provision/type"}]
    patched = enforcing_client.patch(
        f"/fhir/Consent/{consent['id']}", json=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert patched.status_code == 422
    bad = bihr_instances.inclusion("85073003329")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": bad, "request": {"method": "POST", "url": "EpisodeOfCare"}}],
    }
    assert enforcing_client.post("/fhir", json=bundle, headers=JSON).status_code == 422


def test_no_enforcement_when_turned_off(client: TestClient) -> None:
    """The `client` fixture's node has enforce_profiles=False: base R4 structure only."""
    resource = bihr_instances.inclusion("85073003329")
    assert client.post("/fhir/EpisodeOfCare", json=resource, headers=JSON).status_code == 201
    broken = {"resourceType": "EpisodeOfCare", "status": "not-a-status", "patient": {"reference": "Patient/p"}}
    assert client.post("/fhir/EpisodeOfCare", json=broken, headers=JSON).status_code == 400


# -- be-core's and infsec's extensions, checked against the definitions we carry (fhir_node/data/packages) --

RECORDER = "https://www.ehealth.fgov.be/standards/fhir/core/StructureDefinition/be-ext-recorder"
PSEUDONYMISED = "https://www.ehealth.fgov.be/standards/fhir/infsec/StructureDefinition/be-ext-pseudonymization"
DECLARANT = {"reference": "Practitioner/d1", "identifier": {"system": bihr_instances.NIHDI, "value": "12345625001"}}


def outcome(response: Any) -> list[tuple[str, str, list[str], str]]:
    return [
        (i["severity"], i["code"], i.get("expression", []), i.get("diagnostics", "")) for i in response.json()["issue"]
    ]


def about(found: list[tuple[str, str, list[str], str]], url: str) -> list[tuple[str, str, list[str]]]:
    """The issues whose text names the extension `url` (its own definition's findings, or an unknown one)."""
    return [(s, c, e) for s, c, e, text in found if url in text]


def recorded_consent(**extensions: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid research consent carrying be-ext-recorder where `extensions` says (resource, provision)."""
    consent = bihr_instances.research_consent()
    if "resource" in extensions:
        consent["extension"] = extensions["resource"]
    if "provision" in extensions:
        consent["provision"]["extension"] = extensions["provision"]
    return consent


def test_recorder_is_checked_against_be_core_definition(client: TestClient) -> None:
    episode = json.loads((EXAMPLES / "requests" / "episode.json").read_text())
    found = outcome(client.post("/fhir/EpisodeOfCare/$validate", json=episode, headers=JSON))
    assert about(found, RECORDER) == []  # was: warning "Unknown extension ...be-ext-recorder: not checked"
    assert not [i for i in found if i[0] == "error"]
    coded = recorded_consent(resource=[{"url": RECORDER, "valueCodeableConcept": {"text": "the GP"}}])
    assert about(outcome(client.post("/fhir/Consent/$validate", json=coded, headers=JSON)), RECORDER) == []

    wrong_type = recorded_consent(resource=[{"url": RECORDER, "valueString": "Dr House"}])
    found = outcome(client.post("/fhir/Consent/$validate", json=wrong_type, headers=JSON))
    assert about(found, RECORDER) == [("error", "structure", ["Consent.extension[0].value"])]
    wrong_place = recorded_consent(provision=[{"url": RECORDER, "valueReference": DECLARANT}])
    found = outcome(client.post("/fhir/Consent/$validate", json=wrong_place, headers=JSON))
    assert about(found, RECORDER) == [("error", "extension", ["Consent.provision.extension[0]"])]
    two_values = recorded_consent(resource=[{"url": RECORDER, "valueReference": DECLARANT, "extension": []}])
    two_values["extension"][0]["extension"] = [{"url": RECORDER, "valueReference": DECLARANT}]
    found = outcome(client.post("/fhir/Consent/$validate", json=two_values, headers=JSON))
    assert ("error", "structure", ["Consent.extension[0].extension"]) in about(found, RECORDER)


def test_a_write_with_a_wrong_recorder_is_refused(enforcing_client: TestClient) -> None:
    for bad, where in [
        (recorded_consent(resource=[{"url": RECORDER, "valueString": "Dr House"}]), "Consent.extension[0].value"),
        (
            recorded_consent(provision=[{"url": RECORDER, "valueReference": DECLARANT}]),
            "Consent.provision.extension[0]",
        ),
    ]:
        response = enforcing_client.post("/fhir/Consent", json=bad, headers=JSON)
        assert response.status_code == 422, response.text
        assert [e for _, _, e in about(outcome(response), RECORDER)] == [[where]]
    assert enforcing_client.get("/fhir/Consent?_summary=count").json()["total"] == 0
    good = recorded_consent(resource=[{"url": RECORDER, "valueReference": DECLARANT}])
    created = enforcing_client.post("/fhir/Consent", json=good, headers=JSON)
    assert created.status_code == 201, created.text
    episode = json.loads((EXAMPLES / "requests" / "episode.json").read_text())
    assert enforcing_client.post("/fhir/EpisodeOfCare", json=episode, headers=JSON).status_code == 201


def test_pseudonymisation_marker_is_checked_against_infsec_definition(client: TestClient) -> None:
    def marked(*parts: dict[str, Any]) -> dict[str, Any]:
        ssin = {
            "system": bihr_instances.SSIN,
            "value": "Zm9vYmFy",
            "_value": {"extension": [{"url": PSEUDONYMISED, "extension": list(parts)}]},
        }
        return {"resourceType": "Patient", "identifier": [ssin]}

    def checked(patient: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
        return about(outcome(client.post("/fhir/Patient/$validate", json=patient, headers=JSON)), PSEUDONYMISED)

    marker = {"url": "marker", "valueBoolean": True}
    assert checked(marked(marker, {"url": "format", "valueCode": "direct"})) == []
    where = "Patient.identifier[0].value.extension[0].extension"
    assert checked(marked({"url": "version", "valuePositiveInt": 1})) == [("error", "required", [where])]
    assert checked(marked(marker, {"url": "format", "valueCode": "base64"})) == [
        ("error", "code-invalid", [f"{where}[1].value"])
    ]
