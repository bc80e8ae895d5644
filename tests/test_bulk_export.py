"""Bulk Data export end to end, through the real app with real JWTs, on SQLite and PostgreSQL: kick-off,
status polling, manifest, NDJSON files, `_type`, `_since`, Patient and Group level, cancellation, who may
export (and poll, and download), consent filtering for the aggregator, resuming after a worker is gone
(the job's state is in the database), several workers on one job, and retention.
The world (tests/access_data.py): P1 and P3 permit research use, P2 refuses; Group G lists P1 and P2."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from access_data import P1, P2, P3, World, consent, headers, load, secured, serving_jwt
from starlette.testclient import TestClient

from fhir_node.node import Node
from fhir_node.operations import export_runner
from fhir_node.settings import Settings
from fhir_node.store.repository import now
from fhir_node.store.schema import export_files, export_jobs

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
Secured = tuple[TestClient, World]


def with_group(client: TestClient) -> World:
    """The access world plus a Group of P1 (consented) and P2 (refused), and a former member P3."""
    world = load(client)
    members = [{"entity": {"reference": world.ref("P1")}}, {"entity": {"reference": world.ref("P2")}}]
    members.append({"entity": {"reference": world.ref("P3")}, "inactive": True})
    r = client.post("/fhir/Group", json={"resourceType": "Group", "type": "person", "actual": True, "member": members})
    assert r.status_code == 201, r.text
    world.ids["G"], world.types["G"] = r.json()["id"], "Group"
    return world


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """The world with its Group, for tests that only export (and cancel their own jobs)."""
    if request.param == "sqlite":
        with secured(f"sqlite:///{tmp_path_factory.mktemp('export') / 'node.db'}", loader=with_group) as env:
            yield env
        return
    server = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url, secured(url, loader=with_group) as env:
        yield env


@pytest.fixture
def fresh(database_url: str) -> Iterator[Secured]:
    """A world of its own; the node writes one resource per export step."""
    with secured(database_url, loader=with_group, export_chunk=1) as env:
        yield env


@pytest.fixture
def idle(database_url: str) -> Iterator[Secured]:
    """A world of its own, served by a worker that runs no export jobs (FHIR_NODE_EXPORT_RUNNER=false):
    the tests play the other workers."""
    with secured(database_url, loader=with_group, export_chunk=1, export_runner=False) as env:
        yield env


def kick_off(client: TestClient, caller: str, path: str = "$export", **extra: str) -> str:
    r = client.get(f"/fhir/{path}", headers={**headers(caller), **ASYNC, **extra})
    assert r.status_code == 202, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    return r.headers["Content-Location"]


def finish(client: TestClient, caller: str, status_url: str, timeout: float = 60) -> dict[str, Any]:
    """Poll until complete (202s carry X-Progress and Retry-After); the manifest."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(status_url, headers=headers(caller))
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json") and "Expires" in r.headers
            return r.json()
        assert r.status_code == 202, r.text
        assert re.fullmatch(r"\d{1,2}% \((accepted|in-progress)\)", r.headers["X-Progress"]), r.headers["X-Progress"]
        assert int(r.headers["Retry-After"]) > 0
        assert time.monotonic() < deadline, "export did not complete"
        time.sleep(0.05)


