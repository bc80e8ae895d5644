"""Each resource row has a number (`rid`, migration 0010) that its search index rows hold, and a search
walking an index joins each row to its resource by it: on SQLite by the table's own key."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from starlette.testclient import TestClient
from test_audit_chain import database
from test_date_probe import sqlite_plans

from fhir_node.store import repository
from fhir_node.store.database import MIGRATIONS, Database
from fhir_node.store.schema import INDEX_TABLES

TABLES = sorted({t.name for t in INDEX_TABLES.values()})


def _episode(client: TestClient, status: str, patient: str = "Patient/p-1") -> str:
    body = {"resourceType": "EpisodeOfCare", "status": status, "patient": {"reference": patient}}
    r = client.post("/fhir/EpisodeOfCare", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _mismatched(db: Database) -> dict[str, tuple[int, int]]:
    """Per index table: (its rows, those whose rid is not their resource's)."""
    found = {}
    with db.engine.connect() as conn:
        for t in TABLES:
            rows = conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            wrong = conn.execute(
                text(
                    f"SELECT count(*) FROM {t} WHERE NOT EXISTS (SELECT 1 FROM resources r WHERE r.rid = {t}.rid "
                    f"AND r.res_type = {t}.res_type AND r.res_id = {t}.res_id)"
                )
            ).scalar_one()
            found[t] = (rows, wrong)
    return found


def _columns(db: Database, table: str) -> list[str]:
    with db.engine.connect() as conn:
        return [c["name"] for c in inspect(conn).get_columns(table)]


def test_the_migration_numbers_what_is_stored_and_the_downgrade_takes_the_numbers_away(
    client: TestClient, settings: Any
) -> None:
    second = _episode(client, "active", "Patient/p-2")
    active = sorted([_episode(client, "active"), second])
    _episode(client, "finished")
    with database(settings.database_url) as db:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0009")
        assert "rid" not in _columns(db, "resources")
        assert all("rid" not in _columns(db, t) for t in TABLES)
        with db.engine.connect() as conn:
            assert inspect(conn).get_pk_constraint("resources")["constrained_columns"] == ["res_type", "res_id"]
        db.migrate()
        with db.engine.connect() as conn:
            assert inspect(conn).get_pk_constraint("resources")["constrained_columns"] == ["rid"]
            rids = [r for (r,) in conn.execute(text("SELECT rid FROM resources"))]
        assert len(rids) == len(set(rids)) >= 3
        found = _mismatched(db)
        assert sum(rows for rows, _ in found.values()) > 0, found
        assert all(wrong == 0 for _, wrong in found.values()), found
    r = client.get("/fhir/EpisodeOfCare?status=active")
    assert sorted(e["resource"]["id"] for e in r.json()["entry"]) == active
    r = client.get("/fhir/EpisodeOfCare?patient=Patient/p-2")
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [second]


def test_index_rows_written_after_an_update_and_in_a_bundle_hold_their_resources_number(
    client: TestClient, settings: Any
) -> None:
    first = _episode(client, "planned")
    body = {"resourceType": "EpisodeOfCare", "id": first, "status": "active", "patient": {"reference": "Patient/p-3"}}
    assert client.put(f"/fhir/EpisodeOfCare/{first}", json=body).status_code == 200
    episode = {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": "Patient/b-1"}}
    entries = [{"resource": episode, "request": {"method": "POST", "url": "EpisodeOfCare"}}] * 5
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text
    with database(settings.database_url) as db:
        found = _mismatched(db)
    assert sum(rows for rows, _ in found.values()) >= 12, found
    assert all(wrong == 0 for _, wrong in found.values()), found
    r = client.get("/fhir/EpisodeOfCare?status=active&_count=100")
    assert len(r.json()["entry"]) == 6


def test_a_number_is_never_given_again(client: TestClient, settings: Any) -> None:
    """Once the newest resource is erased (retention), the next one gets a new number: an index row can only
    ever stand for the resource it was written for."""
    _episode(client, "active")
    newest = _episode(client, "active")
    with database(settings.database_url) as db:
        with db.engine.connect() as conn:
            top = conn.execute(text("SELECT max(rid) FROM resources")).scalar_one()
        with db.write() as conn:
            repository.erase(conn, "EpisodeOfCare", [newest])
        after = _episode(client, "active")
        with db.engine.connect() as conn:
            given = conn.execute(text("SELECT rid FROM resources WHERE res_id = :i"), {"i": after}).scalar_one()
    assert given > top


def test_a_walk_joins_its_rows_to_their_resources_by_number(
    client: TestClient, settings: Any, statements: list[tuple[str, Any]]
) -> None:
    """On SQLite, the page's plan finds each resource by the table's own key."""
    mine = _episode(client, "active", "Patient/p-9")
    _episode(client, "active", "Patient/p-8")
    statements.clear()
    r = client.get("/fhir/EpisodeOfCare?patient=Patient/p-9")
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [mine]
    if not settings.database_url.startswith("sqlite"):
        return
    plans = sqlite_plans(settings.database_url, statements, "JOIN resources")
    assert plans, statements
    for sql, plan in plans:
        assert "resources USING INTEGER PRIMARY KEY" in plan, (sql, plan)
