"""ValueSet/$expand, ValueSet/$validate-code and CodeSystem/$lookup on our terminology (terminology/) and on
the official R4 value sets the node can expand: GET and POST, type and instance level, the answers a
client can rely on, and the errors (404 unknown, 422 not expandable here, 400 nothing to work on).

Expected codes and displays are read from our CodeSystem and ValueSet files, or are R4's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_node.operations import terminology as operations
from fhir_node.validation.terminology import Terminology

ROOT = Path(__file__).resolve().parents[1]
INCLUSION_VS = "https://fhir-node.be/fhir/ValueSet/inclusion-status"
INCLUSION_CS = "https://fhir-node.be/fhir/CodeSystem/inclusion-status"
PURPOSE_VS = "https://fhir-node.be/fhir/ValueSet/consent-purpose"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER_CS = "http://hl7.org/fhir/administrative-gender"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SNOMED_VS = "http://hl7.org/fhir/ValueSet/clinical-findings"  # an is-a filter on SNOMED CT: not expandable here
JSON_HEADERS = {"Content-Type": "application/fhir+json"}


def file(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "terminology" / name).read_text())


INCLUSION = {c["code"]: c["display"] for c in file("CodeSystem-inclusion-status.json")["concept"]}


def parameters(**values: Any) -> dict[str, Any]:
    """A Parameters body: each value under the value[x] its Python type suggests (or as given: `valueX=`)."""
    out = []
    for name, value in values.items():
        if isinstance(value, tuple):
            out.append({"name": name, value[0]: value[1]})
        elif isinstance(value, int):
            out.append({"name": name, "valueInteger": value})
        else:
            out.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": out}


def outputs(body: dict[str, Any]) -> dict[str, Any]:
    assert body["resourceType"] == "Parameters", body
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in body["parameter"]}


def ok(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return r.json()


def refused(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    return r.json()["issue"][0]["diagnostics"]


def contains(expanded: dict[str, Any]) -> dict[tuple[str, str], str | None]:
    return {(c["system"], c["code"]): c.get("display") for c in expanded["expansion"].get("contains", [])}


# $expand ---------------------------------------------------------------------------------------------


def test_expand_inclusion_status_lists_principal_and_information(client):
    by_url = ok(client.get("/fhir/ValueSet/$expand", params={"url": INCLUSION_VS}))
    assert by_url["resourceType"] == "ValueSet" and by_url["url"] == INCLUSION_VS and by_url["status"] == "draft"
    assert contains(by_url) == {(INCLUSION_CS, code): display for code, display in INCLUSION.items()}
    assert set(INCLUSION) == {"principal", "information"}
    assert by_url["expansion"]["total"] == 2 and by_url["expansion"]["timestamp"]
    by_post = ok(
        client.post("/fhir/ValueSet/$expand", json=parameters(url=("valueUri", INCLUSION_VS)), headers=JSON_HEADERS)
    )
    by_id = ok(client.get("/fhir/ValueSet/inclusion-status/$expand"))
    by_id_post = ok(client.post("/fhir/ValueSet/inclusion-status/$expand", json=parameters(), headers=JSON_HEADERS))
    assert contains(by_post) == contains(by_id) == contains(by_id_post) == contains(by_url)


def test_expand_takes_the_value_sets_own_displays_and_those_of_the_code_systems(client):
    value_set = file("ValueSet-consent-purpose.json")
    listed = {(i["system"], c["code"]): c["display"] for i in value_set["compose"]["include"] for c in i["concept"]}
    assert contains(ok(client.get("/fhir/ValueSet/consent-purpose/$expand"))) == listed
    assert contains(ok(client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS}))) == {
        (GENDER_CS, "male"): "Male",
        (GENDER_CS, "female"): "Female",
        (GENDER_CS, "other"): "Other",
        (GENDER_CS, "unknown"): "Unknown",
    }


def test_expand_filters_on_code_or_display_ignoring_case(client):
    def codes(text: str) -> set[str]:
        expanded = ok(client.get("/fhir/ValueSet/$expand", params={"url": INCLUSION_VS, "filter": text}))
        assert expanded["expansion"]["parameter"] == [{"name": "filter", "valueString": text}]
        assert expanded["expansion"]["total"] == len(contains(expanded))
        return {code for _, code in contains(expanded)}

    assert codes("prin") == {"principal"}
    assert codes("INFO") == {"information"}
    assert codes("ipa") == {"principal"}
    assert codes("nothing like it") == set()


def test_expand_pages_with_offset_and_count(client):
    def page(offset: int, count: int) -> dict[str, Any]:
        body = parameters(url=("valueUri", GENDER_VS), offset=offset, count=count)
        return ok(client.post("/fhir/ValueSet/$expand", json=body, headers=JSON_HEADERS))["expansion"]

    pages = [page(0, 3), page(3, 3)]
    assert [p["total"] for p in pages] == [4, 4] and [p["offset"] for p in pages] == [0, 3]
    assert [len(p["contains"]) for p in pages] == [3, 1]
    assert {c["code"] for p in pages for c in p["contains"]} == {"male", "female", "other", "unknown"}
    by_url = ok(client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS, "offset": "3", "count": "3"}))
    assert by_url["expansion"]["contains"] == pages[1]["contains"]
    assert (
        "contains" not in ok(client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS, "count": "0"}))["expansion"]
    )


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"url": "https://fhir-node.be/fhir/ValueSet/no-such-set"}, 404),
        ({"url": f"{INCLUSION_VS}|9.9.9"}, 404),
        ({"url": SNOMED_VS}, 422),
        ({}, 400),
        ({"url": INCLUSION_VS, "count": "-1"}, 400),
        ({"url": INCLUSION_VS, "offset": "first"}, 400),
    ],
    ids=["unknown", "other-version", "not-expandable-here", "no-value-set", "negative-count", "bad-offset"],
)
def test_expand_errors(client, params, status):
    refused(client.get("/fhir/ValueSet/$expand", params=params), status)


def test_expand_of_an_unknown_id_or_a_supplied_value_set_is_refused(client):
    refused(client.get("/fhir/ValueSet/no-such-set/$expand"), 404)
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "valueSet", "resource": file("ValueSet-inclusion-status.json")}],
    }
    refused(client.post("/fhir/ValueSet/$expand", json=body, headers=JSON_HEADERS), 400)
    refused(client.post("/fhir/ValueSet/$expand", json={"resourceType": "ValueSet"}, headers=JSON_HEADERS), 400)


def test_operations_answer_other_methods_with_405(client):
    for path in (
        "/fhir/ValueSet/$expand",
        "/fhir/ValueSet/inclusion-status/$validate-code",
        "/fhir/CodeSystem/$lookup",
    ):
        r = client.put(path, json=parameters(), headers=JSON_HEADERS)
        refused(r, 405)
        assert r.headers["allow"] == "GET, HEAD, POST"


# $validate-code --------------------------------------------------------------------------------------


def test_validate_code_accepts_a_code_of_the_value_set_with_its_display(client):
    answer = outputs(
        ok(
            client.get(
                "/fhir/ValueSet/$validate-code",
                params={"url": INCLUSION_VS, "system": INCLUSION_CS, "code": "principal", "display": "Principal"},
            )
        )
    )
    assert answer == {"result": True, "display": INCLUSION["principal"]}
    by_id = outputs(ok(client.get("/fhir/ValueSet/inclusion-status/$validate-code", params={"code": "information"})))
    assert by_id == {"result": True, "display": INCLUSION["information"]}


def test_validate_code_takes_a_coding_or_a_codeable_concept(client):
    coding = {"system": ACT_REASON, "code": "HRESCH"}
    body = parameters(url=("valueUri", PURPOSE_VS), coding=("valueCoding", coding))
    assert outputs(ok(client.post("/fhir/ValueSet/$validate-code", json=body, headers=JSON_HEADERS)))["result"] is True
    concept = {"coding": [{"system": "http://loinc.org", "code": "59284-0"}, coding]}
    body = parameters(codeableConcept=("valueCodeableConcept", concept))
    answer = ok(client.post("/fhir/ValueSet/consent-purpose/$validate-code", json=body, headers=JSON_HEADERS))
    assert outputs(answer) == {"result": True, "display": "healthcare research"}


@pytest.mark.parametrize(
    "params",
    [
        {"system": INCLUSION_CS, "code": "secondary"},
        {"system": GENDER_CS, "code": "principal"},  # the right code in another system
        {"code": "Principal"},  # codes are case-sensitive here
    ],
    ids=["unknown-code", "other-system", "case"],
)
def test_validate_code_refuses_a_code_outside_the_value_set(client, params):
    answer = outputs(ok(client.get("/fhir/ValueSet/$validate-code", params={"url": INCLUSION_VS, **params})))
    assert answer["result"] is False
    assert params["code"] in answer["message"] and INCLUSION_VS in answer["message"]


def test_validate_code_refuses_a_wrong_display_and_says_the_right_one(client):
    params = {"system": INCLUSION_CS, "code": "principal", "display": "Main"}
    answer = outputs(ok(client.get("/fhir/ValueSet/inclusion-status/$validate-code", params=params)))
    assert answer["result"] is False and answer["display"] == "Principal"
    assert "'Main'" in answer["message"] and "'Principal'" in answer["message"]


def test_validate_code_errors(client):
    refused(client.get("/fhir/ValueSet/$validate-code", params={"url": "urn:no-such-set", "code": "x"}), 404)
    refused(client.get("/fhir/ValueSet/$validate-code", params={"url": SNOMED_VS, "code": "x"}), 422)
    refused(client.get("/fhir/ValueSet/$validate-code", params={"url": INCLUSION_VS}), 400)
    refused(client.get("/fhir/ValueSet/no-such-set/$validate-code", params={"code": "x"}), 404)


# $lookup ---------------------------------------------------------------------------------------------


def test_lookup_gives_the_name_version_and_display(client):
    code_system = file("CodeSystem-inclusion-status.json")
    answer = outputs(ok(client.get("/fhir/CodeSystem/$lookup", params={"system": INCLUSION_CS, "code": "principal"})))
    assert answer == {"name": code_system["name"], "version": code_system["version"], "display": "Principal"}
    body = parameters(coding=("valueCoding", {"system": GENDER_CS, "code": "female"}))
    answer = outputs(ok(client.post("/fhir/CodeSystem/$lookup", json=body, headers=JSON_HEADERS)))
    assert answer == {"name": "AdministrativeGender", "version": "4.0.1", "display": "Female"}


def test_lookup_lists_designations(client, monkeypatch):
    """None of our CodeSystems has designations yet (and the official ones are kept without): one that had."""
    with_designation = {
        "resourceType": "CodeSystem",
        "url": "https://example.org/fhir/CodeSystem/status",
        "name": "Status",
        "content": "complete",
        "concept": [
            {
                "code": "principal",
                "display": "Principal",
                "designation": [
                    {"language": "nl", "value": "Hoofdproject"},
                    {
                        "language": "fr",
                        "use": {"system": "http://snomed.info/sct", "code": "900000000000013009"},
                        "value": "Principal",
                    },
                ],
            }
        ],
    }
    monkeypatch.setattr(operations, "terminology", lambda: Terminology([with_designation]))
    r = ok(client.get("/fhir/CodeSystem/$lookup", params={"system": with_designation["url"], "code": "principal"}))
    designations = [p["part"] for p in r["parameter"] if p["name"] == "designation"]
    assert designations == [
        [{"name": "language", "valueCode": "nl"}, {"name": "value", "valueString": "Hoofdproject"}],
        [
            {"name": "language", "valueCode": "fr"},
            {"name": "use", "valueCoding": {"system": "http://snomed.info/sct", "code": "900000000000013009"}},
            {"name": "value", "valueString": "Principal"},
        ],
    ]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"system": INCLUSION_CS, "code": "secondary"}, 404),
        ({"system": GENDER_CS, "code": "Male"}, 404),
        ({"system": "https://example.org/fhir/CodeSystem/unknown", "code": "x"}, 404),
        ({"code": "principal"}, 400),
    ],
    ids=["unknown-code", "case", "unknown-system", "no-system"],
)
def test_lookup_errors(client, params, status):
    refused(client.get("/fhir/CodeSystem/$lookup", params=params), status)
