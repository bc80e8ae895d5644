"""PATCH [type]/[id] with a JSON Patch (RFC 6902, application/json-patch+json), on SQLite and PostgreSQL
through the real ASGI app: the patched resource is checked and stored like an update; a failing patch,
an invalid result, a server-owned path, a wrong content type, a stale If-Match write nothing."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from bundle_helpers import organization, outcome, seed
from r4_resources import episode

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
HEADERS = {"Content-Type": FHIR_JSON}
SSIN = "urn:test:ssin"


def patient(value: str = "p-1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": value}], **extra}


def patch(client, path: str, operations: Any, content_type: str = JSON_PATCH, **headers: str) -> httpx.Response:
    body = operations if isinstance(operations, bytes) else orjson.dumps(operations)
    return client.patch(f"/fhir/{path}", content=body, headers={"Content-Type": content_type, **headers})


def read(client, path: str) -> dict[str, Any]:
    r = client.get(f"/fhir/{path}")
    assert r.status_code == 200, r.text
    return r.json()


def versions(client, path: str) -> int:
    r = client.get(f"/fhir/{path}/_history")
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))


def unchanged(client, path: str, before: dict[str, Any]) -> None:
    """Nothing was written: same content, same version, one version in history."""
    assert read(client, path) == before
    assert versions(client, path) == int(before["meta"]["versionId"])


# --- success -----------------------------------------------------------------------------------------


def test_add_replace_remove_ops_store_the_next_version(client):
    pid = seed(client, patient(active=True, gender="male", birthDate="1970-01-01"))
    r = patch(
        client,
        f"Patient/{pid}",
        [
            {"op": "replace", "path": "/gender", "value": "female"},
            {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "+32 2 000 00 00"}]},
            {"op": "remove", "path": "/birthDate"},
            {"op": "add", "path": "/managingOrganization", "value": {"reference": "Organization/o1"}},
        ],
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    body = r.json()
    assert body["id"] == pid and body["meta"]["versionId"] == "2"
    stored = read(client, f"Patient/{pid}")
    assert stored == body
    assert stored["gender"] == "female"
    assert "birthDate" not in stored
    assert stored["active"] is True
    assert stored["identifier"] == [{"system": SSIN, "value": "p-1"}]
    assert stored["telecom"] == [{"system": "phone", "value": "+32 2 000 00 00"}]
    assert stored["managingOrganization"] == {"reference": "Organization/o1"}
    assert versions(client, f"Patient/{pid}") == 2
    assert read(client, f"Patient/{pid}/_history/1")["gender"] == "male"


def test_passing_test_op_lets_the_patch_apply(client):
    pid = seed(client, episode("planned"))
    r = patch(
        client,
        f"EpisodeOfCare/{pid}",
        [
            {"op": "test", "path": "/status", "value": "planned"},
            {"op": "replace", "path": "/status", "value": "active"},
        ],
    )
    assert r.status_code == 200, r.text
    assert read(client, f"EpisodeOfCare/{pid}")["status"] == "active"


def test_move_and_copy_ops(client):
    pid = seed(client, organization("Old name", alias=["first"]))
    r = patch(
        client,
        f"Organization/{pid}",
        [{"op": "copy", "from": "/name", "path": "/alias/-"}, {"op": "move", "from": "/alias/0", "path": "/alias/-"}],
    )
    assert r.status_code == 200, r.text
    assert read(client, f"Organization/{pid}")["alias"] == ["Old name", "first"]


def test_patch_results_are_searchable(client):
    pid = seed(client, patient("before"))
    r = patch(client, f"Patient/{pid}", [{"op": "replace", "path": "/identifier/0/value", "value": "after"}])
    assert r.status_code == 200, r.text
    found = client.get("/fhir/Patient", params={"identifier": f"{SSIN}|after"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [pid]
    gone = client.get("/fhir/Patient", params={"identifier": f"{SSIN}|before"}).json()
    assert gone.get("entry", []) == []


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "add", "path": "/identifier/-", "value": {"system": "urn:test:other", "value": "o-1"}}],
        [{"op": "replace", "path": "/identifier/0/value", "value": "p-2"}],
        [{"op": "replace", "path": "/identifier", "value": [{"system": SSIN, "value": "p-2"}]}],
        [
            {"op": "test", "path": "/identifier/0/value", "value": "p-1"},
            {"op": "add", "path": "/active", "value": True},
        ],
    ],
    ids=["add-identifier", "replace-identifier-value", "replace-identifier", "test-identifier"],
)
def test_identifier_is_patchable_only_id_is_server_owned(client, operations):
    """`/identifier` merely starts with the letters of `/id`: it is the client's element."""
    pid = seed(client, patient("p-1"))
    r = patch(client, f"Patient/{pid}", operations)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == pid
    assert versions(client, f"Patient/{pid}") == 2


