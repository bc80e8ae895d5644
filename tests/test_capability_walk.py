"""The CapabilityStatement, taken at its word: every system interaction, modifier, include, revinclude and
operation it declares is exercised and must work; a sample of what it does not declare must be refused
(405, 400, or 404 "unknown operation"). Interactions per type are walked in test_rest_operations.py and
every declared search parameter in test_search_capability.py."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from inclusions import SSIN
from r4_resources import JSON_HEADERS, audit_event, create, episode
from starlette.testclient import TestClient

from fhir_node.rules.check_digits import ssin

#: A value each parameter type accepts (what it matches does not matter here, only that it is honoured).
VALUES = {
    "token": "x",
    "string": "x",
    "date": "2024-01-01",
    "reference": "Patient/x",
    "uri": "http://example.org/x",
    "number": "1",
    "quantity": "1",
}
#: A value for a search with a modifier; a type modifier (`:Patient`) takes an id.
MODIFIER_VALUES = {"missing": "true", "identifier": "urn:example|1", "of-type": "urn:example|MR|1"}
#: Every modifier R4 defines for some parameter type: those a parameter does not declare are refused.
R4_MODIFIERS = frozenset(
    {"missing", "exact", "contains", "text", "not", "above", "below", "in", "not-in", "of-type", "identifier"}
)
INCLUSION_STATUS = "https://fhir-node.be/fhir/CodeSystem/inclusion-status"


@pytest.fixture
def statement(client: TestClient) -> dict[str, Any]:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    return r.json()


def resources(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return statement["rest"][0]["resource"]


def declared_modifiers(param: dict[str, Any]) -> list[str]:
    """R4 has no element for modifiers: the node names them in the documentation, `Modifiers: :a, :b.`"""
    _, found, listed = param["documentation"].rpartition("Modifiers: ")
    assert found, f"{param['name']} declares no modifiers"
    return [m.strip().lstrip(":") for m in listed.rstrip(".").split(",") if m.strip()]


def search(client: TestClient, res_type: str, name: str, value: str) -> Any:
    return client.get(f"/fhir/{res_type}", params={name: value})


def test_every_declared_modifier_is_honoured_and_others_refused(client, statement):
    for resource in resources(statement):
        res_type = resource["type"]
        for param in resource["searchParam"]:
            name, ptype = param["name"], param["type"]
            declared = declared_modifiers(param)
            assert "missing" in declared
            for modifier in declared:
                value = MODIFIER_VALUES.get(modifier, "x" if modifier[:1].isupper() else VALUES[ptype])
                r = search(client, res_type, f"{name}:{modifier}", value)
                assert r.status_code == 200, f"{res_type}?{name}:{modifier} is declared but answered {r.text}"
                assert r.json()["type"] == "searchset"
            for modifier in sorted(R4_MODIFIERS - set(declared)):
                r = search(client, res_type, f"{name}:{modifier}", VALUES[ptype])
                assert r.status_code == 400, f"{res_type}?{name}:{modifier} is undeclared but answered {r.status_code}"
                assert r.json()["resourceType"] == "OperationOutcome"


def test_every_declared_include_and_revinclude_works_and_others_are_refused(client, statement):
    create(client, episode())
    for resource in resources(statement):
        res_type = resource["type"]
        for key in ("searchInclude", "searchRevInclude"):
            parameter = "_include" if key == "searchInclude" else "_revinclude"
            for spec in resource.get(key, []):
                r = search(client, res_type, parameter, spec)
                assert r.status_code == 200, f"{res_type}?{parameter}={spec} is declared but answered {r.text}"
        r = search(client, res_type, "_include", f"{res_type}:not-a-parameter")
        assert r.status_code == 400, r.text
    declared = {spec for res in resources(statement) for spec in res.get("searchInclude", [])}
    undeclared = "EpisodeOfCare:status"  # a parameter of the type, but not a reference
    assert undeclared not in declared
    assert search(client, "EpisodeOfCare", "_include", undeclared).status_code == 400


def test_undeclared_search_parameters_are_refused(client, statement):
    for resource in resources(statement):
        declared = {p["name"] for p in resource["searchParam"]}
        assert "not-a-parameter" not in declared
        r = search(client, resource["type"], "not-a-parameter", "x")
        assert r.status_code == 400
        assert "not-a-parameter" in r.json()["issue"][0]["diagnostics"]


def exercise_operation(client: TestClient, res_type: str, name: str) -> Any:
    """One call of a declared operation, as a client would make it."""
    if name == "validate":
        return client.post(f"/fhir/{res_type}/$validate", json={"resourceType": res_type}, headers=JSON_HEADERS)
    if name == "expand":
        return client.get("/fhir/ValueSet/$expand", params={"url": "https://fhir-node.be/fhir/ValueSet/inclusion-status"})
    if name == "validate-code":
        params = {
            "url": "https://fhir-node.be/fhir/ValueSet/inclusion-status",
            "system": INCLUSION_STATUS,
            "code": "principal",
        }
        return client.get("/fhir/ValueSet/$validate-code", params=params)
    if name == "lookup":
        return client.get("/fhir/CodeSystem/$lookup", params={"system": INCLUSION_STATUS, "code": "principal"})
    if name == "export":  # a Bulk Data kick-off: 202 and where to poll
        prefer = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
        if res_type == "Group":
            group = create(client, {"resourceType": "Group", "type": "person", "actual": True})
            return client.get(f"/fhir/Group/{group}/$export", headers=prefer)
        return client.get(f"/fhir/{res_type}/$export", headers=prefer)
    if name in ("deceased", "ssin-change"):  # the National Register's mutations, on a stored Patient
        born = datetime.date(1961, 3, 14)
        patient = create(client, {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": ssin(born, 41)}]})
        parameter = {"name": "date", "valueDate": "2024-05-01"}
        if name == "ssin-change":
            parameter = {"name": "ssin", "valueString": ssin(born, 43)}
        body = {"resourceType": "Parameters", "parameter": [parameter]}
        return client.post(f"/fhir/Patient/{patient}/${name}", json=body, headers=JSON_HEADERS)
    raise AssertionError(f"{res_type} declares ${name}, which this test does not know how to call: add it here")


def test_every_declared_operation_works_and_undeclared_ones_are_unknown(client, statement):
    for resource in resources(statement):
        res_type = resource["type"]
        declared = {op["name"] for op in resource.get("operation", [])}
        for name in declared:
            r = exercise_operation(client, res_type, name)
            assert r.status_code in (200, 202), f"{res_type}/${name} is declared but answered {r.text}"
            assert r.status_code == 200 or "content-location" in r.headers, f"{res_type}/${name}: nowhere to poll"
        for name in sorted({"expand", "lookup", "everything", "meta"} - declared):
            for path in (f"/fhir/{res_type}/${name}", f"/fhir/{res_type}/some-id/${name}"):
                r = client.get(path)
                assert r.status_code == 404, f"{path}: {r.status_code} {r.text}"
                text = r.json()["issue"][0]["diagnostics"]
                assert f"Unknown operation '${name}'" in text, text
    r = client.post("/fhir/$everything", json={"resourceType": "Parameters"}, headers=JSON_HEADERS)
    assert r.status_code == 404
    assert "Unknown operation '$everything'" in r.json()["issue"][0]["diagnostics"]


def test_declared_system_interactions_work_and_others_are_refused(client, statement):
    declared = {i["code"] for i in statement["rest"][0]["interaction"]}
    assert {"transaction", "batch", "search-system", "history-system"} <= declared
    for kind in ("transaction", "batch"):
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [{"resource": episode(), "request": {"method": "POST", "url": "EpisodeOfCare"}}],
        }
        r = client.post("/fhir", json=bundle, headers=JSON_HEADERS)
        assert r.status_code == 200, r.text
        assert r.json()["type"] == f"{kind}-response"
        assert r.json()["entry"][0]["response"]["status"].startswith("201")
    assert client.get("/fhir", params={"_type": "EpisodeOfCare"}).json()["type"] == "searchset"
    assert client.get("/fhir/_history").json()["type"] == "history"
    for method in ("PUT", "DELETE", "PATCH"):
        assert client.request(method, "/fhir").status_code == 405


def test_statement_names_itself_and_the_guide_and_the_patch_format(statement):
    assert statement["url"].endswith("/CapabilityStatement/fhir-node")
    assert statement["name"].isidentifier()
    assert statement["title"]
    assert statement["implementationGuide"] == ["https://fhir-node.be/fhir/ImplementationGuide/bihr"]
    patchable = [r["type"] for r in resources(statement) if "patch" in {i["code"] for i in r["interaction"]}]
    assert patchable
    assert statement["patchFormat"] == ["application/json-patch+json"]


def test_versioning_is_declared_as_it_is(client, statement):
    """versioned-update only where an update is possible: AuditEvent keeps versions but refuses updates."""
    for resource in resources(statement):
        updatable = "update" in {i["code"] for i in resource["interaction"]}
        assert resource["versioning"] == ("versioned-update" if updatable else "versioned"), resource["type"]
    audit = audit_event()
    rid = create(client, audit)
    assert client.put(f"/fhir/AuditEvent/{rid}", json={**audit, "id": rid}, headers=JSON_HEADERS).status_code == 405
    assert client.get(f"/fhir/AuditEvent/{rid}/_history/1").status_code == 200
