"""The SSIN never rests in clear (fhir_node.rules.pseudonym): not in the database files (SQLite with its
WAL, a pg_dump), not in index rows, AuditEvents or the access log, while search by SSIN works as before;
each role gets it back in clear, or as its own pseudonym (the aggregator); on both databases."""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from access_data import CALLERS, ISSUER, P1, P2, P3, SSIN, World, headers, secured
from jwt_keys import jwt_settings
from live_node import BASE_HOST, free_port
from postgres_server import find_bindir
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.cli import main
from fhir_node.rules import check_digits
from fhir_node.rules.pseudonym import EXTENSION
from fhir_node.security import keyring
from fhir_node.settings import Settings

Secured = tuple[TestClient, World]
P4 = check_digits.ssin(datetime.date(1990, 5, 17), 123)
P5 = check_digits.ssin(datetime.date(1962, 11, 2), 45)
P6 = check_digits.ssin(datetime.date(2003, 1, 9), 7)
#: Every SSIN the tests below send: patients', and the people acting (they land in AuditEvents).
PEOPLE = {sub for sub, _, _ in CALLERS.values() if sub.isdigit()}
EVERY_SSIN = {P1, P2, P3, P4, P5, P6} | PEOPLE
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def search(client: TestClient, caller: str, query: str) -> dict[str, Any]:
    r = client.get(f"/fhir/{query}", headers=headers(caller))
    assert r.status_code == 200, r.text
    return r.json()


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "include"}


def ssin_values(body: Any) -> list[dict[str, Any]]:
    """Every SSIN Identifier in a response body."""
    if isinstance(body, dict):
        found = [body] if body.get("system") == SSIN else []
        return found + [i for v in body.values() for i in ssin_values(v)]
    if isinstance(body, list):
        return [i for v in body for i in ssin_values(v)]
    return []


