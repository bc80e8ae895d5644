"""The AuditEvent hash chain end to end, on SQLite and PostgreSQL: every request through the real app is
one link, `fhir-node audit verify` finds each kind of tampering (naming the event), AuditEvents cannot be
changed through the API, several worker processes extend one chain, a kill -9 loses no answered request's
AuditEvent, and `fhir-node audit purge` removes the old part of the chain so the rest still verifies."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from unittest import mock

import httpx
import orjson
import pytest
from chained import chained_events, some_facts
from live_node import BASE_HOST, serve_node
from r4_resources import JSON_HEADERS, episode
from sqlalchemy import Connection, Table, delete, func, select, update
from starlette.testclient import TestClient

from fhir_node import cli
from fhir_node.app import create_app
from fhir_node.audit import chain
from fhir_node.settings import Settings
from fhir_node.store.database import Database
from fhir_node.store.schema import INDEX_TABLES, audit_chain, resource_versions, resources

INTACT = re.compile(r"fhir-node: audit chain intact: (\d+) events, head ([0-9a-f]{64})\n")
PURGED = re.compile(r"fhir-node: purged (\d+) AuditEvents recorded before \S+\n")
AUDITED_TABLES = (resources, resource_versions, *set(INDEX_TABLES.values()))
#: Clients at once against a served node: enough for the workers' appends to interleave.
LOAD_THREADS = 8


# --- helpers --------------------------------------------------------------------------------------------


def audit(database_url: str, action: str, **env: str) -> tuple[int, str]:
    """`fhir-node audit <action> --database-url URL` in-process: its exit code and what it printed. The
    environment it exports (FHIR_NODE_DATABASE_URL, `env`) is restored afterwards."""
    out = io.StringIO()
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out):
        code = cli.main(["audit", action, "--database-url", database_url])
    return code, out.getvalue()


def verified(database_url: str) -> tuple[int, str]:
    """(events, head hash) of a chain `audit verify` finds intact."""
    code, out = audit(database_url, "verify")
    match = INTACT.fullmatch(out)
    assert code == 0 and match, out
    return int(match[1]), match[2]


def broken(database_url: str) -> str:
    """What `audit verify` says of a chain it finds broken (exit 1)."""
    code, out = audit(database_url, "verify")
    assert code == 1, out
    return out


@contextlib.contextmanager
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    try:
        yield db
    finally:
        db.dispose()


@contextlib.contextmanager
def audited_client(database_url: str) -> Iterator[TestClient]:
    """The real app with AuditEvents on, called from a loopback address."""
    app = create_app(Settings(database_url=database_url, audit=True, enforce_profiles=False))
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as client:
        yield client


def exercise(client: TestClient) -> int:
    """Create, read, search, update and delete a few resources; how many requests that took."""
    statuses: list[int] = []

    def call(method: str, url: str, body: object = None) -> httpx.Response:
        content = orjson.dumps(body) if body is not None else None
        r = client.request(method, f"/fhir/{url}", content=content, headers=JSON_HEADERS)
        statuses.append(r.status_code)
        return r

    pid = call("POST", "Patient", {"resourceType": "Patient"}).json()["id"]
    call("GET", f"Patient/{pid}")
    call("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "active": True})
    eid = call("POST", "EpisodeOfCare", episode(patient={"reference": f"Patient/{pid}"})).json()["id"]
    call("GET", f"EpisodeOfCare?patient={pid}")
    call("GET", f"Patient?_id={pid}")
    call("DELETE", f"EpisodeOfCare/{eid}")
    call("GET", f"EpisodeOfCare/{eid}")
    call("GET", "Patient/no-such-patient")
    assert statuses == [201, 200, 200, 201, 200, 200, 204, 410, 404]
    return len(statuses)


def chain_entries(database_url: str) -> list[tuple[int, str]]:
    """(position, AuditEvent id) of the chain, in order, once what the workers' journals hold is chained."""
    with database(database_url) as db:
        chain.settle(db)
        with db.read() as conn:
            return [(row.seq, row.res_id) for row in conn.execute(select(audit_chain).order_by(audit_chain.c.seq))]


