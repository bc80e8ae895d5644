"""The date index by resource holds each row's range (migration 0009), so a search that probes a resource's
dates beside another criterion (`status=active&date=ge...`, an aggregator's everyday search) reads that
index alone, not the table behind it too."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect
from starlette.testclient import TestClient
from test_audit_chain import database

from fhir_node.store.database import MIGRATIONS, Database

INDEX = "ix_idx_date_resource"


def _columns(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        (found,) = [i for i in inspect(conn).get_indexes("idx_date") if i["name"] == INDEX]
    return list(found["column_names"])


def test_the_upgrade_adds_the_range_to_the_index_and_the_downgrade_takes_it_away(database_url: str) -> None:
    with database(database_url) as db:
        db.migrate()
        assert _columns(db) == ["res_type", "res_id", "param", "low", "high"]
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0008")
        assert _columns(db) == ["res_type", "res_id", "param"]
        db.migrate()
        assert _columns(db) == ["res_type", "res_id", "param", "low", "high"]


def test_a_date_probed_beside_a_status_reads_the_index_alone(
    client: TestClient, settings: Any, statements: list[tuple[str, Any]]
) -> None:
    """The answers are the data's (one episode matches both criteria, one only the status, one only the
    date); on SQLite the page's plan probes the dates through the covering index."""

    def episode(status: str, start: str, end: str) -> str:
        body = {
            "resourceType": "EpisodeOfCare",
            "status": status,
            "patient": {"reference": "Patient/p-1"},
            "period": {"start": start, "end": end},
        }
        r = client.post("/fhir/EpisodeOfCare", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    both = episode("active", "2024-03-01", "2024-06-01")
    episode("active", "2023-03-01", "2023-06-01")
    episode("finished", "2024-03-01", "2024-06-01")
    statements.clear()
    r = client.get("/fhir/EpisodeOfCare?status=active&date=ge2024-01-01")
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [both]
    if not settings.database_url.startswith("sqlite"):
        return
    plans = sqlite_plans(settings.database_url, statements, "idx_date")
    assert plans, statements
    for sql, plan in plans:
        assert f"COVERING INDEX {INDEX}" in plan, (sql, plan)


def sqlite_plans(database_url: str, statements: list[tuple[str, Any]], needle: str) -> list[tuple[str, str]]:
    """SQLite's plan for each statement run that holds `needle`."""
    run = [(sql, params) for sql, params in statements if needle in sql]  # (asking adds to `statements`)
    with database(database_url) as db, db.read() as conn:
        return [
            (sql, " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)))
            for sql, params in run
        ]
