"""Our published guide (profiles/, terminology/) served read-only: exactly our files, searchable by their
official R4 parameters, refused to every write, and stored once however often the node starts.

Expectations come from the files themselves, read here as plain JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fhirclient.models.capabilitystatement import CapabilityStatement
from live_node import BASE_HOST
from search_data import GUIDE_TYPES
from sqlalchemy import func, select
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.cli import main
from fhir_node.conformance import published
from fhir_node.settings import Settings
from fhir_node.store.database import Database
from fhir_node.store.schema import resource_versions

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    (r["resourceType"], r["id"]): r
    for r in (
        json.loads(p.read_text()) for p in sorted([*ROOT.glob("profiles/*.json"), *ROOT.glob("terminology/*.json")])
    )
}
TYPES = GUIDE_TYPES
JSON_HEADERS = {"Content-Type": "application/fhir+json"}
OPERATIONS = {
    "ValueSet": {
        "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        "expand": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
        "validate-code": "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
    },
    "CodeSystem": {
        "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        "lookup": "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup",
    },
}


def of_type(res_type: str, keep: Callable[[dict[str, Any]], bool] = lambda r: True) -> set[str]:
    """Ids of the files of one type that `keep` selects."""
    return {i for (t, i), r in FILES.items() if t == res_type and keep(r)}


def search_ids(client: TestClient, res_type: str, params: dict[str, str]) -> set[str]:
    r = client.get(f"/fhir/{res_type}", params={**params, "_count": "1000"})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert "next" not in {link["relation"] for link in bundle["link"]}
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    body = {k: v for k, v in resource.items() if k != "meta"}
    return {**body, "meta": meta} if meta else body


def stored_versions(database_url: str) -> int:
    db = Database(database_url)
    with db.read() as conn:
        count = conn.execute(
            select(func.count()).select_from(resource_versions).where(resource_versions.c.res_type.in_(TYPES))
        ).scalar_one()
    db.dispose()
    return count


def test_every_file_is_served_as_it_is(client):
    assert {t for t, _ in FILES} == set(TYPES)
    for (res_type, res_id), resource in FILES.items():
        r = client.get(f"/fhir/{res_type}/{res_id}")
        assert r.status_code == 200, r.text
        assert r.json()["meta"]["versionId"] == "1"
        assert without_server_meta(r.json()) == resource
        assert client.get(f"/fhir/{res_type}/{res_id}/_history/1").json() == r.json()


@pytest.mark.parametrize("res_type", TYPES)
def test_a_search_without_criteria_finds_exactly_the_files(client, res_type):
    assert search_ids(client, res_type, {}) == of_type(res_type)


@pytest.mark.parametrize("res_type", TYPES)
def test_each_file_is_found_by_its_url_or_identifier_and_by_its_name(client, res_type):
    for res_id in of_type(res_type):
        resource = FILES[res_type, res_id]
        if res_type == "NamingSystem":  # it has no url: its unique ids name it
            for unique in resource["uniqueId"]:
                assert search_ids(client, res_type, {"value:exact": unique["value"]}) == {res_id}
        else:
            assert search_ids(client, res_type, {"url": resource["url"]}) == {res_id}
        # string search: case- and accent-insensitive "starts with"
        prefix = resource["name"].lower()
        assert search_ids(client, res_type, {"name": prefix}) == of_type(
            res_type, lambda r, p=prefix: r["name"].lower().startswith(p)
        )


PARAMETERS: list[tuple[str, dict[str, str], Callable[[dict[str, Any]], bool]]] = [
    ("StructureDefinition", {"type": "AuditEvent"}, lambda r: r["type"] == "AuditEvent"),
    (
        "StructureDefinition",
        {"base": "http://hl7.org/fhir/StructureDefinition/AuditEvent"},
        lambda r: r["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/AuditEvent",
    ),
    ("StructureDefinition", {"kind": "resource", "derivation": "constraint"}, lambda r: r["kind"] == "resource"),
    ("StructureDefinition", {"status": "active"}, lambda r: r["status"] == "active"),
    (
        "StructureDefinition",
        {"path": "EpisodeOfCare.extension"},
        lambda r: any(e["path"] == "EpisodeOfCare.extension" for e in r["snapshot"]["element"]),
    ),
    (
        "StructureDefinition",  # a versioned canonical is found with and without its version
        {"valueset": "http://hl7.org/fhir/ValueSet/audit-event-action|4.0.1"},
        lambda r: any(
            e.get("binding", {}).get("valueSet") == "http://hl7.org/fhir/ValueSet/audit-event-action|4.0.1"
            for e in r["snapshot"]["element"]
        ),
    ),
    (
        "StructureDefinition",
        {"valueset": "http://hl7.org/fhir/ValueSet/audit-event-action"},
        lambda r: any(
            e.get("binding", {}).get("valueSet", "").split("|")[0] == "http://hl7.org/fhir/ValueSet/audit-event-action"
            for e in r["snapshot"]["element"]
        ),
    ),
    (
        "ValueSet",
        {"reference": "https://fhir-node.be/fhir/CodeSystem/inclusion-status"},
        lambda r: any(
            i.get("system") == "https://fhir-node.be/fhir/CodeSystem/inclusion-status" for i in r["compose"]["include"]
        ),
    ),
    (
        "ValueSet",
        {"code": "HRESCH"},
        lambda r: any(c["code"] == "HRESCH" for i in r["compose"]["include"] for c in i.get("concept", ())),
    ),
    ("CodeSystem", {"code": "principal"}, lambda r: any(c["code"] == "principal" for c in r["concept"])),
    (
        "CodeSystem",
        {"system": "https://fhir-node.be/fhir/CodeSystem/consent-purpose"},
        lambda r: r["id"] == "consent-purpose",
    ),
    ("SearchParameter", {"base": "Consent"}, lambda r: "Consent" in r["base"]),
    ("SearchParameter", {"code": "recorder", "type": "reference"}, lambda r: r["code"] == "recorder"),
    ("NamingSystem", {"kind": "identifier"}, lambda r: r["kind"] == "identifier"),
    ("NamingSystem", {"id-type": "oid"}, lambda r: any(u["type"] == "oid" for u in r["uniqueId"])),
    ("ImplementationGuide", {"resource": "StructureDefinition/bihr-patient"}, lambda r: True),
    ("ImplementationGuide", {"resource": "StructureDefinition/no-such-profile"}, lambda r: False),
    (
        "ImplementationGuide",
        {"depends-on": "https://www.ehealth.fgov.be/standards/fhir/core/ImplementationGuide/hl7.fhir.be.core"},
        lambda r: True,
    ),
]


@pytest.mark.parametrize(
    ("res_type", "params", "keep"), PARAMETERS, ids=[f"{t}?{urlencode(p)}" for t, p, _ in PARAMETERS]
)
def test_official_search_parameters_select_what_the_files_hold(client, res_type, params, keep):
    assert search_ids(client, res_type, params) == of_type(res_type, keep)


@pytest.mark.parametrize("res_type", TYPES)
def test_every_write_is_refused_with_405_and_the_methods_allowed(client, res_type):
    res_id = next(iter(of_type(res_type)))
    body = FILES[res_type, res_id]
    instance, level = f"/fhir/{res_type}/{res_id}", f"/fhir/{res_type}"
    patch = {"Content-Type": "application/json-patch+json"}
    attempts = [
        (client.post(level, json={k: v for k, v in body.items() if k != "id"}, headers=JSON_HEADERS), "GET, HEAD"),
        (client.put(instance, json=body, headers=JSON_HEADERS), "GET, HEAD"),
        (client.put(level, params={"_id": res_id}, json=body, headers=JSON_HEADERS), "GET, HEAD"),
        (client.patch(instance, json=[{"op": "add", "path": "/language", "value": "nl"}], headers=patch), "GET, HEAD"),
        (client.delete(instance), "GET, HEAD"),
        (client.delete(level, params={"_id": res_id}), "GET, HEAD"),
        (client.get(f"{instance}/_history"), "GET, HEAD"),
        (client.get(f"{level}/_history"), "GET, HEAD"),
    ]
    for r, allow in attempts:
        assert r.status_code == 405, r.text
        assert r.headers["allow"] == allow
        assert r.json()["resourceType"] == "OperationOutcome"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": body, "request": {"method": "PUT", "url": f"{res_type}/{res_id}"}}],
    }
    assert client.post("/fhir", json=transaction, headers=JSON_HEADERS).status_code == 405
    r = client.get(instance)
    assert r.json()["meta"]["versionId"] == "1"
    assert without_server_meta(r.json()) == body


def test_a_restart_on_the_same_database_writes_no_new_version(client, settings):
    before = {key: client.get(f"/fhir/{key[0]}/{key[1]}").json()["meta"] for key in FILES}
    with TestClient(create_app(settings), base_url=BASE_HOST, client=("127.0.0.1", 50000)) as again:
        after = {key: again.get(f"/fhir/{key[0]}/{key[1]}").json()["meta"] for key in FILES}
    assert after == before
    assert stored_versions(settings.database_url) == len(FILES)
    assert main(["migrate", "--database-url", settings.database_url]) == 0
    assert stored_versions(settings.database_url) == len(FILES)


def test_fhir_node_migrate_stores_the_guide(database_url):
    assert main(["migrate", "--database-url", database_url]) == 0
    assert stored_versions(database_url) == len(FILES)
    node = Settings(database_url=database_url, auto_migrate=False)
    with TestClient(create_app(node), base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        assert search_ids(client, "CodeSystem", {}) == of_type("CodeSystem")


def test_nodes_starting_together_store_each_file_once(database_url):
    """Workers behind one database: whoever synchronises first writes, the others find nothing to do."""
    db = Database(database_url)
    db.migrate()
    db.dispose()

    def start(_: int) -> published.Synchronised:
        node = Database(database_url)
        try:
            return published.synchronise(node)
        finally:
            node.dispose()

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(start, range(4)))
    assert sorted(len(run.written) for run in runs) == [0, 0, 0, len(FILES)]
    assert stored_versions(database_url) == len(FILES)


def test_a_changed_file_is_a_new_version_and_a_removed_one_a_deletion(client, settings, monkeypatch):
    changed, removed = ("ValueSet", "inclusion-status"), ("NamingSystem", "cbe")
    edited = {**FILES[changed], "status": "active"}
    monkeypatch.setattr(
        published, "published", lambda: {k: (edited if k == changed else r) for k, r in FILES.items() if k != removed}
    )
    db = Database(settings.database_url)
    done = published.synchronise(db)
    assert (done.written, done.deleted) == (["ValueSet/inclusion-status"], ["NamingSystem/cbe"])
    assert published.synchronise(db) == published.Synchronised()  # nothing left to do
    r = client.get("/fhir/ValueSet/inclusion-status")
    assert r.json()["meta"]["versionId"] == "2" and r.json()["status"] == "active"
    assert search_ids(client, "ValueSet", {"status": "active"}) == {"inclusion-status"}
    assert client.get("/fhir/NamingSystem/cbe").status_code == 410
    assert search_ids(client, "NamingSystem", {}) == of_type("NamingSystem") - {"cbe"}

    monkeypatch.undo()  # the files as they are: both come back
    done = published.synchronise(db)
    db.dispose()
    assert (sorted(done.written), done.deleted) == (["NamingSystem/cbe", "ValueSet/inclusion-status"], [])
    assert client.get("/fhir/ValueSet/inclusion-status").json()["meta"]["versionId"] == "3"
    assert without_server_meta(client.get("/fhir/NamingSystem/cbe").json()) == FILES["NamingSystem", "cbe"]


def test_the_capability_statement_lists_the_guide_read_only_with_its_operations(client):
    statement = client.get("/fhir/metadata").json()
    CapabilityStatement(statement, strict=True)
    listed = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for res_type in TYPES:
        entry = listed[res_type]
        assert [i["code"] for i in entry["interaction"]] == ["read", "vread", "search-type"]
        assert entry["conditionalDelete"] == "not-supported" and entry["updateCreate"] is False
        expected = {"name", "status", "date", *(["url"] if res_type != "NamingSystem" else [])}
        assert expected <= {p["name"] for p in entry["searchParam"]}
        operations = {o["name"]: o["definition"] for o in entry["operation"]}
        assert operations == OPERATIONS.get(res_type, {"validate": OPERATIONS["ValueSet"]["validate"]})