def stored_bytes(url: str) -> bytes:
    """Everything the database keeps on disk: the SQLite file with its WAL, or a pg_dump."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        return b"".join(f.read_bytes() for f in sorted(path.parent.glob(f"{path.name}*")) if "key" not in f.name)
    libpq = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    pg_dump = (find_bindir() / "pg_ctl").resolve().parent / "pg_dump"  # beside the server's pg_ctl
    dump = subprocess.run([str(pg_dump), "--dbname", libpq], capture_output=True, check=True)
    return dump.stdout


def as_stored(text: str) -> tuple[bytes, bytes]:
    """`text` as the database files may hold it: as is, or hex (how pg_dump writes the bytea of resources)."""
    return text.encode(), text.encode().hex().encode()


# --- at rest --------------------------------------------------------------------------------------------


def _write_every_way(client: TestClient, w: World) -> dict[str, str]:
    """SSINs through every write path: a transaction with a conditional create and a reference by
    identifier, PUT, PATCH, a CareTeam by SSIN; and searches by SSIN (audited queries, logged URLs)."""
    op = headers("operator")
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:4a1b",
                "resource": {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": P4}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SSIN}|{P4}"},
            },
            {
                "resource": {
                    "resourceType": "EpisodeOfCare",
                    "status": "active",
                    "patient": {"identifier": {"system": SSIN, "value": P4}},
                    "managingOrganization": {"reference": w.ref("orgA")},
                },
                "request": {"method": "POST", "url": "EpisodeOfCare"},
            },
        ],
    }
    r = client.post("/fhir", json=transaction, headers=op)
    assert r.status_code == 200, r.text
    made = {"P4": r.json()["entry"][0]["response"]["location"].split("/")[1]}
    made["E4"] = r.json()["entry"][1]["response"]["location"].split("/")[1]
    p5 = {"resourceType": "Patient", "id": "p5", "identifier": [{"system": SSIN, "value": P5}]}
    assert client.put("/fhir/Patient/p5", json=p5, headers=op).status_code == 201
    patch = [
        {"op": "test", "path": "/identifier/0/value", "value": P5},  # the patch applies to what the client sees
        {"op": "replace", "path": "/identifier/0/value", "value": P6},
    ]
    r = client.patch(
        "/fhir/Patient/p5", content=orjson.dumps(patch), headers={**op, "Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 200, r.text
    team = {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"identifier": {"system": SSIN, "value": P2}},
        "participant": [{"member": {"reference": w.ref("drY")}}],
    }
    r = client.post("/fhir/CareTeam", json=team, headers=op)
    assert r.status_code == 201, r.text
    made["T4"] = r.json()["id"]
    return made


def test_no_ssin_rests_in_clear_and_search_by_ssin_works(
    database_url: str, caplog: pytest.LogCaptureFixture, access_log: Callable[[], list[dict[str, Any]]]
) -> None:
    with secured(database_url) as (client, w):
        made = _write_every_way(client, w)
        for caller in ("patient", "provider", "pharmacist", "psi-admin", "psi-coordinator"):
            client.get(f"/fhir/Patient?identifier={SSIN}|{P1}", headers=headers(caller))
        op = "operator"
        assert ids(search(client, op, f"Patient?identifier={SSIN}|{P1}")) == {w.ids["P1"]}
        assert ids(search(client, op, f"Patient?identifier={P1}")) == {w.ids["P1"]}
        assert ids(search(client, op, f"Patient?identifier={SSIN}|{P6}")) == {"p5"}
        assert ids(search(client, op, f"Patient?identifier={SSIN}|{P5}")) == set()  # patched away
        assert ids(search(client, op, f"EpisodeOfCare?patient.identifier={SSIN}|{P1}")) == {w.ids["A1"], w.ids["B1"]}
        assert ids(search(client, op, f"EpisodeOfCare?patient:identifier={SSIN}|{P4}")) == {made["E4"]}
        assert ids(search(client, op, f"EpisodeOfCare?patient:identifier={P4}")) == {made["E4"]}
        assert ids(search(client, op, f"CareTeam?subject:Patient.identifier={SSIN}|{P1}")) == {w.ids["T1"]}
        assert ids(search(client, op, f"CareTeam?subject:identifier={SSIN}|{P2}")) == {made["T4"]}
        has = search(client, op, f"Patient?_has:EpisodeOfCare:patient:type=principal&identifier={SSIN}|{P3}")
        assert ids(has) == {w.ids["P3"]}
        r = client.post("/fhir/Patient/_search", data={"identifier": f"{SSIN}|{P2}"}, headers=headers(op))
        assert ids(r.json()) == {w.ids["P2"]}
        again = {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": P1}]}
        r = client.post(
            "/fhir/Patient", json=again, headers={**headers(op), "If-None-Exist": f"identifier={SSIN}|{P1}"}
        )
        assert (r.status_code, r.json()["id"]) == (200, w.ids["P1"])
        # a patient finds their own data through the pseudonymised index (policy: own patients)
        assert ids(search(client, "patient", "EpisodeOfCare")) == {w.ids["A1"], w.ids["B1"]}

        audits = search(client, op, "AuditEvent?_count=1000")
        queries = [
            base64.b64decode(e["query"]).decode()
            for entry in audits["entry"]
            for e in entry["resource"].get("entity", [])
            if "query" in e
        ]
        assert any(f"{SSIN}|" in q or "identifier=" in q for q in queries)
        on_disk = stored_bytes(database_url)
    on_disk += stored_bytes(database_url)  # after the connections closed (a checkpointed WAL)
    for ssin in EVERY_SSIN:
        assert not [form for form in as_stored(ssin) if form in on_disk], ssin
        assert not [q for q in queries if ssin in q], ssin
    logged = " ".join([json.dumps(line) for line in access_log()] + [r.getMessage() for r in caplog.records])
    assert "identifier" in logged
    assert not [s for s in EVERY_SSIN if s in logged]
    assert [form for form in as_stored(EXTENSION) if form in on_disk]  # the test sees the stored resources


# --- what each role gets back ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "patient", "ssin"),
    [
        ("patient", "P1", P1),
        ("provider", "P1", P1),
        ("pharmacist", "P3", P3),
        ("psi-admin", "P1", P1),
        ("psi-coordinator", "P3", P3),
        ("operator", "P2", P2),
    ],
)
def test_entitled_roles_get_the_ssin_in_clear(world: Secured, caller: str, patient: str, ssin: str) -> None:
    client, w = world
    r = client.get(f"/fhir/Patient/{w.ids[patient]}", headers=headers(caller))
    assert r.status_code == 200, r.text
    assert r.json()["identifier"] == [{"system": SSIN, "value": ssin}]  # no pseudonymisation mark either
    found = search(client, caller, f"Patient?identifier={SSIN}|{ssin}")
    assert ids(found) == {w.ids[patient]}
    assert ssin_values(found) == [{"system": SSIN, "value": ssin}]


def test_the_aggregator_gets_its_own_stable_pseudonym_and_searches_by_it(world: Secured) -> None:
    client, w = world
    central = headers("aggregator")
    other = {"Authorization": f"Bearer {ISSUER.token('other-index', 'aggregator', 'system/*.rs')}"}
    seen = client.get(f"/fhir/Patient/{w.ids['P1']}", headers=central).json()["identifier"][0]
    assert seen["value"] not in (P1, "") and seen["_value"]["extension"][0]["url"] == EXTENSION
    assert client.get(f"/fhir/Patient/{w.ids['P1']}", headers=central).json()["identifier"][0] == seen
    theirs = client.get(f"/fhir/Patient/{w.ids['P1']}", headers=other).json()["identifier"][0]["value"]
    assert theirs != seen["value"]
    listed = search(client, "aggregator", "Patient?_count=100&_include=*")
    assert not [s for s in (P1, P2, P3) if s in orjson.dumps(listed).decode()]
    assert ids(search(client, "aggregator", f"Patient?identifier={SSIN}|{seen['value']}")) == {w.ids["P1"]}
    chained = search(client, "aggregator", f"EpisodeOfCare?patient.identifier={SSIN}|{seen['value']}")
    assert ids(chained) == {w.ids["A1"], w.ids["B1"]}
    # a clear SSIN, or another recipient's pseudonym, tells the aggregator nothing
    assert ids(search(client, "aggregator", f"Patient?identifier={SSIN}|{P1}")) == set()
    assert ids(search(client, "aggregator", f"Patient?identifier={P1}")) == set()
    assert ids(search(client, "aggregator", f"Patient?identifier={SSIN}|{theirs}")) == set()


def test_other_peoples_ssins_in_audit_events_are_pseudonymised_unless_their_own(world: Secured) -> None:
    client, w = world
    assert client.get(f"/fhir/{w.ref('P1')}", headers=headers("provider")).status_code == 200
    provider_ssin = CALLERS["provider"][0]
    mine = orjson.dumps(search(client, "patient", f"AuditEvent?patient={w.ref('P1')}&_count=200")).decode()
    assert provider_ssin not in mine and P1 in mine  # the patient's own reads name them in clear
    everything = orjson.dumps(search(client, "operator", "AuditEvent?_count=1000")).decode()
    assert provider_ssin in everything


def test_a_clear_ssin_outside_an_ssin_identifier_is_refused(client: TestClient) -> None:
    narrated = {
        "resourceType": "Patient",
        "identifier": [{"system": SSIN, "value": P1}],
        "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">NISS {P1}</div>'},
    }
    r = client.post("/fhir/Patient", json=narrated, headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Patient.text.div"]
    noted = {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "patient": {"identifier": {"system": SSIN, "value": P2}, "display": f"patient {P2}"},
    }
    r = client.post("/fhir/EpisodeOfCare", json=noted, headers=FHIR_JSON)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["EpisodeOfCare.patient.display"]
    r = client.put(f"/fhir/Patient/{P3}", json={"resourceType": "Patient", "id": P3}, headers=FHIR_JSON)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Patient.id"]
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_an_identical_put_or_no_op_patch_of_a_patient_keeps_its_version(client: TestClient) -> None:
    """The stored version holds the pseudonym, the PUT the clear SSIN: they say the same, so no new version."""
    body = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": SSIN, "value": P1}]}
    assert client.put("/fhir/Patient/p1", json=body, headers=FHIR_JSON).status_code == 201
    r = client.put("/fhir/Patient/p1", json=body, headers=FHIR_JSON)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1", r.text
    no_op = orjson.dumps([{"op": "test", "path": "/identifier/0/value", "value": P1}])
    r = client.patch("/fhir/Patient/p1", content=no_op, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1", r.text
    assert len(client.get("/fhir/Patient/p1/_history").json()["entry"]) == 1


# --- minimisation on every write path -------------------------------------------------------------------


def _named(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SSIN, "value": P1}], **extra}


@pytest.mark.parametrize(
    "element",
    [
        {"name": [{"family": "Peeters"}]},
        {"birthDate": "1985-07-30"},
        {"address": [{"city": "Gent"}]},
        {"telecom": [{"system": "phone", "value": "+32 9 000 00 00"}]},
    ],
)
def test_a_patient_keeps_no_demographics_on_any_write_path(
    enforcing_client: TestClient, element: dict[str, Any]
) -> None:
    client = enforcing_client
    name = next(iter(element))
    assert client.put("/fhir/Patient/kept", json={**_named(), "id": "kept"}, headers=FHIR_JSON).status_code == 201
    attempts = {
        "POST": client.post("/fhir/Patient", json=_named(**element), headers=FHIR_JSON),
        "PUT": client.put("/fhir/Patient/kept", json={**_named(**element), "id": "kept"}, headers=FHIR_JSON),
        "conditional PUT": client.put(
            f"/fhir/Patient?identifier={SSIN}|{P1}", json=_named(**element), headers=FHIR_JSON
        ),
        "PATCH": client.patch(
            "/fhir/Patient/kept",
            content=orjson.dumps([{"op": "add", "path": f"/{name}", "value": element[name]}]),
            headers={"Content-Type": "application/json-patch+json"},
        ),
        "transaction": client.post(
            "/fhir",
            json={
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": _named(**element), "request": {"method": "POST", "url": "Patient"}}],
            },
            headers=FHIR_JSON,
        ),
    }
    for path, r in attempts.items():
        assert r.status_code == 422, (path, r.text)
        assert f"Patient.{name}" in r.text or f"resource.{name}" in r.text, path
    read = client.get("/fhir/Patient/kept").json()
    assert name not in read and read["meta"]["versionId"] == "1"
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 1


def test_load_into_the_database_keeps_no_demographics(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIR_NODE_ENFORCE_PROFILES", "true")
    (tmp_path / "p.json").write_bytes(orjson.dumps(_named(birthDate="1985-07-30")))
    assert main(["load", str(tmp_path / "p.json"), "--database", database_url]) == 1


# --- the key ---------------------------------------------------------------------------------------------


@pytest.fixture
def own_keys() -> Iterator[None]:
    """These tests start nodes with keys of their own; the session's nodes get theirs back afterwards (a
    process serves one node, whose keys it installs)."""
    saved = keyring.installed()
    yield
    keyring.install(saved)


def _node(database_url: str, key: Path | None) -> TestClient:
    app = create_app(Settings(database_url=database_url, pseudonym_key_file=key))
    return TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000))


def _patient(client: TestClient, ssin: str) -> str:
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [{"system": SSIN, "value": ssin}]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _found(client: TestClient, ssin: str) -> list[str]:
    return [e["resource"]["id"] for e in client.get(f"/fhir/Patient?identifier={SSIN}|{ssin}").json().get("entry", [])]


def _stored_kids(database_url: str) -> set[str]:
    """The key ids of the Patients' SSINs as they rest, in every version and in the index."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        codes = set(
            conn.execute(
                text("SELECT code FROM idx_token WHERE res_type = 'Patient' AND param = 'identifier'")
            ).scalars()
        )
        contents = conn.execute(text("SELECT content FROM resource_versions WHERE res_type = 'Patient'")).scalars()
        values = {i["value"] for c in contents if c for i in orjson.loads(c).get("identifier", [])}
    engine.dispose()
    return {v.split(".")[0] for v in codes | values}


