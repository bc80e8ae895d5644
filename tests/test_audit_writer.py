"""How the node writes its AuditEvents, on SQLite and PostgreSQL: one per request, indexed like any
AuditEvent's content; the AuditEvents of concurrent requests commit together (group commit); the event
loop runs on while they wait for the database; and requests whose AuditEvent cannot be written answer 503
(fail closed), all of them, while the next ones are audited again."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from unittest import mock

import orjson
import pytest
from access_data import ISSUER, World, episode, headers
from chained import chained_events, eventually
from jwt_keys import REFUSED
from live_node import BASE_HOST
from sqlalchemy import Column, Table, insert, select
from starlette.testclient import TestClient

from fhir_node.api.guard import Guard
from fhir_node.app import create_app
from fhir_node.audit import chain, trail
from fhir_node.search.index import rows
from fhir_node.security.access import Access, Record, serving
from fhir_node.security.principal import LOCAL_OPERATOR
from fhir_node.settings import Settings
from fhir_node.store.audit_journal import Journal
from fhir_node.store.database import Database
from fhir_node.store.schema import INDEX_TABLES, resources

Rows = dict[str, collections.Counter[tuple[Any, ...]]]
Secured = tuple[TestClient, World]
SERVER = "https://node.example/fhir"


# --- index rows -----------------------------------------------------------------------------------------


def value_columns(table: Table) -> list[Column[Any]]:
    """An index table's columns but its resource's keys (type, id, number): the parameter and its values."""
    return [c for c in table.columns if c.name not in ("res_type", "res_id", "rid")]


def generic(event: dict[str, Any]) -> Rows:
    """The rows `search.index` extracts from any stored AuditEvent, as (param, value columns) per table."""
    out: Rows = {}
    for kind, found in rows("AuditEvent", event).items():
        columns = [c.name for c in value_columns(INDEX_TABLES[kind])]
        out.setdefault(INDEX_TABLES[kind].name, collections.Counter()).update(
            tuple(r.get(c) for c in columns) for r in found
        )
    return out


def request(interaction: str, **fields: Any) -> Record:
    method = {"create": "POST", "update": "PUT", "delete": "DELETE", "transaction": "POST"}.get(interaction, "GET")
    return Record(method, "/fhir/Patient", fields.pop("query", ""), interaction, **fields)


def test_the_index_rows_stored_for_each_audit_event_are_those_of_its_content(world: Secured) -> None:
    client, w = world
    op, dr, central = headers("operator"), headers("provider"), headers("aggregator")
    entries = []
    for i in range(20):
        pid = f"urn:uuid:{uuid.uuid4()}"
        patient = {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": str(i)}]}
        inclusion = episode(pid, w.ref("orgA"), "information")
        entries += [
            {"fullUrl": pid, "resource": patient, "request": {"method": "POST", "url": "Patient"}},
            {"resource": inclusion, "request": {"method": "POST", "url": "EpisodeOfCare"}},
        ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert client.post("/fhir", json=bundle, headers=op).status_code == 200
    assert len(client.get("/fhir/EpisodeOfCare?_count=50", headers=op).json()["entry"]) > 20
    client.get(f"/fhir/{w.ref('P1')}", headers=op)
    client.get(f"/fhir/{w.ref('P1')}/_history/1", headers=op)
    client.get("/fhir/Patient/_history", headers=op)
    client.get(f"/fhir/{w.ref('A1')}", headers=dr)
    client.get("/fhir/Patient", headers=central)
    client.get("/fhir/Patient/x%2FPatient%2Fy", headers=dr)
    created = client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P3"), w.ref("orgA"), "information"), headers=op)
    client.delete(f"/fhir/EpisodeOfCare/{created.json()['id']}", headers=op)
    client.get("/fhir/Patient")  # 401
    client.get("/fhir/Patient", headers={"Authorization": f"Bearer {REFUSED['expired'][0](ISSUER)}"})  # 401
    chain.catch_up(client.app.state.node.db)  # type: ignore[attr-defined]
    with client.app.state.node.db.read() as conn:  # type: ignore[attr-defined]
        q = select(resources.c.res_id, resources.c.content).where(resources.c.res_type == "AuditEvent")
        events = {res_id: orjson.loads(content) for res_id, content in conn.execute(q)}
        indexed: dict[str, Rows] = collections.defaultdict(dict)
        for table in set(INDEX_TABLES.values()):
            q = select(table.c.res_id, *value_columns(table)).where(table.c.res_type == "AuditEvent")
            for res_id, *values in conn.execute(q):
                indexed[res_id].setdefault(table.name, collections.Counter())[tuple(values)] += 1
    assert len(events) == 12  # one per request
    refused = [e for e in events.values() if e["outcomeDesc"] == "HTTP 401"]
    assert len(refused) == 2 and all("identifier" not in e["agent"][0]["who"] for e in refused)  # no one
    for res_id, event in events.items():
        assert indexed[res_id] == generic(event), event


# --- the writer -----------------------------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def new_writer() -> Iterator[Callable[[Database, int], trail.Writer]]:
    """Audit writers for a test, their threads ended with it: left running, one indexed into a database
    already dropped, and logged its failure during the tests after it."""
    made: list[trail.Writer] = []

    def make(db: Database, lag: int) -> trail.Writer:
        made.append(trail.Writer(db, lag=lag))
        return made[-1]

    yield make
    for writer in made:
        writer.close()


def requests(n: int) -> list[Access]:
    return [Access(LOCAL_OPERATOR, request_id=f"r{i}", server=SERVER, record=request("search-type")) for i in range(n)]


async def answer(writer: trail.Writer, access: Access, status: int = 200) -> None:
    """What the Guard does when a request's answer starts."""
    with serving(access):
        await writer.flush(status)


