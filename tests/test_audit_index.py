"""The node's AuditEvents are chained when their request answers and stored as searchable resources
afterwards, on SQLite and PostgreSQL: requests that cannot read AuditEvents index nothing, every request
that may read them finds the whole chain, the idle writer indexes what is left, and a database chained by
an older node (events stored as resources at once) keeps verifying after the upgrade."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from alembic import command
from alembic.config import Config
from chained import some_facts
from live_node import BASE_HOST
from sqlalchemy import func, insert, select
from starlette.testclient import TestClient
from test_audit_chain import audited_client, database, exercise, verified

from fhir_node.api import guard
from fhir_node.app import create_app
from fhir_node.audit import chain, trail
from fhir_node.settings import Settings
from fhir_node.store import repository
from fhir_node.store.database import MIGRATIONS, Database
from fhir_node.store.schema import audit_chain, audit_indexed, resources


def stored(db: Database) -> int:
    """AuditEvents stored as resources."""
    with db.read() as conn:
        q = select(func.count()).select_from(resources).where(resources.c.res_type == "AuditEvent")
        return conn.execute(q).scalar_one()


def chained(db: Database) -> int:
    """AuditEvents chained, once every one made durable so far is (on SQLite the workers' journals are
    chained by the audit writer's next group: a few ms later)."""
    chain.settle(db)
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(audit_chain)).scalar_one()


#: Requests that may read AuditEvents: each first indexes every event chained before it.
READ_AUDIT = [
    "/AuditEvent?_summary=count",
    "/AuditEvent?outcome=0&_count=1",
    "/Patient?_revinclude=AuditEvent:patient",
    "/Patient?_has:AuditEvent:patient:outcome=0",
    "/Patient?_revinclude=%41uditEvent:patient",
    "/EpisodeOfCare?_revinclude=*",
    "/Consent?data.outcome=0",
    "/Consent?_include=Consent:data",
    "?_type=AuditEvent",
    "/_history",
]


