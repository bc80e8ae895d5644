"""Every bad request gets its own status and an OperationOutcome that says what and where, and changes
nothing. The TestClient re-raises server exceptions, so a 500 anywhere here fails the test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_node import BASE_HOST
from r4_resources import audit_event, create, episode
from starlette.testclient import TestClient

from fhir_node.api import guard
from fhir_node.app import create_app

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}

#: FHIR R4 IssueType codes (http://hl7.org/fhir/ValueSet/issue-type).
ISSUE_TYPES = {
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
    "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found",
    "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule", "conflict", "transient",
    "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled", "informational",
}  # fmt: skip


def history_count(client: TestClient) -> int:
    r = client.get("/fhir/_history", params={"_count": "1000"})
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))


def assert_outcome(
    r: httpx.Response, statuses: int | tuple[int, ...], code: str | None = None, expression: str | None = None
) -> dict[str, Any]:
    """The response is one of `statuses` with an OperationOutcome whose error issues carry valid codes;
    one of them has `code`, and one names `expression`, when given."""
    statuses = (statuses,) if isinstance(statuses, int) else statuses
    assert r.status_code in statuses, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    errors = [i for i in body["issue"] if i["severity"] in ("error", "fatal")]
    assert errors, body
    assert all(i["code"] in ISSUE_TYPES for i in body["issue"]), body
    assert all(i.get("diagnostics") for i in errors), body
    if code is not None:
        assert code in [i["code"] for i in errors], body
    if expression is not None:
        assert any(expression in i.get("expression", []) for i in errors), body
    return body


@pytest.fixture
def unchanged(client: TestClient) -> Iterator[None]:
    """Asserts, after the test, that the system history grew by nothing the test did not write itself."""
    before = history_count(client)
    yield
    assert history_count(client) == before


# --- bodies that are not a resource ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"resourceType": "EpisodeOfCare", "status": ', "structure"),
        (b"{bad json}", "structure"),
        (b"", "structure"),
        (b"[]", "structure"),
        (b'[{"resourceType": "EpisodeOfCare", "status": "active"}]', "structure"),
        (b"42", "structure"),
        (b'"EpisodeOfCare"', "structure"),
        (b"null", "structure"),
    ],
    ids=["truncated", "not-json", "empty", "empty-array", "array", "number", "string", "null"],
)
def test_create_with_a_body_that_is_not_one_json_object_is_400(client, unchanged, raw, code):
    r = client.post("/fhir/EpisodeOfCare", content=raw, headers=JSON_HEADERS)
    assert_outcome(r, 400, code)


def test_update_with_malformed_json_is_400_and_keeps_the_resource(client):
    rid = create(client, episode("planned"))
    before = history_count(client)
    r = client.put(f"/fhir/EpisodeOfCare/{rid}", content=b'{"resourceType": ', headers=JSON_HEADERS)
    assert_outcome(r, 400)
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").json()["status"] == "planned"
    assert history_count(client) == before


@pytest.mark.parametrize("resource_type", ["Consent", "Observation", "NotAType", None, 7])
def test_create_with_a_resource_type_other_than_the_url_is_400(client, unchanged, resource_type):
    body = {**episode(), "resourceType": resource_type}
    r = client.post("/fhir/EpisodeOfCare", json=body, headers=JSON_HEADERS)
    assert_outcome(r, 400, expression="resourceType")


def test_create_without_resource_type_is_400(client, unchanged):
    body = {k: v for k, v in episode().items() if k != "resourceType"}
    assert_outcome(client.post("/fhir/EpisodeOfCare", json=body, headers=JSON_HEADERS), 400)


# --- structural validation ---------------------------------------------------------------------------


STRUCTURE_CASES = {
    "unknown element": (episode(foo=1), ("structure", "invalid"), "EpisodeOfCare.foo"),
    "unknown nested element": (
        episode(patient={"reference": "Patient/p1", "bar": "x"}),
        ("structure", "invalid"),
        "EpisodeOfCare.patient.bar",
    ),
    "number for a code": (episode(status=5), ("structure", "value", "invalid"), "EpisodeOfCare.status"),
    "object for a string": (
        episode(patient={"reference": {"id": "p1"}}),
        ("structure", "value", "invalid"),
        "EpisodeOfCare.patient.reference",
    ),
    "object for an array": (
        episode(identifier={"value": "x"}),
        ("structure", "invalid"),
        "EpisodeOfCare.identifier",
    ),
    "missing status": (
        {"resourceType": "EpisodeOfCare", "patient": {"reference": "Patient/p1"}},
        ("required",),
        "EpisodeOfCare.status",
    ),
    "missing patient": (
        {"resourceType": "EpisodeOfCare", "status": "active"},
        ("required",),
        "EpisodeOfCare.patient",
    ),
    "code outside required binding": (episode(status="bogus"), ("code-invalid", "value"), "EpisodeOfCare.status"),
    "bad date format": (
        episode(period={"start": "01/02/2024"}),
        ("value", "invalid"),
        "EpisodeOfCare.period.start",
    ),
    "impossible date": (
        episode(period={"start": "2024-02-30"}),
        ("value", "invalid"),
        "EpisodeOfCare.period.start",
    ),
    "empty string": (episode(status=""), ("value", "structure", "invalid"), "EpisodeOfCare.status"),
    "empty nested string": (
        episode(patient={"reference": ""}),
        ("value", "structure", "invalid"),
        "EpisodeOfCare.patient.reference",
    ),
    "null value": (episode(status=None), ("structure", "value", "invalid"), "EpisodeOfCare.status"),
    "null complex value": (episode(period=None), ("structure", "value", "invalid"), "EpisodeOfCare.period"),
    "empty array": (episode(identifier=[]), ("structure", "invalid"), "EpisodeOfCare.identifier"),
    "empty object": (episode(period={}), ("structure", "invalid", "required"), "EpisodeOfCare.period"),
}


@pytest.mark.parametrize(("body", "codes", "expression"), STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys())
def test_create_of_a_structurally_invalid_resource_is_rejected_with_its_fhirpath(
    client, unchanged, body, codes, expression
):
    r = client.post("/fhir/EpisodeOfCare", json=body, headers=JSON_HEADERS)
    outcome = assert_outcome(r, (400, 422), expression=expression)
    issue = next(i for i in outcome["issue"] if expression in i.get("expression", []))
    assert issue["code"] in codes, outcome


@pytest.mark.parametrize(("body", "codes", "expression"), STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys())
def test_update_with_a_structurally_invalid_resource_is_rejected_and_keeps_the_resource(
    client, body, codes, expression
):
    rid = create(client, episode("planned"))
    before = history_count(client)
    r = client.put(f"/fhir/EpisodeOfCare/{rid}", json={**body, "id": rid}, headers=JSON_HEADERS)
    outcome = assert_outcome(r, (400, 422), expression=expression)
    assert next(i for i in outcome["issue"] if expression in i.get("expression", []))["code"] in codes
    current = client.get(f"/fhir/EpisodeOfCare/{rid}")
    assert current.headers["etag"] == 'W/"1"'
    assert current.json()["status"] == "planned"
    assert history_count(client) == before


def test_every_problem_of_a_resource_is_reported(client, unchanged):
    body = {"resourceType": "EpisodeOfCare", "status": "bogus", "foo": 1, "period": {"start": "yesterday"}}
    outcome = assert_outcome(client.post("/fhir/EpisodeOfCare", json=body, headers=JSON_HEADERS), (400, 422))
    named = {e for i in outcome["issue"] for e in i.get("expression", [])}
    assert {"EpisodeOfCare.status", "EpisodeOfCare.foo", "EpisodeOfCare.period.start", "EpisodeOfCare.patient"} <= named


def test_invalid_audit_event_is_rejected_with_its_fhirpath(client, unchanged):
    body = {**audit_event(), "recorded": "2024-01-01"}  # an instant needs a time and a zone
    assert_outcome(
        client.post("/fhir/AuditEvent", json=body, headers=JSON_HEADERS), (400, 422), expression="AuditEvent.recorded"
    )


# --- ids ---------------------------------------------------------------------------------------------


def test_update_with_body_id_other_than_url_id_is_400(client):
    rid = create(client, episode("planned"))
    before = history_count(client)
    r = client.put(f"/fhir/EpisodeOfCare/{rid}", json=episode("active", id="someone-else"), headers=JSON_HEADERS)
    assert_outcome(r, 400, expression="EpisodeOfCare.id")
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").json()["status"] == "planned"
    assert client.get("/fhir/EpisodeOfCare/someone-else").status_code == 404
    assert history_count(client) == before


def test_update_without_body_id_is_400(client):
    rid = create(client, episode("planned"))
    before = history_count(client)
    r = client.put(f"/fhir/EpisodeOfCare/{rid}", json=episode("active"), headers=JSON_HEADERS)
    assert_outcome(r, 400, expression="EpisodeOfCare.id")
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").json()["status"] == "planned"
    assert history_count(client) == before


BAD_IDS = ["bad$id", "a" * 65, "with_underscore", "sp ace"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_update_with_invalid_id_in_url_is_400(client, unchanged, bad_id):
    r = client.put(f"/fhir/EpisodeOfCare/{bad_id}", json=episode(id=bad_id), headers=JSON_HEADERS)
    assert_outcome(r, 400)


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_read_with_invalid_id_in_url_is_400(client, bad_id):
    assert_outcome(client.get(f"/fhir/EpisodeOfCare/{bad_id}"), 400)


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_vread_with_invalid_id_in_url_is_400(client, bad_id):
    assert_outcome(client.get(f"/fhir/EpisodeOfCare/{bad_id}/_history/1"), 400)


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_delete_with_invalid_id_in_url_is_400(client, unchanged, bad_id):
    assert_outcome(client.delete(f"/fhir/EpisodeOfCare/{bad_id}"), 400)


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_instance_history_with_invalid_id_in_url_is_400(client, bad_id):
    assert_outcome(client.get(f"/fhir/EpisodeOfCare/{bad_id}/_history"), 400)


# --- what is not there -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Foo/1"),
        ("GET", "/fhir/Foo"),
        ("GET", "/fhir/Foo/_history"),
        ("GET", "/fhir/Observation/1"),
        ("DELETE", "/fhir/Observation/1"),
    ],
)
def test_unknown_or_unserved_type_is_404(client, unchanged, method, path):
    assert_outcome(client.request(method, path), 404)


@pytest.mark.parametrize("res_type", ["Foo", "Observation"])
def test_create_of_an_unserved_type_is_404_and_stores_nothing(client, unchanged, res_type):
    r = client.post(f"/fhir/{res_type}", json={"resourceType": res_type, "status": "final"}, headers=JSON_HEADERS)
    assert_outcome(r, 404)


def test_update_of_an_unserved_type_is_404(client, unchanged):
    body = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
    assert_outcome(client.put("/fhir/Observation/o1", json=body, headers=JSON_HEADERS), 404)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/EpisodeOfCare/never-was",
        "/fhir/EpisodeOfCare/never-was/_history/1",
        "/fhir/EpisodeOfCare/never-was/_history",
    ],
)
def test_unknown_id_is_404(client, path):
    assert_outcome(client.get(path), 404, "not-found")


def test_read_of_a_deleted_resource_is_410(client):
    rid = create(client, episode())
    assert client.delete(f"/fhir/EpisodeOfCare/{rid}").status_code == 204
    r = client.get(f"/fhir/EpisodeOfCare/{rid}")
    assert_outcome(r, 410, "deleted")
    assert_outcome(client.get(f"/fhir/EpisodeOfCare/{rid}/_history/2"), 410)


@pytest.mark.parametrize("path", ["/nothing", "/fhir/EpisodeOfCare/x/y/z/w", "/fhirx/metadata", "/api/fhir"])
def test_unknown_path_is_404_outcome(client, path):
    assert_outcome(client.get(path), 404)


# --- methods -----------------------------------------------------------------------------------------


def allowed(r: httpx.Response) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


def test_post_on_an_instance_is_405_with_allow(client):
    rid = create(client, episode())
    before = history_count(client)
    r = client.post(f"/fhir/EpisodeOfCare/{rid}", json=episode(id=rid), headers=JSON_HEADERS)
    assert_outcome(r, 405)
    assert {"GET", "PUT", "DELETE"} <= allowed(r)
    assert "POST" not in allowed(r)
    assert history_count(client) == before


AUDIT_PATCH = [{"op": "replace", "path": "/recorded", "value": "2025-01-01T10:00:00Z"}]


def test_patch_on_an_audit_event_is_405_allowing_only_reads(client):
    aid = create(client, audit_event())
    before = history_count(client)
    r = client.patch(
        f"/fhir/AuditEvent/{aid}", json=AUDIT_PATCH, headers={"Content-Type": "application/json-patch+json"}
    )
    assert_outcome(r, 405)
    assert "GET" in allowed(r)
    assert not allowed(r) & {"PUT", "DELETE", "PATCH", "POST"}
    assert client.get(f"/fhir/AuditEvent/{aid}").json()["recorded"] == "2024-01-01T10:00:00Z"
    assert history_count(client) == before


def test_post_on_an_audit_event_instance_allows_only_what_audit_events_allow(client):
    aid = create(client, audit_event())
    r = client.post(f"/fhir/AuditEvent/{aid}", json=audit_event(), headers=JSON_HEADERS)
    assert_outcome(r, 405)
    assert "GET" in allowed(r)
    assert not allowed(r) & {"PUT", "DELETE", "PATCH", "POST"}


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_writing_to_metadata_is_405_with_allow_get(client, unchanged, method):
    r = client.request(method, "/fhir/metadata", json={"resourceType": "CapabilityStatement"}, headers=JSON_HEADERS)
    assert_outcome(r, 405)
    assert "GET" in allowed(r)
    assert method not in allowed(r)


def test_delete_on_system_history_is_405(client):
    create(client, episode())
    before = history_count(client)
    assert_outcome(client.delete("/fhir/_history"), 405)
    assert history_count(client) == before


# --- media types and size ----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/fhir+xml", None])
def test_create_with_unsupported_content_type_is_415(client, unchanged, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/fhir/EpisodeOfCare", content=json.dumps(episode()).encode(), headers=headers)
    assert_outcome(r, 415)


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_update_with_unsupported_content_type_is_415_and_keeps_the_resource(client, content_type):
    rid = create(client, episode("planned"))
    before = history_count(client)
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.put(
        f"/fhir/EpisodeOfCare/{rid}", content=json.dumps(episode("active", id=rid)).encode(), headers=headers
    )
    assert_outcome(r, 415)
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").json()["status"] == "planned"
    assert history_count(client) == before


def test_content_type_with_charset_is_accepted(client):
    r = client.post(
        "/fhir/EpisodeOfCare",
        content=json.dumps(episode()).encode(),
        headers={"Content-Type": "application/fhir+json; charset=utf-8"},
    )
    assert r.status_code == 201, r.text


MAX_BODY = 1000


@pytest.fixture
def small_client(settings) -> Iterator[TestClient]:
    """The app with FHIR_NODE_MAX_BODY_BYTES set to MAX_BODY, on this test's database."""
    app = create_app(settings.model_copy(update={"max_body_bytes": MAX_BODY}))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as test_client:
        yield test_client


