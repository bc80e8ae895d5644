"""Counts on PostgreSQL are planned for their values every time: a prepared count that PostgreSQL switched to
its plan for any values (after ten runs on a connection) took 2.5x as long at 100,000 EpisodeOfCare."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from live_node import BASE_HOST
from postgres_server import PostgresServer
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.interactions.search import search
from fhir_node.node import Node
from fhir_node.settings import Settings

RUNS = 12  # psycopg prepares on the 6th run; PostgreSQL may plan for any values from the 11th


@pytest.fixture
def pg_settings(postgres_server: PostgresServer) -> Iterator[Settings]:
    with postgres_server.fresh_database() as url:
        yield Settings(database_url=url, enforce_profiles=False)


def _prepared(node: Node) -> list[str]:
    """The statements prepared on the node's one pooled connection (searches run one after another)."""
    with node.db.read() as conn:
        return [s for (s,) in conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements")]


def test_a_count_asked_again_and_again_is_never_prepared(pg_settings: Settings) -> None:
    with TestClient(create_app(pg_settings), base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        for status in ("active", "active", "finished"):
            body = {"resourceType": "EpisodeOfCare", "status": status, "patient": {"reference": "Patient/p-1"}}
            assert client.post("/fhir/EpisodeOfCare", json=body).status_code == 201
    node = Node.from_settings(pg_settings)
    try:
        base = BASE_HOST + "/fhir"
        for _ in range(RUNS):
            counted = search(node, base, "EpisodeOfCare", [("status", "active"), ("_summary", "count")])
            assert b'"total":2' in counted
            paged = search(node, base, "EpisodeOfCare", [("status", "active"), ("_total", "accurate"), ("_count", "1")])
            assert b'"total":2' in paged
        prepared = _prepared(node)
        assert any("ORDER BY" in s for s in prepared), prepared  # the pages' statement is, on this connection
        assert not [s for s in prepared if "count(" in s.lower()], prepared
    finally:
        node.db.dispose()
