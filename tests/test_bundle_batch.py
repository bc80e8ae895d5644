"""Batch Bundles posted to the base (R4 http.html#transaction): every entry on its own, with its own
response (and an OperationOutcome in response.outcome when it fails) in a batch-response; a failing
entry stops nothing else. On SQLite and PostgreSQL through the real ASGI app."""

from __future__ import annotations

from typing import Any

import pytest
from bundle_helpers import (
    HEADERS,
    SSIN,
    entry,
    history_total,
    json_patch,
    located,
    organization,
    patient,
    post,
    put,
    read,
    search_ids,
    seed,
    send,
    status,
)

# --- resources and bundles ---------------------------------------------------------------------------


def batch(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


def ok(client, body: Any, **headers: str) -> list[dict[str, Any]]:
    """Post a batch: the request itself succeeds (200) whatever its entries do; their responses."""
    r = send(client, body, **headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["resourceType"] == "Bundle"
    assert out["type"] == "batch-response"
    responses = out.get("entry", [])
    assert len(responses) == len(body["entry"])
    return responses


def failed(response_entry: dict[str, Any], expected: int) -> dict[str, Any]:
    """A failed entry: its status, no location, and an OperationOutcome in response.outcome."""
    assert status(response_entry) == expected, response_entry
    response = response_entry["response"]
    assert "location" not in response
    oo = response.get("outcome")
    assert oo and oo["resourceType"] == "OperationOutcome", response_entry
    assert oo["issue"] and all(i["severity"] in ("error", "fatal") for i in oo["issue"]), oo
    return oo


# --- success -----------------------------------------------------------------------------------------


def test_batch_answers_a_batch_response_with_one_response_per_entry_in_order(client):
    pid = seed(client, patient("b-1"))
    gone = seed(client, organization("to delete"))
    responses = ok(
        client,
        batch(
            post(organization("Batch org")),
            put("Patient", pid, patient("b-1", active=False)),
            put("Patient", "batch-new", patient("b-2")),
            entry("DELETE", f"Organization/{gone}"),
            entry("GET", f"Patient/{pid}"),
        ),
    )
    assert [status(e) for e in responses[:3]] == [201, 200, 201]
    assert status(responses[3]) in (200, 204)
    assert status(responses[4]) == 200
    assert located(responses[0])[0] == "Organization"
    assert located(responses[1]) == ("Patient", pid, "2")
    assert located(responses[2]) == ("Patient", "batch-new", "1")
    for e in responses[:3]:
        stored = read(client, "/".join(located(e)[:2]))
        assert e["response"]["etag"] == f'W/"{stored["meta"]["versionId"]}"'
        assert e["response"]["lastModified"] == stored["meta"]["lastUpdated"]
    assert client.get(f"/fhir/Organization/{gone}").status_code == 410
    assert responses[4]["resource"]["id"] == pid


def test_a_failing_entry_does_not_stop_the_others(client):
    pid = seed(client, patient("b-fail", active=True))
    assert client.put(f"/fhir/Patient/{pid}", json={**patient("b-fail"), "id": pid}, headers=HEADERS).status_code == 200
    before = history_total(client)
    responses = ok(
        client,
        batch(
            post(organization("First")),
            post({"resourceType": "EpisodeOfCare", "patient": {"reference": f"Patient/{pid}"}}),  # no status
            put("Patient", pid, patient("b-fail", active=False), ifMatch='W/"1"'),  # stale
            entry("DELETE", "Patient/never-existed"),
            entry("GET", "Patient/never-existed"),
            post(patient("b-fail-2", gender="bogus")),
            post(organization("Last")),
        ),
    )
    assert status(responses[0]) == 201
    oo = failed(responses[1], 400)
    assert any("status" in x for i in oo["issue"] for x in i.get("expression", [])), oo
    failed(responses[2], 412)
    failed(responses[3], 404)
    failed(responses[4], 404)
    failed(responses[5], 400)
    assert status(responses[6]) == 201
    assert history_total(client) == before + 2
    names = sorted(read(client, f"Organization/{i}")["name"] for i in search_ids(client, "Organization"))
    assert names == ["First", "Last"]
    assert search_ids(client, "EpisodeOfCare") == []
    assert read(client, f"Patient/{pid}")["meta"]["versionId"] == "2"


def test_an_entry_of_an_unknown_type_fails_alone_with_404(client):
    responses = ok(
        client,
        batch(
            post(organization("Before")),
            entry("POST", "Spaceship", {"resourceType": "Spaceship"}),
            entry("GET", "Spaceship/1"),
            post(organization("After")),
        ),
    )
    assert status(responses[0]) == 201
    failed(responses[1], 404)
    failed(responses[2], 404)
    assert status(responses[3]) == 201
    assert len(search_ids(client, "Organization")) == 2


def test_an_entry_with_an_invalid_id_fails_alone_with_400(client):
    responses = ok(client, batch(put("Patient", "bad_id!", patient("x")), post(organization("Still written"))))
    failed(responses[0], 400)
    assert status(responses[1]) == 201
    assert len(search_ids(client, "Organization")) == 1


def test_a_resource_type_not_matching_the_url_fails_alone_with_400(client):
    responses = ok(client, batch(entry("POST", "Patient", organization()), post(patient("kept"))))
    failed(responses[0], 400)
    assert status(responses[1]) == 201
    assert len(search_ids(client, "Patient")) == 1
    assert search_ids(client, "Organization") == []


def test_an_update_on_an_append_only_type_fails_alone_with_405(client):
    responses = ok(
        client,
        batch(
            put("AuditEvent", "ae-1", {"resourceType": "AuditEvent"}),
            post(organization("Kept")),
        ),
    )
    failed(responses[0], 405)
    assert status(responses[1]) == 201


# --- conditional entries -----------------------------------------------------------------------------


def test_if_none_exist_match_answers_200_with_the_existing_location_and_creates_nothing(client):
    existing = seed(client, patient("b-ine"))
    responses = ok(
        client,
        batch(
            post(patient("b-ine", active=False), ifNoneExist=f"identifier={SSIN}|b-ine"),
            post(patient("b-ine-new"), ifNoneExist=f"identifier={SSIN}|b-ine-new"),
        ),
    )
    assert status(responses[0]) == 200
    assert located(responses[0]) == ("Patient", existing, "1")
    assert status(responses[1]) == 201
    assert search_ids(client, "Patient", identifier=f"{SSIN}|b-ine") == [existing]
    assert search_ids(client, "Patient", identifier=f"{SSIN}|b-ine-new") == [located(responses[1])[1]]


def test_if_none_exist_with_several_matches_fails_alone_with_412(client):
    seed(client, patient("b-dup"))
    seed(client, patient("b-dup"))
    responses = ok(
        client,
        batch(post(patient("b-dup"), ifNoneExist=f"identifier={SSIN}|b-dup"), post(organization("Kept"))),
    )
    failed(responses[0], 412)
    assert status(responses[1]) == 201
    assert len(search_ids(client, "Patient", identifier=f"{SSIN}|b-dup")) == 2


def test_conditional_update_and_delete_entries(client):
    updated = seed(client, patient("b-cu"))
    deleted = seed(client, patient("b-cd"))
    seed(client, patient("b-many"))
    seed(client, patient("b-many"))
    responses = ok(
        client,
        batch(
            entry("PUT", f"Patient?identifier={SSIN}|b-cu", patient("b-cu", active=False)),
            entry("PUT", f"Patient?identifier={SSIN}|b-cu-new", patient("b-cu-new")),
            entry("DELETE", f"Patient?identifier={SSIN}|b-cd"),
            entry("PUT", f"Patient?identifier={SSIN}|b-many", patient("b-many")),
            entry("DELETE", f"Patient?identifier={SSIN}|b-many"),
        ),
    )
    assert status(responses[0]) == 200
    assert located(responses[0]) == ("Patient", updated, "2")
    assert read(client, f"Patient/{updated}")["active"] is False
    assert status(responses[1]) == 201
    assert search_ids(client, "Patient", identifier=f"{SSIN}|b-cu-new") == [located(responses[1])[1]]
    assert status(responses[2]) in (200, 204)
    assert client.get(f"/fhir/Patient/{deleted}").status_code == 410
    failed(responses[3], 412)
    failed(responses[4], 412)
    assert len(search_ids(client, "Patient", identifier=f"{SSIN}|b-many")) == 2


def test_if_match_entries(client):
    pid = seed(client, patient("b-im"))
    responses = ok(client, batch(put("Patient", pid, patient("b-im", active=True), ifMatch='W/"1"')))
    assert located(responses[0]) == ("Patient", pid, "2")
    responses = ok(client, batch(put("Patient", pid, patient("b-im", active=False), ifMatch='W/"1"')))
    failed(responses[0], 412)
    assert read(client, f"Patient/{pid}")["active"] is True


# --- PATCH and GET entries ---------------------------------------------------------------------------


def test_patch_entries_succeed_or_fail_each_on_its_own(client):
    a = seed(client, patient("b-pa", active=True))
    b = seed(client, patient("b-pb", active=True))
    responses = ok(
        client,
        batch(
            json_patch("Patient", a, [{"op": "replace", "path": "/active", "value": False}]),
            json_patch("Patient", b, [{"op": "test", "path": "/active", "value": False}]),
            json_patch("Patient", "never-existed", [{"op": "add", "path": "/active", "value": True}]),
            json_patch("Patient", a, [{"op": "add", "path": "/gender", "value": "other"}], ifMatch='W/"1"'),
        ),
    )
    assert status(responses[0]) == 200
    assert located(responses[0]) == ("Patient", a, "2")
    assert read(client, f"Patient/{a}")["active"] is False
    failed(responses[1], 422)
    assert read(client, f"Patient/{b}")["meta"]["versionId"] == "1"
    failed(responses[2], 404)
    failed(responses[3], 412)
    assert "gender" not in read(client, f"Patient/{a}")


def test_get_entries_carry_reads_and_searches(client):
    pid = seed(client, patient("b-get"))
    responses = ok(
        client,
        batch(
            entry("GET", f"Patient/{pid}"),
            entry("GET", f"Patient?identifier={SSIN}|b-get"),
            entry("GET", f"Patient/{pid}/_history/1"),
            entry("GET", "Patient?unknown-parameter=1"),
        ),
    )
    assert status(responses[0]) == 200
    assert responses[0]["resource"]["id"] == pid
    assert responses[0]["response"]["etag"] == 'W/"1"'
    found = responses[1]["resource"]
    assert found["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["entry"]] == [pid]
    assert responses[2]["resource"]["meta"]["versionId"] == "1"
    failed(responses[3], 400)


def test_read_entry_of_a_deleted_resource_is_410(client):
    pid = seed(client, patient("b-gone"))
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    responses = ok(client, batch(entry("GET", f"Patient/{pid}"), entry("GET", "Patient")))
    failed(responses[0], 410)
    assert status(responses[1]) == 200


# --- Prefer ------------------------------------------------------------------------------------------


def test_prefer_return_representation_puts_each_written_resource_in_its_entry(client):
    pid = seed(client, patient("b-rep"))
    responses = ok(
        client,
        batch(post(organization("Shown")), put("Patient", pid, patient("b-rep", active=True)), post(organization())),
        Prefer="return=representation",
    )
    org = responses[0]["resource"]
    assert org["resourceType"] == "Organization" and org["name"] == "Shown"
    assert org["id"] == located(responses[0])[1]
    assert org == read(client, f"Organization/{org['id']}")
    assert responses[1]["resource"]["active"] is True
    assert responses[1]["resource"]["meta"]["versionId"] == "2"


def test_prefer_return_minimal_leaves_resources_out(client):
    responses = ok(client, batch(post(organization())), Prefer="return=minimal")
    assert status(responses[0]) == 201
    assert "resource" not in responses[0]


@pytest.mark.parametrize("count", [0, 1])
def test_small_batches(client, count):
    responses = ok(client, batch(*[post(organization(f"O{n}")) for n in range(count)]))
    assert [status(e) for e in responses] == [201] * count
    assert history_total(client) == count
