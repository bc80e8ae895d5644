"""The deliberation's access rules, role by role, through the real app with real JWTs, on SQLite and
PostgreSQL: exactly which ids each caller sees (searches, totals, reads, includes, history, chains),
what is redacted, and which writes pass. The world: tests/access_data.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from access_data import SSIN, World, consent, episode, headers, search, secured
from starlette.testclient import TestClient

Secured = tuple[TestClient, World]


@pytest.fixture
def fresh(database_url: str) -> Iterator[Secured]:
    """A world of its own, for tests that write."""
    with secured(database_url) as env:
        yield env


def names(world: World, bundle: dict[str, Any], mode: str = "match") -> set[str]:
    by_id = {v: k for k, v in world.ids.items()}
    return {
        by_id.get(e["resource"]["id"], e["resource"]["id"])
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    }


EPISODES = {
    "patient": {"A1", "B1"},
    "provider": {"A1", "B1"},
    "stranger": set(),
    "pharmacist": {"A3", "B3"},
    "psi-admin": {"A1", "A3", "B3"},
    "psi-coordinator": {"A1", "A3", "B3"},
    "aggregator": {"A1", "B1", "A3", "B3"},  # P2 refused research use
    "operator": {"A1", "B1", "B2", "A3", "B3"},
}
CONSENTS = {
    "patient": {"C1"},
    "provider": {"C1"},
    "stranger": set(),
    "pharmacist": {"C3"},
    "psi-admin": {"C1", "C3"},
    "aggregator": {"C1", "C3"},
    "operator": {"C1", "C2", "C3"},
}
PATIENTS = {
    "patient": {"P1"},
    "provider": {"P1"},
    "stranger": set(),
    "pharmacist": {"P3"},
    "psi-admin": {"P1", "P3"},
    "psi-coordinator": {"P1", "P3"},
    "aggregator": {"P1", "P3"},
    "operator": {"P1", "P2", "P3"},
}


@pytest.mark.parametrize("caller", sorted(EPISODES))
def test_each_role_searches_exactly_its_inclusions_with_right_totals(world: Secured, caller: str) -> None:
    client, w = world
    found = search(client, caller, "EpisodeOfCare?_total=accurate&_count=2")
    seen = set(names(w, found))
    while next_link := next((link["url"] for link in found.get("link", []) if link["relation"] == "next"), None):
        found = client.get(next_link, headers=headers(caller)).json()
        seen |= names(w, found)
    assert seen == EPISODES[caller]
    count = search(client, caller, "EpisodeOfCare?_summary=count")
    if caller == "aggregator":  # fewer than 5: a small cell, suppressed
        assert "total" not in count and count["_total"]["extension"][0]["valueCode"] == "masked"
    else:
        assert count["total"] == len(EPISODES[caller])


@pytest.mark.parametrize("caller", sorted(CONSENTS))
def test_each_role_searches_exactly_its_consents(world: Secured, caller: str) -> None:
    client, w = world
    assert names(w, search(client, caller, "Consent")) == CONSENTS[caller]


@pytest.mark.parametrize("caller", sorted(PATIENTS))
def test_each_role_searches_exactly_its_patients(world: Secured, caller: str) -> None:
    client, w = world
    assert names(w, search(client, caller, "Patient")) == PATIENTS[caller]


@pytest.mark.parametrize("caller", ["psi-coordinator"])
def test_coordinators_read_no_consent(world: Secured, caller: str) -> None:
    client, w = world
    assert client.get("/fhir/Consent", headers=headers(caller)).status_code == 403
    assert client.get(f"/fhir/{w.ref('C1')}", headers=headers(caller)).status_code == 403


@pytest.mark.parametrize("caller", sorted(EPISODES))
def test_reads_answer_what_searches_show_and_404_otherwise(world: Secured, caller: str) -> None:
    client, w = world
    for name in ("A1", "B1", "B2", "A3", "B3"):
        r = client.get(f"/fhir/{w.ref(name)}", headers=headers(caller))
        if name in EPISODES[caller]:
            assert r.status_code == 200, (name, r.text)
        else:
            missing = client.get("/fhir/EpisodeOfCare/no-such-id", headers=headers(caller))
            assert r.status_code == missing.status_code == 404
            assert r.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"] == "not-found"
            assert w.ids[name] not in missing.text


def test_a_psi_sees_another_projects_principal_inclusion_redacted(world: Secured) -> None:
    client, w = world
    found = search(client, "psi-admin", "EpisodeOfCare")
    by_id = {e["resource"]["id"]: e["resource"] for e in found["entry"]}
    other = by_id[w.ids["B3"]]
    assert set(other) == {"resourceType", "id", "meta", "status", "type", "patient", "period"}
    assert other["meta"]["security"][0]["code"] == "REDACTED"
    assert other["type"][0]["coding"][0]["code"] == "principal"
    own = by_id[w.ids["A1"]]
    assert own["managingOrganization"]["reference"] == w.ref("orgA")
    assert "security" not in own["meta"]
    read = client.get(f"/fhir/{w.ref('B3')}", headers=headers("psi-admin")).json()
    assert "managingOrganization" not in read and read["meta"]["security"][0]["code"] == "REDACTED"
    # Its history, which would show the project, is not theirs.
    assert client.get(f"/fhir/{w.ref('B3')}/_history", headers=headers("psi-admin")).status_code == 404


def test_criteria_on_what_redaction_removes_never_match_redacted_inclusions(world: Secured) -> None:
    client, w = world
    org_b = f"Organization/{w.ids['orgB']}"
    assert names(w, search(client, "psi-admin", f"EpisodeOfCare?organization={org_b}")) == set()
    assert names(w, search(client, "psi-admin", f"Patient?_has:EpisodeOfCare:patient:organization={org_b}")) == set()
    assert names(w, search(client, "psi-admin", "EpisodeOfCare?type=principal")) == {"A1", "B3"}


def test_includes_are_filtered_and_never_follow_a_redacted_resource(world: Secured) -> None:
    client, w = world
    found = search(client, "psi-admin", "EpisodeOfCare?_include=EpisodeOfCare:organization")
    assert names(w, found, "include") == {"orgA"}
    rev = search(client, "psi-admin", "Patient?_revinclude=EpisodeOfCare:patient&_revinclude=Consent:patient")
    assert names(w, rev) == {"P1", "P3"}
    assert names(w, rev, "include") == {"A1", "A3", "B3", "C1", "C3"}
    provider = search(client, "provider", f"Patient?_id={w.ids['P1']}&_revinclude=EpisodeOfCare:patient")
    assert names(w, provider, "include") == {"A1", "B1"}


def test_history_shows_only_what_the_caller_may_see(world: Secured) -> None:
    client, w = world
    by_id = {v: k for k, v in w.ids.items()}
    found = search(client, "provider", "EpisodeOfCare/_history")
    assert {by_id[e["resource"]["id"]] for e in found["entry"]} == {"A1", "B1"}
    system = search(client, "patient", "_history?_count=1000")
    assert {by_id.get(e["resource"]["id"]) for e in system["entry"]} >= {"A1", "B1", "C1", "P1"}
    assert {by_id.get(e["resource"]["id"]) for e in system["entry"]}.isdisjoint({"B2", "C2", "P2", "A3"})
    assert client.get(f"/fhir/{w.ref('B2')}/_history", headers=headers("provider")).status_code == 404


def test_chains_look_only_into_what_the_caller_may_search(world: Secured) -> None:
    client, w = world
    query = "EpisodeOfCare?patient.identifier=https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin|"
    assert names(w, search(client, "provider", query + "85073003328")) == {"A1", "B1"}
    assert names(w, search(client, "provider", query + "17073003384")) == set()


def test_a_scope_narrows_the_role(world: Secured) -> None:
    client, w = world
    narrow = headers("provider", "system/EpisodeOfCare.rs")
    assert client.get("/fhir/EpisodeOfCare", headers=narrow).status_code == 200
    assert client.get("/fhir/Consent", headers=narrow).status_code == 403
    assert client.get(f"/fhir/{w.ref('C1')}", headers=narrow).status_code == 403
    assert client.get("/fhir/EpisodeOfCare", headers=headers("provider", "openid")).status_code == 403


def test_system_search_covers_only_searchable_types(world: Secured) -> None:
    client, w = world
    found = search(client, "patient", "?_type=EpisodeOfCare,Consent")
    assert names(w, found) == {"A1", "B1", "C1"}
    assert client.get("/fhir?_type=Organization,CareTeam", headers=headers("patient")).status_code == 403


def test_coordinators_pages_are_capped(world: Secured) -> None:
    client, _ = world
    assert client.get("/fhir/Patient?_count=50", headers=headers("psi-coordinator")).status_code == 200
    assert client.get("/fhir/Patient?_count=51", headers=headers("psi-coordinator")).status_code == 403


@pytest.mark.parametrize(
    ("caller", "status"),
    [("patient", 201), ("provider", 201), ("psi-admin", 201), ("aggregator", 403), ("psi-coordinator", 403)],
)
def test_who_may_record_a_consent_for_patient_1(fresh: Secured, caller: str, status: int) -> None:
    client, w = fresh
    r = client.post("/fhir/Consent", json=consent(w.ref("P1")), headers=headers(caller))
    assert r.status_code == status, r.text


def test_a_patient_writes_only_their_own_consent(fresh: Secured) -> None:
    client, w = fresh
    me = headers("patient")
    assert client.post("/fhir/Consent", json=consent(w.ref("P2")), headers=me).status_code == 403
    mine = client.get(f"/fhir/{w.ref('C1')}", headers=me).json()
    changed = {**mine, "provision": {"type": "deny"}}
    assert client.put(f"/fhir/{w.ref('C1')}", json=changed, headers=me).status_code == 200
    theirs = {**consent(w.ref("P2")), "id": w.ids["C2"]}
    assert client.put(f"/fhir/{w.ref('C2')}", json=theirs, headers=me).status_code == 404
    # Moving one's consent to someone else is refused, and changes nothing.
    moved = {**mine, "patient": {"reference": w.ref("P2")}}
    assert client.put(f"/fhir/{w.ref('C1')}", json=moved, headers=me).status_code == 403
    after = client.get(f"/fhir/{w.ref('C1')}", headers=me).json()
    assert after["patient"]["reference"] == w.ref("P1") and after["meta"]["versionId"] == "2"
    assert client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P1"), w.ref("orgA"), "information"),
                       headers=me).status_code == 403


def test_a_provider_declares_without_a_relationship_and_changes_only_what_it_may(fresh: Secured) -> None:
    client, w = fresh
    dr = headers("provider")
    org_b = f"Organization/{w.ids['orgB']}"
    assert client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P2"), org_b, "information"),
                       headers=dr).status_code == 201
    a1 = client.get(f"/fhir/{w.ref('A1')}", headers=dr).json()
    assert client.put(f"/fhir/{w.ref('A1')}", json={**a1, "status": "finished", "period": {
        "start": "2024-01-01", "end": "2024-06-30"}}, headers=dr).status_code == 200
    a1 = client.get(f"/fhir/{w.ref('A1')}", headers=dr).json()
    moved = {**a1, "managingOrganization": {"reference": org_b}}
    assert client.put(f"/fhir/{w.ref('A1')}", json=moved, headers=dr).status_code == 403
    patched = client.patch(f"/fhir/{w.ref('A1')}", headers={**dr, "Content-Type": "application/json-patch+json"},
                           content=b'[{"op":"replace","path":"/managingOrganization/reference","value":"' +
                           org_b.encode() + b'"}]')
    assert patched.status_code == 403
    b2 = {**episode(w.ref("P2"), org_b, "principal"), "id": w.ids["B2"]}
    assert client.put(f"/fhir/{w.ref('B2')}", json=b2, headers=dr).status_code == 404  # relationship expired
    assert client.delete(f"/fhir/{w.ref('A1')}", headers=dr).status_code == 403


def test_a_psi_admin_creates_only_in_its_project_and_changes_only_the_start(fresh: Secured) -> None:
    client, w = fresh
    adm = headers("psi-admin")
    org_a, org_b = f"Organization/{w.ids['orgA']}", f"Organization/{w.ids['orgB']}"
    assert client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P2"), org_a, "information"),
                       headers=adm).status_code == 201
    assert client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P2"), org_b, "information"),
                       headers=adm).status_code == 403
    a1 = client.get(f"/fhir/{w.ref('A1')}", headers=adm).json()
    assert client.put(f"/fhir/{w.ref('A1')}", json={**a1, "period": {"start": "2024-02-01"}},
                      headers=adm).status_code == 200
    a1 = client.get(f"/fhir/{w.ref('A1')}", headers=adm).json()
    assert client.put(f"/fhir/{w.ref('A1')}", json={**a1, "status": "finished"}, headers=adm).status_code == 403
    b3 = client.get(f"/fhir/{w.ref('B3')}", headers=adm).json()
    assert client.put(f"/fhir/{w.ref('B3')}", json=b3, headers=adm).status_code == 403


def test_a_transaction_with_one_forbidden_entry_fails_whole(fresh: Secured) -> None:
    client, w = fresh
    dr = headers("provider")
    before = client.get("/fhir/EpisodeOfCare?_summary=count", headers=headers("operator")).json()["total"]
    c2 = {**consent(w.ref("P2"), "permit"), "id": w.ids["C2"]}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": episode(w.ref("P1"), w.ref("orgA"), "information"),
             "request": {"method": "POST", "url": "EpisodeOfCare"}},
            {"resource": c2, "request": {"method": "PUT", "url": w.ref("C2")}},
        ],
    }
    r = client.post("/fhir", json=bundle, headers=dr)
    assert r.status_code in (403, 404), r.text
    after = client.get("/fhir/EpisodeOfCare?_summary=count", headers=headers("operator")).json()["total"]
    assert after == before


@pytest.mark.parametrize("caller", ["aggregator", "psi-coordinator", "stranger"])
def test_readers_write_nothing(fresh: Secured, caller: str) -> None:
    client, w = fresh
    org_a = f"Organization/{w.ids['orgA']}"
    r = client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P1"), org_a, "information"), headers=headers(caller))
    assert r.status_code == (201 if caller == "stranger" else 403)  # any provider may declare
    assert client.delete(f"/fhir/{w.ref('C1')}", headers=headers(caller)).status_code in (403, 404)


def test_audit_events_are_append_only_even_for_the_operator(fresh: Secured) -> None:
    client, _ = fresh
    search(client, "operator", "Patient")
    events = search(client, "operator", "AuditEvent?_count=1")
    event = events["entry"][0]["resource"]
    op = headers("operator")
    assert client.put(f"/fhir/AuditEvent/{event['id']}", json=event, headers=op).status_code == 405
    assert client.delete(f"/fhir/AuditEvent/{event['id']}", headers=op).status_code == 405


def test_a_patient_sees_who_accessed_their_data(fresh: Secured) -> None:
    client, w = fresh
    assert client.get(f"/fhir/{w.ref('A1')}", headers=headers("provider")).status_code == 200
    mine = search(client, "patient", f"AuditEvent?patient={w.ref('P1')}&_count=100")
    readers = [
        agent.get("altId")
        for e in mine["entry"]
        for agent in e["resource"]["agent"]
        if agent.get("who", {}).get("identifier", {}).get("system") == SSIN
    ]
    assert "18780485003" in readers  # the provider's NIHDI number; their SSIN is not the patient's to see
    assert "79121203389" not in str(mine)
    theirs = search(client, "patient", f"AuditEvent?patient={w.ref('P2')}")
    assert theirs.get("entry", []) == []


@pytest.mark.parametrize("caller", ["provider", "psi-admin", "patient", "aggregator"])
def test_versions_and_validate_by_id_answer_404_for_what_the_caller_may_not_see(world: Secured, caller: str) -> None:
    client, w = world
    hidden, seen, h = "B2", "A1", headers(caller)
    assert client.get(f"/fhir/{w.ref(seen)}/_history/1", headers=h).status_code == 200
    assert client.get(f"/fhir/{w.ref(hidden)}/_history/1", headers=h).status_code == 404
    assert client.get(f"/fhir/{w.ref(hidden)}/_history", headers=h).status_code == 404
    validate = f"/fhir/{w.ref(hidden)}/$validate?mode=delete"
    assert client.post(validate, headers=h).status_code == 404
    form = {**h, "Content-Type": "application/x-www-form-urlencoded"}
    posted = client.post("/fhir/EpisodeOfCare/_search", content=b"_count=100", headers=form).json()
    assert w.ids[hidden] not in {e["resource"]["id"] for e in posted.get("entry", [])}
