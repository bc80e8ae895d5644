"""Authentication through the real app: every bad token is a 401 with a Bearer challenge that changes
nothing and is itself audited; discovery documents are public; FHIR_NODE_AUTH=none serves loopback only."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from access_data import ISSUER, World, episode, headers
from chained import chained_events
from jwt_keys import ISSUER as ISSUER_URL
from jwt_keys import REFUSED, TestIssuer
from live_node import BASE_HOST
from sqlalchemy import select
from starlette.testclient import TestClient

from fhir_node.app import create_app
from fhir_node.audit import chain
from fhir_node.rules.pseudonym import clear
from fhir_node.settings import Settings
from fhir_node.store.schema import resources
from fhir_node.validation.validator import has_errors, validate

Secured = tuple[TestClient, World]


def audit_events(client: TestClient) -> list[dict[str, Any]]:
    """Every AuditEvent the node wrote, read straight from its chain (no request, so none is added), once
    those that writes staged are chained, as the audit writer does right after."""
    db = client.app.state.node.db  # type: ignore[attr-defined]
    chain.settle(db)
    with db.read() as conn:
        return chained_events(conn)


def inclusions(client: TestClient) -> int:
    with client.app.state.node.db.read() as conn:  # type: ignore[attr-defined]
        q = select(resources.c.res_id).where(resources.c.res_type == "EpisodeOfCare")
        return len(conn.execute(q).all())


@pytest.mark.parametrize(("make", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_token_is_a_401_that_changes_nothing_and_is_audited(
    world: Secured, make: Callable[[TestIssuer], str], reason: str
) -> None:
    client, w = world
    before, audited = inclusions(client), len(audit_events(client))
    r = client.post(
        "/fhir/EpisodeOfCare",
        json=episode(w.ref("P1"), w.ref("orgA"), "information"),
        headers={"Authorization": f"Bearer {make(ISSUER)}"},
    )
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer realm="fhir-node", error="invalid_token"')
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"
    assert reason in outcome["issue"][0]["diagnostics"]
    assert inclusions(client) == before
    events = audit_events(client)
    assert len(events) == audited + 1
    assert {e["outcome"] for e in events[audited:]} == {"4"}


def test_no_token_is_a_401_with_a_plain_challenge(world: Secured) -> None:
    client, _ = world
    r = client.get("/fhir/Patient")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="fhir-node"'


def test_discovery_is_public_and_says_how_to_authenticate(world: Secured) -> None:
    client, _ = world
    smart = client.get("/fhir/.well-known/smart-configuration")
    assert smart.status_code == 200
    assert smart.json()["issuer"] == ISSUER_URL
    assert "client-confidential-asymmetric" in smart.json()["capabilities"]
    security = client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert ISSUER_URL in security["description"]


def test_every_audit_event_the_node_writes_conforms_to_its_profile(world: Secured) -> None:
    client, w = world
    dr = headers("provider")
    client.get(f"/fhir/{w.ref('A1')}", headers=dr)
    client.get(f"/fhir/{w.ref('orgA')}", headers=dr)
    client.get(f"/fhir/{w.ref('A1')}/_history/1", headers=dr)
    client.get("/fhir/EpisodeOfCare?status=active", headers=dr)
    client.get(f"/fhir/{w.ref('B2')}", headers=dr)  # denied: 404
    created = client.post("/fhir/EpisodeOfCare", json=episode(w.ref("P2"), w.ref("orgB"), "information"), headers=dr)
    ep = created.json()
    client.put(f"/fhir/EpisodeOfCare/{ep['id']}", json={**ep, "status": "finished"}, headers=headers("operator"))
    client.delete(f"/fhir/EpisodeOfCare/{ep['id']}", headers=headers("operator"))
    client.get("/fhir/Patient", headers=headers("aggregator"))
    client.get("/fhir/Patient")  # 401
    events = audit_events(client)
    profiles = {p for e in events for p in e.get("meta", {}).get("profile", [])}
    for kind in ("read", "query", "patient-read", "patient-create", "patient-update", "patient-delete"):
        assert f"https://fhir-node.be/fhir/StructureDefinition/bihr-audit-{kind}" in profiles
    for event in events:
        issues = validate(event, event.get("meta", {}).get("profile"))
        assert not has_errors(issues), (event, [i for i in issues if i.severity in ("error", "fatal")])
    queries = {
        base64.b64decode(x["query"]).decode(): e
        for e in events
        for x in e["entity"]
        if x.get("role", {}).get("code") == "24"
    }
    search = queries["GET /fhir/EpisodeOfCare?status=active"]
    user = next(a for a in search["agent"] if a["type"]["coding"][0]["code"] == "IRCP")
    assert user["altId"] == "18780485003"
    assert user["who"]["identifier"]["value"] != "79121203389"  # it rests pseudonymised
    assert clear(user["who"])["identifier"]["value"] == "79121203389"
    assert user["role"][0]["coding"][0]["code"] == "provider"


def test_auth_none_serves_loopback_only(tmp_path: Any) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'n.db'}", audit=True))
    with TestClient(app, base_url=BASE_HOST, client=("192.0.2.10", 50000)) as remote:
        assert remote.get("/fhir/Patient").status_code == 403
        assert remote.get("/health").status_code == 403
        refused = audit_events(remote)
        assert [(e["outcome"], e["outcomeDesc"]) for e in refused] == [("4", "HTTP 403")]
    with TestClient(app, base_url=BASE_HOST, client=("127.0.0.1", 50000)) as local:
        assert local.get("/fhir/Patient").status_code == 200
        assert local.get("/fhir/.well-known/smart-configuration").status_code == 404
        created = local.post("/fhir/Patient", json={"resourceType": "Patient", "active": True})
        assert local.delete(f"/fhir/Patient/{created.json()['id']}").status_code == 204
        statuses = {e["subtype"][0]["code"]: e["outcomeDesc"] for e in audit_events(local)}
        assert statuses["create"] == "HTTP 201" and statuses["delete"] == "HTTP 204"