def test_a_local_node_makes_its_key_beside_the_sqlite_file_once(tmp_path: Path, own_keys: None) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with _node(url, None) as client:
        pid = _patient(client, P1)
    key = tmp_path / "node.db.pseudonym-key"
    assert key.stat().st_mode & 0o777 == 0o600
    kid = key.read_text().split()[0]
    assert _stored_kids(url) == {kid}
    with _node(url, None) as client:  # the next start reads the same key
        assert _found(client, P1) == [pid]
    assert key.read_text().split()[0] == kid


def test_without_a_key_file_a_production_node_refuses_to_start(postgres_server: Any, tmp_path: Path) -> None:
    with postgres_server.fresh_database() as url:
        done = _serve(tmp_path, {"FHIR_NODE_DATABASE_URL": url})
    assert done.returncode == 2 and "FHIR_NODE_PSEUDONYM_KEY_FILE" in done.stderr, done.stderr
    jwt = {f"FHIR_NODE_{k.upper()}": str(v) for k, v in jwt_settings(ISSUER.jwks_json()).items()}
    done = _serve(tmp_path, {"FHIR_NODE_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}", **jwt})
    assert done.returncode == 2 and "fhir-node keygen" in done.stderr, done.stderr
    assert not (tmp_path / "n.db.pseudonym-key").exists()