def audit_event_count(database_url: str) -> int:
    """AuditEvents stored as resources once every chained one is indexed."""
    with database(database_url) as db:
        chain.catch_up(db)
        with db.read() as conn:
            q = select(func.count()).select_from(resources).where(resources.c.res_type == "AuditEvent")
            return conn.execute(q).scalar_one()


@pytest.fixture
def audited(database_url: str) -> tuple[str, int]:
    """A fresh database holding the AuditEvents of `exercise`, chained and indexed: (its URL, how many
    requests were made)."""
    with audited_client(database_url) as client:
        requests = exercise(client)
    assert audit_event_count(database_url) == requests
    return database_url, requests


# --- one link per request ------------------------------------------------------------------------------


def test_every_request_adds_one_link_and_the_chain_verifies(audited):
    url, requests = audited
    assert verified(url)[0] == requests
    assert audit_event_count(url) == len(chain_entries(url)) == requests


def test_verify_of_an_empty_chain_starts_from_genesis(database_url):
    with database(database_url) as db:
        db.migrate()
    assert verified(database_url) == (0, chain.GENESIS)


# --- tampering ------------------------------------------------------------------------------------------


def _rewrite(conn: Connection, table: Table, res_id: str) -> None:
    """Change the outcome recorded in one stored copy of AuditEvent `res_id` (success -> failure)."""
    c = table.c
    where = (c.res_type == "AuditEvent", c.res_id == res_id)
    if table is resource_versions:
        where += (c.version_id == 1,)
    content = conn.execute(select(c.content).where(*where)).scalar_one()
    changed = content.replace(b'"outcome":"0"', b'"outcome":"8"')
    assert changed != content
    conn.execute(update(table).where(*where).values(content=changed))


def change_current(conn: Connection, res_id: str) -> None:
    _rewrite(conn, resources, res_id)


def change_version(conn: Connection, res_id: str) -> None:
    _rewrite(conn, resource_versions, res_id)


def change_both_copies(conn: Connection, res_id: str) -> None:
    _rewrite(conn, resources, res_id)
    _rewrite(conn, resource_versions, res_id)


def change_chained(conn: Connection, res_id: str) -> None:
    """The chained bytes themselves (the stored copies left as they were)."""
    content = conn.execute(select(audit_chain.c.content).where(audit_chain.c.res_id == res_id)).scalar_one()
    changed = content.replace(b'"status":200', b'"status":500')
    assert changed != content
    conn.execute(update(audit_chain).where(audit_chain.c.res_id == res_id).values(content=changed))


def change_chain_hash(conn: Connection, res_id: str) -> None:
    conn.execute(update(audit_chain).where(audit_chain.c.res_id == res_id).values(hash=chain.digest(b"forged")))


def remove_event(conn: Connection, res_id: str) -> None:
    """As an attacker would: every row of the event, its chain entry included."""
    for table in AUDITED_TABLES:
        conn.execute(delete(table).where(table.c.res_type == "AuditEvent", table.c.res_id == res_id))
    conn.execute(delete(audit_chain).where(audit_chain.c.res_id == res_id))


#: tampering -> (how many links after the tampered one the break is found, what verify says is wrong)
TAMPERING: dict[Callable[[Connection, str], None], tuple[int, str]] = {
    change_current: (0, "a stored copy differs from the event chained"),
    change_version: (0, "a stored copy differs from the event chained"),
    change_both_copies: (0, "a stored copy differs from the event chained"),
    change_chained: (0, "its content does not match the hash recorded"),
    change_chain_hash: (0, "its content does not match the hash recorded"),
    remove_event: (1, "it does not follow its predecessor (one was removed)"),
}


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__)
def test_verify_names_the_first_tampered_event(audited, tamper):
    url, _ = audited
    entries = chain_entries(url)
    middle = len(entries) // 2
    with database(url) as db, db.write() as conn:
        tamper(conn, entries[middle][1])
    offset, reason = TAMPERING[tamper]
    position, res_id = entries[middle + offset]
    expected = f"fhir-node: audit chain broken at AuditEvent/{res_id} (chain position {position}): {reason}\n"
    assert broken(url) == expected


