"""Bounded work: a search that asks for too much is a 400 naming what (repeats, OR lists, chains, `_has`,
`_include:iterate`, criteria), before any SQL; a statement past the timeout is stopped and answered 400
(also what SQLite cannot even prepare: the client's doing, not an outage); a client that leaves cancels
its query; heavy searches leave `/health` answering; a big transaction holds the write lock only to write,
so a concurrent small write waits its turn instead of failing."""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_scope import http_scope
from bundle_helpers import HEADERS, SSIN, episode, patient, post, seed, send, status
from live_node import serve_node
from starlette.testclient import TestClient
from synth_bundle import big_transaction
from test_rest_errors import assert_outcome

from fhir_node.api import routes
from fhir_node.app import create_app
from fhir_node.interactions import bundle
from fhir_node.settings import Settings
from fhir_node.store.database import Cancel, Database, OverBudget, cancelling, driver_rows

FHIR_JSON = {"Content-Type": "application/fhir+json"}
#: Limits high enough to let hostile searches reach the database.
UNBOUNDED = {
    "search_max_repeats": 5000,
    "search_max_values": 5000,
    "search_max_criteria": 5000,
    "search_max_chain_depth": 50,
    "search_max_has_depth": 50,
}


def repeated(name: str, value: str, times: int) -> str:
    return "&".join([f"{name}={value}"] * times)


@pytest.mark.parametrize(
    ("query", "expression", "says"),
    [
        (repeated("identifier", "a", 11), "identifier", "repeated 11 times"),
        ("identifier=" + ",".join(str(i) for i in range(101)), "identifier", "lists 101 values"),
        ("general-practitioner:Organization.partof.partof.partof.name=x", None, "chains more than 3"),
        ("_has:Patient:link:_has:Patient:link:_has:Patient:link:name=x", None, "nests _has deeper than 2"),
        ("&".join(f"{p}=x" for p in ("name", "family", "given", "address", "phone") for _ in range(9)), None, "45"),
        (repeated("_include", "Patient:general-practitioner", 11), "_include", "repeated 11 times"),
    ],
    ids=["repeats", "or-values", "chain-depth", "has-depth", "criteria", "includes"],
)
def test_a_search_past_a_limit_is_a_400_naming_it(
    client: TestClient, query: str, expression: str | None, says: str
) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for r in (client.get(f"/fhir/Patient?{query}"), client.post("/fhir/Patient/_search", content=query, headers=form)):
        body = assert_outcome(r, 400, "too-costly", expression)
        assert says in body["issue"][0]["diagnostics"], body


def test_searches_within_the_limits_are_answered(client: TestClient) -> None:
    assert client.get(f"/fhir/Patient?{repeated('identifier', 'a', 10)}").status_code == 200
    assert client.get("/fhir/Patient?identifier=" + ",".join(str(i) for i in range(100))).status_code == 200
    assert client.get("/fhir/Patient?general-practitioner:Organization.partof.partof.name=x").status_code == 200
    assert client.get("/fhir/Patient?_has:Patient:link:_has:Patient:link:name=x").status_code == 200


def test_conditional_criteria_have_the_same_limits(client: TestClient) -> None:
    headers = {**FHIR_JSON, "If-None-Exist": repeated("identifier", "a", 11)}
    assert_outcome(client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=headers), 400, "too-costly")
    assert_outcome(client.put(f"/fhir/Patient?{repeated('identifier', 'a', 11)}", json={"resourceType": "Patient"},
                              headers=FHIR_JSON), 400, "too-costly")  # fmt: skip
    assert client.get("/fhir/Patient").json().get("total", 0) == 0


