"""Shared fixtures: every database-backed test runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from postgres_server import (
    REQUIRE_ENV,
    PostgresServer,
    PostgresUnavailable,
    postgres_required,
    start_postgres,
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use: SQLite-only runs never pay for it."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(start_postgres())
        except PostgresUnavailable as exc:
            reason = f"PostgreSQL unavailable: {exc}"
        else:
            yield server
            return
    # Outside the except block, so the report shows the reason without a chained traceback.
    if postgres_required():
        pytest.fail(f"{reason}\n({REQUIRE_ENV}=1: this must not be skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database of its own for this test, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fhir-node.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url
