"""Operating the node: /health, X-Request-Id, the JSON access log, and a CapabilityStatement that a strict
client library accepts and that claims exactly what the node does."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirclient.models.capabilitystatement import CapabilityStatement
from live_node import BASE_HOST, free_port
from r4_resources import create, episode
from starlette.testclient import TestClient

from fhir_node import logs
from fhir_node.app import create_app
from fhir_node.settings import Settings

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}
BASE = f"{BASE_HOST}/fhir"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
SERVED_TYPES = {
    "EpisodeOfCare",
    "Consent",
    "AuditEvent",
    "Patient",
    "Organization",
    "Practitioner",
    "CareTeam",
    "Group",
}
#: Our published guide, served read-only (tests/test_conformance_resources.py exercises them).
GUIDE_TYPES = {
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "NamingSystem",
    "ImplementationGuide",
    "OperationDefinition",
}
#: R4 TypeRestfulInteraction codes.
TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)


RESOURCES: dict[str, Callable[[], dict[str, Any]]] = {
    "EpisodeOfCare": episode,
    "Consent": lambda: {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
    },
    "AuditEvent": lambda: {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-01-01T10:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "node operator"}}],
        "source": {"observer": {"display": "fhir-node"}},
    },
    "Patient": lambda: {"resourceType": "Patient", "active": True},
    "Organization": lambda: {"resourceType": "Organization", "name": "PSI Brussels"},
    "Practitioner": lambda: {"resourceType": "Practitioner", "active": True},
    "CareTeam": lambda: {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "participant": [{"member": {"reference": "Practitioner/pr1"}}],
    },
    "Group": lambda: {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}}],
    },
}


def loopback_client(settings: Settings, **kwargs: Any) -> TestClient:
    return TestClient(create_app(settings), base_url=BASE_HOST, client=("127.0.0.1", 50000), **kwargs)


# --- /health -----------------------------------------------------------------------------------------


def test_health_is_200_with_the_database_up(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "up"}


def down_databases(tmp_path: Path) -> dict[str, str]:
    """Database URLs that cannot be reached: PostgreSQL on a port nobody listens on, and a SQLite
    'file' that is a directory (root ignores file modes, so unreadable files are no test)."""
    return {
        "postgresql": f"postgresql://fhir:fhir@127.0.0.1:{free_port()}/fhir?connect_timeout=3",
        "sqlite": f"sqlite:///{tmp_path}",
    }


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_health_is_503_when_the_database_is_unreachable(tmp_path, backend):
    settings = Settings(database_url=down_databases(tmp_path)[backend], auto_migrate=False)
    with loopback_client(settings) as client:
        r = client.get("/health")
    assert r.status_code == 503
    assert r.json()["database"] == "down"
    assert SANE_REQUEST_ID.fullmatch(r.headers["x-request-id"])


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_fhir_request_with_the_database_down_is_503_outcome_with_request_id(tmp_path, backend):
    """A database outage is the server being unavailable (503), not a bug (500); the answer is still an
    OperationOutcome and still carries the X-Request-Id that the operator can find in the logs."""
    settings = Settings(database_url=down_databases(tmp_path)[backend], auto_migrate=False)
    with loopback_client(settings, raise_server_exceptions=False) as client:
        r = client.get("/fhir/EpisodeOfCare/any", headers={"X-Request-Id": "outage-1"})
    assert r.headers.get("x-request-id") == "outage-1"
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.status_code == 503


# --- X-Request-Id ------------------------------------------------------------------------------------


def test_every_response_carries_a_request_id(client):
    rid = create(client, episode())
    etag = client.get(f"/fhir/EpisodeOfCare/{rid}").headers["etag"]
    outsider = TestClient(client.app, base_url=BASE_HOST, client=("10.1.2.3", 5000))
    responses = {
        "metadata": client.get("/fhir/metadata"),
        "health": client.get("/health"),
        "create": client.post("/fhir/EpisodeOfCare", json=episode(), headers=JSON_HEADERS),
        "minimal": client.post(
            "/fhir/EpisodeOfCare", json=episode(), headers={**JSON_HEADERS, "Prefer": "return=minimal"}
        ),
        "not modified": client.get(f"/fhir/EpisodeOfCare/{rid}", headers={"If-None-Match": etag}),
        "history": client.get("/fhir/_history"),
        "bad request": client.post("/fhir/EpisodeOfCare", content=b"{", headers=JSON_HEADERS),
        "not found": client.get("/fhir/EpisodeOfCare/nope"),
        "no route": client.get("/nowhere"),
        "wrong method": client.post(f"/fhir/EpisodeOfCare/{rid}", json=episode(), headers=JSON_HEADERS),
        "not acceptable": client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}),
        "forbidden": outsider.get("/fhir/metadata"),
        "deleted": client.delete(f"/fhir/EpisodeOfCare/{rid}"),
        "gone": client.get(f"/fhir/EpisodeOfCare/{rid}"),
    }
    ids = []
    for name, r in responses.items():
        assert "x-request-id" in r.headers, name
        assert SANE_REQUEST_ID.fullmatch(r.headers["x-request-id"]), name
        ids.append(r.headers["x-request-id"])
    assert len(set(ids)) == len(ids), "request ids repeat"


@pytest.mark.parametrize("given", ["abc-123", "req.42_x", "A" * 64, "0"])
def test_sane_incoming_request_id_is_echoed(client, given):
    assert client.get("/fhir/metadata", headers={"X-Request-Id": given}).headers["x-request-id"] == given
    assert client.get("/fhir/Nope/1", headers={"X-Request-Id": given}).headers["x-request-id"] == given


@pytest.mark.parametrize("given", ["has space", "A" * 65, "<script>", "a/b", "x;y=z", ""])
def test_insane_incoming_request_id_is_replaced(client, given):
    got = client.get("/fhir/metadata", headers={"X-Request-Id": given}).headers["x-request-id"]
    assert got != given
    assert SANE_REQUEST_ID.fullmatch(got)


# --- access log --------------------------------------------------------------------------------------


def test_access_log_has_one_json_line_per_request(client, access_log):
    rid = create(client, episode())
    access_log()
    sent = [
        ("GET", f"/fhir/EpisodeOfCare/{rid}", 200),
        ("GET", "/fhir/EpisodeOfCare/nope", 404),
        ("POST", "/fhir/EpisodeOfCare", 201),
        ("POST", f"/fhir/EpisodeOfCare/{rid}", 405),
        ("GET", "/health", 200),
    ]
    answers = []
    for method, path, status in sent:
        body = episode() if method == "POST" else None  # a POST to an instance is refused before the body
        r = client.request(method, path, json=body, headers=JSON_HEADERS)
        assert r.status_code == status
        answers.append(r)
    lines = access_log()
    assert len(lines) == len(sent)
    for logged, (method, path, status), r in zip(lines, sent, answers, strict=True):
        assert logged["method"] == method
        assert logged["path"] == path
        assert logged["status"] == status
        assert isinstance(logged["duration_ms"], int | float)
        assert logged["duration_ms"] >= 0
        assert logged["request_id"] == r.headers["x-request-id"]
        assert logged["level"] == "INFO"
        assert logged["message"] == "request"
        assert abs(datetime.fromisoformat(logged["ts"]) - datetime.now(UTC)) < timedelta(minutes=1)


def test_access_log_keeps_the_query_and_the_client_request_id(client, access_log):
    client.get("/fhir/_history", params={"_count": "5"}, headers={"X-Request-Id": "trace-77"})
    (logged,) = access_log()
    assert logged["path"] == "/fhir/_history?_count=5"
    assert logged["request_id"] == "trace-77"
    assert logged["status"] == 200


def test_access_log_records_refused_requests(client, access_log):
    outsider = TestClient(client.app, base_url=BASE_HOST, client=("10.1.2.3", 5000))
    r = outsider.get("/fhir/metadata")
    (logged,) = access_log()
    assert logged["status"] == 403
    assert logged["request_id"] == r.headers["x-request-id"]


def test_access_log_does_not_log_the_body(client, access_log):
    client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "active": True, "gender": "unknown"}, headers=JSON_HEADERS
    )
    (logged,) = access_log()
    assert "unknown" not in json.dumps(logged)


class _Writes(io.StringIO):
    """stderr that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_the_access_lines_of_requests_ending_close_together_go_out_in_one_write_shortly_after(access_log, monkeypatch):
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)

    async def requests_end() -> tuple[str, str, str]:
        logs.access({"request_id": "first", "status": 200})
        await asyncio.sleep(0)  # a turn of the loop ends; the line waits for the ones after it
        logs.access({"request_id": "second", "status": 404})
        during = stderr.getvalue()
        await asyncio.sleep(logs.FLUSH_SECONDS / 2)
        still = stderr.getvalue()
        await asyncio.sleep(logs.FLUSH_SECONDS)
        return during, still, stderr.getvalue()

    during, still, after = asyncio.run(requests_end())
    assert during == still == ""
    assert [json.loads(line)["request_id"] for line in after.splitlines()] == ["first", "second"]
    assert stderr.writes == 1
    logs.access({"request_id": "no loop", "status": 200})  # a command's line: at once
    assert json.loads(stderr.getvalue().splitlines()[-1])["request_id"] == "no loop"


