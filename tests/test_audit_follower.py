"""On SQLite `fhir-node serve` runs `fhir-node audit follow` beside its workers (`audit.follower`): the workers
journal their requests' facts and leave the chaining to it, but past the lag, where a worker chains them itself;
the follower chains what the journals hold as they fill, and what is left when it stops; it is started again if
it dies, and it ends with the server."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chained import eventually
from live_node import serve_node
from test_audit_writer import answer, audited, requests

from fhir_node.audit import follower, trail
from fhir_node.store.database import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'fhir-node.db'}")
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def following(db: Database) -> Iterator[threading.Event]:
    """`follower.follow` on `db` in a thread while the test runs; set the event to stop it."""
    stopped = threading.Event()
    thread = threading.Thread(target=follower.follow, args=(db, stopped))
    thread.start()
    try:
        yield stopped
    finally:
        stopped.set()
        thread.join(10)
        assert not thread.is_alive()


def test_a_followed_worker_journals_and_the_follower_chains(db: Database, following: threading.Event) -> None:
    writer = trail.Writer(db, lag=1000, followed=True)
    done = requests(5)

    async def run() -> None:
        for access in done:
            await answer(writer, access)

    asyncio.run(run())
    assert all(access.record is not None and access.record.written for access in done)  # answered at once
    assert writer._thread is None  # the worker chains nothing itself: no writer thread
    eventually(lambda: audited(db) == [f"r{i}" for i in range(5)])
    assert not follower._pending(db)


def test_past_the_lag_a_followed_worker_chains_itself(db: Database) -> None:
    """No follower here: the request past the lag waits for the worker's own group, which chains every
    journaled fact, its own included, before it answers."""
    writer = trail.Writer(db, lag=2, followed=True)

    async def run() -> None:
        for access in requests(3):
            await answer(writer, access)

    try:
        asyncio.run(run())
        assert audited(db) == ["r0", "r1", "r2"]
    finally:
        writer.close()


def test_what_the_journals_hold_when_the_follower_stops_is_chained(db: Database) -> None:
    writer = trail.Writer(db, lag=1000, followed=True)
    stopped = threading.Event()
    stopped.set()  # stops at once: chains what is there, then returns

    async def run() -> None:
        for access in requests(3):
            await answer(writer, access)

    asyncio.run(run())
    assert follower._pending(db) and audited(db) == []
    follower.follow(db, stopped)
    assert audited(db) == ["r0", "r1", "r2"] and not follower._pending(db)


def _followers(server: int) -> list[int]:
    """The `audit follow` processes started by the server process `server`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat[1]) == server and b"follow" in command:
                found.append(int(entry.name))
    return found


def _chained(url: str) -> int:
    """How many events the chain holds, read below the API (a read of AuditEvents would chain them itself)."""
    db = Database(url)
    try:
        return len(audited(db))
    finally:
        db.dispose()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_runs_a_follower_that_chains_restarts_and_ends_with_it(tmp_path: Path, workers: int) -> None:
    url = f"sqlite:///{tmp_path / 'fhir-node.db'}"
    env = {"FHIR_NODE_AUTH": "none", "FHIR_NODE_AUDIT": "true", "FHIR_NODE_AUDIT_INDEX_LAG": "100000"}
    with serve_node(url, tmp_path, env, workers=workers) as base:
        server = int((tmp_path / "server.pid").read_text())
        eventually(lambda: len(_followers(server)) == 1)
        (first,) = _followers(server)
        with httpx.Client() as client:
            for _ in range(10):
                assert client.get(f"{base}/Patient").status_code == 200
            eventually(lambda: _chained(url) >= 10)
            os.kill(first, signal.SIGKILL)  # another is started
            seen: list[list[int]] = []

            def restarted() -> bool:
                seen.append(_followers(server))
                return len(seen[-1]) == 1 and seen[-1] != [first]

            eventually(restarted)  # the follower is the one this scan saw (a third scan raced a start)
            (second,) = seen[-1]
            before = _chained(url)
            for _ in range(5):
                assert client.get(f"{base}/Patient").status_code == 200
            eventually(lambda: _chained(url) >= before + 5)
    eventually(lambda: not _running(second))  # the follower ends with the server


def _running(pid: int) -> bool:
    try:
        return b"follow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