def contents(client: TestClient, caller: str, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Resources per type from every output file (each listed file downloaded; counts checked)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        r = client.get(item["url"], headers=headers(caller))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [orjson.loads(line) for line in r.content.splitlines() if line]
        assert len(lines) == item["count"] and all(x["resourceType"] == item["type"] for x in lines)
        out.setdefault(item["type"], []).extend(lines)
    return out


def names(world: World, found: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    by_id = {v: k for k, v in world.ids.items()}
    return {t: {by_id.get(x["id"], x["id"]) for x in xs} for t, xs in found.items()}


def test_the_aggregator_exports_only_consented_patients_and_their_data(exported: Secured) -> None:
    client, w = exported
    manifest = finish(client, "aggregator", kick_off(client, "aggregator"))
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith("/$export") and manifest["transactionTime"]
    found = contents(client, "aggregator", manifest)
    got = names(w, found)
    assert got == {
        "EpisodeOfCare": {"A1", "B1", "A3", "B3"},
        "Consent": {"C1", "C3"},
        "Patient": {"P1", "P3"},
        "Organization": {"orgA", "orgB", "orgPh"},
        "Practitioner": {"drX", "drY"},
    }
    # no SSIN in clear: the aggregator's own pseudonyms, the ones its reads give it
    exported_p1 = next(p for p in found["Patient"] if p["id"] == w.ids["P1"])["identifier"]
    assert exported_p1 == client.get(f"/fhir/{w.ref('P1')}", headers=headers("aggregator")).json()["identifier"]
    assert P1 not in str(found) and P3 not in str(found)


def test_the_operator_exports_a_patient_compartment_by_type(exported: Secured) -> None:
    client, w = exported
    url = kick_off(
        client, "operator", "Patient/$export?_type=Patient,EpisodeOfCare&_outputFormat=application/fhir%2Bndjson"
    )
    found = contents(client, "operator", finish(client, "operator", url))
    assert names(w, found) == {"Patient": {"P1", "P2", "P3"}, "EpisodeOfCare": {"A1", "B1", "B2", "A3", "B3"}}
    assert {p["identifier"][0]["value"] for p in found["Patient"]} == {P1, P2, P3}  # the operator's: clear


def test_a_group_export_covers_its_current_members_the_caller_may_see(exported: Secured) -> None:
    client, w = exported
    path = f"Group/{w.ids['G']}/$export"
    got = names(w, contents(client, "aggregator", finish(client, "aggregator", kick_off(client, "aggregator", path))))
    assert got == {"EpisodeOfCare": {"A1", "B1"}, "Consent": {"C1"}, "Patient": {"P1"}}
    got = names(w, contents(client, "operator", finish(client, "operator", kick_off(client, "operator", path))))
    assert got["Patient"] == {"P1", "P2"} and got["EpisodeOfCare"] == {"A1", "B1", "B2"}


def test_since_exports_only_what_changed_after_it(exported: Secured) -> None:
    client, _ = exported
    later = (now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = finish(client, "operator", kick_off(client, "operator", f"$export?_since={later}"))
    assert manifest["output"] == []


@pytest.mark.parametrize(
    ("caller", "path", "extra", "status"),
    [
        ("psi-coordinator", "$export", ASYNC, 403),
        ("psi-admin", "$export", ASYNC, 403),
        ("provider", "Patient/$export", ASYNC, 403),
        ("patient", "$export", ASYNC, 403),
        ("aggregator", "$export", {}, 400),  # no Prefer: respond-async
        ("aggregator", "$export?_type=AuditEvent", ASYNC, 403),
        ("aggregator", "$export?_type=Nope", ASYNC, 400),
        ("aggregator", "Patient/$export?_type=Organization", ASYNC, 400),
        ("aggregator", "$export?_typeFilter=Patient%3Factive%3Dtrue", ASYNC, 400),
        ("aggregator", "$export?_outputFormat=text/csv", ASYNC, 400),
        ("aggregator", "$export?_since=yesterday", ASYNC, 400),
        ("aggregator", "Group/no-such-group/$export", ASYNC, 404),
    ],
)
def test_refused_kick_offs_say_why_and_start_nothing(
    exported: Secured, caller: str, path: str, extra: dict[str, str], status: int
) -> None:
    client, _ = exported
    r = client.get(f"/fhir/{path}", headers={**headers(caller), **extra})
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and "Content-Location" not in r.headers


def test_only_the_owner_polls_downloads_or_cancels_and_a_cancelled_job_is_gone(exported: Secured) -> None:
    client, _ = exported
    url = kick_off(client, "aggregator")
    manifest = finish(client, "aggregator", url)
    assert client.get(url, headers=headers("operator")).status_code == 404
    assert client.get(manifest["output"][0]["url"], headers=headers("operator")).status_code == 404
    assert client.delete(url, headers=headers("operator")).status_code == 404
    assert client.get(manifest["output"][0]["url"]).status_code == 401  # requiresAccessToken
    r = client.delete(url, headers=headers("aggregator"))
    assert r.status_code == 202
    assert client.get(url, headers=headers("aggregator")).status_code == 404
    assert client.get(manifest["output"][0]["url"], headers=headers("aggregator")).status_code == 404


def test_kick_off_poll_and_download_are_audited(exported: Secured) -> None:
    client, _ = exported
    url = kick_off(client, "aggregator", "$export?_type=Patient")
    manifest = finish(client, "aggregator", url)
    client.get(manifest["output"][0]["url"], headers=headers("aggregator"))
    found = client.get("/fhir/AuditEvent?_count=100&_sort=-_lastUpdated", headers=headers("operator")).json()
    done = set()
    for e in (x["resource"] for x in found["entry"]):
        queries = [base64.b64decode(ent["query"]).decode() for ent in e["entity"] if "query" in ent]
        who = e["agent"][0]["who"].get("identifier", {}).get("value")
        if e["subtype"][0]["code"] == "operation" and queries and who == "bihr-central-index":
            done.add((queries[0].split("/fhir/")[1].split("/")[0].split("?")[0], e["outcomeDesc"]))
    assert {("$export", "HTTP 202"), ("$export-status", "HTTP 200"), ("$export-file", "HTTP 200")} <= done


def test_a_consent_change_counts_for_the_next_export(fresh: Secured) -> None:
    client, w = fresh
    op = headers("operator")
    withdrawn = {**consent(w.ref("P3")), "id": w.ids["C3"], "status": "inactive"}
    assert client.put(f"/fhir/{w.ref('C3')}", json=withdrawn, headers=op).status_code == 200
    url = kick_off(client, "aggregator", "$export?_type=Patient,EpisodeOfCare")
    got = names(w, contents(client, "aggregator", finish(client, "aggregator", url)))
    assert got == {"Patient": {"P1"}, "EpisodeOfCare": {"A1", "B1"}}


def test_a_job_resumes_after_its_worker_is_gone_with_nothing_twice(idle: Secured, database_url: str) -> None:
    client, w = idle
    url = kick_off(client, "operator", "$export?_type=Patient,EpisodeOfCare")
    job_id = url.rsplit("/", 1)[1]
    worker = Node.from_settings(_settings(database_url))
    try:  # a worker claims the job, writes two steps and dies (its lease still held)
        assert export_runner.claim(worker) == job_id
        assert export_runner.claim(worker) is None  # leased: nobody else takes it
        assert not export_runner.step(worker, job_id) and not export_runner.step(worker, job_id)
        with worker.db.write() as conn:  # ... until its lease runs out
            conn.execute(export_jobs.update().where(export_jobs.c.id == job_id).values(lease_until=now()))
    finally:
        worker.db.dispose()
    r = client.get(url, headers=headers("operator"))
    assert r.status_code == 202 and r.headers["X-Progress"].startswith("25%"), r.headers["X-Progress"]
    with serving_jwt(database_url, export_chunk=1) as restarted:  # a worker after the restart takes it over
        got = contents(restarted, "operator", finish(restarted, "operator", url))
    ids = [x["id"] for xs in got.values() for x in xs]
    assert len(ids) == len(set(ids)) == 8
    assert names(w, got) == {"Patient": {"P1", "P2", "P3"}, "EpisodeOfCare": {"A1", "B1", "B2", "A3", "B3"}}


def test_two_workers_stepping_one_job_write_each_resource_once(idle: Secured, database_url: str) -> None:
    client, _ = idle
    url = kick_off(client, "operator", "$export?_type=EpisodeOfCare")
    job_id = url.rsplit("/", 1)[1]
    workers = [Node.from_settings(_settings(database_url)) for _ in range(2)]
    try:
        assert export_runner.claim(workers[0]) == job_id
        finished = False
        while not finished:  # both read the same cursor, both try to write: one segment per step lands
            finished = any([export_runner.step(n, job_id) for n in workers])
    finally:
        for n in workers:
            n.db.dispose()
    ids = [x["id"] for xs in contents(client, "operator", finish(client, "operator", url)).values() for x in xs]
    assert len(ids) == len(set(ids)) == 5


def _settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, export_chunk=1, auto_migrate=False, enforce_profiles=False)


def test_files_are_removed_after_the_retention_period(fresh: Secured, database_url: str) -> None:
    client, _ = fresh
    url = kick_off(client, "operator", "$export?_type=Patient")
    manifest = finish(client, "operator", url)
    node = client.app.state.node
    job_id = url.rsplit("/", 1)[1]
    with node.db.write() as conn:
        old = now() - timedelta(hours=node.settings.export_retention_hours, minutes=1)
        conn.execute(export_jobs.update().where(export_jobs.c.id == job_id).values(finished=old))
    assert client.get(url, headers=headers("operator")).status_code == 404  # expired: gone for the owner
    assert export_runner.purge(node) == 1
    with node.db.read() as conn:
        assert conn.execute(export_files.select().where(export_files.c.job_id == job_id)).first() is None
    assert client.get(manifest["output"][0]["url"], headers=headers("operator")).status_code == 404