def test_successive_patches_each_add_a_version(client):
    pid = seed(client, patient())
    for n, value in enumerate([True, False, True], start=2):
        r = patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": value}])
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'W/"{n}"'
    assert versions(client, f"Patient/{pid}") == 4


def test_content_type_parameters_are_accepted(client):
    pid = seed(client, patient())
    r = patch(
        client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}], f"{JSON_PATCH}; charset=utf-8"
    )
    assert r.status_code == 200, r.text


def test_prefer_return_minimal_answers_without_a_body(client):
    pid = seed(client, patient())
    r = patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}], Prefer="return=minimal")
    assert r.status_code == 200, r.text
    assert r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    assert read(client, f"Patient/{pid}")["active"] is True


# --- If-Match ----------------------------------------------------------------------------------------


def test_if_match_with_the_current_version_patches(client):
    pid = seed(client, patient())
    r = patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}], **{"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'


def test_stale_if_match_is_412_and_writes_nothing(client):
    pid = seed(client, patient())
    assert patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}]).status_code == 200
    before = read(client, f"Patient/{pid}")
    r = patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": False}], **{"If-Match": 'W/"1"'})
    assert r.status_code == 412, r.text
    outcome(r)
    unchanged(client, f"Patient/{pid}", before)


# --- failures that write nothing ---------------------------------------------------------------------


def test_failing_test_op_is_422_and_writes_nothing(client):
    pid = seed(client, episode("planned"))
    before = read(client, f"EpisodeOfCare/{pid}")
    r = patch(
        client,
        f"EpisodeOfCare/{pid}",
        [
            {"op": "replace", "path": "/status", "value": "active"},
            {"op": "test", "path": "/status", "value": "planned"},
        ],
    )
    assert r.status_code == 422, r.text
    outcome(r)
    unchanged(client, f"EpisodeOfCare/{pid}", before)


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "replace", "path": "/birthDate", "value": "1970-01-01"}],  # replace needs an existing target
        [{"op": "remove", "path": "/telecom/0"}],
        [{"op": "add", "path": "/contact/0/name/family", "value": "x"}],  # parent missing
    ],
    ids=["replace-missing", "remove-missing", "add-under-missing-parent"],
)
def test_operation_that_cannot_apply_is_422_and_writes_nothing(client, operations):
    pid = seed(client, patient())
    before = read(client, f"Patient/{pid}")
    r = patch(client, f"Patient/{pid}", operations)
    assert r.status_code == 422, r.text
    outcome(r)
    unchanged(client, f"Patient/{pid}", before)


@pytest.mark.parametrize(
    ("path", "operations", "expression"),
    [
        ("EpisodeOfCare", [{"op": "remove", "path": "/status"}], "EpisodeOfCare.status"),
        ("EpisodeOfCare", [{"op": "replace", "path": "/status", "value": "sleeping"}], "EpisodeOfCare.status"),
        (
            "EpisodeOfCare",
            [{"op": "add", "path": "/favouriteColour", "value": "blue"}],
            "EpisodeOfCare.favouriteColour",
        ),
        ("EpisodeOfCare", [{"op": "replace", "path": "/patient", "value": "Patient/p1"}], "EpisodeOfCare.patient"),
    ],
    ids=["required-removed", "bad-code", "unknown-element", "wrong-shape"],
)
def test_patch_to_an_invalid_resource_is_400_and_writes_nothing(client, path, operations, expression):
    pid = seed(client, episode())
    before = read(client, f"{path}/{pid}")
    r = patch(client, f"{path}/{pid}", operations)
    assert r.status_code == 400, r.text
    expressions = [x for i in outcome(r)["issue"] for x in i.get("expression", [])]
    assert any(x.startswith(expression) for x in expressions), expressions
    unchanged(client, f"{path}/{pid}", before)


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "replace", "path": "/id", "value": "another-id"}],
        [{"op": "remove", "path": "/id"}],
        [{"op": "add", "path": "/id", "value": "another-id"}],
        [{"op": "copy", "from": "/identifier/0/value", "path": "/id"}],
    ],
    ids=["replace", "remove", "add", "copy-onto"],
)
def test_changing_the_id_is_400_and_writes_nothing(client, operations):
    pid = seed(client, patient())
    before = read(client, f"Patient/{pid}")
    r = patch(client, f"Patient/{pid}", operations)
    assert r.status_code == 400, r.text
    outcome(r)
    unchanged(client, f"Patient/{pid}", before)
    assert client.get("/fhir/Patient/another-id").status_code == 404


