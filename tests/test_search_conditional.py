"""Conditional update (PUT [type]?criteria) and conditional delete (DELETE [type]?criteria): the criteria
are a search, so what matches is what a search finds; zero, one and several matches behave differently."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
import pytest
from search_data import FHIR_JSON, SSIN, match_ids, search, write
from starlette.testclient import TestClient

from fhir_node.interactions import search as search_module
from fhir_node.rules.check_digits import ssin

SSIN_1, SSIN_2, SSIN_3, SSIN_4, SSIN_9 = (ssin(date(1980, 5, 17), serial) for serial in (1, 2, 3, 4, 9))


def _patient(ssin: str, family: str, res_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": SSIN, "value": ssin}],
        "name": [{"family": family}],
    }
    return {**body, "id": res_id} if res_id else body


def _put(client: TestClient, criteria: str, body: dict[str, Any]) -> Any:
    return client.put(f"/fhir/Patient?{criteria}", content=orjson.dumps(body), headers=FHIR_JSON)


def _all_patients(client: TestClient) -> dict[str, dict[str, Any]]:
    return {e["resource"]["id"]: e["resource"] for e in search(client, "Patient", "_count=1000").get("entry", [])}


@pytest.fixture
def three(client: TestClient) -> dict[str, dict[str, Any]]:
    """pat-a and pat-b share an SSIN (a duplicate); pat-c is alone."""
    stored = [
        write(client, _patient(SSIN_1, "Dupont", "pat-a")),
        write(client, _patient(SSIN_1, "Dupond", "pat-b")),
        write(client, _patient(SSIN_2, "Lefèvre", "pat-c")),
    ]
    return {p["id"]: p for p in stored}


def test_conditional_update_without_a_match_creates(client: TestClient, three: dict) -> None:
    r = _put(client, f"identifier={SSIN}|{SSIN_3}", _patient(SSIN_3, "Noël"))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"] not in three and created["meta"]["versionId"] == "1"
    assert match_ids(search(client, "Patient", f"identifier={SSIN}|{SSIN_3}")) == [created["id"]]


def test_conditional_update_with_one_match_updates_it(client: TestClient, three: dict) -> None:
    r = _put(client, f"identifier={SSIN}|{SSIN_2}", _patient(SSIN_2, "Lefebvre"))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "pat-c" and r.json()["meta"]["versionId"] == "2"
    assert _all_patients(client)["pat-c"]["name"] == [{"family": "Lefebvre"}]
    assert set(_all_patients(client)) == set(three)


def test_conditional_update_with_two_matches_is_412_and_changes_nothing(client: TestClient, three: dict) -> None:
    r = _put(client, f"identifier={SSIN}|{SSIN_1}", _patient(SSIN_1, "Durand"))
    assert r.status_code == 412, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert _all_patients(client) == three


def test_conditional_update_criteria_are_a_full_search(client: TestClient, three: dict) -> None:
    """Two criteria together narrow the duplicate SSIN down to one patient."""
    r = _put(client, f"identifier={SSIN}|{SSIN_1}&family:exact=Dupond", _patient(SSIN_1, "Dupond-Ré"))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "pat-b"


def test_conditional_update_with_bad_criteria_is_400(client: TestClient, three: dict) -> None:
    for criteria in ["foo=bar", "birthdate=yesterday", "_count=1"]:
        r = _put(client, criteria, _patient(SSIN_4, "X"))
        assert r.status_code == 400, (criteria, r.text)
    assert _all_patients(client) == three


def test_conditional_delete_without_criteria_is_400_and_deletes_nothing(client: TestClient, three: dict) -> None:
    r = client.delete("/fhir/Patient")
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert _all_patients(client) == three


def test_conditional_delete_with_one_match_deletes_it(client: TestClient, three: dict) -> None:
    r = client.delete(f"/fhir/Patient?identifier={SSIN}|{SSIN_2}")
    assert r.status_code in (200, 204), r.text
    assert set(_all_patients(client)) == {"pat-a", "pat-b"}
    assert client.get("/fhir/Patient/pat-c").status_code == 410


def test_conditional_delete_with_several_matches_is_412_and_deletes_nothing(client: TestClient, three: dict) -> None:
    r = client.delete(f"/fhir/Patient?identifier={SSIN}|{SSIN_1}")
    assert r.status_code == 412, r.text
    assert _all_patients(client) == three


def test_conditional_delete_without_a_match_deletes_nothing(client: TestClient, three: dict) -> None:
    r = client.delete(f"/fhir/Patient?identifier={SSIN}|{SSIN_9}")
    assert r.status_code in (200, 204, 404), r.text
    assert _all_patients(client) == three


def test_conditional_delete_with_bad_criteria_is_400(client: TestClient, three: dict) -> None:
    r = client.delete("/fhir/Patient?unknown=1")
    assert r.status_code == 400 and "unknown" in r.json()["issue"][0].get("expression", [])
    assert _all_patients(client) == three


def test_search_follows_updates_and_deletes(client: TestClient, three: dict) -> None:
    """The index holds the current version only: an update's old values stop matching, a deletion's all do."""
    changed = {**three["pat-c"], "name": [{"family": "Lefebvre"}], "identifier": [{"system": SSIN, "value": SSIN_4}]}
    write(client, changed)
    assert match_ids(search(client, "Patient", "family=lefevre")) == []
    assert match_ids(search(client, "Patient", f"identifier={SSIN}|{SSIN_2}")) == []
    assert match_ids(search(client, "Patient", "family=lefebvre")) == ["pat-c"]
    assert client.delete("/fhir/Patient/pat-a").status_code in (200, 204)
    assert match_ids(search(client, "Patient", f"identifier={SSIN}|{SSIN_1}")) == ["pat-b"]
    assert match_ids(search(client, "Patient", "family:missing=false&_sort=_id")) == ["pat-b", "pat-c"]


def test_conditions_of_one_shape_share_one_statement_and_find_each_their_match(
    client: TestClient, three: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conditional update's criteria are looked up with a statement built once per shape (the inclusion
    rules ask such lookups for each EpisodeOfCare a Bundle writes), bound to each request's values."""
    built: list[str] = []
    build = search_module._matching_query

    def counted(conn: Any, res_type: str, parsed: Any) -> Any:
        built.append(res_type)
        return build(conn, res_type, parsed)

    monkeypatch.setattr(search_module, "_matching_query", counted)
    assert _put(client, "family=Dupon", _patient(SSIN_3, "Dupon")).status_code == 412  # pat-a and pat-b
    assert _put(client, "family=Lef", _patient(SSIN_2, "Lefebvre")).status_code == 200
    assert _put(client, "family=Nobod", _patient(SSIN_4, "Nobody")).status_code == 201
    assert built.count("Patient") <= 1  # none if an earlier test built it
    patients = _all_patients(client)
    assert patients["pat-c"]["name"] == [{"family": "Lefebvre"}]
    assert [p["name"] for p in patients.values()].count([{"family": "Nobody"}]) == 1
