"""Transaction Bundles posted to the base (R4 http.html#transaction), on SQLite and PostgreSQL through the
real ASGI app: all or nothing, the prescribed processing order, urn:uuid / urn:oid and conditional
reference resolution, conditional create / update / delete, ifMatch, the transaction-response, limits,
PATCH entries, and a race of conditional creates against a real server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from bundle_helpers import (
    HEADERS,
    SSIN,
    entry,
    episode,
    history_total,
    json_patch,
    located,
    organization,
    outcome,
    patient,
    post,
    put,
    read,
    search_ids,
    seed,
    send,
    status,
)
from live_node import BASE_HOST
from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.settings import Settings

BASE = f"{BASE_HOST}/fhir"


# --- resources ---------------------------------------------------------------------------------------


def consent(patient_ref: str, actor_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient_ref},
        "organization": [{"reference": actor_ref}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "actor": [{"role": {"text": "custodian"}, "reference": {"reference": actor_ref, "display": "PSI"}}],
            "provision": [{"actor": [{"role": {"text": "recipient"}, "reference": {"reference": actor_ref}}]}],
        },
    }


def audit_event(*what: str) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-01-01T10:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "node operator"}}],
        "source": {"observer": {"display": "fhir-node"}},
        "entity": [{"what": {"reference": ref}} for ref in what],
    }


# --- bundles -----------------------------------------------------------------------------------------


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def ok(client, body: Any, **headers: str) -> list[dict[str, Any]]:
    """Post a transaction that must succeed; its response entries."""
    r = send(client, body, **headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["resourceType"] == "Bundle"
    assert out["type"] == "transaction-response"
    return out.get("entry", [])


def ref(response_entry: dict[str, Any]) -> str:
    res_type, res_id, _ = located(response_entry)
    return f"{res_type}/{res_id}"


@pytest.fixture
def node_with(database_url: str) -> Iterator[Callable[..., TestClient]]:
    """A client on this test's database with some settings overridden."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        app = create_app(Settings(database_url=database_url, **overrides))
        test_client = TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000))
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield make
    for test_client in opened:
        test_client.__exit__(None, None, None)


# --- success: writes and the transaction-response ----------------------------------------------------


def test_transaction_creates_every_entry_and_answers_a_transaction_response_in_request_order(client):
    entries = ok(
        client,
        transaction(
            post(organization("PSI Ghent")),
            post(patient("t-1")),
            put("Patient", "client-chosen", patient("t-2")),
        ),
    )
    assert [status(e) for e in entries] == [201, 201, 201]
    assert [located(e)[0] for e in entries] == ["Organization", "Patient", "Patient"]
    assert located(entries[2])[1] == "client-chosen"
    for e in entries:
        assert located(e)[2] == "1"
        assert e["response"]["etag"] == 'W/"1"'
        stored = read(client, ref(e))
        assert stored["meta"]["versionId"] == "1"
        assert e["response"]["lastModified"] == stored["meta"]["lastUpdated"]
    assert read(client, ref(entries[0]))["name"] == "PSI Ghent"
    assert read(client, ref(entries[1]))["identifier"][0]["value"] == "t-1"
    assert history_total(client) == 3


def test_transaction_update_answers_200_with_next_version_and_its_etag(client):
    pid = seed(client, patient("u-1"))
    entries = ok(client, transaction(put("Patient", pid, patient("u-1", active=False))))
    assert status(entries[0]) == 200
    assert located(entries[0]) == ("Patient", pid, "2")
    assert entries[0]["response"]["etag"] == 'W/"2"'
    stored = read(client, f"Patient/{pid}")
    assert stored["active"] is False
    assert entries[0]["response"]["lastModified"] == stored["meta"]["lastUpdated"]


def test_transaction_delete_answers_2xx_and_the_resource_is_gone(client):
    pid = seed(client, patient("d-1"))
    entries = ok(client, transaction(entry("DELETE", f"Patient/{pid}")))
    assert status(entries[0]) in (200, 204)
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410