def padded_episode(size: int) -> bytes:
    """A valid EpisodeOfCare serialised to exactly `size` bytes."""
    base = json.dumps(episode(identifier=[{"value": ""}])).encode()
    pad = size - len(base)
    assert pad > 0
    return json.dumps(episode(identifier=[{"value": "x" * pad}])).encode()


def test_body_at_the_limit_is_accepted(small_client):
    body = padded_episode(MAX_BODY)
    assert len(body) == MAX_BODY
    r = small_client.post("/fhir/EpisodeOfCare", content=body, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text


def test_body_over_the_limit_is_413_and_stores_nothing(small_client):
    before = history_count(small_client)
    body = padded_episode(MAX_BODY + 1)
    r = small_client.post("/fhir/EpisodeOfCare", content=body, headers=JSON_HEADERS)
    assert_outcome(r, 413, "too-costly")
    assert history_count(small_client) == before


def test_streamed_body_over_the_limit_is_413_and_stores_nothing(small_client):
    """Without a Content-Length (chunked), the limit still holds as the body arrives."""
    before = history_count(small_client)
    body = padded_episode(MAX_BODY * 4)
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    r = small_client.post("/fhir/EpisodeOfCare", content=iter(chunks), headers=JSON_HEADERS)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_outcome(r, 413, "too-costly")
    assert history_count(small_client) == before


def test_streamed_bundle_over_the_limit_is_413_and_stores_nothing(small_client):
    """A Bundle's bytes are looked at before the route reads them (may it read AuditEvents?): only up to the
    limit, the rest is left for the route, which refuses it."""
    before = history_count(small_client)
    entry = {"resource": json.loads(padded_episode(MAX_BODY)), "request": {"method": "POST", "url": "EpisodeOfCare"}}
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry] * 4}).encode()
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    r = small_client.post("/fhir", content=iter(chunks), headers=JSON_HEADERS)
    assert_outcome(r, 413, "too-costly")
    assert history_count(small_client) == before


