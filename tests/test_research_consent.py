"""Research use follows consent: the aggregator sees a patient, and everything about them, only while
their latest research consent is an active permit; every other role sees what its own rules give,
whatever the consent says. Each consent state x role, through the real app and real JWTs, on SQLite
and PostgreSQL: searches, counts, includes, chains, `_has`, history and reads."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from access_data import CALLERS, HRESCH, NIHDI, PSI_A, SSIN, consent, episode, headers, search, secured, serving_jwt
from alembic import command
from alembic.config import Config
from inclusions import transaction
from live_node import serve_node
from postgres_server import PostgresServer
from sqlalchemy import select
from starlette.testclient import TestClient

from fhir_node.rules.check_digits import ssin
from fhir_node.security import keyring
from fhir_node.store.database import MIGRATIONS, Database
from fhir_node.store.schema import research_consented

STATISTICS = ("https://fhir-node.be/fhir/CodeSystem/consent-purpose", "statistics")
TREATMENT = ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT")
EARLY, LATE = "2024-02-01T10:00:00Z", "2025-03-01T10:00:00Z"


def decision(
    status: str = "active", kind: str = "permit", at: str = EARLY, purpose: tuple[str, str] = HRESCH
) -> dict[str, Any]:
    """A research consent (its patient set when loaded)."""
    return {
        "status": status,
        "provision": {"type": kind, "purpose": [{"system": purpose[0], "code": purpose[1]}]},
        "dateTime": at,
    }


#: Each consent state: the consents the patient has (in the order written) and whether the aggregator sees them.
STATES: dict[str, tuple[list[dict[str, Any]], bool]] = {
    "permit": ([decision()], True),
    "statistics permit": ([decision(purpose=STATISTICS)], True),
    "absent": ([], False),
    "deny": ([decision(kind="deny")], False),
    "withdrawn (inactive)": ([decision(status="inactive")], False),
    "rejected": ([decision(status="rejected")], False),
    "permit superseded by a newer deny": ([decision(), decision(kind="deny", at=LATE)], False),
    "deny superseded by a newer permit": ([decision(kind="deny"), decision(at=LATE)], True),
    "newer permit written before an older deny": ([decision(at=LATE), decision(kind="deny")], True),
    "deny written after a permit of the same moment": ([decision(), decision(kind="deny")], False),
    "permit with a newer deny entered in error": ([decision(), decision("entered-in-error", "deny", LATE)], True),
    "permit with a newer draft deny": ([decision(), decision("draft", "deny", LATE)], True),
    "permit for treatment only": ([decision(purpose=TREATMENT)], False),
    "permit by reference, newer deny by SSIN only": (
        [decision(), {**decision(kind="deny", at=LATE), "by": "ssin"}],
        False,
    ),
    "permit by SSIN only": ([{**decision(), "by": "ssin"}], True),
}
NAMES = sorted(STATES)
VISIBLE = {n for n in NAMES if STATES[n][1]}
#: The patient role's token carries the SSIN of the patient in this state.
ME = "deny"


def _ssin(i: int) -> str:
    return ssin(datetime.date(1950, 1, 1) + datetime.timedelta(days=400 * i), 1 + 2 * i)


class Consented:
    """The loaded world: per state a Patient, its inclusion in project A, its consents, and a CareTeam
    relating it to the provider."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.patients: dict[str, str] = {}
        self.episodes: dict[str, str] = {}
        self.consents: dict[str, list[str]] = {}
        self.ssins: dict[str, str] = {}
        org = self.post({"resourceType": "Organization", "identifier": [{"system": NIHDI, "value": PSI_A}]})
        dr = self.post({"resourceType": "Practitioner", "identifier": [{"system": NIHDI, "value": "18780485003"}]})
        for i, name in enumerate(NAMES):
            self.ssins[name] = "85073003328" if name == ME else _ssin(i)
            pid = self.post({"resourceType": "Patient", "identifier": [{"system": SSIN, "value": self.ssins[name]}]})
            self.patients[name] = pid
            self.episodes[name] = self.post(episode(f"Patient/{pid}", f"Organization/{org}", "principal"))
            self.consents[name] = [self.add_consent(name, c) for c in STATES[name][0]]
            self.post(
                {
                    "resourceType": "CareTeam",
                    "status": "active",
                    "subject": {"reference": f"Patient/{pid}"},
                    "participant": [{"member": {"reference": f"Practitioner/{dr}"}}],
                }
            )

    def post(self, body: dict[str, Any]) -> str:
        r = self.client.post(f"/fhir/{body['resourceType']}", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def add_consent(self, name: str, spec: dict[str, Any]) -> str:
        body = {**consent(f"Patient/{self.patients[name]}"), **{k: v for k, v in spec.items() if k != "by"}}
        if spec.get("by") == "ssin":
            body["patient"] = {"identifier": {"system": SSIN, "value": self.ssins[name]}}
        return self.post(body)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Consented]]:
    """Every consent state loaded by the operator, then served with JWTs; counts unsuppressed (exact)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('consent') / 'node.db'}"
        with secured(url, loader=Consented, small_cell_min=0) as env:
            yield env
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url, secured(url, loader=Consented, small_cell_min=0) as env:
        yield env


def _all(client: TestClient, caller: str, query: str) -> list[dict[str, Any]]:
    """Every entry of a search, following next links (pages of 3, so paging is exercised)."""
    found = search(client, caller, f"{query}{'&' if '?' in query else '?'}_count=3")
    entries = list(found.get("entry", []))
    while nxt := next((link["url"] for link in found.get("link", []) if link["relation"] == "next"), None):
        found = client.get(nxt, headers=headers(caller)).json()
        entries += found.get("entry", [])
    return entries


def _states(w: Consented, entries: list[dict[str, Any]], mode: str = "match") -> set[str]:
    by_id = {v: k for k, v in w.patients.items()} | {v: k for k, v in w.episodes.items()}
    by_id |= {cid: k for k, ids in w.consents.items() for cid in ids}
    return {by_id[e["resource"]["id"]] for e in entries if e["search"]["mode"] == mode}


#: What each role sees of these patients, whatever their consent: consent only narrows the aggregator.
SEES = {
    "aggregator": VISIBLE,
    "operator": set(NAMES),
    "provider": set(NAMES),
    "psi-admin": set(NAMES),
    "patient": {ME},
}


@pytest.mark.parametrize("caller", sorted(SEES))
@pytest.mark.parametrize("res_type", ["Patient", "EpisodeOfCare", "Consent"])
def test_each_role_sees_and_counts_by_consent_state(world: Any, caller: str, res_type: str) -> None:
    client, w = world
    entries = _all(client, caller, res_type)
    assert _states(w, entries) == _expected(caller, res_type)
    assert search(client, caller, f"{res_type}?_summary=count")["total"] == len(entries)
    assert search(client, caller, f"{res_type}?_total=accurate&_count=1").get("total") == len(entries)


def _expected(caller: str, res_type: str) -> set[str]:
    """The states whose resources of `res_type` the caller finds: for Consent, those with a consent it
    reaches (a consent naming its patient by SSIN only is tied to no patient, so only the operator's)."""
    if res_type != "Consent":
        return SEES[caller]
    return {n for n in SEES[caller] if any(caller == "operator" or c.get("by") != "ssin" for c in STATES[n][0])}


@pytest.mark.parametrize("name", NAMES)
def test_reads_and_history_follow_the_consent_state(world: Any, name: str) -> None:
    client, w = world
    agg = headers("aggregator")
    expected = 200 if STATES[name][1] else 404
    for path in (f"Patient/{w.patients[name]}", f"EpisodeOfCare/{w.episodes[name]}"):
        assert client.get(f"/fhir/{path}", headers=agg).status_code == expected, path
        assert client.get(f"/fhir/{path}/_history/1", headers=agg).status_code == expected, path
        assert client.get(f"/fhir/{path}/_history", headers=agg).status_code == expected, path
    history = search(client, "aggregator", "EpisodeOfCare/_history?_count=100")
    assert (w.episodes[name] in {e["resource"]["id"] for e in history.get("entry", [])}) == STATES[name][1]


def test_includes_chains_and_has_never_reach_unconsented_patients(world: Any) -> None:
    client, w = world
    found = _all(client, "aggregator", "EpisodeOfCare?_include=EpisodeOfCare:patient")
    assert _states(w, found, "include") == VISIBLE
    found = _all(client, "aggregator", "Patient?_revinclude=EpisodeOfCare:patient&_revinclude=Consent:patient")
    assert _states(w, found) == VISIBLE
    assert _states(w, found, "include") == VISIBLE
    for name in NAMES:  # the aggregator searches by its own pseudonyms (it never gets an SSIN in clear)
        theirs = keyring.installed().seal(w.ssins[name], keyring.recipient(CALLERS["aggregator"][0]))
        chained = search(client, "aggregator", f"EpisodeOfCare?patient.identifier={SSIN}|{theirs}")
        assert len(chained.get("entry", [])) == (1 if name in VISIBLE else 0), name
    has = _all(client, "aggregator", "Patient?_has:EpisodeOfCare:patient:status=active")
    assert _states(w, has) == VISIBLE
    system = _all(client, "aggregator", "?_type=Patient,EpisodeOfCare")
    assert _states(w, system) == VISIBLE


def test_a_consent_change_counts_from_the_next_request(world: Any) -> None:
    client, w = world
    name = "permit"
    cid = w.consents[name][0]
    count_before = search(client, "aggregator", "EpisodeOfCare?_summary=count")["total"]
    op = headers("operator")
    body = client.get(f"/fhir/Consent/{cid}", headers=op).json()
    try:
        assert client.put(f"/fhir/Consent/{cid}", json={**body, "status": "inactive"}, headers=op).status_code == 200
        assert client.get(f"/fhir/EpisodeOfCare/{w.episodes[name]}", headers=headers("aggregator")).status_code == 404
        assert search(client, "aggregator", "EpisodeOfCare?_summary=count")["total"] == count_before - 1
    finally:
        body = client.get(f"/fhir/Consent/{cid}", headers=op).json()
        assert client.put(f"/fhir/Consent/{cid}", json={**body, "status": "active"}, headers=op).status_code == 200
    assert client.get(f"/fhir/EpisodeOfCare/{w.episodes[name]}", headers=headers("aggregator")).status_code == 200


def _kept(client: TestClient) -> set[str]:
    """The Patients the node's `research_consented` table holds."""
    with client.app.state.node.db.read() as conn:  # type: ignore[attr-defined]
        return {pid for (pid,) in conn.execute(select(research_consented.c.patient_id))}


def test_the_kept_set_is_the_definition_for_every_state(world: Any) -> None:
    client, w = world
    assert _kept(client) == {w.patients[n] for n in VISIBLE}


@pytest.fixture
def operator(database_url: str) -> Iterator[TestClient]:
    """An empty node, as the operator, with profiles off (the consents here are minimal)."""
    with serving_jwt(database_url, audit=False) as client:
        yield client


def test_every_write_path_keeps_the_set_in_step(operator: TestClient) -> None:
    """Transaction Bundles (batched inserts), a Consent by SSIN before its Patient exists, PATCH, PUT,
    delete, an SSIN change: after each, the kept set is exactly what the consents then decide."""
    client, op = operator, headers("operator")

    def step(r: Any, status: int = 200) -> Any:
        assert r.status_code == status, r.text
        return r.json() if r.content else None

    first, second, third = _ssin(1), _ssin(2), _ssin(3)
    urn = "urn:uuid:0b6f6f3e-0000-4000-8000-000000000001"
    bundle = transaction(
        ("POST", "Patient", {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": first}]}),
        ("POST", "Consent", {**consent(urn), **decision()}),
    )
    bundle["entry"][0]["fullUrl"] = urn
    answer = step(client.post("/fhir", json=bundle, headers=op))
    pid, cid = (e["response"]["location"].split("/")[1] for e in answer["entry"])
    assert _kept(client) == {pid}
    # By SSIN only, before the Patient exists: the Patient's creation ties it.
    by_ssin = {**consent("Patient/x"), **decision(), "patient": {"identifier": {"system": SSIN, "value": second}}}
    step(client.post("/fhir/Consent", json=by_ssin, headers=op), 201)
    patient = {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": second}]}
    other = step(client.post("/fhir/Patient", json=patient, headers=op), 201)["id"]
    assert _kept(client) == {pid, other}
    # The SSIN changes: the consent naming the old one is re-linked to the new one, and still speaks for it.
    change = {"resourceType": "Parameters", "parameter": [{"name": "ssin", "valueString": third}]}
    step(client.post(f"/fhir/Patient/{other}/$ssin-change", json=change, headers=op))
    assert _kept(client) == {pid, other}
    # A newer deny by PATCH of the first consent's status, then back; then its deletion.
    patch = [{"op": "replace", "path": "/status", "value": "inactive"}]
    json_patch = {**op, "Content-Type": "application/json-patch+json"}
    step(client.patch(f"/fhir/Consent/{cid}", json=patch, headers=json_patch))
    assert _kept(client) == {other}
    body = client.get(f"/fhir/Consent/{cid}", headers=op).json()
    step(client.put(f"/fhir/Consent/{cid}", json={**body, "status": "active"}, headers=op))
    assert _kept(client) == {pid, other}
    step(client.delete(f"/fhir/Consent/{cid}", headers=op), 204)
    assert _kept(client) == {other}
    step(client.put(f"/fhir/Consent/{cid}", json={**body, "status": "active"}, headers=op), 201)
    step(client.delete(f"/fhir/Patient/{pid}", headers=op), 204)
    assert _kept(client) == {other}

def test_the_migration_fills_the_set_from_stored_consents(world: Any) -> None:
    """Consents stored before the table existed: upgrading to it computes the set from them."""
    client, w = world
    db = client.app.state.node.db
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    db.migrate()
    assert _kept(client) == {w.patients[n] for n in VISIBLE}


def test_concurrent_consent_writers_leave_the_latest_decision(database_url: str, tmp_path: Path) -> None:
    """For each of three patients, ten clients at once, over real HTTP to two worker processes, record a
    permit or a deny (each with its own dateTime, by reference or by SSIN, some in transactions): the kept
    set ends as the latest of each patient's decisions says, whoever committed last."""
    ssins = [_ssin(40 + i) for i in range(3)]
    env = {"FHIR_NODE_ENFORCE_PROFILES": "false", "FHIR_NODE_AUDIT": "false"}
    with serve_node(database_url, tmp_path, env, workers=2) as base, httpx.Client(timeout=60) as http:
        ids = [
            http.post(f"{base}/Patient", json={"resourceType": "Patient", "identifier": [{"system": SSIN, "value": s}]})
            .json()["id"]
            for s in ssins
        ]

        def record(n: int) -> int:
            who, kind = n % 3, "permit" if n % 4 < 2 else "deny"
            body = {**consent(f"Patient/{ids[who]}"), **decision(kind=kind, at=f"2024-01-01T10:{n:02d}:00Z")}
            if n % 5 == 0:
                body["patient"] = {"identifier": {"system": SSIN, "value": ssins[who]}}
            with httpx.Client(timeout=60) as client:
                if n % 3 == 1:
                    entry = {"resource": body, "request": {"method": "POST", "url": "Consent"}}
                    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
                    return client.post(base, json=bundle).status_code
                return client.post(f"{base}/Consent", json=body).status_code

        with ThreadPoolExecutor(30) as pool:
            assert set(pool.map(record, range(30))) <= {200, 201}
    latest = {who: max(n for n in range(30) if n % 3 == who) for who in range(3)}
    expected = {ids[who] for who, n in latest.items() if n % 4 < 2}
    db = Database(database_url)
    try:
        with db.read() as conn:
            kept = {pid for (pid,) in conn.execute(select(research_consented.c.patient_id))}
    finally:
        db.dispose()
    assert kept == expected
