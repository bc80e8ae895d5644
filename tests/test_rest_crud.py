"""The REST core's create / read / vread / update / delete contract, conditional variants, Prefer and
content negotiation, on SQLite and PostgreSQL through the real ASGI app (and one real server for races)."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import httpx
import pytest
from live_node import BASE_HOST
from r4_resources import audit_event, episode

from fhir_node.store.repository import instant

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}
BASE = f"{BASE_HOST}/fhir"


# --- resources ---------------------------------------------------------------------------------------


def consent() -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
    }


RESOURCES = {
    "EpisodeOfCare": episode,
    "Consent": consent,
    "AuditEvent": audit_event,
    "Patient": lambda: {"resourceType": "Patient", "active": True},
    "Organization": lambda: {"resourceType": "Organization", "name": "PSI Brussels"},
    "Practitioner": lambda: {"resourceType": "Practitioner", "active": True},
}


# --- helpers -----------------------------------------------------------------------------------------


def create(client, resource: dict[str, Any], **headers: str) -> httpx.Response:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**JSON_HEADERS, **headers})
    assert r.status_code in (200, 201), r.text
    return r


def created_id(r: httpx.Response) -> str:
    """The id in a create's Location header (…/Type/id/_history/n)."""
    return r.headers["location"].split("/_history/")[0].rsplit("/", 1)[1]


def put(client, res_type: str, res_id: str, resource: dict[str, Any], **headers: str) -> httpx.Response:
    body = {**resource, "id": res_id}
    return client.put(f"/fhir/{res_type}/{res_id}", json=body, headers={**JSON_HEADERS, **headers})


def history_count(client, path: str = "/fhir/_history") -> int:
    r = client.get(path, params={"_count": "1000"})
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))


def http_time(r: httpx.Response) -> datetime:
    return parsedate_to_datetime(r.headers["last-modified"])


def fhir_instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_outcome(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    if code is not None:
        assert code in [i["code"] for i in body["issue"]], body


# --- create ------------------------------------------------------------------------------------------


#: R4's pattern for `instant` (datatypes: instant.value).
R4_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T"
    r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)


@pytest.mark.parametrize(
    "ts", [datetime(2026, 11, 30, 11, 8, 8, 232827), datetime(999, 1, 2, 3, 4, 5), datetime(2024, 2, 29)]
)
def test_server_instants_keep_their_microseconds_and_match_r4s_instant_pattern(ts):
    written = instant(ts)
    assert R4_INSTANT.fullmatch(written), written
    assert fhir_instant(written) == ts.replace(tzinfo=UTC)


@pytest.mark.parametrize("res_type", list(RESOURCES))
def test_create_every_served_type_answers_201_with_location_etag_and_server_meta(client, res_type):
    r = create(client, RESOURCES[res_type]())
    assert r.status_code == 201
    body = r.json()
    assert body["resourceType"] == res_type
    assert r.headers["location"] == f"{BASE}/{res_type}/{body['id']}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    assert client.get(f"/fhir/{res_type}/{body['id']}").status_code == 200


def test_create_ignores_client_id_and_meta_version_and_last_updated(client):
    before = datetime.now(UTC)
    sent = episode(id="client-chosen", meta={"versionId": "77", "lastUpdated": "2001-01-01T00:00:00Z"})
    r = create(client, sent)
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    last_updated = fhir_instant(body["meta"]["lastUpdated"])
    assert before - timedelta(seconds=5) <= last_updated <= datetime.now(UTC) + timedelta(seconds=5)
    assert client.get("/fhir/EpisodeOfCare/client-chosen").status_code == 404
    assert created_id(r) == body["id"]


def test_create_keeps_client_meta_tags_but_owns_version_fields(client):
    tag = {"system": "urn:test", "code": "imported"}
    body = create(client, episode(meta={"versionId": "9", "tag": [tag]})).json()
    assert body["meta"]["tag"] == [tag]
    assert body["meta"]["versionId"] == "1"


def test_create_last_modified_matches_meta_last_updated(client):
    r = create(client, episode())
    last_updated = fhir_instant(r.json()["meta"]["lastUpdated"])
    assert http_time(r) == last_updated.replace(microsecond=0)


