"""The conditional creates of a Bundle are looked up together, one query per type and parameter for many
values (`search.any_match`): each query finds its values through the index by value, never by walking
every index row of the type, and the answers are those of the data (created once, matched again)."""

from __future__ import annotations

from datetime import date
from typing import Any

from search_data import SSIN
from starlette.testclient import TestClient
from test_audit_chain import database

from fhir_node.rules.check_digits import ssin

IDS = "https://example.org/organization-ids"
SSINS = [ssin(date(1980, 1, 1 + i), 10 + i) for i in range(3)]


def _entries(resource_type: str, identifiers: list[tuple[str, str]]) -> list[dict[str, Any]]:
    entries = []
    for system, value in identifiers:
        resource = {"resourceType": resource_type, "identifier": [{"system": system, "value": value}]}
        entries.append(
            {
                "resource": resource,
                "request": {"method": "POST", "url": resource_type, "ifNoneExist": f"identifier={system}|{value}"},
            }
        )
    return entries


def _post(client: TestClient, entries: list[dict[str, Any]]) -> list[str]:
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    return [e["response"]["status"][:3] for e in r.json()["entry"]]


def _ids(client: TestClient, resource_type: str) -> list[str]:
    r = client.get(f"/fhir/{resource_type}", params={"_count": 100})
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


def test_a_bundles_conditional_creates_are_looked_up_by_value_together(
    client: TestClient, settings: Any, statements: list[tuple[str, Any]]
) -> None:
    organizations = [(IDS, f"o-{i}") for i in range(3)]
    patients = [(SSIN, s) for s in SSINS]
    assert _post(client, _entries("Organization", organizations[:1])) == ["201"]
    kept = _ids(client, "Organization")
    statements.clear()
    statuses = _post(client, _entries("Organization", organizations) + _entries("Patient", patients))
    assert statuses == ["200", "201", "201", "201", "201", "201"]
    assert _post(client, _entries("Organization", organizations) + _entries("Patient", patients)) == ["200"] * 6
    created = _ids(client, "Organization")
    assert len(created) == 3 and set(kept) <= set(created)
    assert len(_ids(client, "Patient")) == 3
    if not settings.database_url.startswith("sqlite"):
        return
    together = [(sql, params) for sql, params in statements if "idx_token.code IN" in sql]
    assert {params.count(IDS) for _, params in together} >= {3}, statements  # the three organizations in one query
    with database(settings.database_url) as db, db.read() as conn:
        for sql, params in together:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "ix_idx_token_code_res_id (res_type=? AND param=? AND code=?)" in plan, (sql, plan)
