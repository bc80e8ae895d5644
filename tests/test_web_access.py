"""The page with FHIR_NODE_AUTH=jwt: it takes the caller's bearer token in the same Authorization header as the
FHIR API, shows exactly what the same FHIR call answers for that caller, and every view is audited as such."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from access_data import DR_X, P1, World, headers
from chained import chained_events
from starlette.testclient import TestClient

from fhir_node.audit import chain
from fhir_node.rules.pseudonym import clear

Secured = tuple[TestClient, World]


def shown(page: str, res_type: str) -> set[str]:
    """Ids of the resources of a type the page links to in its first column."""
    return set(re.findall(rf'<th scope="row"><a href="/resource/{res_type}/([^"]+)">', page))


def section(page: str, anchor: str) -> str:
    found = re.search(rf'<section aria-labelledby="{anchor}">(.*?)</section>', page, re.S)
    assert found, anchor
    return found.group(1)


def fhir_ids(client: TestClient, query: str, caller: str) -> set[str]:
    bundle = client.get(f"/fhir/{query}", headers=headers(caller)).json()
    return {e["resource"]["id"] for e in bundle.get("entry", ()) if e["search"]["mode"] == "match"}


def audit_events(client: TestClient) -> list[dict[str, Any]]:
    """The AuditEvents written so far, straight from the chain (no request, so none is added), once what the
    journal holds is chained."""
    chain.settle(client.app.state.node.db)  # type: ignore[attr-defined]
    with client.app.state.node.db.read() as conn:  # type: ignore[attr-defined]
        return [clear(e) for e in chained_events(conn)]  # SSINs rest pseudonymised


def test_public_pages_need_no_token(world: Secured) -> None:
    client, _ = world
    for path in ("/", "/profiles", "/profiles/bihr-research-consent", "/search?resource=Consent"):
        assert client.get(path).status_code == 200, path


def test_data_pages_without_a_token_are_the_fhir_api_401(world: Secured) -> None:
    client, w = world
    for path in ("/search?resource=EpisodeOfCare&run=1", "/me", f"/patient/{w.ids['P1']}", f"/resource/{w.ref('A1')}"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == 'Bearer realm="fhir-node"'
        assert "Authorization: Bearer" in r.text and "<script" not in r.text


def test_a_bad_token_is_refused_as_by_the_fhir_api(world: Secured) -> None:
    client, _ = world
    r = client.get("/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_a_search_shows_exactly_what_the_same_fhir_search_answers_the_caller(world: Secured) -> None:
    client, _ = world
    for caller in ("patient", "provider", "psi-coordinator", "aggregator"):
        page = client.get("/search?resource=EpisodeOfCare&run=1", headers=headers(caller))
        assert page.status_code == 200, (caller, page.text)
        assert shown(page.text, "EpisodeOfCare") == fhir_ids(client, "EpisodeOfCare", caller), caller
        assert 'curl -s -H "Authorization: Bearer $TOKEN"' in unescape(page.text)  # the token itself is never shown


def test_a_type_the_role_may_not_search_is_the_fhir_403(world: Secured) -> None:
    client, _ = world
    r = client.get("/search?resource=AuditEvent&run=1", headers=headers("provider"))
    assert r.status_code == 403


def test_a_patient_sees_their_own_inclusions_consent_and_who_accessed_their_data(world: Secured) -> None:
    client, w = world
    # A provider with a therapeutic relationship reads the patient's inclusion: the patient must see it.
    assert client.get(f"/fhir/{w.ref('A1')}", headers=headers("provider")).status_code == 200
    page = client.get("/me", headers=headers("patient"))
    assert page.status_code == 200, page.text
    assert f"Patient {P1}" in page.text
    assert shown(section(page.text, "episodeofcare"), "EpisodeOfCare") == {w.ids["A1"], w.ids["B1"]}
    assert shown(section(page.text, "consent"), "Consent") == {w.ids["C1"]}
    accesses = section(page.text, "auditevent")
    # The provider by NIHDI number and role: their SSIN is shown only to themselves.
    assert DR_X in accesses and "provider" in accesses and "79121203389" not in accesses
    provider_read = [
        e["id"]
        for e in audit_events(client)
        if any(a.get("who", {}).get("identifier", {}).get("value") == "79121203389" for a in e["agent"])
        and any(x.get("what", {}).get("reference") == w.ref("A1") for x in e.get("entity", ()))
    ]
    assert provider_read and set(provider_read) <= shown(accesses, "AuditEvent")
    # Later views add their own AuditEvents; what the page showed is what the FHIR search answers the patient.
    assert shown(accesses, "AuditEvent") <= fhir_ids(client, f"AuditEvent?patient={w.ref('P1')}", "patient")


def test_a_patient_cannot_open_another_patients_page(world: Secured) -> None:
    client, w = world
    assert client.get(f"/patient/{w.ids['P2']}", headers=headers("patient")).status_code == 404
    assert client.get(f"/resource/{w.ref('B2')}", headers=headers("patient")).status_code == 404


def test_my_data_is_empty_for_someone_the_node_holds_nothing_about(world: Secured) -> None:
    client, _ = world
    page = client.get("/me", headers=headers("provider"))
    assert page.status_code == 200 and "holds no patient record with your national number" in page.text


def test_each_data_page_is_audited_as_the_fhir_calls_it_made(world: Secured) -> None:
    client, w = world
    before = len(audit_events(client))
    assert client.get(f"/patient/{w.ids['P1']}", headers=headers("patient")).status_code == 200
    added = audit_events(client)[before:]
    assert sorted(e["subtype"][0]["code"] for e in added) == ["read", "search-type", "search-type", "search-type"]
    for event in added:
        requestor = next(a for a in event["agent"] if a.get("requestor"))
        assert requestor["who"]["identifier"]["value"] == P1
        assert any(a.get("network", {}).get("address") == "10.1.2.3" for a in event["agent"])  # the page's client
    assert client.get("/profiles/bihr-inclusion").status_code == 200
    assert len(audit_events(client)) == before + 4  # the published guide is public, like /fhir/metadata