def test_changing_the_resource_type_is_400_and_writes_nothing(client):
    pid = seed(client, patient())
    before = read(client, f"Patient/{pid}")
    r = patch(client, f"Patient/{pid}", [{"op": "replace", "path": "/resourceType", "value": "Organization"}])
    assert r.status_code == 400, r.text
    unchanged(client, f"Patient/{pid}", before)


@pytest.mark.parametrize("content_type", [FHIR_JSON, "application/json", "application/merge-patch+json", "text/plain"])
def test_wrong_content_type_is_415_and_writes_nothing(client, content_type):
    pid = seed(client, patient())
    before = read(client, f"Patient/{pid}")
    r = patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}], content_type)
    assert r.status_code == 415, r.text
    outcome(r)
    unchanged(client, f"Patient/{pid}", before)


def test_missing_content_type_is_415(client):
    pid = seed(client, patient())
    r = client.patch(f"/fhir/Patient/{pid}", content=b'[{"op": "add", "path": "/active", "value": true}]')
    assert r.status_code == 415, r.text
    assert versions(client, f"Patient/{pid}") == 1


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"op": "add", "path": "/active", "value": True}),  # an operation, not an array of them
        orjson.dumps(["add"]),
        orjson.dumps([{"op": "frobnicate", "path": "/active", "value": True}]),
        orjson.dumps([{"op": "add", "value": True}]),  # no path
        b'[{"op": "add", "path": "/active", ',  # malformed JSON
    ],
    ids=["object", "array-of-strings", "unknown-op", "no-path", "malformed-json"],
)
def test_malformed_patch_document_is_400_and_writes_nothing(client, body):
    pid = seed(client, patient())
    before = read(client, f"Patient/{pid}")
    r = patch(client, f"Patient/{pid}", body)
    assert r.status_code == 400, r.text
    outcome(r)
    unchanged(client, f"Patient/{pid}", before)


def test_unknown_id_is_404_and_creates_nothing(client):
    r = patch(client, "Patient/never-existed", [{"op": "add", "path": "/active", "value": True}])
    assert r.status_code == 404, r.text
    outcome(r)
    assert client.get("/fhir/Patient/never-existed").status_code == 404


def test_deleted_resource_is_410_and_stays_deleted(client):
    pid = seed(client, patient())
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    r = patch(client, f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}])
    assert r.status_code == 410, r.text
    outcome(r)
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert versions(client, f"Patient/{pid}") == 2


def test_invalid_id_in_the_url_is_400(client):
    r = patch(client, "Patient/bad_id!", [{"op": "add", "path": "/active", "value": True}])
    assert r.status_code == 400, r.text


def test_unknown_type_is_404(client):
    r = patch(client, "Spaceship/1", [{"op": "add", "path": "/active", "value": True}])
    assert r.status_code == 404, r.text
    outcome(r)


def test_patch_on_an_append_only_type_is_405_and_writes_nothing(client):
    audit = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-01-01T10:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "node operator"}}],
        "source": {"observer": {"display": "fhir-node"}},
    }
    aid = seed(client, audit)
    r = patch(client, f"AuditEvent/{aid}", [{"op": "add", "path": "/outcome", "value": "0"}])
    assert r.status_code == 405, r.text
    assert "PATCH" not in r.headers["allow"]
    assert versions(client, f"AuditEvent/{aid}") == 1