def test_a_bundles_bytes_are_read_ahead_no_further_than_the_limit():
    """What the Guard holds of a body it reads ahead is bounded as the route's reading is (a chunk past it)."""
    pulled: list[int] = []

    async def endless() -> dict[str, Any]:
        pulled.append(100)
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    body, whole = asyncio.run(guard._read_up_to(endless, 1000))
    assert (len(body), whole, sum(pulled)) == (1100, False, 1100)


def test_update_over_the_limit_is_413_and_keeps_the_resource(small_client):
    rid = create(small_client, episode("planned"))
    body = json.loads(padded_episode(MAX_BODY + 50)) | {"id": rid}
    r = small_client.put(f"/fhir/EpisodeOfCare/{rid}", json=body, headers=JSON_HEADERS)
    assert_outcome(r, 413)
    assert small_client.get(f"/fhir/EpisodeOfCare/{rid}").headers["etag"] == 'W/"1"'


# --- who may ask -------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.1.20", "::ffff:10.1.2.3", "2001:db8::1"])
def test_non_loopback_client_is_403_with_outcome_when_auth_is_none(client, unchanged, address):
    outsider = TestClient(client.app, base_url=BASE_HOST, client=(address, 5000))
    for r in (
        outsider.get("/fhir/metadata"),
        outsider.get("/fhir/_history"),
        outsider.post("/fhir/EpisodeOfCare", json=episode(), headers=JSON_HEADERS),
    ):
        assert_outcome(r, 403, "forbidden")
