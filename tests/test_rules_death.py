"""Death closes the patient's open inclusions on that day, in one transaction, whichever way it is
recorded: `Patient.deceasedDateTime` on any write path (PUT, PATCH, transaction) or
`POST Patient/[id]/$deceased`; the operation is the operator's only, and audited."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from access_data import headers, secured
from inclusions import JSON, SSINS, billing, created, inclusion, patient, transaction

DEATH = "2024-05-10"


def read(client, path: str) -> dict[str, Any]:
    r = client.get(f"/fhir/{path}")
    assert r.status_code == 200, r.text
    return r.json()


def scenario(client) -> tuple[str, dict[str, str]]:
    """A patient and one inclusion of each kind the death treats differently."""
    pid = created(client, patient())
    ids = {
        "open": created(client, inclusion("2020-01-01", patient_id=pid)),
        "future-end": created(client, inclusion("2021-01-01", "2030-12-31", patient_id=pid, kind="information")),
        "by-ssin": created(client, inclusion("2022-01-01", ssin=SSINS[0], kind="information", status="onhold")),
        "ended": created(client, inclusion("2015-01-01", "2019-12-31", patient_id=pid, status="finished")),
        "later": created(client, inclusion("2024-09-01", patient_id=pid, kind="information", status="planned")),
        "void": created(client, inclusion("2020-01-01", patient_id=pid, status="entered-in-error")),
        "other": created(client, inclusion("2020-01-01", patient_id=created(client, patient(SSINS[1])))),
    }
    return pid, ids


def closed(client, ids: dict[str, str]) -> None:
    """What the death on DEATH leaves of each inclusion of `scenario`."""
    got = {name: read(client, f"EpisodeOfCare/{i}") for name, i in ids.items()}
    for name in ("open", "future-end", "by-ssin"):
        assert got[name]["status"] == "finished", name
        assert got[name]["period"]["end"] == DEATH, name
        assert got[name]["meta"]["versionId"] == "2"
    assert billing(got["open"]) == {"start": "2020-02-01", "end": "2024-06-30"}
    assert got["later"]["status"] == "cancelled" and "end" not in got["later"]["period"]
    for name in ("ended", "void", "other"):
        assert got[name]["meta"]["versionId"] == "1", name


def test_put_with_a_death_closes_open_inclusions(client):
    pid, ids = scenario(client)
    body = {**patient(), "id": pid, "deceasedDateTime": f"{DEATH}T23:30:00+02:00"}
    r = client.put(f"/fhir/Patient/{pid}", content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 200, r.text
    closed(client, ids)


def test_patch_and_transaction_close_too(client):
    pid, ids = scenario(client)
    ops = [{"op": "add", "path": "/deceasedDateTime", "value": DEATH}]
    r = client.patch(
        f"/fhir/Patient/{pid}", content=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 200, r.text
    closed(client, ids)
    other = created(client, patient(SSINS[2]))
    open_one = created(client, inclusion("2020-01-01", patient_id=other))
    body = {**patient(SSINS[2]), "id": other, "deceasedDateTime": DEATH}
    r = client.post("/fhir", content=orjson.dumps(transaction(("PUT", f"Patient/{other}", body))), headers=JSON)
    assert r.status_code == 200, r.text
    assert read(client, f"EpisodeOfCare/{open_one}")["period"]["end"] == DEATH


def test_an_inclusion_written_after_the_death_is_closed(client):
    pid = created(client, patient(deceasedDateTime=DEATH))
    late = client.post(
        "/fhir/EpisodeOfCare", content=orjson.dumps(inclusion("2024-01-01", patient_id=pid)), headers=JSON
    )
    assert late.json()["status"] == "finished" and late.json()["period"]["end"] == DEATH


def test_deceased_operation(client):
    pid, ids = scenario(client)
    notice = {"resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": DEATH}]}
    r = client.post(f"/fhir/Patient/{pid}/$deceased", content=orjson.dumps(notice), headers=JSON)
    assert r.status_code == 200, r.text
    answered = {p["valueReference"]["reference"] for p in r.json()["parameter"] if p["name"] == "closed"}
    assert answered == {f"EpisodeOfCare/{ids[n]}" for n in ("open", "future-end", "by-ssin", "later")}
    assert read(client, f"Patient/{pid}")["deceasedDateTime"] == DEATH
    closed(client, ids)
    again = client.post(f"/fhir/Patient/{pid}/$deceased", content=orjson.dumps(notice), headers=JSON)
    assert [p["name"] for p in again.json()["parameter"]] == ["patient"]
    assert read(client, f"Patient/{pid}")["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": "2024-02-30"}]}, 400),
        ({"resourceType": "Parameters", "parameter": [{"name": "date", "valueString": "2024-02-03"}]}, 400),
        ({"resourceType": "Parameters", "parameter": []}, 400),
        ({"resourceType": "Patient"}, 400),
        ({"resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": "2999-01-01"}]}, 422),
    ],
)
def test_bad_notices_change_nothing(client, body: dict[str, Any], status: int):
    pid, ids = scenario(client)
    r = client.post(f"/fhir/Patient/{pid}/$deceased", content=orjson.dumps(body), headers=JSON)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert read(client, f"Patient/{pid}")["meta"]["versionId"] == "1"
    assert read(client, f"EpisodeOfCare/{ids['open']}")["meta"]["versionId"] == "1"


def test_unknown_patient_and_get(client):
    notice = orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": DEATH}]})
    assert client.post("/fhir/Patient/nobody/$deceased", content=notice, headers=JSON).status_code == 404
    assert client.get("/fhir/Patient/nobody/$deceased").status_code == 405
    assert any(
        o["name"] == "deceased" and o["definition"].endswith("OperationDefinition/Patient-deceased")
        for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]
        if r["type"] == "Patient"
        for o in r["operation"]
    )
    definition = client.get("/fhir/OperationDefinition/Patient-deceased").json()
    assert definition["code"] == "deceased" and definition["instance"] is True


def test_only_the_operator_notifies_a_death_and_it_is_audited(database_url):
    with secured(database_url) as (client, world):
        notice = orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": DEATH}]})
        url = f"/fhir/Patient/{world.ids['P1']}/$deceased"
        for caller in ("patient", "provider", "pharmacist", "psi-admin", "psi-coordinator", "aggregator"):
            r = client.post(url, content=notice, headers={**JSON, **headers(caller)})
            assert r.status_code == 403, (caller, r.text)
        r = client.post(url, content=notice, headers={**JSON, **headers("operator", "system/*.rs")})
        assert r.status_code == 403, r.text  # the token's scopes hold too: no right to update
        assert client.get(f"/fhir/{world.ref('A1')}", headers=headers("operator")).json()["status"] == "active"
        r = client.post(url, content=notice, headers={**JSON, **headers("operator")})
        assert r.status_code == 200, r.text
        a1 = client.get(f"/fhir/{world.ref('A1')}", headers=headers("operator")).json()
        assert a1["status"] == "finished" and a1["period"]["end"] == DEATH
        events = client.get(
            f"/fhir/AuditEvent?entity={world.ref('A1')}&subtype=operation", headers=headers("operator")
        ).json()
        [event] = [e["resource"] for e in events["entry"]]
        whats = {e.get("what", {}).get("reference") for e in event["entity"]}
        assert {world.ref("P1"), world.ref("A1"), world.ref("B1")} <= whats
        assert event["outcomeDesc"] == "HTTP 200"


@pytest.mark.parametrize("patient_first", [True, False])
def test_a_transaction_creating_a_deceased_patient_and_its_inclusions_closes_them(client, patient_first: bool):
    """One Bundle creates the Patient, already deceased, and inclusions of it (by urn:uuid, either order):
    the inclusions are found once the Bundle's inserts are written, and closed in the same transaction."""
    urn = "urn:uuid:4a1c0b8e-0000-4000-8000-00000000d1ed"
    person = transaction(("POST", "Patient", patient(SSINS[3], deceasedDateTime=DEATH)))["entry"][0]
    of_urn = {"patient": {"reference": urn}}
    episodes = transaction(
        ("POST", "EpisodeOfCare", inclusion("2020-01-01", patient_id="x") | of_urn),
        ("POST", "EpisodeOfCare", inclusion("2024-09-01", patient_id="x", kind="information") | of_urn),
    )["entry"]
    entries = [{"fullUrl": urn, **person}, *episodes]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries if patient_first else entries[::-1]}
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 200, r.text
    locations = [e["response"]["location"] for e in r.json()["entry"]]
    first, later = (read(client, where.split("/_history")[0]) for where in locations if "EpisodeOfCare" in where)
    if not patient_first:
        first, later = later, first
    assert first["status"] == "finished" and first["period"]["end"] == DEATH
    assert later["status"] == "cancelled"