# --- append-only through the API -----------------------------------------------------------------------


def test_audit_events_cannot_be_changed_through_the_api(database_url):
    with audited_client(database_url) as client:
        requests = exercise(client)
        first = chain_entries(database_url)[0][1]
        stored = client.get(f"/fhir/AuditEvent/{first}")
        assert stored.status_code == 200
        attempts = [
            client.put(f"/fhir/AuditEvent/{first}", content=stored.content, headers=JSON_HEADERS),
            client.delete(f"/fhir/AuditEvent/{first}"),
            client.patch(
                f"/fhir/AuditEvent/{first}",
                content=orjson.dumps([{"op": "replace", "path": "/outcome", "value": "8"}]),
                headers={"Content-Type": "application/json-patch+json"},
            ),
        ]
        assert [r.status_code for r in attempts] == [405, 405, 405], [r.text for r in attempts]
        again = client.get(f"/fhir/AuditEvent/{first}")
        assert again.content == stored.content
    assert verified(database_url)[0] == requests + 2 + len(attempts)


# --- several writers -----------------------------------------------------------------------------------


def test_two_workers_and_eight_clients_extend_one_chain(database_url, tmp_path):
    per_thread = 200 // LOAD_THREADS

    def client_load(base: str) -> list[int]:
        statuses = []
        with httpx.Client(base_url=base, timeout=60) as http:
            own: list[str] = []
            for i in range(per_thread):
                if i % 3 == 0 and own:
                    r = http.get(f"/Patient/{own[-1]}")
                elif i % 3 == 1:
                    r = http.get("/Patient", params={"_count": "5"})
                else:
                    r = http.post("/Patient", content=b'{"resourceType":"Patient"}', headers=JSON_HEADERS)
                    own.append(r.json()["id"])
                statuses.append(r.status_code)
        return statuses

    served = serve_node(database_url, tmp_path, extra_env={"FHIR_NODE_AUDIT": "true"}, workers=2)
    with served as base, ThreadPoolExecutor(LOAD_THREADS) as pool:
        answers = [s for statuses in pool.map(client_load, [base] * LOAD_THREADS) for s in statuses]
    assert len(answers) == 200
    assert set(answers) <= {200, 201}, answers
    assert verified(database_url)[0] == audit_event_count(database_url) == len(answers)


# --- kill -9 -------------------------------------------------------------------------------------------


def audited_request_ids(database_url: str) -> set[str]:
    """The X-Request-Id of every AuditEvent in the chain (its BALP `XrequestId` entity), once the events
    that writes staged were chained, as a node starting or `audit verify` does."""
    with database(database_url) as db:
        chain.catch_up(db)
        with db.read() as conn:
            events = chained_events(conn)
    return {
        entity["what"]["identifier"]["value"]
        for event in events
        for entity in event["entity"]
        if entity["type"]["code"] == "XrequestId"
    }


