"""A conditional create in the URL (`POST [type]?criteria`, fhirpy's get_or_create) under FHIR_NODE_AUTH=jwt:
the same access rules and audit as If-None-Exist (it is the same code path)."""

from __future__ import annotations

from access_data import P1, SSIN, consent, headers

JSON = {"Content-Type": "application/fhir+json"}


def test_a_match_the_caller_may_not_see_is_a_403_audited_and_no_duplicate(world):
    client, w = world
    before = client.get("/fhir/Consent", params={"patient": w.ref("P1")}, headers=headers("operator")).json()["total"]
    as_stranger = {**JSON, **headers("stranger")}
    r = client.post("/fhir/Consent", params={"patient": w.ref("P1")}, json=consent(w.ref("P1")), headers=as_stranger)
    assert r.status_code == 403, r.text
    after = client.get("/fhir/Consent", params={"patient": w.ref("P1")}, headers=headers("operator")).json()
    assert after["total"] == before
    audited = client.get(
        "/fhir/AuditEvent", params={"subtype": "create", "outcome": "4"}, headers=headers("operator")
    ).json()
    assert audited["total"] >= 1
    assert any(e["resource"]["outcomeDesc"] == "HTTP 403" for e in audited["entry"])


def test_a_provider_declaring_a_known_patient_gets_it_back(world):
    client, w = world
    body = {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": P1}]}
    as_provider = {**JSON, **headers("provider")}
    r = client.post("/fhir/Patient", params={"identifier": f"{SSIN}|{P1}"}, json=body, headers=as_provider)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == w.ids["P1"]
