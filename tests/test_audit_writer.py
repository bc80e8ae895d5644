"""How the node writes its AuditEvents, on SQLite and PostgreSQL: their index rows are read off the shape
the node builds (`events.index_rows`) yet equal what generic extraction gives any AuditEvent, so searches
on them cannot drift; the AuditEvents of concurrent requests commit together (group commit); the event
loop runs on while they wait for the database; and requests whose AuditEvent cannot be written answer 503
(fail closed), all of them, while the next ones are audited again."""

from __future__ import annotations

import asyncio
import collections
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import orjson
import pytest
from access_data import ISSUER, World, episode, headers
from jwt_keys import REFUSED
from live_node import BASE_HOST
from sqlalchemy import select
from starlette.testclient import TestClient

from fhir_node.api.guard import UNAUTHENTICATED
from fhir_node.app import create_app
from fhir_node.audit import chain, trail
from fhir_node.audit.events import INDEXED, build, index_rows
from fhir_node.search.index import indexed_params, rows
from fhir_node.security.access import Access, Record, serving
from fhir_node.security.principal import LOCAL_OPERATOR, Principal, Scopes
from fhir_node.settings import Settings
from fhir_node.store.database import Database
from fhir_node.store.repository import now, stored_form
from fhir_node.store.schema import INDEX_TABLES, audit_chain, resources

Rows = dict[str, collections.Counter[tuple[Any, ...]]]
Secured = tuple[TestClient, World]
SERVER = "https://node.example/fhir"


# --- index rows -----------------------------------------------------------------------------------------


def generic(event: dict[str, Any]) -> Rows:
    """The rows `search.index` extracts from any stored AuditEvent, as (param, value columns) per table."""
    out: Rows = {}
    for kind, found in rows("AuditEvent", event).items():
        columns = [c.name for c in INDEX_TABLES[kind].columns][2:]
        out.setdefault(INDEX_TABLES[kind].name, collections.Counter()).update(
            tuple(r.get(c) for c in columns) for r in found
        )
    return out


def direct(event: dict[str, Any]) -> Rows:
    out: Rows = {}
    for kind, found in index_rows(event).items():
        assert all(r["res_type"] == "AuditEvent" and r["res_id"] == event["id"] for r in found)
        out.setdefault(INDEX_TABLES[kind].name, collections.Counter()).update(
            tuple(r.values())[2:] for r in found
        )
    return out


def stored(access: Access, record: Record, status: int) -> dict[str, Any]:
    """The event `chain.extend` stores for this request."""
    event = {"extension": [{"url": "u", "valueString": "0" * 64}], **build(access, record, status, SERVER)}
    return stored_form(event, str(uuid.uuid4()), 1, now())


def request(interaction: str, **fields: Any) -> Record:
    method = {"create": "POST", "update": "PUT", "delete": "DELETE", "transaction": "POST"}.get(interaction, "GET")
    return Record(method, "/fhir/Patient", fields.pop("query", ""), interaction, **fields)


PATIENTS = [str(uuid.UUID(int=i)) for i in range(1, 21)]
PROVIDER = Principal("79121203389", "provider", Scopes({"*": frozenset("cruds")}), nihdi="18780485003")
AGGREGATOR = Principal("bihr-central-index", "aggregator", Scopes({"*": frozenset("rs")}), client_id="central")