def test_access_lines_a_loop_left_waiting_go_out_with_the_next_loops(access_log, monkeypatch):
    """A loop that ends before its lines' write (a test's client closed at once) leaves them to the next loop,
    whose write is due as for its own first line."""
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)

    async def one(request_id: str, wait: float) -> None:
        logs.access({"request_id": request_id, "status": 200})
        await asyncio.sleep(wait)

    asyncio.run(one("left", 0))  # its loop is gone before the write was due
    assert stderr.getvalue() == ""
    asyncio.run(one("next", logs.FLUSH_SECONDS * 2))
    assert [json.loads(line)["request_id"] for line in stderr.getvalue().splitlines()] == ["left", "next"]
    assert stderr.writes == 1


def test_a_closed_stderr_costs_the_request_nothing(client, access_log, monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    assert client.get("/fhir/EpisodeOfCare").status_code == 200


def test_access_log_is_off_below_its_level(client, caplog, access_log):
    caplog.set_level(logging.WARNING, logger="fhir_node.access")
    client.get("/fhir/EpisodeOfCare")
    assert access_log() == []


# --- CapabilityStatement -----------------------------------------------------------------------------


@pytest.fixture
def capability(client) -> dict[str, Any]:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    return r.json()


def by_type(capability: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {res["type"]: res for res in capability["rest"][0]["resource"]}


def codes(resource: dict[str, Any]) -> list[str]:
    return [i["code"] for i in resource.get("interaction", [])]


def test_capability_statement_parses_with_strict_fhirclient_models(capability):
    parsed = CapabilityStatement(capability, strict=True)
    assert parsed.kind == "instance"
    assert parsed.fhirVersion == "4.0.1"
    assert parsed.status == "active"
    assert parsed.rest[0].mode == "server"
    assert parsed.as_json()["rest"][0]["resource"]


def test_capability_statement_describes_this_instance(capability):
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["kind"] == "instance"
    assert capability["fhirVersion"] == "4.0.1"
    assert capability["implementation"]["url"] == BASE
    assert "application/fhir+json" in capability["format"] or "json" in capability["format"]
    assert len(capability["rest"]) == 1


def test_capability_statement_lists_exactly_the_served_types(capability):
    listed = [res["type"] for res in capability["rest"][0]["resource"]]
    assert sorted(listed) == sorted(SERVED_TYPES | GUIDE_TYPES)


def test_audit_event_lists_no_update_or_delete(capability):
    audit = by_type(capability)["AuditEvent"]
    assert not {"update", "delete", "patch"} & set(codes(audit))
    assert {"create", "read"} <= set(codes(audit))
    assert audit.get("updateCreate", False) is False


@pytest.mark.parametrize("res_type", sorted(SERVED_TYPES - {"AuditEvent"}))
def test_other_types_list_full_crud_and_update_create(capability, res_type):
    resource = by_type(capability)[res_type]
    assert {"read", "vread", "update", "delete", "create", "history-instance", "history-type"} <= set(codes(resource))
    assert resource["updateCreate"] is True


@pytest.mark.parametrize("res_type", sorted(SERVED_TYPES))
def test_every_type_declares_conditional_create_and_versioning(capability, res_type):
    resource = by_type(capability)[res_type]
    assert resource["conditionalCreate"] is True
    assert resource["versioning"] in ("versioned", "versioned-update")
    assert len(codes(resource)) == len(set(codes(resource)))


class Exerciser:
    """Performs one TypeRestfulInteraction on a type and returns the HTTP status."""

    def __init__(self, client: TestClient, res_type: str) -> None:
        self.client = client
        self.res_type = res_type
        self.path = f"/fhir/{res_type}"
        self.body = RESOURCES[res_type]
        self.rid = create(client, self.body())

    def run(self, interaction: str) -> int:
        c, path, rid = self.client, self.path, self.rid
        if interaction == "read":
            return c.get(f"{path}/{rid}").status_code
        if interaction == "vread":
            return c.get(f"{path}/{rid}/_history/1").status_code
        if interaction == "update":
            return c.put(f"{path}/{rid}", json={**self.body(), "id": rid}, headers=JSON_HEADERS).status_code
        if interaction == "patch":
            patch = [{"op": "add", "path": "/language", "value": "nl-BE"}]
            return c.patch(
                f"{path}/{rid}", json=patch, headers={"Content-Type": "application/json-patch+json"}
            ).status_code
        if interaction == "delete":
            return c.delete(f"{path}/{rid}").status_code
        if interaction == "history-instance":
            return c.get(f"{path}/{rid}/_history").status_code
        if interaction == "history-type":
            return c.get(f"{path}/_history").status_code
        if interaction == "create":
            return c.post(path, json=self.body(), headers=JSON_HEADERS).status_code
        if interaction == "search-type":
            r = c.get(path)
            assert r.status_code != 200 or r.json()["type"] == "searchset"
            return r.status_code
        raise AssertionError(f"no exerciser for {interaction}")


@pytest.mark.parametrize("res_type", sorted(SERVED_TYPES))
def test_every_listed_interaction_works_and_every_unlisted_one_is_refused(client, capability, res_type):
    listed = set(codes(by_type(capability)[res_type]))
    assert listed <= set(TYPE_INTERACTIONS)
    # delete last, so that it does not turn the other interactions into 410s
    for interaction in sorted(TYPE_INTERACTIONS, key=lambda i: i == "delete"):
        status = Exerciser(client, res_type).run(interaction)
        if interaction in listed:
            assert 200 <= status < 300, f"{res_type} lists {interaction} but it answered {status}"
        else:
            assert status == 405, f"{res_type} does not list {interaction} but it answered {status}"


def test_system_interactions_listed_work(client, capability):
    listed = {i["code"] for i in capability["rest"][0].get("interaction", [])}
    create(client, episode())
    checks = {
        "history-system": lambda: client.get("/fhir/_history"),
        "search-system": lambda: client.get("/fhir", params={"_type": "EpisodeOfCare"}),
    }
    assert listed <= set(checks) | {"transaction", "batch"}
    for code in listed & set(checks):
        r = checks[code]()
        assert r.status_code == 200, f"{code}: {r.text}"
        assert r.json()["resourceType"] == "Bundle"


@pytest.mark.parametrize("res_type", sorted(SERVED_TYPES))
def test_conditional_create_claim_holds(client, capability, res_type):
    assert by_type(capability)[res_type]["conditionalCreate"] is True
    rid = create(client, RESOURCES[res_type]())
    r = client.post(
        f"/fhir/{res_type}", json=RESOURCES[res_type](), headers={**JSON_HEADERS, "If-None-Exist": f"_id={rid}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == rid


@pytest.mark.parametrize("res_type", sorted(SERVED_TYPES - {"AuditEvent"}))
def test_versioned_update_and_update_create_claims_hold(client, capability, res_type):
    resource = by_type(capability)[res_type]
    assert resource["versioning"] == "versioned-update"
    rid = create(client, RESOURCES[res_type]())
    body = {**RESOURCES[res_type](), "id": rid, "language": "nl-BE"}  # a change: an identical PUT keeps version 1
    assert (
        client.put(f"/fhir/{res_type}/{rid}", json=body, headers={**JSON_HEADERS, "If-Match": 'W/"1"'}).status_code
        == 200
    )
    assert (
        client.put(f"/fhir/{res_type}/{rid}", json=body, headers={**JSON_HEADERS, "If-Match": 'W/"1"'}).status_code
        == 412
    )
    assert resource["updateCreate"] is True
    fresh = {**RESOURCES[res_type](), "id": f"{res_type.lower()}-chosen"}
    assert client.put(f"/fhir/{res_type}/{fresh['id']}", json=fresh, headers=JSON_HEADERS).status_code == 201


def test_conditional_read_claim_holds(client, capability):
    claimed = {res["type"]: res.get("conditionalRead", "not-supported") for res in capability["rest"][0]["resource"]}
    rid = create(client, episode())
    r = client.get(f"/fhir/EpisodeOfCare/{rid}")
    if claimed["EpisodeOfCare"] in ("full-support", "modified-since"):
        since = client.get(f"/fhir/EpisodeOfCare/{rid}", headers={"If-Modified-Since": r.headers["last-modified"]})
        assert since.status_code == 304
    if claimed["EpisodeOfCare"] in ("full-support", "not-match"):
        match = client.get(f"/fhir/EpisodeOfCare/{rid}", headers={"If-None-Match": r.headers["etag"]})
        assert match.status_code == 304


def test_capability_statement_on_a_live_server_matches_in_process(live_server, client):
    live = httpx.get(f"{live_server}/metadata").json()
    local = client.get("/fhir/metadata").json()
    assert live["implementation"]["url"] == live_server
    assert by_type(live).keys() == by_type(local).keys()
    assert {t: codes(r) for t, r in by_type(live).items()} == {t: codes(r) for t, r in by_type(local).items()}
