"""The database_url fixture gives each test a working, empty database that no other test shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_server import PostgresServer
from sqlalchemy import Engine, bindparam, create_engine, inspect, make_url, text


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def test_database_starts_empty_and_is_writable(engine: Engine) -> None:
    assert inspect(engine).get_table_names() == []
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE marker (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
        conn.execute(text("INSERT INTO marker (id, note) VALUES (1, 'left behind')"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM marker")).scalar_one() == "left behind"


def test_next_database_does_not_see_the_previous_one(engine: Engine) -> None:
    """Runs after the test above on the same backend: its table must not be visible here."""
    assert "marker" not in inspect(engine).get_table_names()


def test_postgres_databases_are_isolated_and_dropped(postgres_server: PostgresServer) -> None:
    with postgres_server.fresh_database() as first_url, postgres_server.fresh_database() as second_url:
        first, second = create_engine(first_url), create_engine(second_url)
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE marker (id INTEGER PRIMARY KEY)"))
        assert inspect(second).get_table_names() == []
        # Left open on purpose, as a careless test would: the drop must still succeed.
        left_open = first.connect()
    names = [make_url(first_url).database, make_url(second_url).database]
    admin = create_engine(postgres_server.admin_url)
    try:
        with admin.connect() as conn:
            query = text("SELECT count(*) FROM pg_database WHERE datname IN :names").bindparams(
                bindparam("names", expanding=True)
            )
            assert conn.execute(query, {"names": names}).scalar_one() == 0
    finally:
        left_open.invalidate()
        for engine in (first, second, admin):
            engine.dispose()
