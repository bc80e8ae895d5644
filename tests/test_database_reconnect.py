"""A node on PostgreSQL keeps answering after the server dropped its pooled connections (a restart or
pg_terminate_backend), although it no longer pings a connection before each use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from live_node import BASE_HOST
from postgres_server import PostgresServer
from sqlalchemy import create_engine, make_url, text
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.settings import Settings


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    with postgres_server.fresh_database() as url:
        yield url


def _terminate_backends(admin_url: str, database: str) -> int:
    """End every server process connected to `database`, waiting until each is gone; return how many."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalars()
            return sum(1 for done in ended if done)
    finally:
        admin.dispose()


def test_requests_after_the_server_dropped_every_connection_answer(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    app = create_app(Settings(database_url=pg_url, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        made = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert made.status_code == 201
        patient_id = made.json()["id"]
        assert client.get("/fhir/Patient", params={"gender": "female"}).status_code == 200

        admin_url = postgres_server.admin_url.render_as_string(hide_password=False)
        assert _terminate_backends(admin_url, make_url(pg_url).database or "") >= 1

        search = client.get("/fhir/Patient", params={"gender": "female"})
        assert search.status_code == 200, search.text
        assert [e["resource"]["id"] for e in search.json()["entry"]] == [patient_id]
        assert client.get(f"/fhir/Patient/{patient_id}").status_code == 200

        _terminate_backends(admin_url, make_url(pg_url).database or "")
        updated = client.put(
            f"/fhir/Patient/{patient_id}", json={"resourceType": "Patient", "id": patient_id, "gender": "male"}
        )
        assert updated.status_code == 200, updated.text
        assert client.get(f"/fhir/Patient/{patient_id}").json()["gender"] == "male"
