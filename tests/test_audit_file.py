"""On SQLite the AuditEvent chain has a file of its own (`store.audit_file`): audited reads commit there
and leave the database's file, and so its readers' page caches, alone; a write's AuditEvent commits with
the write in the database's file and is chained from there; nodes from before move their chain there, and
a node whose chain file went missing refuses to start rather than begin a new chain."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from chained import chained_events, eventually, some_facts
from test_audit_chain import audited_client, database, verified
from test_audit_writer import answer, audited, requests

from fhir_node.audit import chain, trail
from fhir_node.store import audit_journal
from fhir_node.store import database as database_module
from fhir_node.store.audit_file import audit_file
from fhir_node.store.audit_journal import Journal
from fhir_node.store.database import MIGRATIONS, Database


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
        chain.settle(client.app.state.node.db)  # what the journal holds so far: chained
        reader = sqlite3.connect(main)
        seen = reader.execute("PRAGMA data_version").fetchone()
        chained = _count(audit, "audit_chain")
        for _ in range(5):
            assert client.get(f"/fhir/Patient/{pid}").status_code == 200
            assert client.get("/fhir/Patient", params={"_id": pid}).status_code == 200
        eventually(lambda: _count(audit, "audit_chain") == chained + 10)  # the writer's thread chains them
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
        assert db.journal is not None
        db.journal.append(some_facts([404])[0][1])  # not chained yet: it belongs to that chain too
    main = _path(sqlite_url)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{main}{suffix}").unlink(missing_ok=True)
    with database(sqlite_url) as db:
        db.migrate()
        assert chain.settle(db) == 0
        with db.read() as conn:
            assert chain.waiting(conn) == 0
    assert _count(audit_file(str(main)), "audit_chain") == 0
    aside = [o for o in main.parent.glob("fhir-node.audit.db.orphan-*") if not o.name.endswith(("-wal", "-shm"))]
    orphans = [o for o in aside if not o.name.endswith("-journals")]
    assert len(orphans) == 1 and _count(orphans[0], "audit_chain") == 1
    (journals,) = [o for o in aside if o.name.endswith("-journals")]
    assert len(next(journals.glob("*.facts")).read_bytes().splitlines()) == 1


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


def _journal_files(db: Database) -> list[Path]:
    assert db.journals is not None
    return sorted(db.journals.glob("*.facts")) if db.journals.is_dir() else []


def test_each_workers_journal_is_chained_once_and_removed_once_read_and_closed(sqlite_url):
    """Two workers' journals (one per process; two here, as two processes would have): what they hold is
    chained once, whoever reads it and however often; a journal still open stays, one closed and read
    to its end is removed, and a worker writes on in a new one."""
    with database(sqlite_url) as db:
        db.migrate()
        assert db.journal is not None and db.journals is not None
        other = Journal(db.journals)
        for said in some_facts([200, 404], "a"):
            db.journal.append(said[1])
        for said in some_facts([200] * 3, "b"):
            other.append(said[1])
        assert chain.behind(db)
        assert chain.settle(db) == 5
        assert chain.settle(db) == 0
        with db.read() as conn:
            assert not audit_journal.pending(conn, db.journals)
        assert len(_journal_files(db)) == 2
        other.close()
        db.journal.append(some_facts([500], "c")[0][1])
        assert chain.settle(db) == 1  # and the closed one, read to its end, goes
        assert [p.name.split("-")[0] for p in _journal_files(db)] == [str(os.getpid())]
        assert chain.settle(db) == 0
        with db.read() as conn:
            assert [e["outcome"] for e in chained_events(conn)] == ["0", "4", "0", "0", "0", "8"]
    assert verified(sqlite_url)[0] == 6


def test_a_torn_line_at_the_end_of_a_closed_journal_is_left_out_and_named(sqlite_url, caplog):
    """A worker whose write was cut short answered 503 for it: the lines before are chained, the torn end is
    logged and not chained, and the file is removed."""
    with database(sqlite_url) as db:
        db.migrate()
        assert db.journals is not None
        gone = Journal(db.journals)
        whole, torn = (said for _, said in some_facts([200, 200], "t"))
        gone.append(whole)
        gone.close()
        (path,) = _journal_files(db)
        with path.open("ab") as file:
            file.write(torn[:40])
        assert chain.settle(db) == 1
        assert chain.settle(db) == 0
        assert _journal_files(db) == []
        assert any("torn line" in r.getMessage() for r in caplog.records)
    assert verified(sqlite_url)[0] == 1


def test_a_journal_being_opened_is_never_taken_for_one_left_behind(sqlite_url, monkeypatch):
    """A worker's new file gets its lock before a reader can see it: a reader finding an empty file whose lock
    is free removes it, and the worker's lines would be written to a removed file and lost."""
    with database(sqlite_url) as db:
        db.migrate()
        assert db.journals is not None
        journal = Journal(db.journals)
        flock = fcntl.flock

        def read_first(fd: int, how: int) -> None:
            if how == fcntl.LOCK_EX:  # the worker's, about to be taken: another worker's reader comes first
                chain.settle(db)
            flock(fd, how)

        monkeypatch.setattr(fcntl, "flock", read_first)
        journal.append(some_facts([200])[0][1])
        monkeypatch.setattr(fcntl, "flock", flock)
        assert chain.settle(db) == 1
        journal.close()
    assert verified(sqlite_url)[0] == 1


def test_a_request_answers_from_the_journal_without_waiting_for_the_chains_lock(sqlite_url):
    """Another worker holds the chain's lock: the request's facts are durable in its journal and it answers;
    the audit writer's thread chains them once the lock is free."""
    with database(sqlite_url) as db:
        db.migrate()
        writer = trail.Writer(db, lag=2000)
        (first,) = requests(1)
        with db.write(chain=True) as conn:
            chain.head(conn)
            answered = threading.Thread(target=lambda: asyncio.run(answer(writer, first)))
            answered.start()
            answered.join(5)
            assert not answered.is_alive()
            assert len(_journal_files(db)) == 1
        eventually(lambda: audited(db) == ["r0"])


def test_a_line_longer_than_one_read_is_chained_whole(sqlite_url, monkeypatch):
    """A read takes READ_BYTES of a journal at most; a line longer than that (a batch reading many
    resources) is read to its end, not left waiting for a newline that is already written."""
    monkeypatch.setattr(audit_journal, "READ_BYTES", 64)
    with database(sqlite_url) as db:
        db.migrate()
        assert db.journal is not None
        for said in some_facts([200, 404]):
            db.journal.append(said[1])
        assert [chain.settle(db), chain.settle(db), chain.settle(db)] == [1, 1, 0]  # a line per read here
        with db.read() as conn:
            assert [e["outcome"] for e in chained_events(conn)] == ["0", "4"]
