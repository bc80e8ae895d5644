"""Search indexes led by a mostly NULL column (a reference's URL or identifier, a token's text) hold only the
rows that have one (`schema.sparse_index`, migration 0008): searches on those columns still use them."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from starlette.testclient import TestClient
from test_audit_chain import database

from fhir_node.store.database import MIGRATIONS, Database

SPARSE = {
    "ix_idx_reference_url_res_id": "url",
    "ix_idx_reference_id_value_res_id": "id_value",
    "ix_idx_token_text": "text",
}
SYSTEM = "https://example.org/ids"
NUMBER = "12345678901"  # 11 digits: searched without a system, it may be an SSIN (looked for as its pseudonyms too)


def _definitions(db: Database) -> dict[str, str]:
    """The sparse indexes' definitions, as the database keeps them."""
    names = tuple(SPARSE)
    with db.read() as conn:
        if db.is_sqlite:
            q = f"SELECT name, sql FROM sqlite_master WHERE name IN {names}"
        else:
            q = f"SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN {names}"
        return {name: sql for name, sql in conn.exec_driver_sql(q)}


def _sparse(db: Database) -> bool:
    found = _definitions(db)
    assert set(found) == set(SPARSE)
    bare = {name: sql.replace("(", "").replace(")", "") for name, sql in found.items()}
    partial = [f"{column} IS NOT NULL" in bare[name] for name, column in SPARSE.items()]
    assert len(set(partial)) == 1, found  # all or none
    return partial[0]


def test_the_upgrade_makes_them_sparse_and_the_downgrade_full_again(database_url: str) -> None:
    with database(database_url) as db:
        db.migrate()
        assert _sparse(db)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0007")
        assert not _sparse(db)
        db.migrate()
        assert _sparse(db)


@pytest.mark.parametrize(
    ("query", "column", "index"),
    [
        (f"patient:identifier={SYSTEM}|{NUMBER}", "id_value", "ix_idx_reference_id_value_res_id"),
        (f"patient:identifier={NUMBER}", "id_value", None),  # an IN of its forms: on two rows a scan is cheaper
        ("patient=https://elsewhere.example.org/fhir/Patient/p-1", "url", "ix_idx_reference_url_res_id"),
        ("type:text=inclu", "text", None),  # a probe here: no index narrows a LIKE with an escape
    ],
)
def test_searches_on_a_sparse_column_find_their_rows_through_its_index(
    client: TestClient, settings: Any, statements: list[tuple[str, Any]], query: str, column: str, index: str | None
) -> None:
    """SQLite's plan names the sparse index (its planner uses one only when the search implies the column is
    not NULL); the answers are those of the data."""
    body = {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [{"coding": [{"system": SYSTEM, "code": "x", "display": "Inclusion"}], "text": "Inclusion"}],
        "patient": {
            "reference": "https://elsewhere.example.org/fhir/Patient/p-1",
            "identifier": {"system": SYSTEM, "value": NUMBER},
        },
    }
    made = client.post("/fhir/EpisodeOfCare", json=body).json()["id"]
    client.post("/fhir/EpisodeOfCare", json={**body, "type": [{"text": "other"}], "patient": {"display": "none"}})
    statements.clear()
    r = client.get(f"/fhir/EpisodeOfCare?{query}")
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [made]
    if index is None or not settings.database_url.startswith("sqlite"):
        return
    searched = [(sql, params) for sql, params in statements if f".{column} " in sql or f".{column} IN" in sql]
    assert searched, statements
    with database(settings.database_url) as db, db.read() as conn:
        for sql, params in searched:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
            assert index in plan, (sql, plan)
