"""history at instance, type and system level: newest first, well-formed entries, `_since`, and `_count`
paging whose next links neither repeat nor skip a version while others keep writing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhirclient.models.bundle import Bundle
from live_node import BASE_HOST
from r4_resources import episode

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}
BASE = f"{BASE_HOST}/fhir"


def patient(active: bool = True, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "active": active, **extra}


def create(client, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    return r.json()


def update(client, resource: dict[str, Any], res_id: str, expect: int = 200) -> dict[str, Any]:
    r = client.put(f"/fhir/{resource['resourceType']}/{res_id}", json={**resource, "id": res_id}, headers=JSON_HEADERS)
    assert r.status_code == expect, r.text
    return r.json()


def delete(client, res_type: str, res_id: str) -> None:
    assert client.delete(f"/fhir/{res_type}/{res_id}").status_code == 204


def history(client, path: str, **params: str) -> dict[str, Any]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "history"
    Bundle(body, strict=True)  # a well-formed R4 Bundle, as a strict client library reads it
    return body


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return bundle.get("entry", [])


def keys(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    """(fullUrl, etag) of every entry: one version of one resource."""
    return [(e["fullUrl"], e["response"]["etag"]) for e in entries(bundle)]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((li["url"] for li in bundle.get("link", []) if li["relation"] == relation), None)


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_newest_first(bundle: dict[str, Any]) -> None:
    modified = [instant(e["response"]["lastModified"]) for e in entries(bundle)]
    assert modified == sorted(modified, reverse=True)


# --- instance history --------------------------------------------------------------------------------


def test_instance_history_lists_every_version_newest_first(client):
    rid = create(client, episode("planned"))["id"]
    update(client, episode("active"), rid)
    update(client, episode("finished"), rid)
    bundle = history(client, f"/fhir/EpisodeOfCare/{rid}/_history")
    assert [e["resource"]["meta"]["versionId"] for e in entries(bundle)] == ["3", "2", "1"]
    assert [e["resource"]["status"] for e in entries(bundle)] == ["finished", "active", "planned"]
    assert all(e["fullUrl"] == f"{BASE}/EpisodeOfCare/{rid}" for e in entries(bundle))
    assert_newest_first(bundle)


def test_instance_history_entries_carry_request_and_response(client):
    rid = create(client, episode("planned"))["id"]
    update(client, episode("active"), rid)
    delete(client, "EpisodeOfCare", rid)
    found = entries(history(client, f"/fhir/EpisodeOfCare/{rid}/_history"))
    assert [e["request"] for e in found] == [
        {"method": "DELETE", "url": f"EpisodeOfCare/{rid}"},
        {"method": "PUT", "url": f"EpisodeOfCare/{rid}"},
        {"method": "POST", "url": "EpisodeOfCare"},
    ]
    assert [e["response"]["etag"] for e in found] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["response"]["status"].split()[0] for e in found] == ["204", "200", "201"]
    assert all("lastModified" in e["response"] for e in found)


def test_deleted_version_has_no_resource_but_earlier_ones_do(client):
    rid = create(client, episode())["id"]
    delete(client, "EpisodeOfCare", rid)
    deleted, created = entries(history(client, f"/fhir/EpisodeOfCare/{rid}/_history"))
    assert "resource" not in deleted
    assert deleted["request"]["method"] == "DELETE"
    assert created["resource"]["id"] == rid


def test_history_of_a_deleted_resource_is_still_served(client):
    rid = create(client, episode())["id"]
    delete(client, "EpisodeOfCare", rid)
    assert client.get(f"/fhir/EpisodeOfCare/{rid}").status_code == 410
    assert len(entries(history(client, f"/fhir/EpisodeOfCare/{rid}/_history"))) == 2


def test_history_records_the_status_each_write_answered(client):
    """Each entry's response.status is what the client that wrote the version was told."""
    answered: list[int] = []
    r = client.post("/fhir/Patient", json=patient(), headers=JSON_HEADERS)
    answered.append(r.status_code)
    rid = r.json()["id"]
    for i, step in enumerate(("update", "delete", "recreate", "update")):
        if step == "delete":
            r = client.delete(f"/fhir/Patient/{rid}")
        else:  # each PUT changes something: an identical one would answer 200 and write no version
            r = client.put(f"/fhir/Patient/{rid}", json=patient(i % 2 == 1, id=rid), headers=JSON_HEADERS)
        answered.append(r.status_code)
    assert answered == [201, 200, 204, 201, 200]
    found = entries(history(client, f"/fhir/Patient/{rid}/_history"))
    assert [int(e["response"]["status"].split()[0]) for e in reversed(found)] == answered