def test_include_iterate_deeper_than_the_limit_is_a_400(client: TestClient) -> None:
    """Two chains of Organizations linked by partOf: 3 links are followed, 6 are refused."""
    for chain, length in (("short", 3), ("long", 6)):
        for i in range(length + 1):
            org: dict[str, Any] = {"resourceType": "Organization", "id": f"{chain}{i}", "name": f"{chain} {i}"}
            if i:
                org["partOf"] = {"reference": f"Organization/{chain}{i - 1}"}
            assert client.put(f"/fhir/Organization/{chain}{i}", json=org, headers=FHIR_JSON).status_code == 201
    r = client.get("/fhir/Organization?_id=short3&_include:iterate=Organization:partof")
    assert r.status_code == 200, r.text
    assert sorted(e["resource"]["id"] for e in r.json()["entry"]) == ["short0", "short1", "short2", "short3"]
    r = client.get("/fhir/Organization?_id=long6&_include:iterate=Organization:partof")
    assert "at most 3" in assert_outcome(r, 400, "too-costly", "_include:iterate")["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "query",
    [
        repeated("identifier", "a", 1000),
        "".join("_has:Patient:link:" for _ in range(20)) + "name=x",
        "link:Patient" + ".link:Patient" * 29 + ".name=x",
        repeated("identifier", "a", 250),
    ],
    ids=["1000-repeats", "20-nested-has", "30-level-chain", "250-repeats"],
)
def test_hostile_searches_past_raised_limits_are_a_400_not_an_outage(
    database_url: str, query: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the limits lifted the database itself stops them: SQLite refuses what it cannot prepare, the
    statement timeout stops what runs too long; either way a 400 within seconds, and no outage logged."""
    settings = Settings(database_url=database_url, statement_timeout_seconds=2, **UNBOUNDED)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8080", client=("127.0.0.1", 1)) as client:
        for i in range(30):
            client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [{"value": str(i)}]},
                        headers=FHIR_JSON)  # fmt: skip
        start = time.monotonic()
        with caplog.at_level(logging.INFO, logger="fhir_node"):
            r = client.get(f"/fhir/Patient?{query}")
        if r.status_code != 200:  # PostgreSQL answers some of these quickly: then they are fine
            assert_outcome(r, 400, "too-costly")
        assert time.monotonic() - start < 30
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert client.get("/health").json() == {"status": "ok", "database": "up"}


def test_the_statement_timeout_stops_a_query_and_the_connection_serves_again(database_url: str) -> None:
    db = Database(database_url, statement_timeout=0.5)
    endless = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    start = time.monotonic()
    with pytest.raises(Exception, match=r"interrupted|cancel"), db.read() as conn:
        conn.exec_driver_sql(endless).scalar()
    assert time.monotonic() - start < 10
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    db.dispose()


def test_a_read_on_the_event_loop_gives_up_at_its_budget(tmp_path: Path) -> None:
    """`Database.on_loop` (SQLite): a statement running past the budget is stopped and one starting after
    it never runs, both as OverBudget (the caller then runs the read in a thread), long before the
    statement timeout; within the budget reads run as usual, and the connection serves again after."""
    db = Database(f"sqlite:///{tmp_path / 'loop.db'}", statement_timeout=120)
    endless = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    start = time.monotonic()
    with pytest.raises(OverBudget), db.on_loop(0.05), db.read() as conn:
        conn.exec_driver_sql(endless).scalar()
    assert time.monotonic() - start < 5
    with pytest.raises(OverBudget), db.on_loop(0.0), db.read() as conn:
        conn.exec_driver_sql("SELECT 1").scalar()
    with db.on_loop(5), db.read() as conn:
        assert conn.exec_driver_sql("SELECT 2").scalar() == 2
    with db.read() as conn:  # no budget outside on_loop: the statement timeout alone
        assert conn.exec_driver_sql("SELECT count(*) FROM (SELECT 1)").scalar() == 1
    db.dispose()


def test_reads_on_the_event_loop_each_see_what_was_committed_before_them(tmp_path: Path) -> None:
    """Reads on the loop share one kept connection (SQLite), each in a transaction of its own: a read sees
    every write committed before it began, none committed after; a read begun inside another one works
    (on a pooled connection); a read stopped at its budget leaves the next one a working connection; the
    deadline of a finished read does not stop the next one's statements."""
    db = Database(f"sqlite:///{tmp_path / 'kept.db'}", statement_timeout=120)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    count = "SELECT count(*) FROM t"
    for expected in range(1, 4):
        with db.write() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with db.on_loop(5), db.read() as conn:
            assert conn.exec_driver_sql(count).scalar() == expected
            with db.write() as writer:  # committed while the read's snapshot is open: not seen by it
                writer.exec_driver_sql("INSERT INTO t VALUES (2)")
            assert conn.exec_driver_sql(count).scalar() == expected
            with db.read() as inner:
                assert inner is not conn and inner.exec_driver_sql(count).scalar() == expected + 1
        with db.write() as conn:
            conn.exec_driver_sql("DELETE FROM t WHERE x = 2")
    with db.on_loop(5), db.read() as conn:  # the driver's statements and SQLAlchemy's: the same snapshot
        raw = conn.connection.dbapi_connection
        assert driver_rows(conn, count) == [(3,)]
        with db.write() as writer:
            writer.exec_driver_sql("INSERT INTO t VALUES (2)")
        assert conn.exec_driver_sql(count).scalar() == 3 and driver_rows(conn, count) == [(3,)]
    assert raw is not None and not raw.in_transaction and not conn.in_transaction()  # ended, nothing held
    with db.write() as conn:
        conn.exec_driver_sql("DELETE FROM t WHERE x = 2")
    with pytest.raises(OverBudget), db.on_loop(0.0), db.read() as conn:
        conn.exec_driver_sql(count).scalar()
    with db.on_loop(5), db.read() as conn:
        assert conn.exec_driver_sql(count).scalar() == 3
    with db.on_loop(0.05), db.read() as conn:
        conn.exec_driver_sql(count).scalar()
    time.sleep(0.1)  # past that read's deadline: the next read on the same connection gets its own
    many = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 200000) SELECT count(*) FROM r"
    with db.on_loop(5), db.read() as conn:
        assert conn.exec_driver_sql(many).scalar() == 200000
    db.dispose()