def test_only_requests_that_may_read_audit_events_index_them_first(database_url, monkeypatch):
    monkeypatch.setattr(trail.Writer, "IDLE", 3600.0)  # no indexing when idle during this test
    with audited_client(database_url) as client, database(database_url) as db:
        requests = exercise(client)
        assert chained(db) == requests and stored(db) == 0
        for other in (
            "EpisodeOfCare?status=active",
            "Patient?_count=2",
            "Organization?name=x",
            "Consent?status=active",
        ):
            assert client.get(f"/fhir/{other}").status_code == 200
            assert stored(db) == 0, other
        for url in READ_AUDIT:
            before = chained(db)
            answer = client.get(f"/fhir{url}")
            assert answer.status_code == 200, (url, answer.text)
            assert stored(db) == before, url
        total = client.get("/fhir/AuditEvent", params={"_summary": "count"}).json()["total"]
        assert total == chained(db) - 1  # all but the count's own, chained as it answers
    assert verified(database_url)[0] == chained_after(database_url)


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _create(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def test_a_bundle_of_writes_leaves_the_chain_to_be_indexed_later(database_url, monkeypatch):
    """A Bundle reaches every type, but is decided on its bytes: writes alone (what a load sends) do not wait
    for the chained events to be indexed; a read entry, or AuditEvent named anywhere (escaped too), does."""
    monkeypatch.setattr(trail.Writer, "IDLE", 3600.0)
    named = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">AuditEvent</div>'}
    with audited_client(database_url) as client, database(database_url) as db:
        exercise(client)
        for kind in ("transaction", "batch"):
            answer = client.post("/fhir", json=_bundle(kind, _create({"resourceType": "Patient"})))
            assert answer.status_code == 200, answer.text
            assert stored(db) == 0, kind
        escaped = orjson.dumps(_bundle("transaction", _create({"resourceType": "Patient", "text": named})))
        for body in (
            orjson.dumps(_bundle("batch", {"request": {"method": "GET", "url": "Patient?_count=1"}})),
            orjson.dumps(_bundle("transaction", _create({"resourceType": "Patient", "text": named}))),
            escaped.replace(b"AuditEvent", b"\\u0041uditEvent"),
        ):
            chain.settle(db)  # the writes' staged events chained: all that the Bundle must find indexed
            before = chained(db)
            answer = client.post("/fhir", content=body, headers={"Content-Type": "application/fhir+json"})
            assert answer.status_code == 200, answer.text
            assert stored(db) == before, body
    assert verified(database_url)[0] == chained_after(database_url)


def chained_after(database_url: str) -> int:
    with database(database_url) as db:
        return chained(db)


def test_the_writer_indexes_the_chain_once_the_node_is_idle(database_url, monkeypatch):
    monkeypatch.setattr(trail.Writer, "IDLE", 0.05)
    monkeypatch.setattr(chain, "INDEX_BATCH", 3)  # several batches
    with audited_client(database_url) as client, database(database_url) as db:
        requests = exercise(client)
        deadline = time.monotonic() + 30
        while stored(db) < requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored(db) == chained(db) == requests
        with db.read() as conn:
            assert (
                conn.execute(select(audit_indexed.c.seq)).scalar_one()
                == conn.execute(select(func.max(audit_chain.c.seq))).scalar_one()
            )
    assert verified(database_url)[0] == requests


def test_an_older_chain_keeps_verifying_and_is_not_indexed_twice(database_url, monkeypatch):
    """Events an older node stored as resources at once and chained by their stored bytes: the upgrade
    copies each one's bytes and time into the chain and marks them indexed. (Their search index rows are
    left out: today's name a column, `rid`, that schema 0005 lacks; the chain is what this checks.)"""
    monkeypatch.setattr(repository, "write_index", lambda *args, **kwargs: None)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with database(database_url) as db:
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005")
        previous = chain.GENESIS
        with db.write() as conn:
            for outcome in ("0", "4", "8"):
                event = {
                    "extension": [
                        {
                            "url": "https://fhir-node.be/fhir/StructureDefinition/audit-chain-previous",
                            "valueString": previous,
                        }
                    ],
                    "resourceType": "AuditEvent",
                    "outcome": outcome,
                }
                res_id = repository.time_ordered_ids(1)[0]
                written = repository.write(conn, "AuditEvent", res_id, event, None, "POST")
                assert written.content is not None
                previous = chain.digest(written.content)
                conn.execute(insert(audit_chain).values(res_id=res_id, hash=previous))
        db.migrate()
        assert chain.catch_up(db) == 0
        assert stored(db) == chained(db) == 3
        with db.read() as conn:
            rows = conn.execute(select(audit_chain.c.recorded, audit_chain.c.content)).all()
        assert all(recorded is not None and content for recorded, content in rows)
    assert verified(database_url) == (3, previous)


@pytest.mark.parametrize("batch", [1, 50])
def test_indexing_stores_each_event_byte_for_byte(database_url, batch, monkeypatch):
    monkeypatch.setattr(chain, "INDEX_BATCH", batch)
    with database(database_url) as db:
        db.migrate()
        with db.write() as conn:
            ids = chain.extend(conn, some_facts([200, 404] * 3 + [200]))
        assert chain.catch_up(db) == 7
        with db.read() as conn:
            c = audit_chain.c
            kept = {i: chain.stored(i, t, b) for i, t, b in conn.execute(select(c.res_id, c.recorded, c.content))}
            served = {i: repository.current(conn, "AuditEvent", i) for i in ids}
        assert all(v is not None and v.content == kept[i] and v.version_id == 1 for i, v in served.items())
        assert [orjson.loads(kept[i])["outcome"] for i in ids] == ["0", "4"] * 3 + ["0"]


def test_events_staged_whole_by_an_older_node_are_chained_and_stored_as_they_were(database_url):
    """Until 2026-12-01 the node staged (and chained) whole AuditEvents; it now chains a request's facts and
    builds the event from them when indexing. An event staged whole before an upgrade is linked by its chain
    extension and stored as it was, beside events chained as facts, and the chain verifies across both."""
    whole = {"resourceType": "AuditEvent", "action": "C", "outcome": "4", "outcomeDesc": "HTTP 422"}
    with database(database_url) as db:
        db.migrate()
        with db.write() as conn:
            chain.record(conn, [*some_facts([200]), (repository.now(), orjson.dumps(whole)), *some_facts([404])])
        assert chain.catch_up(db) == 3
        with db.read() as conn:
            c = audit_chain.c
            rows = conn.execute(select(c.res_id, c.content).order_by(c.seq)).all()
            served = [orjson.loads(repository.current(conn, "AuditEvent", res_id).content) for res_id, _ in rows]
    assert rows[1].content.startswith(b'{"resourceType":"AuditEvent"')
    assert [r.content.startswith(b'{"previous":') for r in rows] == [True, False, True]
    assert [e["outcome"] for e in served] == ["0", "4", "4"]
    assert served[1]["outcomeDesc"] == "HTTP 422" and served[1]["extension"][0]["valueString"] == chain.digest(
        rows[0].content
    )
    assert served[2]["extension"][0]["valueString"] == chain.digest(rows[1].content)
    assert verified(database_url)[0] == 3


def test_catching_up_indexes_what_was_chained_before_not_what_comes_meanwhile(database_url, monkeypatch):
    """Under sustained load events are chained about as fast as they are indexed: a request that must see
    every AuditEvent indexes those chained before it, and is not held up by the ones that follow."""
    monkeypatch.setattr(chain, "INDEX_BATCH", 1)
    index = chain.index
    calls: list[int] = []

    def while_requests_come(conn: Any, limit: int | None = None) -> int:
        calls.append(1)
        assert len(calls) < 20, "catching up chases the events chained since it began"
        with db.write(chain=True) as other:  # a request answered meanwhile
            chain.extend(other, some_facts([200]))
        return index(conn, limit)

    with database(database_url) as db:
        db.migrate()
        with db.write() as conn:
            chain.extend(conn, some_facts([200] * 3))
        monkeypatch.setattr(chain, "index", while_requests_come)
        assert chain.catch_up(db) == 3
        assert (stored(db), chained(db)) == (3, 6)


@pytest.mark.parametrize("lag", [0, 4])
def test_under_load_at_most_lag_events_wait_to_be_indexed(database_url, lag, monkeypatch):
    """Never idle (IDLE an hour): past `lag` waiting events, each group commit is followed by indexing."""
    monkeypatch.setattr(trail.Writer, "IDLE", 3600.0)
    settings = Settings(database_url=database_url, audit=True, enforce_profiles=False, audit_index_lag=lag)
    with TestClient(create_app(settings), base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        db = client.app.state.node.db  # type: ignore[attr-defined]
        for _ in range(12):
            assert client.get("/fhir/Patient", params={"_count": "2"}).status_code == 200
        deadline = time.monotonic() + 30
        while chained(db) - stored(db) > lag and time.monotonic() < deadline:
            time.sleep(0.05)
        assert chained(db) - stored(db) <= lag
        assert stored(db) >= 12 - lag


def test_whether_events_wait_is_asked_on_the_event_loop(database_url, monkeypatch):
    """A request that may read AuditEvents goes to a worker thread to index them only when some wait: with the
    audit off none but an earlier run's do, and the hand-off alone cost such a request ~150 us of CPU."""
    handed: list[str] = []
    hand_over = guard.run_in_threadpool

    async def recorded(fn: Any, *args: Any) -> Any:
        handed.append(fn.__name__)
        return await hand_over(fn, *args)

    monkeypatch.setattr(guard, "run_in_threadpool", recorded)
    app = create_app(Settings(database_url=database_url, audit=False, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client, database(database_url) as db:
        for url in READ_AUDIT:
            assert client.get(f"/fhir{url}").status_code == 200, url
        assert handed == [] and stored(db) == 0
        with db.write(chain=True) as conn:  # an event an audited run left chained, not indexed
            chain.extend(conn, some_facts([200]))
        assert client.get("/fhir/AuditEvent", params={"_summary": "count"}).json()["total"] == 1
        assert handed == ["catch_up"] and stored(db) == 1
        assert client.get("/fhir/AuditEvent", params={"_summary": "count"}).json()["total"] == 1
        assert handed == ["catch_up"]


def test_audit_event_ids_are_uuids_version_7_in_time_order() -> None:
    """The ids of a group of AuditEvents: distinct UUIDs of version 7 and RFC 4122's variant, whose first 48
    bits are the milliseconds they were made at, so that a later group sorts after an earlier one."""
    before = time.time_ns() // 1_000_000
    first = repository.time_ordered_ids(200)
    time.sleep(0.002)
    later = repository.time_ordered_ids(3)
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in first + later]
    assert [str(u) for u in parsed] == first + later
    assert len(set(first + later)) == 203
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    assert all(before <= u.int >> 80 <= after for u in parsed)
    assert max(first) < min(later)