def test_a_node_given_the_wrong_key_refuses_to_start(database_url: str, tmp_path: Path, own_keys: None) -> None:
    with _node(database_url, None if "sqlite" in database_url else _key(tmp_path / "first.key")) as client:
        _patient(client, P1)
    other = _key(tmp_path / "other.key")
    done = _serve(tmp_path, {"FHIR_NODE_DATABASE_URL": database_url, "FHIR_NODE_PSEUDONYM_KEY_FILE": str(other)})
    assert done.returncode == 2 and "which the key file lacks" in done.stderr, done.stderr


def test_rotating_the_key_then_rekeying(database_url: str, tmp_path: Path, own_keys: None) -> None:
    key = _key(tmp_path / "node.key")
    first = key.read_text().split()[0]
    with _node(database_url, key) as client:
        p1 = _patient(client, P1)
        client.patch(
            f"/fhir/Patient/{p1}",
            content=orjson.dumps([{"op": "add", "path": "/active", "value": True}]),
            headers={"Content-Type": "application/json-patch+json"},
        )
    assert main(["keygen", str(key), "--rotate"]) == 0
    second = key.read_text().split()[0]
    with _node(database_url, key) as client:  # mid-rotation: old pseudonyms found, new ones written
        p2 = _patient(client, P2)
        assert (_found(client, P1), _found(client, P2)) == ([p1], [p2])
    assert _stored_kids(database_url) == {first, second}
    env = {"FHIR_NODE_PSEUDONYM_KEY_FILE": str(key), "FHIR_NODE_DATABASE_URL": database_url}
    with mock.patch.dict(os.environ, env):
        assert main(["rekey"]) == 0
    assert _stored_kids(database_url) == {second}  # every version and index row
    key.write_text(key.read_text().splitlines()[0] + "\n")  # the old key retired
    with _node(database_url, key) as client:
        assert (_found(client, P1), _found(client, P2)) == ([p1], [p2])
        history = client.get(f"/fhir/Patient/{p1}/_history").json()
        assert [ssin_values(e["resource"]) for e in history["entry"]] == [[{"system": SSIN, "value": P1}]] * 2


def _key(path: Path) -> Path:
    keyring.keygen(path)
    return path


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fhir-node serve` without the session's key file, expected to refuse (it never gets to listen)."""
    clean = {k: v for k, v in os.environ.items() if k != "FHIR_NODE_PSEUDONYM_KEY_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "fhir_node", "serve", "--port", str(free_port())],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