def test_searches_over_their_loop_budget_answer_the_same_from_a_thread(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same searches (a page with a next link, an include, a count, history) answered on the event loop
    and, with no budget at all, each handed to a worker thread: the same entries, links and totals. (SQLite:
    PostgreSQL reads always run in a thread.)"""
    if not client.app.state.node.db.is_sqlite:
        pytest.skip("PostgreSQL reads always run in a thread")
    for n in range(3):
        pid = seed(client, patient(f"loop-{n}"))
        seed(client, episode(f"Patient/{pid}"))
        seed(client, episode(f"Patient/{pid}", status="finished"))
    queries = [
        "/fhir/EpisodeOfCare?_count=1",
        "/fhir/EpisodeOfCare?_include=EpisodeOfCare:patient",
        "/fhir/Patient?_summary=count",
        "/fhir/Patient?_revinclude=EpisodeOfCare:patient&_total=accurate",
        "/fhir/_history",
    ]

    def answers() -> list[Any]:
        found = []
        for q in queries:
            r = client.get(q)
            assert r.status_code == 200, r.text
            body = r.json()
            found.append((body.get("total"), body.get("link"), [e["fullUrl"] for e in body.get("entry", [])]))
        return found

    on_loop = answers()
    monkeypatch.setattr(routes, "LOOP_BUDGET", 0.0)
    assert answers() == on_loop
    assert any(entries for _, _, entries in on_loop)


def test_a_cancel_stops_the_running_query_from_another_thread(database_url: str) -> None:
    """What a client's disconnect does (see `api.offload`), without the network."""
    db = Database(database_url, statement_timeout=120)
    cancel = Cancel()
    failed: list[Exception] = []

    def run() -> None:
        token = cancelling.set(cancel)
        try:
            with db.read() as conn:
                conn.exec_driver_sql(
                    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
                ).scalar()
        except Exception as exc:
            failed.append(exc)
        finally:
            cancelling.reset(token)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1)
    assert worker.is_alive()
    cancel.fire()
    worker.join(10)
    assert not worker.is_alive() and failed


def test_a_client_leaving_cancels_its_search(
    database_url: str, caplog: pytest.LogCaptureFixture, access_log: Callable[[], list[dict[str, Any]]]
) -> None:
    """The real ASGI app, called the way uvicorn does: the client disconnects one second into a search
    that would run for minutes; the query stops and the request is logged once, as 499."""
    settings = Settings(database_url=database_url, statement_timeout_seconds=300, **UNBOUNDED)
    app = create_app(settings)
    if app.state.node.db.is_sqlite:
        pytest.skip("no SQLite search runs long enough here: the progress handler's cancel is tested above")
    query = repeated("identifier", "a", 250).encode()
    sent: list[dict[str, Any]] = []

    async def call() -> None:
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(1)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = http_scope("GET", "/fhir/Patient", query)
        await app(scope, receive, send)

    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="fhir_node"):
        asyncio.run(call())
    assert time.monotonic() - start < 20
    assert sent == []
    assert not [r for r in caplog.records if r.name.startswith("fhir_node")]
    assert [(line["message"], line["status"]) for line in access_log()] == [("request", 499)]


def _load(base: str, resources: int) -> None:
    """`resources` Patients, each with an EpisodeOfCare, in transactions of 500."""
    entries = []
    for i in range(resources):
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test", "value": str(i)}],
            "name": [{"family": f"Family{i}", "given": ["A", "B"]}],
        }
        episode = {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": f"urn:uuid:p-{i}"}}
        post = {"method": "POST", "url": "Patient"}
        entries.append({"fullUrl": f"urn:uuid:p-{i}", "resource": patient, "request": post})
        entries.append({"resource": episode, "request": {"method": "POST", "url": "EpisodeOfCare"}})
    for start in range(0, len(entries), 1000):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries[start : start + 1000]}
        r = httpx.post(base, content=orjson.dumps(bundle), headers=FHIR_JSON, timeout=300)
        assert r.status_code == 200, r.text


