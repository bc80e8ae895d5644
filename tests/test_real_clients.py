"""Real FHIR client libraries against a real `fhir-node serve` (uvicorn) process, and the server's refusal
to expose an unauthenticated node beyond loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import requests
from fhirclient import client as fhirclient_client
from fhirclient.models.auditevent import AuditEvent
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.consent import Consent
from fhirclient.models.episodeofcare import EpisodeOfCare
from fhirclient.server import FHIRNotFoundException
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from live_node import free_port

FHIR_JSON = "application/fhir+json"
SERVED_TYPES = {"EpisodeOfCare", "Consent", "AuditEvent", "Patient", "Organization", "Practitioner", "CareTeam"}
SERVED_TYPES |= {"Group"}
GUIDE_TYPES = {
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "NamingSystem",
    "ImplementationGuide",
    "OperationDefinition",
}


def fhirclient_server(base: str):
    smart = fhirclient_client.FHIRClient(settings={"app_id": "test", "api_base": base})
    return smart, smart.server


# --- fhirclient (SMART on FHIR's Python client) ------------------------------------------------------


def test_fhirclient_reads_the_capability_statement(live_server):
    smart, server = fhirclient_server(live_server)
    assert smart.prepare() is True  # fetches and parses the CapabilityStatement, finds no auth to do
    capability = server.capabilityStatement
    assert isinstance(capability, CapabilityStatement)
    assert capability.fhirVersion == "4.0.1"
    assert capability.kind == "instance"
    assert {r.type for r in capability.rest[0].resource} == SERVED_TYPES | GUIDE_TYPES


def test_fhirclient_create_read_update_history_delete(live_server):
    _, server = fhirclient_server(live_server)

    created = EpisodeOfCare({"status": "planned", "patient": {"reference": "Patient/p1"}}).create(server)
    rid = created["id"]
    assert created["meta"]["versionId"] == "1"

    episode = EpisodeOfCare.read(rid, server)
    assert episode.id == rid
    assert episode.status == "planned"
    assert episode.patient.reference == "Patient/p1"

    episode.status = "active"
    updated = episode.update(server)
    assert updated["meta"]["versionId"] == "2"
    assert EpisodeOfCare.read(rid, server).status == "active"

    # fhirclient cannot send If-Match: the version-aware update goes through httpx.
    body = EpisodeOfCare.read(rid, server).as_json()
    body["status"] = "finished"
    ok = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"2"'}
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["etag"] == 'W/"3"'
    stale = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"2"'}
    )
    assert stale.status_code == 412
    assert EpisodeOfCare.read(rid, server).meta.versionId == "3"

    history = Bundle.read_from(f"EpisodeOfCare/{rid}/_history", server)
    assert history.type == "history"
    assert [e.request.method for e in history.entry] == ["PUT", "PUT", "POST"]
    assert [e.resource.status for e in history.entry] == ["finished", "active", "planned"]

    episode.delete(server)
    with pytest.raises(requests.HTTPError) as gone:
        EpisodeOfCare.read(rid, server)
    assert gone.value.response.status_code == 410
    with pytest.raises(FHIRNotFoundException):
        EpisodeOfCare.read("never-was", server)


def test_fhirclient_models_of_consent_and_audit_event_are_accepted(live_server):
    _, server = fhirclient_server(live_server)
    consent = Consent(
        {
            "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/p1"},
            "dateTime": "2024-03-01T09:30:00+01:00",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": "permit", "period": {"start": "2024-03-01"}},
        }
    )
    cid = consent.create(server)["id"]
    read_back = Consent.read(cid, server)
    assert read_back.provision.type == "permit"
    assert read_back.dateTime.as_json() == "2024-03-01T09:30:00+01:00"

    event = AuditEvent(
        {
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
            "recorded": "2024-01-01T10:00:00Z",
            "agent": [{"requestor": True, "who": {"display": "node operator"}}],
            "source": {"observer": {"display": "fhir-node"}},
        }
    )
    aid = event.create(server)["id"]
    stored = AuditEvent.read(aid, server)
    assert stored.agent[0].requestor is True
    with pytest.raises(requests.HTTPError) as refused:
        stored.update(server)
    assert refused.value.response.status_code == 405
    with pytest.raises(requests.HTTPError) as refused:
        stored.delete(server)
    assert refused.value.response.status_code == 405
    assert AuditEvent.read(aid, server).meta.versionId == "1"


# --- fhirpy (beda.software's client) -----------------------------------------------------------------


def test_fhirpy_create_read_update_history_delete(live_server):
    client = SyncFHIRClient(live_server)
    assert client.execute("metadata", method="get")["fhirVersion"] == "4.0.1"

    episode = client.resource("EpisodeOfCare", status="planned", patient={"reference": "Patient/p1"})
    episode.save()
    rid = episode.id
    assert rid
    assert episode["meta"]["versionId"] == "1"

    fetched = client.reference("EpisodeOfCare", rid).to_resource()
    assert fetched["status"] == "planned"

    fetched["status"] = "active"
    fetched.save()
    assert fetched["meta"]["versionId"] == "2"

    body = client.reference("EpisodeOfCare", rid).to_resource().serialize()
    body["status"] = "finished"
    stale = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412
    ok = httpx.put(
        f"{live_server}/EpisodeOfCare/{rid}", json=body, headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"2"'}
    )
    assert ok.status_code == 200, ok.text

    found = client.resources("EpisodeOfCare").search(_id=rid).first()
    assert found is not None
    assert found["status"] == "finished"

    history = client.execute(f"EpisodeOfCare/{rid}/_history", method="get")
    assert history["type"] == "history"
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']

    fetched.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("EpisodeOfCare", rid).to_resource()
    assert client.execute(f"EpisodeOfCare/{rid}/_history", method="get")["entry"][0]["request"]["method"] == "DELETE"


def test_fhirpy_update_with_a_client_id_creates(live_server):
    client = SyncFHIRClient(live_server)
    patient = client.resource("Patient", id="pseudonym-42", active=True)
    patient.save()
    assert patient["meta"]["versionId"] == "1"
    assert client.reference("Patient", "pseudonym-42").to_resource()["active"] is True


# --- refusing to expose an unauthenticated node ------------------------------------------------------


def fhir_node_command() -> list[str]:
    script = Path(sys.executable).with_name("fhir-node")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fhir_node"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_a_non_loopback_host_with_auth_none(tmp_path, host):
    env = {
        **os.environ,
        "FHIR_NODE_AUTH": "none",
        "FHIR_NODE_DATABASE_URL": f"sqlite:///{tmp_path / 'refused.db'}",
    }
    command = [*fhir_node_command(), "serve", "--host", host, "--port", str(free_port())]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"fhir-node serve --host {host} with FHIR_NODE_AUTH=none started instead of refusing")
    assert proc.returncode != 0
    assert "loopback" in stderr.lower()
    assert host in stderr


# --- what fhirpy and fhirclient send that the node once got wrong ------------------------------------

SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"


def test_fhirpy_get_or_create_creates_once_and_count_counts(live_server):
    """fhirpy's get_or_create is `POST /Patient?identifier=...`: a conditional create, never a duplicate;
    its `.count()` sends `_count=0&_totalMethod=count`."""
    client = SyncFHIRClient(live_server)
    patients = client.resources("Patient").search(identifier=f"{SSIN}|85073003328")
    patient = client.resource("Patient", identifier=[{"system": SSIN, "value": "85073003328"}])
    first, created = patients.get_or_create(patient)
    again, created_again = patients.get_or_create(patient)
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert patients.count() == 1
    assert client.resources("Patient").count() == 1


def test_a_post_with_other_query_parameters_is_refused_and_creates_nothing(live_server):
    body = {"resourceType": "Patient", "active": True}
    for query, named in (("bogus=1", "bogus"), ("_count=5", "_count"), ("_sort=_id", "_sort")):
        r = httpx.post(f"{live_server}/Patient?{query}", json=body, headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 400, r.text
        assert named in r.json()["issue"][0]["diagnostics"]
    both = httpx.post(
        f"{live_server}/Patient?active=true",
        json=body,
        headers={"Content-Type": FHIR_JSON, "If-None-Exist": "active=true"},
    )
    assert both.status_code == 400
    assert SyncFHIRClient(live_server).resources("Patient").count() == 0


def test_fhirpy_count_reports_an_exact_total_past_the_first_page(live_server):
    client = SyncFHIRClient(live_server)
    for _ in range(3):
        client.resource("EpisodeOfCare", status="active", patient={"reference": "Patient/p1"}).save()
    assert client.resources("EpisodeOfCare").search(status="active").count() == 3
    paged = httpx.get(f"{live_server}/EpisodeOfCare", params={"_count": "1", "_totalMethod": "count"}).json()
    assert paged["total"] == 3
    wrong = httpx.get(f"{live_server}/EpisodeOfCare", params={"_totalMethod": "guess"})
    assert wrong.status_code == 400


def test_lenient_self_link_shows_only_the_parameters_used(live_server):
    client = SyncFHIRClient(live_server, extra_headers={"Prefer": "handling=lenient"})
    client.resource("EpisodeOfCare", status="active", patient={"reference": "Patient/p1"}).save()
    bundle = client.resources("EpisodeOfCare").search(status="active", bogus="1", date="not-a-date").fetch_raw()
    (self_link,) = [link["url"] for link in bundle["link"] if link["relation"] == "self"]
    assert "status=active" in self_link
    assert "bogus" not in self_link
    assert "date" not in self_link
    ignored = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert {i["expression"][0] for i in ignored[0]["issue"]} == {"bogus", "date"}
    assert httpx.get(self_link).json()["total"] == bundle["total"] == 1


def test_fhirclient_identical_update_keeps_the_version(live_server):
    _, server = fhirclient_server(live_server)
    created = EpisodeOfCare({"status": "active", "patient": {"reference": "Patient/p1"}}).create(server)
    episode = EpisodeOfCare.read(created["id"], server)
    assert episode.update(server)["meta"]["versionId"] == "1"
    episode.status = "finished"
    assert episode.update(server)["meta"]["versionId"] == "2"
    assert episode.update(server)["meta"]["versionId"] == "2"
    history = Bundle.read_from(f"EpisodeOfCare/{created['id']}/_history", server)
    assert len(history.entry) == 2


def test_fhirclient_unknown_operation_is_named(live_server):
    _, server = fhirclient_server(live_server)
    with pytest.raises(FHIRNotFoundException) as unknown:
        server.request_json("CodeSystem/$expand?url=x")
    response = unknown.value.response
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "Unknown operation '$expand'" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "div",
    [
        '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script>hi</div>',
        '<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="steal()">hi</p></div>',
        '<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:steal()">hi</a></div>',
        '<div xmlns="http://www.w3.org/1999/xhtml"><img src="https://tracker.example/p.png"/>hi</div>',
        '<div xmlns="http://www.w3.org/1999/xhtml"><iframe src="x"></iframe>hi</div>',
        '<div xmlns="http://www.w3.org/1999/xhtml"> </div>',
    ],
)
def test_fhirclient_narrative_carrying_script_is_refused(live_server, div):
    _, server = fhirclient_server(live_server)
    patient = {"resourceType": "Patient", "active": True, "text": {"status": "generated", "div": div}}
    with pytest.raises(requests.HTTPError) as refused:
        server.post_json("Patient", patient)
    assert refused.value.response.status_code == 400
    issue = refused.value.response.json()["issue"][0]
    assert issue["expression"] == ["Patient.text.div"]
    assert issue["diagnostics"].startswith(("txt-1", "txt-2"))
    assert Bundle.read_from("Patient", server).total == 0
    safe = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Patient <b>85073003328</b></p></div>'
    stored = server.post_json("Patient", {**patient, "text": {"status": "generated", "div": safe}})
    assert stored.status_code == 201