def test_create_accepts_plain_application_json_body(client):
    r = client.post("/fhir/EpisodeOfCare", json=episode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text


def test_create_adds_exactly_one_version(client):
    before = history_count(client)
    create(client, episode())
    assert history_count(client) == before + 1


# --- read and vread ----------------------------------------------------------------------------------


def test_read_returns_the_created_resource_with_etag_and_last_modified(client):
    created = create(client, episode())
    rid = created_id(created)
    r = client.get(f"/fhir/EpisodeOfCare/{rid}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    assert r.json() == created.json()
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["last-modified"] == created.headers["last-modified"]


def test_vread_returns_each_version_including_old_content(client):
    rid = created_id(create(client, episode("planned")))
    assert put(client, "EpisodeOfCare", rid, episode("active")).status_code == 200
    assert put(client, "EpisodeOfCare", rid, episode("finished")).status_code == 200
    for version, status in ((1, "planned"), (2, "active"), (3, "finished")):
        r = client.get(f"/fhir/EpisodeOfCare/{rid}/_history/{version}")
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'W/"{version}"'
        assert r.json()["status"] == status
        assert r.json()["meta"]["versionId"] == str(version)
    assert client.get(f"/fhir/EpisodeOfCare/{rid}/_history/4").status_code == 404


# --- update ------------------------------------------------------------------------------------------


def test_update_answers_200_with_version_2_and_new_etag(client):
    created = create(client, episode("planned"))
    rid = created_id(created)
    r = put(client, "EpisodeOfCare", rid, episode("active"))
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    body = r.json()
    assert body["id"] == rid
    assert body["status"] == "active"
    assert body["meta"]["versionId"] == "2"
    assert fhir_instant(body["meta"]["lastUpdated"]) >= fhir_instant(created.json()["meta"]["lastUpdated"])
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").json()["status"] == "active"


def test_update_ignores_client_meta_version_and_last_updated(client):
    rid = created_id(create(client, episode()))
    stale_meta = {"versionId": "1", "lastUpdated": "2001-01-01T00:00:00Z"}
    r = put(client, "EpisodeOfCare", rid, episode(status="finished", meta=stale_meta))
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"
    assert not r.json()["meta"]["lastUpdated"].startswith("2001")


def test_update_with_new_client_id_creates_with_201(client):
    r = put(client, "Patient", "client-id-1", {"resourceType": "Patient", "active": True})
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"{BASE}/Patient/client-id-1/_history/1"
    assert r.json()["id"] == "client-id-1"
    assert r.json()["meta"]["versionId"] == "1"
    read = client.get("/fhir/Patient/client-id-1")
    assert read.status_code == 200
    assert read.json()["active"] is True


def test_if_match_with_current_version_updates(client):
    rid = created_id(create(client, episode("planned")))
    r = put(client, "EpisodeOfCare", rid, episode("active"), **{"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'


def test_if_match_with_stale_version_is_412_and_writes_nothing(client):
    rid = created_id(create(client, episode("planned")))
    assert put(client, "EpisodeOfCare", rid, episode("active")).status_code == 200
    before = history_count(client)
    r = put(client, "EpisodeOfCare", rid, episode("finished"), **{"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    current = client.get(f"/fhir/EpisodeOfCare/{rid}")
    assert current.headers["etag"] == 'W/"2"'
    assert current.json()["status"] == "active"
    assert history_count(client) == before


def test_if_match_on_unknown_resource_is_412_and_creates_nothing(client):
    r = put(client, "EpisodeOfCare", "never-was", episode(), **{"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    assert client.get("/fhir/EpisodeOfCare/never-was").status_code == 404


@pytest.mark.parametrize("if_match", ["garbage", 'W/"one"', "W/", ""])
def test_malformed_if_match_is_400_and_writes_nothing(client, if_match):
    rid = created_id(create(client, episode("planned")))
    before = history_count(client)
    r = put(client, "EpisodeOfCare", rid, episode("active"), **{"If-Match": if_match})
    assert_outcome(r, 400)
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").json()["status"] == "planned"
    assert history_count(client) == before


# --- delete ------------------------------------------------------------------------------------------


def test_delete_answers_204_then_read_is_410_gone(client):
    rid = created_id(create(client, episode()))
    r = client.delete(f"/fhir/EpisodeOfCare/{rid}")
    assert r.status_code == 204
    assert r.content == b""
    gone = client.get(f"/fhir/EpisodeOfCare/{rid}")
    assert_outcome(gone, 410)


def test_delete_keeps_earlier_versions_readable_and_in_history(client):
    rid = created_id(create(client, episode("planned")))
    put(client, "EpisodeOfCare", rid, episode("active"))
    assert client.delete(f"/fhir/EpisodeOfCare/{rid}").status_code == 204
    for version, status in ((1, "planned"), (2, "active")):
        r = client.get(f"/fhir/EpisodeOfCare/{rid}/_history/{version}")
        assert r.status_code == 200
        assert r.json()["status"] == status
    entries = client.get(f"/fhir/EpisodeOfCare/{rid}/_history").json()["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert "resource" not in entries[0]


def test_delete_twice_is_204_and_adds_no_version(client):
    rid = created_id(create(client, episode()))
    assert client.delete(f"/fhir/EpisodeOfCare/{rid}").status_code == 204
    before = history_count(client)
    assert client.delete(f"/fhir/EpisodeOfCare/{rid}").status_code == 204
    assert history_count(client) == before
    assert history_count(client, f"/fhir/EpisodeOfCare/{rid}/_history") == 2


def test_delete_unknown_is_404(client):
    before = history_count(client)
    assert_outcome(client.delete("/fhir/EpisodeOfCare/never-was"), 404)
    assert history_count(client) == before


def test_delete_with_stale_if_match_is_412_and_keeps_resource(client):
    rid = created_id(create(client, episode()))
    put(client, "EpisodeOfCare", rid, episode("finished"))
    assert_outcome(client.delete(f"/fhir/EpisodeOfCare/{rid}", headers={"If-Match": 'W/"1"'}), 412)
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").status_code == 200


def test_update_after_delete_recreates_with_201_and_next_version(client):
    rid = created_id(create(client, episode("planned")))
    assert client.delete(f"/fhir/EpisodeOfCare/{rid}").status_code == 204
    r = put(client, "EpisodeOfCare", rid, episode("active"))
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == 'W/"3"'
    assert r.json()["meta"]["versionId"] == "3"
    read = client.get(f"/fhir/EpisodeOfCare/{rid}")
    assert read.status_code == 200
    assert read.json()["status"] == "active"


# --- AuditEvent is append-only -----------------------------------------------------------------------


def test_audit_event_can_be_created_and_read(client):
    created = create(client, audit_event())
    assert created.status_code == 201
    r = client.get(f"/fhir/AuditEvent/{created_id(created)}")
    assert r.status_code == 200
    assert r.json()["recorded"] == "2024-01-01T10:00:00Z"


def test_audit_event_update_is_405_with_allow_and_writes_nothing(client):
    aid = created_id(create(client, audit_event()))
    changed = {**audit_event(), "recorded": "2025-01-01T10:00:00Z"}
    r = put(client, "AuditEvent", aid, changed)
    assert_outcome(r, 405)
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert "GET" in allow
    assert not allow & {"PUT", "DELETE"}
    read = client.get(f"/fhir/AuditEvent/{aid}")
    assert read.headers["etag"] == 'W/"1"'
    assert read.json()["recorded"] == "2024-01-01T10:00:00Z"


def test_audit_event_update_with_new_id_is_405_not_a_create(client):
    r = put(client, "AuditEvent", "forged", audit_event())
    assert_outcome(r, 405)
    assert "allow" in r.headers
    assert client.get("/fhir/AuditEvent/forged").status_code == 404


def test_audit_event_delete_is_405_with_allow_and_keeps_it(client):
    aid = created_id(create(client, audit_event()))
    r = client.delete(f"/fhir/AuditEvent/{aid}")
    assert_outcome(r, 405)
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert "GET" in allow
    assert not allow & {"PUT", "DELETE"}
    assert client.get(f"/fhir/AuditEvent/{aid}").status_code == 200


# --- conditional create ------------------------------------------------------------------------------


def tagged_episode(value: str) -> dict[str, Any]:
    return episode(identifier=[{"system": "urn:test:psi", "value": value}])


def test_conditional_create_without_match_creates(client):
    r = create(client, tagged_episode("A"), **{"If-None-Exist": "identifier=urn:test:psi|A"})
    assert r.status_code == 201
    assert r.headers["etag"] == 'W/"1"'


def test_conditional_create_with_one_match_returns_it_and_creates_nothing(client):
    first = create(client, tagged_episode("A"))
    before = history_count(client)
    r = create(client, tagged_episode("A"), **{"If-None-Exist": "identifier=urn:test:psi|A"})
    assert r.status_code == 200
    assert r.json()["id"] == first.json()["id"]
    assert r.json() == first.json()
    assert history_count(client) == before


def test_conditional_create_with_two_matches_is_412_and_creates_nothing(client):
    create(client, tagged_episode("A"))
    create(client, tagged_episode("A"))
    before = history_count(client)
    r = client.post(
        "/fhir/EpisodeOfCare",
        json=tagged_episode("A"),
        headers={**JSON_HEADERS, "If-None-Exist": "identifier=urn:test:psi|A"},
    )
    assert_outcome(r, 412)
    assert history_count(client) == before


def test_conditional_create_ignores_non_matching_resources(client):
    create(client, tagged_episode("B"))
    r = create(client, tagged_episode("A"), **{"If-None-Exist": "identifier=urn:test:psi|A"})
    assert r.status_code == 201


# --- conditional read --------------------------------------------------------------------------------


def test_if_none_match_with_current_etag_is_304_without_body(client):
    rid = created_id(create(client, episode()))
    etag = client.get(f"/fhir/EpisodeOfCare/{rid}").headers["etag"]
    r = client.get(f"/fhir/EpisodeOfCare/{rid}", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag


def test_if_none_match_with_old_etag_returns_the_resource(client):
    rid = created_id(create(client, episode("planned")))
    put(client, "EpisodeOfCare", rid, episode("active"))
    r = client.get(f"/fhir/EpisodeOfCare/{rid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 200
    assert r.json()["status"] == "active"


def test_if_modified_since_last_modified_is_304(client):
    rid = created_id(create(client, episode()))
    last_modified = client.get(f"/fhir/EpisodeOfCare/{rid}").headers["last-modified"]
    r = client.get(f"/fhir/EpisodeOfCare/{rid}", headers={"If-Modified-Since": last_modified})
    assert r.status_code == 304
    assert r.content == b""


def test_if_modified_since_earlier_date_returns_the_resource(client):
    created = create(client, episode())
    earlier = format_datetime(http_time(created) - timedelta(hours=1), usegmt=True)
    r = client.get(f"/fhir/EpisodeOfCare/{created_id(created)}", headers={"If-Modified-Since": earlier})
    assert r.status_code == 200
    assert r.json()["id"] == created_id(created)


# --- Prefer ------------------------------------------------------------------------------------------


def test_prefer_return_minimal_on_create_has_empty_body_and_headers(client):
    r = client.post("/fhir/EpisodeOfCare", json=episode(), headers={**JSON_HEADERS, "Prefer": "return=minimal"})
    assert r.status_code == 201
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    assert "last-modified" in r.headers
    assert client.get(r.headers["location"]).status_code == 200


def test_prefer_return_minimal_on_update_has_empty_body_and_etag(client):
    rid = created_id(create(client, episode()))
    r = put(client, "EpisodeOfCare", rid, episode("finished"), Prefer="return=minimal")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    assert "last-modified" in r.headers


def test_prefer_return_representation_returns_the_stored_resource(client):
    r = client.post("/fhir/EpisodeOfCare", json=episode(), headers={**JSON_HEADERS, "Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.json() == client.get(r.headers["location"]).json()


def test_prefer_return_operation_outcome_returns_an_outcome(client):
    r = client.post(
        "/fhir/EpisodeOfCare", json=episode(), headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"}
    )
    assert r.status_code == 201
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["etag"] == 'W/"1"'
    assert client.get(r.headers["location"]).json()["resourceType"] == "EpisodeOfCare"


# --- content negotiation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "accept", "media_type"),
    [
        ({}, None, FHIR_JSON),
        ({"_format": "json"}, None, FHIR_JSON),
        ({"_format": FHIR_JSON}, None, FHIR_JSON),
        ({"_format": "application/json"}, None, "application/json"),
        ({}, FHIR_JSON, FHIR_JSON),
        ({}, "application/json", "application/json"),
        ({}, "*/*", FHIR_JSON),
        ({}, "application/fhir+xml, application/fhir+json;q=0.5", FHIR_JSON),
        ({"_format": "json"}, "application/fhir+xml", FHIR_JSON),
    ],
)
def test_response_format_follows_format_parameter_and_accept(client, query, accept, media_type):
    rid = created_id(create(client, episode()))
    headers = {"Accept": accept} if accept else {}
    r = client.get(f"/fhir/EpisodeOfCare/{rid}", params=query, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == media_type
    assert r.json()["id"] == rid


@pytest.mark.parametrize(
    ("query", "accept"),
    [({}, "application/fhir+xml"), ({}, "application/xml, text/xml"), ({"_format": "xml"}, None)],
)
def test_xml_only_is_406_with_outcome(client, query, accept):
    rid = created_id(create(client, episode()))
    headers = {"Accept": accept} if accept else {}
    r = client.get(f"/fhir/EpisodeOfCare/{rid}", params=query, headers=headers)
    assert_outcome(r, 406)


def test_xml_only_accept_on_create_is_406_and_creates_nothing(client):
    before = history_count(client)
    r = client.post("/fhir/EpisodeOfCare", json=episode(), headers={**JSON_HEADERS, "Accept": "application/fhir+xml"})
    assert_outcome(r, 406)
    assert history_count(client) == before


def test_pretty_true_indents_and_says_the_same(client):
    rid = created_id(create(client, episode()))
    plain = client.get(f"/fhir/EpisodeOfCare/{rid}")
    pretty = client.get(f"/fhir/EpisodeOfCare/{rid}", params={"_pretty": "true"})
    assert pretty.status_code == 200
    assert b"\n" not in plain.content
    assert b'\n  "resourceType"' in pretty.content
    assert pretty.json() == plain.json()


def test_pretty_applies_to_write_responses(client):
    r = client.post("/fhir/EpisodeOfCare", params={"_pretty": "true"}, json=episode(), headers=JSON_HEADERS)
    assert r.status_code == 201
    assert b"\n" in r.content
    assert r.json()["status"] == "active"


def test_metadata_is_fhir_json(client):
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(FHIR_JSON)
    assert r.json()["resourceType"] == "CapabilityStatement"


# --- concurrency on a real server --------------------------------------------------------------------


def test_concurrent_if_match_updates_let_exactly_one_win(live_server):
    threads_n = 8
    created = httpx.post(f"{live_server}/EpisodeOfCare", json=episode("planned"), headers=JSON_HEADERS)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    barrier = threading.Barrier(threads_n)
    statuses: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        try:
            body = {**episode("active"), "id": rid, "identifier": [{"system": "urn:test:writer", "value": str(n)}]}
            with httpx.Client(timeout=30) as http:
                barrier.wait()
                r = http.put(
                    f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={**JSON_HEADERS, "If-Match": 'W/"1"'}
                )
            with lock:
                statuses.append(r.status_code)
        except BaseException as exc:  # reported below, so a failing thread fails the test
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(statuses) == threads_n
    assert 500 not in statuses
    assert statuses.count(200) == 1, statuses
    assert all(s in (200, 409, 412) for s in statuses), statuses
    final = httpx.get(f"{live_server}/EpisodeOfCare/{rid}")
    assert final.headers["etag"] == 'W/"2"'
    assert final.json()["meta"]["versionId"] == "2"
    history = httpx.get(f"{live_server}/EpisodeOfCare/{rid}/_history").json()
    assert len(history["entry"]) == 2