HEAVY = [
    "Patient?_count=1000&_total=accurate",
    "Patient?_count=1000&_revinclude=EpisodeOfCare:patient",
    "EpisodeOfCare?_count=1000&_include=EpisodeOfCare:patient&_total=accurate",
    "Patient?_count=1000&_sort=family",
]


def test_heavy_searches_leave_health_answering(database_url: str, tmp_path: Path) -> None:
    """Four clients run heavy searches without pause on a real server; /health keeps answering: on SQLite
    within 50 ms (the median; before, it waited for the searches on the event loop), on PostgreSQL (whose
    server shares the CPU with those searches) in well under the time a search takes."""
    with serve_node(database_url, tmp_path) as base:
        _load(base, 1500)
        root = base.removesuffix("/fhir")
        stop = threading.Event()
        search_times: list[float] = []

        def hammer(query: str) -> None:
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    t = time.monotonic()
                    assert http.get(f"{base}/{query}").status_code == 200
                    search_times.append(time.monotonic() - t)

        workers = [threading.Thread(target=hammer, args=(q,)) for q in HEAVY]
        for w in workers:
            w.start()
        health: list[float] = []
        try:
            time.sleep(1)
            with httpx.Client(timeout=30) as http:
                for _ in range(40):
                    t = time.monotonic()
                    assert http.get(f"{root}/health").status_code == 200
                    health.append(time.monotonic() - t)
                    time.sleep(0.05)
        finally:
            stop.set()
            for w in workers:
                w.join()
        searching, answering = statistics.median(search_times), statistics.median(health)
        # Waiting behind the searches (as on the event loop before) would take about a search or more; how
        # long a search takes depends on the machine, so the bound is relative, and 50 ms on SQLite too.
        assert answering < searching / 2, (answering, searching)
        if database_url.startswith("sqlite"):
            assert answering < 0.05, (answering, searching)


def test_a_big_transaction_makes_a_concurrent_small_write_wait_not_fail(database_url: str, tmp_path: Path) -> None:
    """A 10,000-entry transaction of valid resources with profiles enforced; small writes sent meanwhile
    all succeed (before: the lock was held through validation, and they got 503 after 10 s)."""
    body = big_transaction(tmp_path / "synth", 10_000)
    env = {"FHIR_NODE_ENFORCE_PROFILES": "true"}
    with serve_node(database_url, tmp_path, env) as base:
        done: list[httpx.Response] = []
        big = threading.Thread(
            target=lambda: done.append(httpx.post(base, content=body, headers=FHIR_JSON, timeout=600))
        )
        big.start()
        small: list[int] = []
        with httpx.Client(timeout=600) as http:
            while big.is_alive():
                organization = {"resourceType": "Organization", "name": f"small {len(small)}"}
                small.append(http.post(f"{base}/Organization", json=organization, headers=FHIR_JSON).status_code)
                time.sleep(0.5)
        big.join()
        assert done[0].status_code == 200, done[0].text[:2000]
        assert len(small) > 1 and set(small) == {201}, small


@pytest.mark.parametrize("meanwhile", ["moved", "ambiguous"])
def test_a_transaction_sees_what_was_written_between_its_preparation_and_the_lock(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """A conditional reference resolved from the snapshot is resolved again under the write lock: a
    write in between that moved its match is followed, one that made it ambiguous is a 412."""
    first = seed(client, patient("moving"))
    prepare = bundle._prepare
    calls: list[int] = []

    def write_in_between(*args: Any) -> Any:
        calls.append(1)
        plan = prepare(*args)
        if len(calls) == 1:  # the snapshot's preparation: another client writes before the lock is taken
            if meanwhile == "moved":
                assert client.delete(f"/fhir/Patient/{first}").status_code == 204
            seed(client, patient("moving"))
        return plan

    monkeypatch.setattr(bundle, "_prepare", write_in_between)
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [post(episode(f"Patient?identifier={SSIN}|moving"))],
    }
    r = send(client, body)
    if meanwhile == "ambiguous":
        assert "matches 2 resources" in assert_outcome(r, 412, "multiple-matches")["issue"][0]["diagnostics"]
        assert client.get("/fhir/EpisodeOfCare", headers=HEADERS).json().get("entry") is None
        return
    assert r.status_code == 200, r.text
    assert status(r.json()["entry"][0]) == 201
    assert len(calls) == 2  # prepared again under the lock
    moved = client.get("/fhir/Patient", params={"identifier": f"{SSIN}|moving"}, headers=HEADERS).json()
    (now,) = [e["resource"]["id"] for e in moved["entry"]]
    stored = client.get("/fhir/EpisodeOfCare", headers=HEADERS).json()["entry"][0]["resource"]
    assert stored["patient"]["reference"] == f"Patient/{now}" != f"Patient/{first}"
