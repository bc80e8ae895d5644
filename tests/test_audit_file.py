"""On SQLite the AuditEvent chain has a file of its own (`store.audit_file`): audited reads commit there
and leave the database's file, and so its readers' page caches, alone; a write's AuditEvent commits with
the write in the database's file and is chained from there; nodes from before move their chain there, and
a node whose chain file went missing refuses to start rather than begin a new chain."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

import pytest
from alembic import command
from alembic.config import Config
from chained import some_facts
from test_audit_chain import audited_client, database, verified
from test_audit_writer import answer, audited, requests

from fhir_node.audit import chain, trail
from fhir_node.store import database as database_module
from fhir_node.store.audit_file import audit_file
from fhir_node.store.database import MIGRATIONS, Database, driver_rows


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fhir-node.db'}"


def _path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_audited_reads_commit_to_the_chain_file_and_leave_the_database_alone(sqlite_url, monkeypatch):
    monkeypatch.setattr(trail.Writer, "IDLE", 3600)  # no indexing (which writes the database) meanwhile
    main, audit = _path(sqlite_url), audit_file(str(_path(sqlite_url)))
    assert audit.name == "fhir-node.audit.db"
    with audited_client(sqlite_url) as client:
        pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
        assert client.get("/fhir/Patient").status_code == 200  # the writer has chained the write's event since
        reader = sqlite3.connect(main)
        seen = reader.execute("PRAGMA data_version").fetchone()
        chained = _count(audit, "audit_chain")
        for _ in range(5):
            assert client.get(f"/fhir/Patient/{pid}").status_code == 200
            assert client.get("/fhir/Patient", params={"_id": pid}).status_code == 200
        assert _count(audit, "audit_chain") == chained + 10
        assert reader.execute("PRAGMA data_version").fetchone() == seen  # no commit to the database's file
        reader.close()
    assert {"audit_chain", "audit_anchor"} <= _tables(audit)
    assert not {"audit_chain", "audit_anchor"} & _tables(main)
    assert verified(sqlite_url)[0] == chained + 10


def test_a_writes_audit_event_is_staged_with_it_and_chained_once(sqlite_url):
    with database(sqlite_url) as db:
        db.migrate()
        with db.write() as conn:
            assert chain.record(conn, some_facts([201, 200])) is True
        main, audit = _path(sqlite_url), audit_file(str(_path(sqlite_url)))
        assert (_count(main, "audit_outbox"), _count(audit, "audit_chain")) == (2, 0)
        with db.read() as conn:
            assert chain.waiting(conn) == 2
        with db.write() as conn:
            assert chain.drain(conn) == 2
        with db.write() as conn:
            assert chain.drain(conn) == 0  # staged rows already chained are not chained again
        assert (_count(main, "audit_outbox"), _count(audit, "audit_chain")) == (2, 2)
        assert chain.catch_up(db) == 2
        assert (_count(main, "audit_outbox"), _count(audit, "audit_chain")) == (0, 2)
    assert verified(sqlite_url)[0] == 2


def test_a_failed_write_stages_nothing(sqlite_url):
    with database(sqlite_url) as db:
        db.migrate()
        with pytest.raises(RuntimeError), db.write() as conn:
            chain.record(conn, some_facts([201]))
            raise RuntimeError("the write fails after its event was staged")
    assert _count(_path(sqlite_url), "audit_outbox") == 0


def test_a_chain_kept_in_the_database_moves_to_its_file_with_its_positions(sqlite_url, monkeypatch):
    """A node from before 0007 kept the chain in the database: the upgrade moves its rows, and positions
    used before (even by events since purged) are not used again."""
    with monkeypatch.context() as before:  # as that node opened it: no chain file attached
        before.setattr(database_module, "audit_file", lambda _: None)
        with database(sqlite_url) as db:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            with db.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "0006")
            with db.write() as conn:
                chain.extend(conn, some_facts([200, 404, 500]))
                conn.exec_driver_sql("DELETE FROM audit_chain WHERE seq = 3")  # as if purged: seq 3 stays used
    with database(sqlite_url) as db:
        db.migrate()
        with db.write() as conn:
            chain.extend(conn, some_facts([200]))
        with db.read() as conn:
            positions = [row[0] for row in conn.exec_driver_sql("SELECT seq FROM audit_chain ORDER BY seq")]
    assert positions == [1, 2, 4]
    main = _path(sqlite_url)
    assert not {t for t in _tables(main) if t.startswith("audit_chain") or t.startswith("audit_anchor")}
    assert _count(audit_file(str(main)), "audit_chain") == 3


def test_a_node_whose_chain_file_is_gone_refuses_to_start(sqlite_url):
    with database(sqlite_url) as db:
        db.migrate()
        with db.write() as conn:
            chain.extend(conn, some_facts([200]))
    audit = audit_file(str(_path(sqlite_url)))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{audit}{suffix}").unlink(missing_ok=True)
    db = Database(sqlite_url)
    try:
        with pytest.raises(RuntimeError, match=r"fhir-node\.audit\.db holds no AuditEvent chain"):
            db.migrate()
    finally:
        db.dispose()


def test_a_chain_file_left_without_its_database_is_set_aside(sqlite_url):
    """The database was removed but not its chain file: a new database starts a chain of its own."""
    with database(sqlite_url) as db:
        db.migrate()
        with db.write() as conn:
            chain.extend(conn, some_facts([200]))
    main = _path(sqlite_url)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{main}{suffix}").unlink(missing_ok=True)
    with database(sqlite_url) as db:
        db.migrate()
        with db.read() as conn:
            assert chain.waiting(conn) == 0
    assert _count(audit_file(str(main)), "audit_chain") == 0
    orphans = [o for o in main.parent.glob("fhir-node.audit.db.orphan-*") if not o.name.endswith(("-wal", "-shm"))]
    assert len(orphans) == 1 and _count(orphans[0], "audit_chain") == 1


def test_the_writers_thread_checkpoints_what_the_event_loop_appends(sqlite_url, monkeypatch):
    """The loop's connection never checkpoints (that copies megabytes); the audit writer's thread does, every
    CHECKPOINT_EVERY events the loop chained, and indexes none of them for that (only once idle). While it
    restarts the WAL, the loop hands its events over rather than wait for the chain's lock."""
    monkeypatch.setattr(trail, "CHECKPOINT_EVERY", 3)
    monkeypatch.setattr(trail.Writer, "IDLE", 3600)
    with database(sqlite_url) as db:
        db.migrate()
        done = threading.Event()
        checkpoint = db.checkpoint_chain
        modes: list[tuple[str, bool]] = []

        def counted(mode: Literal["PASSIVE", "RESTART"]) -> None:
            modes.append((mode, writer._holding))
            checkpoint(mode)
            if mode == "RESTART":
                done.set()

        monkeypatch.setattr(db, "checkpoint_chain", counted)
        writer = trail.Writer(db, lag=2000)
        for access in requests(3):
            asyncio.run(answer(writer, access))
        assert done.wait(10)
        assert modes == [("PASSIVE", False), ("RESTART", True)]
        assert audited(db) == ["r0", "r1", "r2"]
        writer._holding = True
        loop_connection = db.chain_on_loop
        monkeypatch.setattr(db, "chain_on_loop", lambda: pytest.fail("appended on the loop while held"))
        asyncio.run(answer(writer, requests(1)[0]))  # handed over: the thread appends it
        monkeypatch.setattr(db, "chain_on_loop", loop_connection)
        assert audited(db) == ["r0", "r1", "r2", "r0"]
        with db.read() as conn:
            assert chain.waiting(conn) == 4
        with db.chain_on_loop() as conn:
            assert driver_rows(conn, "PRAGMA wal_autocheckpoint") == [(0,)]