#: name -> (caller, what the request did, status): every shape of event the node builds.
CASES: dict[str, tuple[Principal, Record, int]] = {
    "patient read": (PROVIDER, request("read", res_type="Patient", res_id="p1", patients={"p1"}), 200),
    "read of another's data": (
        PROVIDER,
        request("read", res_type="EpisodeOfCare", res_id="e1", entities=[("EpisodeOfCare", "e1")], patients={"p1"}),
        200,
    ),
    "denied read": (PROVIDER, request("read", res_type="EpisodeOfCare", res_id="e2"), 404),
    "search, twenty patients": (
        AGGREGATOR,
        request(
            "search-type",
            query="status=active&_count=50",
            entities=[("EpisodeOfCare", f"e{i}") for i in range(20)],
            patients=set(PATIENTS),
        ),
        200,
    ),
    "history": (LOCAL_OPERATOR, request("history-type", entities=[("Patient", "p1")], patients={"p1"}), 200),
    "create": (PROVIDER, request("create", entities=[("EpisodeOfCare", "e3")], patients={"p1"}), 201),
    "delete": (LOCAL_OPERATOR, request("delete", res_type="Patient", res_id="p1", patients={"p1"}), 204),
    "transaction, repeated entities": (
        LOCAL_OPERATOR,
        request(
            "transaction",
            entities=[("Patient", "p1"), ("EpisodeOfCare", "e1"), ("Patient", "p1"), ("Patient", "p2")],
            patients={"p1", "p2"},
        ),
        200,
    ),
    "401": (UNAUTHENTICATED, request("search-type"), 401),
    "refused write": (AGGREGATOR, request("create"), 403),
    # A path id with an encoded slash: neither reference is a local Type/id, one resolves to a Patient.
    "odd reference": (PROVIDER, request("read", res_type="Patient", res_id="x/Patient/y"), 404),
    "not an id": (PROVIDER, request("read", res_type="Patient", res_id="a b"), 404),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_index_rows_are_those_generic_extraction_gives(case: str) -> None:
    principal, record, status = CASES[case]
    access = Access(principal, request_id=uuid.uuid4().hex, server=SERVER, client="10.1.2.3", record=record)
    event = stored(access, record, status)
    assert direct(event) == generic(event)


def test_index_rows_cover_every_audit_event_search_parameter() -> None:
    """Else `chain.extend` falls back to generic extraction (correct, but the cost this avoids)."""
    assert indexed_params("AuditEvent") == INDEXED


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
    with client.app.state.node.db.read() as conn:  # type: ignore[attr-defined]
        q = select(resources.c.res_id, resources.c.content).where(resources.c.res_type == "AuditEvent")
        events = {res_id: orjson.loads(content) for res_id, content in conn.execute(q)}
        indexed: dict[str, Rows] = collections.defaultdict(dict)
        for table in set(INDEX_TABLES.values()):
            columns = [c for c in table.columns][2:]
            q = select(table.c.res_id, *columns).where(table.c.res_type == "AuditEvent")
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


def requests(n: int) -> list[Access]:
    return [
        Access(LOCAL_OPERATOR, request_id=f"r{i}", server=SERVER, record=request("search-type")) for i in range(n)
    ]


async def answer(writer: trail.Writer, access: Access, status: int = 200) -> None:
    """What the Guard does when a request's answer starts."""
    with serving(access):
        await writer.flush(status)


def audited(db: Database) -> list[str]:
    """The request ids of the chain's AuditEvents, in chain order."""
    with db.read() as conn:
        q = (
            select(resources.c.content)
            .join(audit_chain, audit_chain.c.res_id == resources.c.res_id)
            .where(resources.c.res_type == "AuditEvent")
            .order_by(audit_chain.c.seq)
        )
        return [orjson.loads(c)["entity"][0]["what"]["identifier"]["value"] for c in conn.execute(q).scalars()]


def test_concurrent_requests_share_transactions_and_extend_one_chain(db: Database) -> None:
    writer = trail.Writer(db)
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


def test_the_event_loop_runs_while_the_audit_waits_for_the_database(db: Database) -> None:
    """Another transaction holds the chain (SQLite's write lock, PostgreSQL's advisory lock) for a while."""
    writer = trail.Writer(db)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.write() as conn:
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


def test_when_the_audit_cannot_be_written_every_waiting_request_fails(db: Database) -> None:
    writer = trail.Writer(db)
    failed, later = requests(8), requests(1)

    async def main(accesses: list[Access]) -> list[BaseException | None]:
        return await asyncio.gather(*(answer(writer, a) for a in accesses), return_exceptions=True)

    with mock.patch.object(chain, "extend", side_effect=RuntimeError("disk full")):
        outcomes = asyncio.run(main(failed))
    assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    assert not any(a.record is not None and a.record.written for a in failed)
    assert asyncio.run(main(later)) == [None]
    assert audited(db) == ["r0"]


def test_a_request_whose_audit_event_cannot_be_written_answers_503(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, audit=True, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        with mock.patch.object(chain, "extend", side_effect=RuntimeError("disk full")):
            refused = client.get("/fhir/Patient")
        assert refused.status_code == 503
        assert refused.json()["issue"][0]["code"] == "transient"
        assert client.get("/fhir/Patient").status_code == 200
        with app.state.node.db.read() as conn:
            checked, _, broken = chain.verify(conn)
        assert (checked, broken) == (1, None)
