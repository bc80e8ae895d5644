"""A search that walks one criterion's index rows in id order meets a resource once per row. Where the
value fixes the whole row (a reference to one target, a code of a primitive element) a resource has one
row at most, and the walk is not grouped by id (grouping doubled the time of a page of 50 on SQLite);
elsewhere a resource with two rows for the value (one identifier in two systems) is still listed once,
counted once, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient


def _created(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{body['resourceType']}", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture
def patients(client: TestClient) -> dict[str, str]:
    twice = {
        "resourceType": "Patient",
        "gender": "female",
        "identifier": [
            {"system": "https://a.example.org", "value": "v-1"},
            {"system": "https://b.example.org", "value": "v-1"},
        ],
        "generalPractitioner": [
            {"reference": "Practitioner/d-1"},
            {"reference": "Organization/d-1"},
            {"reference": "Practitioner/d-1/_history/2", "display": "the same practitioner again"},
        ],
        "managingOrganization": {"reference": "Organization/o-1"},
    }
    once = {**twice, "identifier": [{"system": "https://a.example.org", "value": "v-1"}]}
    once["generalPractitioner"] = [{"reference": "Practitioner/d-1"}]
    return {
        "twice": _created(client, twice),
        "once": _created(client, once),
        "other": _created(client, {**once, "gender": "male"}),
    }


@pytest.mark.parametrize(
    ("query", "expected", "grouped"),
    [
        ("identifier=v-1", ["twice", "once", "other"], True),  # two rows of `twice`: same value, two systems
        ("general-practitioner=Practitioner/d-1", ["twice", "once", "other"], False),
        ("organization=o-1", ["twice", "once", "other"], False),
        ("gender=female", ["twice", "once"], False),
    ],
)
def test_each_match_comes_once_and_a_one_row_walk_is_not_grouped(
    client: TestClient,
    settings: Any,
    patients: dict[str, str],
    statements: list[tuple[str, Any]],
    query: str,
    expected: list[str],
    grouped: bool,
) -> None:
    statements.clear()
    r = client.get(f"/fhir/Patient?{query}&_count=2")
    assert r.status_code == 200, r.text
    ids = [e["resource"]["id"] for e in r.json()["entry"]]
    nxt = next((link["url"] for link in r.json()["link"] if link["relation"] == "next"), None)
    if nxt is not None:
        ids += [e["resource"]["id"] for e in client.get(nxt).json().get("entry", [])]
    assert sorted(ids) == sorted(patients[name] for name in expected)
    count = client.get(f"/fhir/Patient?{query}&_summary=count").json()["total"]
    assert count == len(expected)
    walked = [sql for sql, _ in statements if "ORDER BY" in sql and " JOIN resources ON " in sql]
    assert walked, statements
    assert all(("GROUP BY" in sql) == grouped for sql in walked), walked
