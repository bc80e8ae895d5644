"""AuditEvent's `patient` parameter is its Patient agents and entities, so the rows it indexes are rows of
`agent` or `entity` too: each is written once, named `entity+patient` or `agent+patient` (`index.SHARED`),
which halves the index of the node's own search events (one entity per patient of the page). Every way of
searching reads them as before: each parameter, `:missing`, includes, reverse includes, `_has`, chains and
counts, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from test_audit_chain import audited_client, chain_entries, database

from fhir_node.search.index import rows
from fhir_node.store.schema import idx_reference


def _event(agent: str | None, entity: str | None) -> dict[str, Any]:
    who = {"reference": agent} if agent else {"display": "a clerk"}
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"who": who, "requestor": True}],
        "source": {"observer": {"display": "elsewhere"}},
    }
    if entity:
        event["entity"] = [{"what": {"reference": entity}}]
    return event


@pytest.fixture
def events(client: TestClient) -> dict[str, str]:
    def post(body: dict[str, Any]) -> str:
        r = client.post(f"/fhir/{body['resourceType']}", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    patient = post({"resourceType": "Patient", "gender": "female"})
    organization = post({"resourceType": "Organization", "name": "o"})
    made = {
        "entity": post(_event(None, f"Patient/{patient}")),
        "agent": post(_event(f"Patient/{patient}", None)),
        "both": post(_event(f"Patient/{patient}", f"Patient/{patient}")),
        "other": post(_event(None, f"Organization/{organization}")),
    }
    return {**made, "patient": patient, "organization": organization}


def _ids(client: TestClient, url: str, res_type: str = "AuditEvent") -> list[str]:
    r = client.get(f"/fhir/{url}")
    assert r.status_code == 200, (url, r.text)
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["resource"]["resourceType"] == res_type)


def test_a_row_of_entity_or_agent_and_patient_is_written_once() -> None:
    found = rows(
        "AuditEvent",
        _event("Patient/p-1", "Patient/p-1")
        | {"entity": [{"what": {"reference": f"Patient/p-{i}"}} for i in range(1, 4)]},
    )
    params = sorted(r["param"] for r in found["reference"])
    assert params == ["agent"] + ["entity+patient"] * 3, found["reference"]
    assert sorted(r["target_id"] for r in found["reference"]) == ["p-1", "p-1", "p-2", "p-3"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("patient={patient}", ["entity", "agent", "both"]),
        ("patient=Patient/{patient}", ["entity", "agent", "both"]),
        ("entity=Patient/{patient}", ["entity", "both"]),
        ("agent=Patient/{patient}", ["agent", "both"]),
        ("entity=Organization/{organization}", ["other"]),
        ("patient:missing=true", ["other"]),
        ("entity:missing=true", ["agent"]),
        ("patient.gender=female", ["entity", "agent", "both"]),
        ("agent.gender=female", ["agent", "both"]),
    ],
)
def test_each_parameter_finds_what_its_expression_holds(
    client: TestClient, events: dict[str, str], query: str, expected: list[str]
) -> None:
    url = "AuditEvent?" + query.format(**events)
    assert _ids(client, url) == sorted(events[name] for name in expected)
    assert client.get(f"/fhir/{url}&_summary=count").json()["total"] == len(expected)


def test_includes_reverse_includes_and_has_follow_them(client: TestClient, events: dict[str, str]) -> None:
    patient = events["patient"]
    for code, expected in (
        ("patient", ["entity", "agent", "both"]),
        ("entity", ["entity", "both"]),
        ("agent", ["agent", "both"]),
    ):
        assert _ids(client, f"Patient?_id={patient}&_revinclude=AuditEvent:{code}") == sorted(
            events[n] for n in expected
        )
        assert _ids(client, f"Patient?_has:AuditEvent:{code}:type=rest", "Patient") == [patient]
    for name in ("entity", "agent", "both"):
        assert _ids(client, f"AuditEvent?_id={events[name]}&_include=AuditEvent:patient", "Patient") == [patient]
    assert _ids(client, f"AuditEvent?_id={events['agent']}&_include=AuditEvent:entity", "Patient") == []


def test_the_stored_rows_are_shared(client: TestClient, settings: Any, events: dict[str, str]) -> None:
    with database(settings.database_url) as db, db.read() as conn:
        ref = idx_reference.c
        q = select(ref.res_id, ref.param).where(ref.res_type == "AuditEvent", ref.target_type == "Patient")
        stored = sorted((res_id, param) for res_id, param in conn.execute(q))
    expected = [
        (events["entity"], "entity+patient"),
        (events["agent"], "agent+patient"),
        (events["both"], "agent"),  # its patient row is the entity's: that one stands for it
        (events["both"], "entity+patient"),
    ]
    assert stored == sorted(expected)


def test_an_audited_search_of_audit_events_names_their_patients(database_url: str) -> None:
    """The AuditEvent of a search names the patients of its page, found through the shared rows too."""
    with audited_client(database_url) as client:
        patient = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
        made = client.post("/fhir/AuditEvent", json=_event(None, f"Patient/{patient}")).json()["id"]
        assert client.get(f"/fhir/AuditEvent?_id={made}").status_code == 200
        own = chain_entries(database_url)[-1][1]  # that search's AuditEvent
        entities = client.get(f"/fhir/AuditEvent/{own}").json()["entity"]
    assert f"Patient/{patient}" in [e.get("what", {}).get("reference") for e in entities]