def test_a_checkpoint_starts_the_chains_wal_over_though_appends_went_on_meanwhile(sqlite_url, monkeypatch):
    """Under load the loop appends while the thread checkpoints. A PASSIVE checkpoint then never left the WAL
    all copied when the next append began, so no append started it over: it grew by ~26 kB an event."""
    with database(sqlite_url) as db:
        db.migrate()

        (event,) = some_facts([200])

        def append() -> None:
            with db.chain_on_loop() as conn:
                chain.extend(conn, [event])

        for _ in range(30):
            append()
        raw_connection = db.engine.raw_connection

        def appending_meanwhile() -> object:
            raw = raw_connection()

            class Interleaved:
                def __getattr__(self, name: str) -> object:
                    return getattr(raw, name)

                def execute(self, sql: str) -> object:
                    if "PASSIVE" not in sql:
                        return raw.execute(sql)
                    with db.chain_on_loop() as conn:  # an append under way while the checkpoint copies
                        chain.extend(conn, [event])
                        return raw.execute(sql)

            return Interleaved()

        monkeypatch.setattr(db.engine, "raw_connection", appending_meanwhile)
        trail.Writer(db, lag=2000)._checkpoint()
        monkeypatch.undo()
        wal = Path(f"{audit_file(str(_path(sqlite_url)))}-wal")
        size = wal.stat().st_size
        for _ in range(3):
            append()
        assert wal.stat().st_size == size  # written from its start again, not appended to
        with db.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM audit_chain").scalar() == 34


def test_indexing_gives_way_to_another_process_that_holds_the_databases_lock(sqlite_url, caplog):
    """Behind another worker's writes the audit writer's thread would leave the requests it serves waiting
    (p95 0.4-0.9 s with 2 workers): it waits INDEX_LOCK_WAIT for the lock, then leaves it alone a while."""
    with database(sqlite_url) as db:
        db.migrate()
        with db.write(chain=True) as conn:
            chain.extend(conn, some_facts([200] * 3))
        writer = trail.Writer(db, lag=2000)
        other = sqlite3.connect(_path(sqlite_url), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            began = time.monotonic()
            assert writer._index() is True  # more waits
            assert writer._index() is True  # leaves the lock alone meanwhile, without waiting again
            assert time.monotonic() - began < 1
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert not [r for r in caplog.records if r.levelname == "WARNING"]  # a busy lock is no failure
        time.sleep(trail.INDEX_BACKOFF)
        writer._index()
        with db.read() as conn:
            assert chain.waiting(conn) == 0


def test_an_append_on_the_event_loop_that_fails_leaves_nothing_and_the_next_one_goes_through(sqlite_url):
    """The loop's append begins and ends its transaction on the driver: a failure inside rolls it back."""
    (event,) = some_facts([200])
    audit = audit_file(str(_path(sqlite_url)))
    with database(sqlite_url) as db:
        db.migrate()
        with pytest.raises(RuntimeError), db.chain_on_loop() as conn:
            chain.extend(conn, [event])
            raise RuntimeError("fails after its append")
        assert _count(audit, "audit_chain") == 0
        with db.chain_on_loop() as conn:
            chain.extend(conn, [event, event])
        assert _count(audit, "audit_chain") == 2
    assert verified(sqlite_url)[0] == 2
