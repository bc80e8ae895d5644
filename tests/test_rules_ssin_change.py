"""`POST Patient/[id]/$ssin-change`: the Patient and everything referring to it by SSIN follow the new SSIN
in one transaction, history keeps the old one, searches by the old one find nothing; check digits of
both are checked; the operator only, audited."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from access_data import headers, secured
from inclusions import JSON, SSIN, SSINS, created, inclusion, patient

OLD, NEW = SSINS[0], SSINS[3]


def notice(ssin: str) -> bytes:
    return orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "ssin", "valueString": ssin}]})


def total(client, query: str) -> int:
    r = client.get(f"/fhir/{query}&_total=accurate")
    assert r.status_code == 200, r.text
    return r.json()["total"]


def by_ssin(ssin: str) -> list[str]:
    """Every search that finds the patient's data by SSIN."""
    token = f"{SSIN}|{ssin}"
    return [
        f"Patient?identifier={token}",
        f"EpisodeOfCare?patient:identifier={token}",
        f"EpisodeOfCare?patient.identifier={token}",
        f"Consent?patient:identifier={token}",
        f"CareTeam?subject:identifier={token}",
    ]


def world(client) -> tuple[str, dict[str, str]]:
    pid = created(client, patient(OLD))
    ref = {"system": SSIN, "value": OLD}
    consent = {"resourceType": "Consent", "status": "active", "scope": {"text": "research"}}
    consent |= {"category": [{"text": "research"}], "patient": {"identifier": ref}}
    consent = {"resourceType": "Consent", "status": "active", "scope": {"text": "research"}}
    consent |= {"category": [{"text": "research"}], "patient": {"identifier": ref}}
    ids = {
        "literal": created(client, inclusion("2020-01-01", "2020-12-31", patient_id=pid)),
        "both": created(client, inclusion("2021-01-01", patient_id=pid, ssin=OLD)),
        "by-ssin": created(client, inclusion("2021-01-01", ssin=OLD, kind="information")),
        "consent": created(client, consent),
        "team": created(client, {"resourceType": "CareTeam", "status": "active", "subject": {"identifier": ref}}),
    }
    created(client, inclusion("2021-01-01", patient_id=created(client, patient(SSINS[1]))))
    return pid, ids


def test_ssin_change_relinks_everything(client):
    pid, ids = world(client)
    assert [total(client, q) for q in by_ssin(OLD)] == [1, 2, 2, 1, 1]
    r = client.post(f"/fhir/Patient/{pid}/$ssin-change", content=notice(NEW), headers=JSON)
    assert r.status_code == 200, r.text
    relinked = {p["valueReference"]["reference"] for p in r.json()["parameter"] if p["name"] == "relinked"}
    expected = [f"EpisodeOfCare/{ids['both']}", f"EpisodeOfCare/{ids['by-ssin']}"]
    assert relinked == {*expected, f"Consent/{ids['consent']}", f"CareTeam/{ids['team']}"}
    assert [total(client, q) for q in by_ssin(OLD)] == [0, 0, 0, 0, 0]
    assert [total(client, q) for q in by_ssin(NEW)] == [1, 2, 2, 1, 1]
    history = client.get(f"/fhir/Patient/{pid}/_history").json()["entry"]
    assert [e["resource"]["identifier"][0]["value"] for e in history] == [NEW, OLD]
    literal = client.get(f"/fhir/EpisodeOfCare/{ids['literal']}").json()
    assert literal["meta"]["versionId"] == "1"  # a literal reference needs no change
    old_version = client.get(f"/fhir/EpisodeOfCare/{ids['by-ssin']}/_history/1").json()
    assert old_version["patient"]["identifier"]["value"] == OLD
    again = client.post(f"/fhir/Patient/{pid}/$ssin-change", content=notice(NEW), headers=JSON)
    assert [p["name"] for p in again.json()["parameter"]] == ["patient"]
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    ("new", "status"),
    [("85073003329", 422), ("8507300332", 422), (SSINS[1], 409)],
)
def test_refused_changes_change_nothing(client, new: str, status: int):
    pid, _ = world(client)
    r = client.post(f"/fhir/Patient/{pid}/$ssin-change", content=notice(new), headers=JSON)
    assert r.status_code == status, r.text
    assert "SSIN" in r.json()["issue"][0]["diagnostics"]
    assert [total(client, q) for q in by_ssin(OLD)] == [1, 2, 2, 1, 1]
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_the_current_ssin_must_be_valid_too(client):
    pid = created(client, patient("85073003320"))  # base R4 only here: stored despite its check digits
    r = client.post(f"/fhir/Patient/{pid}/$ssin-change", content=notice(NEW), headers=JSON)
    assert r.status_code == 422, r.text
    body: Any = {"resourceType": "Parameters", "parameter": [{"name": "ssin", "valueInteger": 1}]}
    r = client.post(f"/fhir/Patient/{pid}/$ssin-change", content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 400, r.text


def test_only_the_operator_changes_an_ssin_and_it_is_audited(database_url):
    with secured(database_url) as (client, world_ids):
        url = f"/fhir/Patient/{world_ids.ids['P1']}/$ssin-change"
        for caller in ("patient", "provider", "pharmacist", "psi-admin", "psi-coordinator", "aggregator"):
            r = client.post(url, content=notice(NEW), headers={**JSON, **headers(caller)})
            assert r.status_code == 403, (caller, r.text)
        r = client.post(url, content=notice(NEW), headers={**JSON, **headers("operator")})
        assert r.status_code == 200, r.text
        found = client.get(f"/fhir/Patient?identifier={SSIN}|{NEW}", headers=headers("operator")).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [world_ids.ids["P1"]]
        events = client.get(
            f"/fhir/AuditEvent?entity={world_ids.ref('P1')}&subtype=operation", headers=headers("operator")
        ).json()
        outcomes = sorted(e["resource"]["outcomeDesc"] for e in events["entry"])
        assert outcomes == ["HTTP 200"] + ["HTTP 403"] * 6  # the refusals are audited too