def test_transaction_entry_urls_may_be_absolute_on_this_base(client):
    entries = ok(client, transaction(entry("POST", f"{BASE}/Organization", organization("Absolute"))))
    assert status(entries[0]) == 201
    assert read(client, ref(entries[0]))["name"] == "Absolute"


def test_empty_transaction_answers_an_empty_transaction_response_and_writes_nothing(client):
    r = send(client, {"resourceType": "Bundle", "type": "transaction"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "transaction-response"
    assert r.json().get("entry", []) == []
    assert history_total(client) == 0


def test_prefer_return_representation_puts_each_written_resource_in_its_entry(client):
    pid = seed(client, patient("rep-1"))
    entries = ok(
        client,
        transaction(
            post(organization("Represented"), "urn:uuid:3f1b3a52-7a43-4cfb-9d6c-1a0c3f1e0a01"),
            put(
                "Patient",
                pid,
                patient("rep-1", managingOrganization={"reference": "urn:uuid:3f1b3a52-7a43-4cfb-9d6c-1a0c3f1e0a01"}),
            ),
        ),
        Prefer="return=representation",
    )
    org, pat = entries[0]["resource"], entries[1]["resource"]
    assert org["resourceType"] == "Organization" and org["name"] == "Represented"
    assert org["id"] == located(entries[0])[1] and org["meta"]["versionId"] == "1"
    assert pat["id"] == pid and pat["meta"]["versionId"] == "2"
    assert pat["managingOrganization"]["reference"] == ref(entries[0])
    assert org == read(client, ref(entries[0]))


def test_prefer_return_minimal_leaves_resources_out_of_the_entries(client):
    entries = ok(client, transaction(post(organization())), Prefer="return=minimal")
    assert status(entries[0]) == 201
    assert "resource" not in entries[0]


# --- processing order: DELETE, POST, PUT/PATCH, GET --------------------------------------------------


def test_get_entry_placed_first_sees_resources_created_by_later_entries(client):
    entries = ok(
        client,
        transaction(
            entry("GET", f"Patient?identifier={SSIN}|order-get"),
            post(patient("order-get")),
        ),
    )
    assert status(entries[0]) == 200
    found = entries[0]["resource"]
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset"
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [located(entries[1])[1]]
    assert status(entries[1]) == 201


def test_read_entry_placed_first_sees_the_update_made_by_a_later_put(client):
    pid = seed(client, patient("order-read"))
    entries = ok(
        client,
        transaction(
            entry("GET", f"Patient/{pid}"),
            put("Patient", pid, patient("order-read", active=False)),
        ),
    )
    assert status(entries[0]) == 200
    assert entries[0]["resource"]["active"] is False
    assert entries[0]["resource"]["meta"]["versionId"] == "2"


def test_delete_runs_before_post_whatever_their_order_in_the_bundle(client):
    """POST then conditional DELETE on the same identifier: in Bundle order the DELETE would find two
    Patients (412) or delete the new one; in R4 order it deletes the old one and the new one stays."""
    old = seed(client, patient("order-del"))
    entries = ok(
        client,
        transaction(
            post(patient("order-del", active=True)),
            entry("DELETE", f"Patient?identifier={SSIN}|order-del"),
        ),
    )
    assert status(entries[0]) == 201
    assert status(entries[1]) in (200, 204)
    new = located(entries[0])[1]
    assert new != old
    assert search_ids(client, "Patient", identifier=f"{SSIN}|order-del") == [new]
    assert client.get(f"/fhir/Patient/{old}").status_code == 410
    assert read(client, f"Patient/{new}")["active"] is True


# --- urn:uuid and urn:oid fullUrls -------------------------------------------------------------------


def test_urn_uuid_references_are_resolved_everywhere_including_nested_and_array_ones(client):
    org_url = "urn:uuid:0d4c7d7e-2f8b-4c61-9a55-6f3e4f0b1a11"
    pat_url = "urn:uuid:5b2a1f30-8c4e-4f0e-b3a1-2c9d7e6f5a22"
    epi_url = "urn:uuid:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c33"
    entries = ok(
        client,
        transaction(
            # Referencing entries come first: resolution must not depend on the order.
            post(audit_event(pat_url, epi_url)),
            post(consent(pat_url, org_url)),
            post(episode(pat_url, managingOrganization={"reference": org_url}), epi_url),
            post(
                patient(
                    "refs-1",
                    managingOrganization={"reference": org_url},
                    generalPractitioner=[{"reference": org_url}, {"reference": org_url, "display": "again"}],
                    extension=[{"url": "http://example.org/fhir/ext/org", "valueReference": {"reference": org_url}}],
                ),
                pat_url,
            ),
            post(organization("Referenced"), org_url),
        ),
    )
    assert [status(e) for e in entries] == [201] * 5
    audit_ref, consent_ref, epi_ref, pat_ref, org_ref = (ref(e) for e in entries)

    audit = read(client, audit_ref)
    assert [e["what"]["reference"] for e in audit["entity"]] == [pat_ref, epi_ref]
    cons = read(client, consent_ref)
    assert cons["patient"]["reference"] == pat_ref
    assert cons["organization"][0]["reference"] == org_ref
    assert cons["provision"]["actor"][0]["reference"] == {"reference": org_ref, "display": "PSI"}
    assert cons["provision"]["provision"][0]["actor"][0]["reference"]["reference"] == org_ref
    epi = read(client, epi_ref)
    assert epi["patient"]["reference"] == pat_ref
    assert epi["managingOrganization"]["reference"] == org_ref
    pat = read(client, pat_ref)
    assert pat["managingOrganization"]["reference"] == org_ref
    assert pat["generalPractitioner"] == [{"reference": org_ref}, {"reference": org_ref, "display": "again"}]
    assert pat["extension"][0]["valueReference"]["reference"] == org_ref
    assert "urn:uuid:" not in orjson.dumps([audit, cons, epi, pat]).decode()


def test_resolved_references_are_searchable(client):
    pat_url = "urn:uuid:6a0b4f8e-1c2d-4e3f-9a8b-7c6d5e4f3a44"
    entries = ok(client, transaction(post(episode(pat_url)), post(patient("refs-search"), pat_url)))
    assert search_ids(client, "EpisodeOfCare", patient=ref(entries[1])) == [located(entries[0])[1]]


def test_urn_oid_full_urls_are_resolved(client):
    oid = "urn:oid:1.2.840.10003.5.109"
    entries = ok(
        client,
        transaction(post(patient("oid-1", managingOrganization={"reference": oid})), post(organization("OID"), oid)),
    )
    assert read(client, ref(entries[0]))["managingOrganization"]["reference"] == ref(entries[1])


def test_put_entry_full_url_resolves_to_the_put_id(client):
    pat_url = "urn:uuid:7b1c5e9f-2d3e-4f40-8b9c-8d7e6f5a4b55"
    entries = ok(client, transaction(post(episode(pat_url)), put("Patient", "put-target", patient("put-1"), pat_url)))
    assert read(client, ref(entries[0]))["patient"]["reference"] == "Patient/put-target"


def test_reference_to_an_unknown_urn_uuid_is_400_and_writes_nothing(client):
    r = send(
        client,
        transaction(
            post(organization("Would be written")),
            post(episode("urn:uuid:00000000-0000-4000-8000-000000000000")),
        ),
    )
    assert r.status_code == 400, r.text
    issues = outcome(r)["issue"]
    assert any("urn:uuid:00000000-0000-4000-8000-000000000000" in i["diagnostics"] for i in issues)
    assert any(x.startswith("Bundle.entry[1]") for i in issues for x in i.get("expression", []))
    assert history_total(client) == 0


# --- conditional create (ifNoneExist) ----------------------------------------------------------------


def test_if_none_exist_with_a_match_creates_nothing_and_answers_200_with_the_existing_location(client):
    existing = seed(client, patient("ine-1"))
    pat_url = "urn:uuid:8c2d6fa0-3e4f-4051-9cad-9e8f7a6b5c66"
    entries = ok(
        client,
        transaction(
            post(episode(pat_url)),
            post(patient("ine-1", active=False), pat_url, ifNoneExist=f"identifier={SSIN}|ine-1"),
        ),
    )
    assert status(entries[1]) == 200
    assert located(entries[1]) == ("Patient", existing, "1")
    assert entries[1]["response"]["etag"] == 'W/"1"'
    assert read(client, ref(entries[0]))["patient"]["reference"] == f"Patient/{existing}"
    assert search_ids(client, "Patient", identifier=f"{SSIN}|ine-1") == [existing]
    assert "active" not in read(client, f"Patient/{existing}")  # the match is not updated either
    assert history_total(client) == 2  # the seeded Patient and the new EpisodeOfCare


def test_if_none_exist_without_a_match_creates(client):
    seed(client, patient("ine-other"))
    pat_url = "urn:uuid:9d3e70b1-4f50-4162-8dbe-af9f8b7c6d77"
    entries = ok(
        client,
        transaction(post(patient("ine-2"), pat_url, ifNoneExist=f"identifier={SSIN}|ine-2"), post(episode(pat_url))),
    )
    assert status(entries[0]) == 201
    new = located(entries[0])[1]
    assert search_ids(client, "Patient", identifier=f"{SSIN}|ine-2") == [new]
    assert read(client, ref(entries[1]))["patient"]["reference"] == f"Patient/{new}"


def test_many_if_none_exist_are_matched_each_against_what_exists(client):
    """150 conditional creates (two groups of the node's one-query-per-100 lookup), five of which exist:
    exactly those five are matched, the rest created once."""
    existing = {n: seed(client, patient(f"many-{n}")) for n in (0, 42, 99, 100, 149)}
    entries = ok(
        client,
        transaction(*(post(patient(f"many-{n}"), ifNoneExist=f"identifier={SSIN}|many-{n}") for n in range(150))),
    )
    assert {n for n, e in enumerate(entries) if status(e) == 200} == set(existing)
    assert all(located(entries[n])[1] == existing[n] for n in existing)
    assert len(search_ids(client, "Patient")) == 150


def test_if_none_exist_of_one_bundle_are_looked_up_together(client):
    """100 conditional creates of Patients that do not exist: their criteria go to the database together,
    not one (or two: before and under the write lock) lookup per entry."""
    lookups: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "idx_token" in statement:
            lookups.append(statement)

    event.listen(Engine, "before_cursor_execute", note)
    try:
        ok(
            client,
            transaction(*(post(patient(f"new-{n}"), ifNoneExist=f"identifier={SSIN}|new-{n}") for n in range(100))),
        )
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    assert 0 < len(lookups) <= 4, len(lookups)
    assert len(search_ids(client, "Patient")) == 100


# --- conditional update and delete -------------------------------------------------------------------


def test_conditional_update_with_one_match_updates_it_and_its_full_url_resolves_to_it(client):
    existing = seed(client, patient("cu-1"))
    pat_url = "urn:uuid:ae4f81c2-5061-4273-9ecf-b0a09c8d7e88"
    entries = ok(
        client,
        transaction(
            post(episode(pat_url)),
            entry("PUT", f"Patient?identifier={SSIN}|cu-1", patient("cu-1", active=False), pat_url),
        ),
    )
    assert status(entries[1]) == 200
    assert located(entries[1]) == ("Patient", existing, "2")
    assert read(client, f"Patient/{existing}")["active"] is False
    assert read(client, ref(entries[0]))["patient"]["reference"] == f"Patient/{existing}"
    assert search_ids(client, "Patient") == [existing]


def test_conditional_update_without_a_match_creates(client):
    entries = ok(client, transaction(entry("PUT", f"Patient?identifier={SSIN}|cu-new", patient("cu-new"))))
    assert status(entries[0]) == 201
    assert search_ids(client, "Patient", identifier=f"{SSIN}|cu-new") == [located(entries[0])[1]]


def test_conditional_delete_removes_the_one_match(client):
    gone = seed(client, patient("cd-1"))
    kept = seed(client, patient("cd-2"))
    entries = ok(client, transaction(entry("DELETE", f"Patient?identifier={SSIN}|cd-1")))
    assert status(entries[0]) in (200, 204)
    assert client.get(f"/fhir/Patient/{gone}").status_code == 410
    assert search_ids(client, "Patient") == [kept]


def test_conditional_delete_without_a_match_succeeds_and_writes_nothing(client):
    seed(client, patient("cd-other"))
    entries = ok(client, transaction(entry("DELETE", f"Patient?identifier={SSIN}|cd-none")))
    assert status(entries[0]) in (200, 204)
    assert history_total(client) == 1


# --- conditional references --------------------------------------------------------------------------


def test_conditional_reference_with_one_match_is_rewritten_to_it(client):
    target = seed(client, patient("cr-1"))
    seed(client, patient("cr-other"))
    entries = ok(
        client,
        transaction(
            post(episode(f"Patient?identifier={SSIN}|cr-1")),
            post(audit_event(f"Patient?identifier={SSIN}|cr-1")),
        ),
    )
    assert read(client, ref(entries[0]))["patient"]["reference"] == f"Patient/{target}"
    assert read(client, ref(entries[1]))["entity"][0]["what"]["reference"] == f"Patient/{target}"


def test_conditional_reference_without_a_match_fails_the_transaction_with_404(client):
    seed(client, patient("cr-other"))
    before = history_total(client)
    r = send(client, transaction(post(organization()), post(episode(f"Patient?identifier={SSIN}|cr-none"))))
    assert r.status_code == 404, r.text
    assert any(f"Patient?identifier={SSIN}|cr-none" in i["diagnostics"] for i in outcome(r)["issue"])
    assert history_total(client) == before
    assert search_ids(client, "Organization") == []


def test_conditional_reference_with_several_matches_fails_the_transaction_with_412(client):
    seed(client, patient("cr-dup"))
    seed(client, patient("cr-dup"))
    before = history_total(client)
    r = send(client, transaction(post(organization()), post(episode(f"Patient?identifier={SSIN}|cr-dup"))))
    assert r.status_code == 412, r.text
    assert any(f"Patient?identifier={SSIN}|cr-dup" in i["diagnostics"] for i in outcome(r)["issue"])
    assert history_total(client) == before
    assert search_ids(client, "EpisodeOfCare") == []


# --- ifMatch -----------------------------------------------------------------------------------------


def test_if_match_with_the_current_version_updates(client):
    pid = seed(client, patient("im-1"))
    entries = ok(client, transaction(put("Patient", pid, patient("im-1", active=True), ifMatch='W/"1"')))
    assert located(entries[0]) == ("Patient", pid, "2")


def test_stale_if_match_fails_the_whole_transaction_with_412_and_writes_nothing(client):
    pid = seed(client, patient("im-2"))
    assert send(client, transaction(put("Patient", pid, patient("im-2", active=True)))).status_code == 200
    before = history_total(client)
    r = send(
        client,
        transaction(
            post(organization("Not written")),
            put("Patient", pid, patient("im-2", active=False), ifMatch='W/"1"'),
        ),
    )
    assert r.status_code == 412, r.text
    outcome(r)
    assert history_total(client) == before
    assert read(client, f"Patient/{pid}")["active"] is True
    assert search_ids(client, "Organization") == []


# --- all or nothing ----------------------------------------------------------------------------------

DUP_URL = "urn:uuid:bf5a92d3-6172-4384-afd0-c1b1ad9e8f99"


def _failing_bundles(pid: str) -> dict[str, tuple[list[dict[str, Any]], int, str | None]]:
    """id -> (entries, expected status, expected start of an issue expression). Every bundle holds valid
    writes too, so a partial commit would show in the counts. `pid` is a Patient at version 2 and two
    Patients share the identifier `dup`."""
    good = [post(organization("Rolled back")), put("Patient", pid, patient("seed", active=False))]
    return {
        "invalid-resource": (
            [
                *good,
                {
                    "resource": {"resourceType": "EpisodeOfCare", "patient": {"reference": f"Patient/{pid}"}},
                    "request": {"method": "POST", "url": "EpisodeOfCare"},
                },
            ],
            400,
            "Bundle.entry[2].resource",
        ),
        "unknown-element": (
            [*good, post(patient("x", favouriteColour="blue"))],
            400,
            "Bundle.entry[2].resource",
        ),
        "invalid-code-after-reordering": (
            # A DELETE and a GET around it: the expression must still name the entry's own position.
            [
                entry("GET", "Patient"),
                *good,
                post(patient("y", gender="bogus")),
                entry("DELETE", "Organization?name=nobody"),
            ],
            400,
            "Bundle.entry[3].resource",
        ),
        "resource-type-not-the-url-type": ([*good, entry("POST", "Patient", organization())], 400, None),
        "unknown-type": ([*good, entry("POST", "Spaceship", {"resourceType": "Spaceship"})], 404, None),
        "stale-if-match": ([*good[:1], put("Patient", pid, patient("seed"), ifMatch='W/"1"')], 412, None),
        "stale-if-match-on-delete": ([*good[:1], entry("DELETE", f"Patient/{pid}", ifMatch='W/"1"')], 412, None),
        "duplicate-if-none-exist-match": (
            [*good, post(patient("dup"), ifNoneExist=f"identifier={SSIN}|dup")],
            412,
            None,
        ),
        "duplicate-conditional-update-match": (
            [*good, entry("PUT", f"Patient?identifier={SSIN}|dup", patient("dup"))],
            412,
            None,
        ),
        "duplicate-conditional-delete-match": ([*good, entry("DELETE", f"Patient?identifier={SSIN}|dup")], 412, None),
        "two-entries-on-one-resource": (
            [*good, put("Patient", "twice", patient("a")), put("Patient", "twice", patient("b"))],
            400,
            None,
        ),
        "put-and-delete-on-one-resource": ([good[0], good[1], entry("DELETE", f"Patient/{pid}")], 400, None),
        "two-entries-with-one-full-url": (
            [*good, post(organization("A"), DUP_URL), post(organization("B"), DUP_URL)],
            400,
            None,
        ),
        "append-only-type-updated": ([*good, put("AuditEvent", "ae-1", audit_event())], 405, None),
        "invalid-id-in-url": ([*good, put("Patient", "bad_id!", patient("z"))], 400, None),
        "failing-patch-test": (
            [*good[:1], json_patch("Patient", pid, [{"op": "test", "path": "/active", "value": False}])],
            422,
            None,
        ),
        "read-of-an-unknown-resource": ([*good, entry("GET", "Patient/does-not-exist")], 404, None),
    }


FAILING = list(_failing_bundles("x"))


@pytest.mark.parametrize("case", FAILING)
def test_a_failing_entry_fails_the_whole_transaction_and_writes_nothing(client, case):
    pid = seed(client, patient("seed"))
    assert send(client, transaction(put("Patient", pid, patient("seed", active=True)))).status_code == 200
    seed(client, patient("dup"))
    seed(client, patient("dup"))
    entries, expected, expression = _failing_bundles(pid)[case]
    before_history = history_total(client)
    before = {t: search_ids(client, t) for t in ("Patient", "Organization", "EpisodeOfCare", "AuditEvent")}

    r = send(client, transaction(*entries))

    assert r.status_code == expected, r.text
    issues = outcome(r)["issue"]
    if expression is not None:
        expressions = [x for i in issues for x in i.get("expression", [])]
        assert any(x.startswith(expression) for x in expressions), issues
    assert history_total(client) == before_history
    assert {t: search_ids(client, t) for t in before} == before
    current = read(client, f"Patient/{pid}")
    assert current["meta"]["versionId"] == "2" and current["active"] is True


def test_invalid_resource_outcome_names_the_missing_element_under_its_entry(client):
    r = send(
        client,
        transaction(
            post(organization()),
            {
                "resource": {"resourceType": "EpisodeOfCare", "patient": {"reference": "Patient/p"}},
                "request": {"method": "POST", "url": "EpisodeOfCare"},
            },
        ),
    )
    assert r.status_code == 400, r.text
    expressions = [x for i in outcome(r)["issue"] for x in i.get("expression", [])]
    assert "Bundle.entry[1].resource.status" in expressions
    assert history_total(client) == 0


# --- PATCH entries -----------------------------------------------------------------------------------


def test_patch_entry_applies_a_json_patch_carried_as_a_binary(client):
    pid = seed(client, patient("patch-1", active=True))
    entries = ok(
        client,
        transaction(
            json_patch(
                "Patient",
                pid,
                [
                    {"op": "test", "path": "/active", "value": True},
                    {"op": "replace", "path": "/active", "value": False},
                    {"op": "add", "path": "/gender", "value": "female"},
                ],
                ifMatch='W/"1"',
            ),
            post(organization("Alongside")),
        ),
    )
    assert status(entries[0]) == 200
    assert located(entries[0]) == ("Patient", pid, "2")
    stored = read(client, f"Patient/{pid}")
    assert stored["active"] is False and stored["gender"] == "female"
    assert stored["identifier"][0]["value"] == "patch-1"
    assert status(entries[1]) == 201


def test_patch_entry_urn_uuid_reference_resolves_to_the_entry_created_alongside(client):
    pid = seed(client, patient("patch-ref"))
    org_url = "urn:uuid:c06ba3e4-7283-4495-b0e1-d2c2be0f9a00"
    entries = ok(
        client,
        transaction(
            json_patch(
                "Patient", pid, [{"op": "add", "path": "/managingOrganization", "value": {"reference": org_url}}]
            ),
            post(organization("Patched in"), org_url),
        ),
    )
    assert read(client, f"Patient/{pid}")["managingOrganization"]["reference"] == ref(entries[1])


def test_patch_entry_with_stale_if_match_fails_the_transaction_with_412(client):
    pid = seed(client, patient("patch-stale"))
    r = send(
        client,
        transaction(
            post(organization()),
            json_patch("Patient", pid, [{"op": "add", "path": "/active", "value": True}], ifMatch='W/"7"'),
        ),
    )
    assert r.status_code == 412, r.text
    assert history_total(client) == 1


def test_patch_entry_whose_resource_is_not_a_binary_patch_is_400(client):
    pid = seed(client, patient("patch-bad"))
    r = send(client, transaction(entry("PATCH", f"Patient/{pid}", patient("patch-bad", active=True))))
    assert r.status_code == 400, r.text
    assert history_total(client) == 1


# --- what may be posted to the base ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bundle_type", ["document", "collection", "searchset", "history", "message", "transaction-response"]
)
def test_other_bundle_types_are_400_and_write_nothing(client, bundle_type):
    body = {
        "resourceType": "Bundle",
        "type": bundle_type,
        "entry": [{"fullUrl": "urn:uuid:1", "resource": organization()}],
    }
    r = send(client, body)
    assert r.status_code == 400, r.text
    outcome(r)
    assert history_total(client) == 0


def test_bundle_without_type_is_400(client):
    r = send(client, {"resourceType": "Bundle", "entry": [post(organization())]})
    assert r.status_code == 400, r.text
    assert history_total(client) == 0


@pytest.mark.parametrize(
    "body", [organization(), [transaction(post(organization()))], "Bundle", {"type": "transaction"}]
)
def test_a_non_bundle_posted_to_the_base_is_400(client, body):
    r = send(client, body)
    assert r.status_code == 400, r.text
    outcome(r)
    assert history_total(client) == 0


def test_malformed_json_posted_to_the_base_is_400(client):
    r = client.post("/fhir", content=b'{"resourceType": "Bundle", "type": ', headers=HEADERS)
    assert r.status_code == 400, r.text
    outcome(r)


def test_entry_without_a_request_is_400(client):
    r = send(client, transaction({"resource": organization()}))
    assert r.status_code == 400, r.text
    assert history_total(client) == 0


@pytest.mark.parametrize("bundle_type", ["transaction", "batch"])
def test_more_entries_than_max_bundle_entries_is_a_clear_4xx_and_writes_nothing(node_with, bundle_type):
    node = node_with(max_bundle_entries=3)
    at_limit = {"resourceType": "Bundle", "type": bundle_type, "entry": [post(organization(f"O{n}")) for n in range(3)]}
    r = send(node, at_limit)
    assert r.status_code == 200, r.text
    over = {"resourceType": "Bundle", "type": bundle_type, "entry": [post(organization(f"P{n}")) for n in range(4)]}
    r = send(node, over)
    assert 400 <= r.status_code < 500, r.text
    issues = outcome(r)["issue"]
    assert any("3" in i["diagnostics"] and "4" in i["diagnostics"] for i in issues), issues
    assert history_total(node) == 3


@pytest.mark.parametrize("bundle_type", ["transaction", "batch"])
def test_body_over_max_body_bytes_is_413_and_writes_nothing(node_with, bundle_type):
    node = node_with(max_body_bytes=4096)
    small = {"resourceType": "Bundle", "type": bundle_type, "entry": [post(organization("small"))]}
    assert send(node, small).status_code == 200
    big = {"resourceType": "Bundle", "type": bundle_type, "entry": [post(organization("x" * 5000))]}
    r = send(node, big)
    assert r.status_code == 413, r.text
    outcome(r)
    assert history_total(node) == 1


# --- concurrency on a real server --------------------------------------------------------------------


def test_racing_conditional_create_transactions_make_exactly_one_resource(live_server):
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    lock = threading.Lock()
    responses: list[httpx.Response] = []
    errors: list[BaseException] = []
    pat_url = "urn:uuid:d17cb4f5-8394-45a6-81f2-e3d3cf1a0b11"

    def racer(n: int) -> None:
        body = transaction(
            post(patient("race-1"), pat_url, ifNoneExist=f"identifier={SSIN}|race-1"),
            post(episode(pat_url, identifier=[{"system": "urn:test:racer", "value": str(n)}])),
        )
        try:
            with httpx.Client(timeout=60) as http:
                barrier.wait()
                r = http.post(live_server, content=orjson.dumps(body), headers=HEADERS)
            with lock:
                responses.append(r)
        except BaseException as exc:  # reported below, so a failing thread fails the test
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(responses) == threads_n
    assert all(r.status_code in (200, 409) for r in responses), [(r.status_code, r.text) for r in responses]
    won = [r.json()["entry"] for r in responses if r.status_code == 200]
    assert won
    assert sorted(status(e[0]) for e in won) == [200] * (len(won) - 1) + [201]

    found = httpx.get(f"{live_server}/Patient", params={"identifier": f"{SSIN}|race-1"}).json()
    ids = [e["resource"]["id"] for e in found.get("entry", [])]
    assert len(ids) == 1, ids
    assert {located(e[0])[1] for e in won} == set(ids)
    episodes = httpx.get(f"{live_server}/EpisodeOfCare", params={"_count": "100"}).json()
    assert len(episodes.get("entry", [])) == len(won)
    assert {e["resource"]["patient"]["reference"] for e in episodes["entry"]} == {f"Patient/{ids[0]}"}


def test_two_entries_conditionally_creating_the_same_resource_are_refused(client):
    before = history_total(client)
    body = transaction(
        post(patient("85073003328"), ifNoneExist="identifier=85073003328"),
        post(patient("85073003328"), ifNoneExist="identifier=85073003328"),
    )
    r = send(client, body)
    assert r.status_code == 400
    assert outcome(r)["issue"][0]["expression"] == ["Bundle.entry[1].request.ifNoneExist"]
    assert history_total(client) == before