def audited(db: Database) -> list[str]:
    """The request ids of the chain's AuditEvents, in chain order."""
    with db.read() as conn:
        return [e["entity"][0]["what"]["identifier"]["value"] for e in chained_events(conn)]


@pytest.fixture
def grouped(db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    """`db` with every request handing its AuditEvent to the audit writer's thread and waiting for its group,
    as on PostgreSQL (on SQLite a request writes its facts to the worker's journal otherwise)."""
    monkeypatch.setattr(db, "journal", None)
    return db


def test_a_requests_facts_are_durable_when_it_answers_and_chained_by_the_thread(
    db: Database, monkeypatch, new_writer
) -> None:
    """On SQLite a request's facts are in its worker's journal when the answer starts, and the audit writer's
    thread chains them a few ms later, many to a transaction; on PostgreSQL the request hands them over and
    waits for the thread's group commit. Either way no answer goes before its AuditEvent is durable."""
    writer = new_writer(db, 2000)
    extend = chain.extend
    calls: list[tuple[str, int]] = []

    def counted(conn: Any, facts: list[Any]) -> list[str]:
        calls.append((threading.current_thread().name, len(facts)))
        return extend(conn, facts)

    monkeypatch.setattr(chain, "extend", counted)

    async def together() -> None:
        await asyncio.gather(*(answer(writer, access) for access in requests(4)))

    asyncio.run(together())
    if db.is_sqlite:
        assert db.journals is not None
        (journal,) = db.journals.glob("*.facts")
        assert len(journal.read_bytes().splitlines()) == 4  # durable there when the answers started
    eventually(lambda: sorted(audited(db)) == ["r0", "r1", "r2", "r3"])
    assert sum(n for _, n in calls) == 4 and all(name == "audit-writer" for name, _ in calls)
    assert len(calls) < 4  # several requests' in one transaction


def test_past_the_lag_what_waits_to_be_indexed_stays_bounded(db: Database, monkeypatch, new_writer) -> None:
    """Under sustained load the index keeps up: past the lag (or `lag` requests journaled since the last
    group) each request waits for the thread's next group, which is followed by a batch indexed, which the
    next group waits for. Appended whatever the lag, events came faster than a slow indexer took them, and
    what waited grew (without the waiting here, 40)."""
    monkeypatch.setattr(trail.Writer, "IDLE", 3600.0)  # no indexing for being idle
    monkeypatch.setattr(chain, "INDEX_BATCH", 2)
    index = chain.index

    def slow(conn: Any, limit: int | None = None) -> int:
        time.sleep(0.02)
        return index(conn, limit)

    monkeypatch.setattr(chain, "index", slow)
    writer = new_writer(db, 5)

    async def sustained() -> None:
        for access in requests(40):
            await answer(writer, access)

    asyncio.run(sustained())
    writer.close()  # its thread done: a batch it indexes after releasing the last request is counted, or not, by chance
    chain.settle(db)  # what the journal holds (SQLite): `lag` at most, the rest waited for a group
    with db.read() as conn:
        assert 5 + 1 - 2 <= chain.waiting(conn) <= 5 + 5 + 1  # a group past the lag (6), then a batch of 2 indexed
    assert len(audited(db)) == 40


def test_concurrent_requests_share_transactions_and_extend_one_chain(grouped: Database, new_writer) -> None:
    db = grouped
    writer = new_writer(db, 2000)
    groups: list[int] = []
    extend = chain.extend

    def counted(conn: Any, events: list[dict[str, Any]]) -> list[str]:
        groups.append(len(events))
        return extend(conn, events)

    waiting = requests(40)

    async def main() -> None:
        await asyncio.gather(*(answer(writer, access) for access in waiting))

    with mock.patch.object(chain, "extend", counted):
        asyncio.run(main())
    assert sum(groups) == 40 and max(groups) > 1, groups
    assert all(access.record is not None and access.record.written for access in waiting)
    assert sorted(audited(db)) == sorted(a.request_id for a in waiting)
    with db.read() as conn:
        checked, _, broken = chain.verify(conn)
    assert (checked, broken) == (40, None)


def test_a_group_waits_for_the_requests_under_way_and_not_for_those_over(grouped: Database, new_writer) -> None:
    """Each group commit costs the same for one AuditEvent or many (and empties every reader's page cache):
    a group waits, LINGER at most, for the AuditEvents of the requests still under way, and stops waiting
    for one that ends without handing one over (a write carried its own, or it failed)."""
    db = grouped
    writer = new_writer(db, 2000)
    writer.LINGER = 30  # longer than any wait below: only the requests' ends may stop it
    groups: list[int] = []
    extend = chain.extend

    def counted(conn: Any, events: list[dict[str, Any]]) -> list[str]:
        groups.append(len(events))
        return extend(conn, events)

    a, b, c, d = requests(4)

    async def main() -> None:
        with writer.request(a.record), writer.request(b.record):
            assert writer.under_way == 2
            first = asyncio.ensure_future(answer(writer, a))
            await asyncio.sleep(0.2)
            assert not first.done()  # its group waits for b's AuditEvent
            await asyncio.wait_for(asyncio.gather(first, answer(writer, b)), 10)
        with writer.request(c.record):
            with writer.request(d.record):
                third = asyncio.ensure_future(answer(writer, c))
                await asyncio.sleep(0.2)
                assert not third.done()
            await asyncio.wait_for(third, 10)  # d ended without an AuditEvent: no more waiting
        assert writer.under_way == 0

    with mock.patch.object(chain, "extend", counted):
        asyncio.run(main())
    assert groups == [2, 1]
    assert audited(db) in (["r0", "r1", "r2"], ["r1", "r0", "r2"])


def test_a_search_names_the_patients_of_the_versions_it_showed(database_url: str) -> None:
    """The Patients of a page's resources are looked up once per version: the same search again names the
    same ones, and after an update moves an EpisodeOfCare to another Patient (a new version) the next
    search, in id order or sorted, names the new one only."""
    app = create_app(Settings(database_url=database_url, audit=True, enforce_profiles=False))

    def named() -> set[str]:
        """The Patients named by the last search's AuditEvent (a write's own may be chained after it)."""
        chain.settle(app.state.node.db)  # what the journal holds
        with app.state.node.db.read() as conn:
            events = chained_events(conn)
        last = [e for e in events if e["subtype"][0]["code"] == "search-type"][-1]
        return {e["what"]["reference"] for e in last["entity"] if e.get("role", {}).get("code") == "1"}

    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        first, second = (client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"] for _ in "ab")
        ep = {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": f"Patient/{first}"}}
        ep_id = client.post("/fhir/EpisodeOfCare", json=ep).json()["id"]
        for _ in range(2):
            assert client.get(f"/fhir/EpisodeOfCare?_id={ep_id}").status_code == 200
            assert named() == {f"Patient/{first}"}
        moved = {**ep, "id": ep_id, "patient": {"reference": f"Patient/{second}"}}
        assert client.put(f"/fhir/EpisodeOfCare/{ep_id}", json=moved).status_code == 200
        for query in (f"_id={ep_id}", f"_id={ep_id}&_sort=-_lastUpdated"):
            assert client.get(f"/fhir/EpisodeOfCare?{query}").status_code == 200
            assert named() == {f"Patient/{second}"}


@contextlib.contextmanager
def unwritable() -> Iterator[None]:
    """No AuditEvent can be made durable: neither a worker's journal (SQLite) nor the chain takes it."""
    with (
        mock.patch.object(Journal, "append", side_effect=OSError("disk full")),
        mock.patch.object(chain, "extend", side_effect=RuntimeError("disk full")),
    ):
        yield


def test_no_request_is_left_counted_as_under_way(database_url: str) -> None:
    """Searches, reads, writes (their AuditEvent commits with them), refusals and failures: once answered,
    none is still one a group would wait for."""
    app = create_app(Settings(database_url=database_url, audit=True, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        assert client.get("/fhir/EpisodeOfCare?status=active").status_code == 200
        assert client.get("/fhir/Patient/nobody").status_code == 404
        assert client.get("/fhir/Patient?unknown-parameter=1").status_code == 400
        created = client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "Kept"})
        assert created.status_code == 201
        assert client.post("/fhir/Organization", json={"resourceType": "Patient"}).status_code == 400
        with unwritable():
            assert client.get("/fhir/Patient").status_code == 503
        guard = app.middleware_stack
        while not isinstance(guard, Guard):
            guard = guard.app
        assert guard.audit.under_way == 0


def test_the_event_loop_runs_while_the_audit_waits_for_the_database(grouped: Database, new_writer) -> None:
    """Another transaction holds the chain (SQLite's write lock, PostgreSQL's advisory lock) for a while."""
    db = grouped
    writer = new_writer(db, 2000)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.write(chain=True) as conn:
            chain.head(conn)
            holding.set()
            release.wait(10)

    async def main() -> int:
        ticks = 0
        flushing = asyncio.ensure_future(answer(writer, requests(1)[0]))
        while ticks < 20:  # the loop goes round while the AuditEvent waits
            await asyncio.sleep(0.005)
            assert not flushing.done()
            ticks += 1
        release.set()
        await flushing
        return ticks

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    assert asyncio.run(main()) == 20
    holder.join()
    assert audited(db) == ["r0"]


def test_the_audit_does_not_wait_for_a_write_holding_the_database(db: Database, new_writer) -> None:
    """A long write (a big transaction Bundle) holds the database's write lock: the AuditEvents of the reads
    meanwhile commit all the same (on SQLite the chain's file has a lock of its own), so the reads answer."""
    writer = new_writer(db, 2000)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.write() as conn:
            held = {"res_type": "Basic", "res_id": "held", "version_id": 1, "deleted": False, "content": b"{}"}
            conn.execute(insert(resources).values(**held, last_updated=datetime.now()))
            holding.set()
            release.wait(10)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(answer(writer, a) for a in requests(3))), timeout=5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        asyncio.run(main())
        eventually(lambda: sorted(audited(db)) == ["r0", "r1", "r2"])
    finally:
        release.set()
        holder.join()


def test_when_the_audit_cannot_be_written_every_waiting_request_fails(db: Database, new_writer) -> None:
    writer = new_writer(db, 2000)
    failed, later = requests(8), requests(1)

    async def main(accesses: list[Access]) -> list[BaseException | None]:
        return await asyncio.gather(*(answer(writer, a) for a in accesses), return_exceptions=True)

    with unwritable():
        outcomes = asyncio.run(main(failed))
    assert all(isinstance(o, (RuntimeError, OSError)) for o in outcomes), outcomes
    assert not any(a.record is not None and a.record.written for a in failed)
    assert asyncio.run(main(later)) == [None]
    eventually(lambda: audited(db) == ["r0"])


def test_a_request_whose_audit_event_cannot_be_written_answers_503(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, audit=True, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        with unwritable():
            refused = client.get("/fhir/Patient")
        assert refused.status_code == 503
        assert refused.json()["issue"][0]["code"] == "transient"
        assert client.get("/fhir/Patient").status_code == 200
        chain.settle(app.state.node.db)
        with app.state.node.db.read() as conn:
            checked, _, broken = chain.verify(conn)
        assert (checked, broken) == (1, None)


def test_an_app_that_stops_chains_what_waits_and_ends_its_writer(database_url: str) -> None:
    """Once the app has stopped, every request it answered is chained (nobody else settling the journals)
    and its audit writer's thread is gone: nothing of it writes the chain after its database is closed."""
    writers_before = {t for t in threading.enumerate() if t.name == "audit-writer"}
    app = create_app(Settings(database_url=database_url, audit=True, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        ids = {client.get("/fhir/Patient").headers["X-Request-ID"] for _ in range(5)}
    left = {t for t in threading.enumerate() if t.name == "audit-writer"} - writers_before
    assert left == set()
    db = Database(database_url)
    try:
        with db.read() as conn:
            requests = {e["entity"][0]["what"]["identifier"]["value"] for e in chained_events(conn)}
    finally:
        db.dispose()
    assert ids <= requests