def test_update_as_create_shows_as_put_with_201(client):
    update(client, patient(), "chosen-id", expect=201)
    (entry,) = entries(history(client, "/fhir/Patient/chosen-id/_history"))
    assert entry["request"] == {"method": "PUT", "url": "Patient/chosen-id"}
    assert entry["response"]["status"].startswith("201")
    assert entry["response"]["etag"] == 'W/"1"'


def test_audit_event_history_is_readable(client):
    event = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-01-01T10:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "node operator"}}],
        "source": {"observer": {"display": "fhir-node"}},
    }
    aid = create(client, event)["id"]
    assert len(entries(history(client, f"/fhir/AuditEvent/{aid}/_history"))) == 1
    assert len(entries(history(client, "/fhir/AuditEvent/_history"))) == 1


# --- type and system history -------------------------------------------------------------------------


def test_type_history_holds_only_that_type_newest_first(client):
    e1 = create(client, episode("planned"))["id"]
    p1 = create(client, patient())["id"]
    e2 = create(client, episode("active"))["id"]
    update(client, episode("finished"), e1)
    delete(client, "EpisodeOfCare", e2)
    bundle = history(client, "/fhir/EpisodeOfCare/_history")
    assert keys(bundle) == [
        (f"{BASE}/EpisodeOfCare/{e2}", 'W/"2"'),
        (f"{BASE}/EpisodeOfCare/{e1}", 'W/"2"'),
        (f"{BASE}/EpisodeOfCare/{e2}", 'W/"1"'),
        (f"{BASE}/EpisodeOfCare/{e1}", 'W/"1"'),
    ]
    assert_newest_first(bundle)
    assert keys(history(client, "/fhir/Patient/_history")) == [(f"{BASE}/Patient/{p1}", 'W/"1"')]


def test_system_history_holds_every_type_newest_first(client):
    e1 = create(client, episode())["id"]
    p1 = create(client, patient())["id"]
    o1 = create(client, {"resourceType": "Organization", "name": "PSI"})["id"]
    update(client, patient(False), p1)
    bundle = history(client, "/fhir/_history")
    assert keys(bundle) == [
        (f"{BASE}/Patient/{p1}", 'W/"2"'),
        (f"{BASE}/Organization/{o1}", 'W/"1"'),
        (f"{BASE}/Patient/{p1}", 'W/"1"'),
        (f"{BASE}/EpisodeOfCare/{e1}", 'W/"1"'),
    ]
    assert_newest_first(bundle)
    resources = [e["resource"] for e in entries(bundle)]
    assert [r["resourceType"] for r in resources] == ["Patient", "Organization", "Patient", "EpisodeOfCare"]
    assert resources[0]["active"] is False
    assert resources[2]["active"] is True


def test_history_of_an_empty_node_is_an_empty_bundle(client):
    bundle = history(client, "/fhir/_history")
    assert entries(bundle) == []
    assert link(bundle, "self") is not None
    assert link(bundle, "next") is None


# --- _since ------------------------------------------------------------------------------------------


@pytest.fixture
def since_setup(client) -> dict[str, Any]:
    """A v1, then (later) A v2 and B v1; `since` is exactly A v2's lastUpdated."""
    a1 = create(client, episode("planned"))
    time.sleep(0.05)
    a2 = update(client, episode("active"), a1["id"])
    b = create(client, episode("planned"))["id"]
    return {"a": a1["id"], "b": b, "first": a1["meta"]["lastUpdated"], "since": a2["meta"]["lastUpdated"]}


def test_since_keeps_only_versions_at_or_after_it_at_system_level(client, since_setup):
    a, b = since_setup["a"], since_setup["b"]
    bundle = history(client, "/fhir/_history", _since=since_setup["since"])
    assert keys(bundle) == [(f"{BASE}/EpisodeOfCare/{b}", 'W/"1"'), (f"{BASE}/EpisodeOfCare/{a}", 'W/"2"')]


def test_since_at_type_and_instance_level(client, since_setup):
    a, since = since_setup["a"], since_setup["since"]
    assert len(entries(history(client, "/fhir/EpisodeOfCare/_history", _since=since))) == 2
    assert len(entries(history(client, "/fhir/Patient/_history", _since=since))) == 0
    assert keys(history(client, f"/fhir/EpisodeOfCare/{a}/_history", _since=since)) == [
        (f"{BASE}/EpisodeOfCare/{a}", 'W/"2"')
    ]


def test_since_with_a_time_zone_offset_means_the_same_instant(client, since_setup):
    utc = instant(since_setup["since"])
    brussels = utc.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="microseconds")
    assert brussels.endswith("+02:00")
    in_utc = keys(history(client, "/fhir/_history", _since=since_setup["since"]))
    assert keys(history(client, "/fhir/_history", _since=brussels)) == in_utc
    assert len(in_utc) == 2