def test_no_answered_request_loses_its_audit_event_to_kill_9(database_url, tmp_path):
    answered: list[tuple[str, int]] = []
    enough = threading.Event()

    def client_load(base: str) -> None:
        """Reads and creates until the server is gone; each answered request's id is noted."""
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(10_000):
                rid = uuid.uuid4().hex
                headers = {**JSON_HEADERS, "X-Request-Id": rid}
                try:
                    if i % 2:
                        r = http.get("/Patient", params={"_count": "3"}, headers=headers)
                    else:
                        r = http.post("/Patient", content=b'{"resourceType":"Patient"}', headers=headers)
                except httpx.TransportError:
                    return
                answered.append((rid, r.status_code))
                if len(answered) >= 150:
                    enough.set()

    with serve_node(database_url, tmp_path, extra_env={"FHIR_NODE_AUDIT": "true"}) as base:
        # With one worker uvicorn serves inside the `fhir-node serve` process itself: that is the one to kill.
        server = int((tmp_path / "server.pid").read_text())
        threads = [threading.Thread(target=client_load, args=(base,)) for _ in range(4)]
        for t in threads:
            t.start()
        assert enough.wait(timeout=60), "the load did not get going"
        os.kill(server, signal.SIGKILL)
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert {status for _, status in answered} <= {200, 201}
    missing = {rid for rid, _ in answered} - audited_request_ids(database_url)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no AuditEvent"
    assert verified(database_url)[0] == audit_event_count(database_url) >= len(answered)


# --- retention -----------------------------------------------------------------------------------------


def backdate(database_url: str, res_ids: list[str]) -> None:
    """As if these AuditEvents had been written years ago."""
    with database(database_url) as db, db.write() as conn:
        rv, c = resource_versions.c, audit_chain.c
        then = datetime(2019, 3, 1, 12, 0)
        old = update(resource_versions).where(rv.res_type == "AuditEvent", rv.res_id.in_(res_ids))
        conn.execute(old.values(last_updated=then))
        conn.execute(update(audit_chain).where(c.res_id.in_(res_ids)).values(recorded=then))


def remaining_rows(database_url: str, res_ids: list[str]) -> int:
    """Rows of any kind still held for these AuditEvents."""
    with database(database_url) as db, db.read() as conn:
        counts = [
            conn.execute(
                select(func.count()).select_from(t).where(t.c.res_type == "AuditEvent", t.c.res_id.in_(res_ids))
            ).scalar_one()
            for t in AUDITED_TABLES
        ]
        counts.append(
            conn.execute(
                select(func.count()).select_from(audit_chain).where(audit_chain.c.res_id.in_(res_ids))
            ).scalar_one()
        )
    return sum(counts)


def purge(database_url: str) -> int:
    code, out = audit(database_url, "purge", FHIR_NODE_AUDIT_RETENTION_DAYS="30")
    match = PURGED.fullmatch(out)
    assert code == 0 and match, out
    return int(match[1])


@pytest.mark.parametrize("kept", [6, 0], ids=["newest-kept", "none-kept"])
def test_purge_removes_exactly_the_old_events_and_the_rest_still_verifies(database_url, kept):
    with audited_client(database_url) as client:
        requests = exercise(client)
        old = requests - kept
        _, head = verified(database_url)
        ids = [res_id for _, res_id in chain_entries(database_url)]
        backdate(database_url, ids[:old])

        assert purge(database_url) == old
        assert remaining_rows(database_url, ids[:old]) == 0
        assert [res_id for _, res_id in chain_entries(database_url)] == ids[old:]
        assert verified(database_url) == (kept, head)
        assert purge(database_url) == 0

        assert client.get("/fhir/Patient").status_code == 200  # the chain goes on (from the anchor, if none kept)
    assert verified(database_url)[0] == kept + 1


def test_purge_pages_through_a_long_chain(database_url):
    """More old events than one page of chain.purge (500), written straight into the store: a first page
    all old, then one that ends the purge at the first event to keep."""
    with database(database_url) as db:
        db.migrate()
        with db.write() as conn:
            chain.extend(conn, some_facts([200] * 560))
    ids = [res_id for _, res_id in chain_entries(database_url)]
    backdate(database_url, ids[:550])
    _, head = verified(database_url)
    assert purge(database_url) == 550
    assert remaining_rows(database_url, ids[:550]) == 0
    assert verified(database_url) == (10, head)  # from the anchor the purge left
