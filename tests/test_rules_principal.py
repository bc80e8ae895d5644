"""One principal inclusion per patient at any time, on every write path (create, PUT, PATCH, conditional
update, transaction, `fhir-node load --database`) and under 20 concurrent writers, on SQLite and
PostgreSQL: an overlapping principal inclusion is a 409 that names neither the other inclusion nor
its project, and nothing is written."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from inclusions import JSON, SSIN, SSINS, created, inclusion, patient, post, transaction
from live_node import serve_node

from fhir_node.interactions import write
from fhir_node.load import DatabaseTarget
from fhir_node.node import Node
from fhir_node.outcome import FHIRError
from fhir_node.store.database import Database, lock


def refused(r: httpx.Response) -> None:
    """A 409 about the period, revealing nothing of the other inclusion."""
    assert r.status_code == 409, r.text
    text = r.text
    assert "psi-a" not in text and "psi-b" not in text and "Organization" not in text
    issue = r.json()["issue"][0]
    assert issue["code"] == "business-rule"
    assert issue["expression"][0].endswith("period")


def count(client, query: str) -> int:
    r = client.get(f"/fhir/EpisodeOfCare?{query}&_total=accurate")
    assert r.status_code == 200, r.text
    return r.json()["total"]


def test_overlap_is_refused_whatever_the_reference_form(client):
    pid = created(client, patient())
    created(client, inclusion("2024-01-15", patient_id=pid, ssin=SSINS[0]))
    refused(post(client, inclusion("2025-06-01", patient_id=pid, org="Organization/psi-b")))
    refused(post(client, inclusion("2025-06-01", ssin=SSINS[0], org="Organization/psi-b")))
    refused(post(client, inclusion("2020-01-01", "2024-01-15", ssin=SSINS[0], org="Organization/psi-b")))
    assert count(client, f"patient=Patient/{pid}") == 1


def test_literal_only_and_identifier_only_references_meet(client):
    pid = created(client, patient())
    created(client, inclusion("2024-01-01", ssin=SSINS[0]))
    refused(post(client, inclusion("2024-05-01", patient_id=pid)))
    other = created(client, patient(SSINS[1]))
    created(client, inclusion("2024-01-01", patient_id=other))
    refused(post(client, inclusion("2024-05-01", ssin=SSINS[1])))


def test_periods_touching_on_a_day_overlap_the_next_day_does_not(client):
    pid = created(client, patient())
    created(client, inclusion("2023-01-01", "2024-03-31", patient_id=pid))
    refused(post(client, inclusion("2024-03-31", patient_id=pid, org="Organization/psi-b")))
    created(client, inclusion("2024-04-01", patient_id=pid, org="Organization/psi-b"))
    created(client, inclusion("2020-01-01", "2022-12-31", patient_id=pid))


def test_information_void_and_other_patients_do_not_count(client):
    pid = created(client, patient())
    created(client, inclusion("2024-01-01", patient_id=pid))
    created(client, inclusion("2024-01-01", patient_id=pid, kind="information", org="Organization/psi-b"))
    created(client, inclusion("2024-02-01", patient_id=pid, status="entered-in-error", org="Organization/psi-b"))
    created(client, inclusion("2024-02-01", patient_id=pid, status="cancelled", org="Organization/psi-b"))
    created(client, inclusion("2024-01-01", patient_id=created(client, patient(SSINS[1]))))
    created(client, inclusion("2024-01-01", patient_id="not-stored-yet"))


def test_a_deleted_or_ended_inclusion_frees_the_place(client):
    pid = created(client, patient())
    first = created(client, inclusion("2024-01-01", patient_id=pid))
    assert client.delete(f"/fhir/EpisodeOfCare/{first}").status_code == 204
    second = created(client, inclusion("2024-02-01", patient_id=pid))
    refused(post(client, inclusion("2024-09-01", patient_id=pid, org="Organization/psi-b")))
    ended = {**inclusion("2024-02-01", "2024-08-31", patient_id=pid), "id": second}
    assert client.put(f"/fhir/EpisodeOfCare/{second}", content=orjson.dumps(ended), headers=JSON).status_code == 200
    created(client, inclusion("2024-09-01", patient_id=pid, org="Organization/psi-b"))


def test_put_patch_and_conditional_update_are_checked(client):
    pid = created(client, patient())
    created(client, inclusion("2024-01-01", patient_id=pid))
    info = created(client, inclusion("2024-03-01", patient_id=pid, kind="information", org="Organization/psi-b"))
    as_principal = {**inclusion("2024-03-01", patient_id=pid, org="Organization/psi-b"), "id": info}
    refused(client.put(f"/fhir/EpisodeOfCare/{info}", content=orjson.dumps(as_principal), headers=JSON))
    patch = [{"op": "replace", "path": "/type/0/coding/0/code", "value": "principal"}]
    r = client.patch(
        f"/fhir/EpisodeOfCare/{info}",
        content=orjson.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    refused(r)
    refused(client.put(f"/fhir/EpisodeOfCare?_id={info}", content=orjson.dumps(as_principal), headers=JSON))
    refused(
        client.put(
            "/fhir/EpisodeOfCare/brand-new", content=orjson.dumps({**as_principal, "id": "brand-new"}), headers=JSON
        )
    )
    assert client.get(f"/fhir/EpisodeOfCare/{info}").json()["meta"]["versionId"] == "1"


def test_an_inclusion_may_change_its_own_period(client):
    pid = created(client, patient())
    own = created(client, inclusion("2024-01-01", patient_id=pid))
    moved = {**inclusion("2023-06-01", "2025-01-31", patient_id=pid), "id": own}
    assert client.put(f"/fhir/EpisodeOfCare/{own}", content=orjson.dumps(moved), headers=JSON).status_code == 200


def test_transaction_is_refused_whole(client):
    pid = created(client, patient())
    bundle = transaction(
        ("POST", "EpisodeOfCare", inclusion("2024-01-01", patient_id=pid)),
        ("POST", "EpisodeOfCare", inclusion("2024-06-01", ssin=SSINS[0], org="Organization/psi-b")),
    )
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=JSON)
    refused(r)
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.period"]
    assert count(client, f"patient=Patient/{pid}") == 0
    bundle = transaction(
        ("POST", "Patient", patient(SSINS[1])),
        ("POST", "EpisodeOfCare", inclusion("2024-01-01", ssin=SSINS[1])),
        ("POST", "EpisodeOfCare", inclusion("2024-06-01", ssin=SSINS[1], kind="information")),
    )
    assert client.post("/fhir", content=orjson.dumps(bundle), headers=JSON).status_code == 200
    created(client, inclusion("2024-01-01", patient_id=pid))
    patch = base64.b64encode(orjson.dumps([{"op": "remove", "path": "/period/end"}])).decode()
    ended = created(client, inclusion("2022-01-01", "2022-12-31", patient_id=pid, org="Organization/psi-b"))
    bundle = transaction(("PATCH", f"EpisodeOfCare/{ended}", {"resourceType": "Binary", "data": patch}))
    refused(client.post("/fhir", content=orjson.dumps(bundle), headers=JSON))


def test_a_bundle_asks_about_all_its_patients_at_once_and_still_finds_each(client):
    """A Bundle's inclusions are checked against the stored ones with a few ORed queries: one stored
    principal inclusion among several patients (found by SSIN through a literal reference, or by literal
    reference through an SSIN) still refuses just the entry it overlaps; without it the Bundle passes."""
    ids = [created(client, patient(s)) for s in SSINS]
    created(client, inclusion("2024-01-01", ssin=SSINS[2]))
    created(client, inclusion("2024-01-01", patient_id=ids[3]))
    others = [
        ("POST", "EpisodeOfCare", inclusion("2024-03-01", patient_id=ids[0])),
        ("POST", "EpisodeOfCare", inclusion("2024-03-01", ssin=SSINS[1])),
    ]
    for overlapping in (inclusion("2024-05-01", patient_id=ids[2]), inclusion("2024-05-01", ssin=SSINS[3])):
        r = client.post(
            "/fhir", content=orjson.dumps(transaction(*others, ("POST", "EpisodeOfCare", overlapping))), headers=JSON
        )
        refused(r)
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[2].resource.period"]
    assert client.post("/fhir", content=orjson.dumps(transaction(*others)), headers=JSON).status_code == 200
    assert [count(client, f"patient=Patient/{i}") for i in ids] == [1, 0, 0, 1]
    assert [count(client, f"patient:identifier={SSIN}|{s}") for s in SSINS] == [0, 1, 1, 0]


def test_load_into_the_database_is_checked(database_url):
    target = DatabaseTarget(database_url)
    try:
        bundle = transaction(
            ("POST", "EpisodeOfCare", inclusion("2024-01-01", ssin=SSINS[2])),
            ("POST", "EpisodeOfCare", inclusion("2024-02-01", ssin=SSINS[2], org="Organization/psi-b")),
        )
        answer = target.post(orjson.dumps(bundle))
        assert answer.status == 409, answer.body
    finally:
        target.close()


def test_twenty_concurrent_writers_leave_one_principal_inclusion(database_url, tmp_path: Path):
    """For each of four patients, 20 clients at once, over real HTTP to two worker processes, declare an
    overlapping principal inclusion, by literal reference or by SSIN, in a create or in a transaction:
    one wins, 19 get a 409."""
    with serve_node(database_url, tmp_path, workers=2) as base:
        with httpx.Client() as http:
            ids = [
                http.post(f"{base}/Patient", content=orjson.dumps(patient(s)), headers=JSON).json()["id"] for s in SSINS
            ]

        def declare(n: int) -> tuple[int, int]:
            who = n % len(SSINS)
            ref = {"patient_id": ids[who]} if n % 2 else {"ssin": SSINS[who]}
            body = inclusion(f"2024-{n % 12 + 1:02d}-01", **ref)
            with httpx.Client(timeout=60) as http:
                if n % 3 == 0:
                    bundle = orjson.dumps(transaction(("POST", "EpisodeOfCare", body)))
                    return who, http.post(base, content=bundle, headers=JSON).status_code
                return who, http.post(f"{base}/EpisodeOfCare", content=orjson.dumps(body), headers=JSON).status_code

        with ThreadPoolExecutor(20 * len(SSINS)) as pool:
            answers = list(pool.map(declare, range(20 * len(SSINS))))
        for who, (pid, ssin) in enumerate(zip(ids, SSINS, strict=True)):
            statuses = [status for w, status in answers if w == who]
            assert statuses.count(409) == 19 and len([s for s in statuses if s in (200, 201)]) == 1, statuses
            stored = [
                httpx.get(f"{base}/EpisodeOfCare?{q}&_total=accurate").json()["total"]
                for q in (f"patient=Patient/{pid}", f"patient:identifier={SSIN}|{ssin}")
            ]
            assert sum(stored) == 1


def test_a_deadlock_between_writers_is_a_409(database_url, settings):
    """Two writers taking per-patient locks in opposite orders (a Bundle of several inclusions, say):
    PostgreSQL breaks the cycle by failing one, which answers 409 and writes nothing; the other goes on."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite writers never wait on each other's locks: one writes at a time")
    node = Node(settings, Database(database_url))
    both = threading.Barrier(2)

    def writer(first: str, second: str) -> str:
        try:
            with write.transaction(node) as conn:
                lock(conn, first)
                both.wait()
                lock(conn, second)
        except FHIRError as exc:
            return f"{exc.status} {exc.issues[0].code}"
        return "written"

    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(writer, ("patient:a", "patient:b"), ("patient:b", "patient:a")))
    node.db.dispose()
    assert results == ["409 conflict", "written"]
