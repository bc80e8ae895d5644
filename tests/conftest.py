"""Shared fixtures: every database-backed test runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from live_node import BASE_HOST, serve_node
from postgres_server import (
    REQUIRE_ENV,
    PostgresServer,
    PostgresUnavailable,
    postgres_required,
    start_postgres,
)
from sqlalchemy import Engine, event
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.logs import flush_access
from fhir_node.security.keyring import keygen
from fhir_node.settings import Settings
from fhir_node.store import database as database_module

# The REST-core, search and bundle suites test base R4 with minimal resources: every Settings they build
# (and every `fhir-node serve` they start) leaves profile enforcement off unless a test turns it on.
os.environ.setdefault("FHIR_NODE_ENFORCE_PROFILES", "false")
# Likewise they count versions and history entries exactly, so the node's own AuditEvents are off there;
# the security and audit suites (and test_audit_on) turn them on.
os.environ.setdefault("FHIR_NODE_AUDIT", "false")
# One SSIN pseudonym key for the session, so every node a test builds (PostgreSQL and jwt ones too, which
# refuse to start without one) and every `fhir-node serve` it starts reads what the others wrote.
if "FHIR_NODE_PSEUDONYM_KEY_FILE" not in os.environ:
    _KEY = Path(tempfile.mkdtemp(prefix="fhir-node-key-")) / "pseudonym.key"
    keygen(_KEY)
    os.environ["FHIR_NODE_PSEUDONYM_KEY_FILE"] = str(_KEY)


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


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Node settings on this test's fresh database; base R4 only (see `enforcing_client` for profiles)."""
    return Settings(database_url=database_url, enforce_profiles=False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real ASGI app, called in-process from a loopback address (as FHIR_NODE_AUTH=none requires)."""
    app = create_app(settings)
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@pytest.fixture
def enforcing_client(database_url: str) -> Iterator[TestClient]:
    """Like `client`, on a node that refuses writes not conforming to our profiles (the default in production)."""
    app = create_app(Settings(database_url=database_url, enforce_profiles=True))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@pytest.fixture
def live_server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A real `fhir-node serve` process (uvicorn) on 127.0.0.1; yields its FHIR base URL."""
    with serve_node(settings.database_url, tmp_path) as base:
        yield base


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def search_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of its own, per backend, for the search suite's shared dataset (see `searched`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('search') / 'fhir-node.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def searched(search_database_url: str) -> Iterator[object]:
    """The search dataset (tests/search_data.py), loaded once per backend through the API and shared by
    every search test that only reads: tests that write must load their own copy (`load(client)`)."""
    from search_data import loaded_node

    with loaded_node(search_database_url) as env:
        yield env


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The access-control world (tests/access_data.py) served with FHIR_NODE_AUTH=jwt, loaded once per
    backend and module, for tests that only read (or only add what they check themselves)."""
    from access_data import secured

    if request.param == "sqlite":
        with secured(f"sqlite:///{tmp_path_factory.mktemp('world') / 'node.db'}") as env:
            yield env
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url, secured(url) as env:
        yield env


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements the node runs, with their parameters (on the driver, or through SQLAlchemy)."""
    seen: list[tuple[str, Any]] = []
    run = database_module.driver_rows

    def spy(conn: Any, sql: str, params: Any = (), many: bool = False) -> Any:
        seen.append((sql, params))
        return run(conn, sql, params, many)

    def executed(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, _many: bool) -> None:
        seen.append((sql, params))

    monkeypatch.setattr(database_module, "driver_rows", spy)
    monkeypatch.setattr("fhir_node.store.ready.driver_rows", spy)
    event.listen(Engine, "before_cursor_execute", executed)
    yield seen
    event.remove(Engine, "before_cursor_execute", executed)


@pytest.fixture
def access_log(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Callable[[], list[dict[str, Any]]]:
    """The access log turned on (INFO); called, the lines it wrote on stderr since the last call, parsed."""
    caplog.set_level(logging.INFO, logger="fhir_node.access")
    flush_access()  # lines an earlier test's loop left waiting (`logs.FLUSH_SECONDS`) are not this test's
    capsys.readouterr()

    def lines() -> list[dict[str, Any]]:
        flush_access()  # what a TestClient's event loop (in its own thread) has not written yet
        written = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        return [line for line in written if line["logger"] == "fhir_node.access"]

    return lines