def test_since_in_the_future_gives_no_entries(client, since_setup):
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert entries(history(client, "/fhir/_history", _since=future)) == []


def test_since_as_a_date_starts_at_the_beginning_of_that_day(client, since_setup):
    today = instant(since_setup["first"]).date().isoformat()
    assert len(entries(history(client, "/fhir/_history", _since=today))) == 3


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "2024-02-30T10:00:00Z", "", "12345"])
@pytest.mark.parametrize("path", ["/fhir/_history", "/fhir/EpisodeOfCare/_history"])
def test_bad_since_is_400(client, path, bad):
    r = client.get(path, params={"_since": bad})
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("_since" in i.get("expression", []) for i in outcome["issue"]), outcome


def test_bad_since_on_an_instance_is_400(client):
    rid = create(client, episode())["id"]
    assert client.get(f"/fhir/EpisodeOfCare/{rid}/_history", params={"_since": "soon"}).status_code == 400


# --- _count and paging -------------------------------------------------------------------------------


def follow(client, first: dict[str, Any], between_pages) -> tuple[list[tuple[str, str]], int]:
    """Every entry from `first` through its next links, calling `between_pages()` before each fetch."""
    collected = keys(first)
    pages, bundle = 1, first
    while (url := link(bundle, "next")) is not None:
        assert url.startswith(BASE)
        between_pages()
        r = client.get(url)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["type"] == "history"
        collected += keys(bundle)
        pages += 1
        assert pages < 100, "next links do not end"
    return collected, pages


@pytest.mark.parametrize("level", ["system", "type", "instance"])
def test_paging_with_count_neither_repeats_nor_skips_while_others_write(client, level):
    main = create(client, patient())["id"]
    for n in range(5):
        update(client, patient(n % 2 == 1), main)  # each one a change
    others = [create(client, patient())["id"] for _ in range(3)]
    for _ in range(2):
        create(client, episode())
    path = {
        "system": "/fhir/_history",
        "type": "/fhir/Patient/_history",
        "instance": f"/fhir/Patient/{main}/_history",
    }[level]
    snapshot = keys(history(client, path, _count="1000"))
    assert len(snapshot) == {"system": 11, "type": 9, "instance": 6}[level]

    def write_more() -> None:
        create(client, patient())
        create(client, episode())
        update(client, patient(), main)
        update(client, patient(), others[0])

    first = history(client, path, _count="2")
    assert len(entries(first)) == 2
    collected, pages = follow(client, first, write_more)
    assert len(collected) == len(set(collected)), "an entry was repeated"
    assert collected == snapshot
    assert pages == (len(snapshot) + 1) // 2


def test_next_link_keeps_count_and_since(client):
    since = "2000-01-01T00:00:00Z"
    for _ in range(3):
        create(client, episode())
    first = history(client, "/fhir/EpisodeOfCare/_history", _count="2", _since=since)
    nxt = link(first, "next")
    assert nxt is not None
    assert "_count=2" in nxt
    assert "_since=" in nxt
    second = client.get(nxt).json()
    assert len(entries(second)) == 1
    assert link(second, "next") is None


def test_count_equal_to_the_total_has_no_next_link(client):
    for _ in range(3):
        create(client, episode())
    bundle = history(client, "/fhir/_history", _count="3")
    assert len(entries(bundle)) == 3
    assert link(bundle, "next") is None


def test_count_of_one_pages_one_version_at_a_time(client):
    rid = create(client, episode("planned"))["id"]
    update(client, episode("active"), rid)
    update(client, episode("finished"), rid)
    first = history(client, f"/fhir/EpisodeOfCare/{rid}/_history", _count="1")
    collected, pages = follow(client, first, lambda: None)
    assert pages == 3
    assert [etag for _, etag in collected] == ['W/"3"', 'W/"2"', 'W/"1"']


# --- bad parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["foo", "_sort", "patient"])
@pytest.mark.parametrize("level", ["system", "type", "instance"])
def test_unknown_history_parameter_is_400(client, level, param):
    rid = create(client, episode())["id"]
    path = {"system": "/fhir/_history", "type": "/fhir/EpisodeOfCare/_history"}.get(
        level, f"/fhir/EpisodeOfCare/{rid}/_history"
    )
    r = client.get(path, params={param: "1"})
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(param in i.get("expression", []) for i in outcome["issue"]), outcome


@pytest.mark.parametrize("count", ["0", "-1", "ten", "1.5"])
def test_bad_count_is_400(client, count):
    r = client.get("/fhir/_history", params={"_count": count})
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_history_of_an_unserved_type_is_404(client):
    r = client.get("/fhir/Observation/_history")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
